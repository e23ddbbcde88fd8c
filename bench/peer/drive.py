#!/usr/bin/env python3
"""Drives several KServe v2 HTTP servers with the stock `tritonclient.http` (default
settings: binary tensors both ways), alternately, block by block, so that each sees the
same machine at nearly the same time; checks every answer against native onnxruntime;
writes one JSON line per request to stdout:

  {"target": "agent", "model": "mlp", "concurrency": 8, "block": 3, "client_ms": 1.23,
   "stages": {"run": 0.2, ...}}

Usage: drive.py --models-dir D --target NAME=HOST:PORT [...] --model mlp [...]
                --concurrency 1,8 --blocks 10 --requests 500

Each block sends `--requests` requests of one model at one concurrency (that many
threads, each with its own client, back to back) to one target; the targets take turns
within each (model, concurrency), their order rotating from block to block. The
`webaccel-stages: 1` header asks webaccel for each answer's stages (KServe ignores it).
"""

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../node-agent/tests/clients"))
from triton_http import fixture_inputs, infer_input, reference  # noqa: E402

HEADERS = {"webaccel-stages": "1"}


def block(url, model, inputs, want, concurrency, requests):
    """`requests` answers from `url` at `concurrency`: (client ms, stages) each."""
    results = []
    lock = threading.Lock()
    left = [requests]

    def worker():
        client = httpclient.InferenceServerClient(url)
        mine = []
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            start = time.perf_counter()
            r = client.infer(model, inputs, headers=HEADERS)
            ms = (time.perf_counter() - start) * 1e3
            for name, expected in want.items():
                np.testing.assert_allclose(r.as_numpy(name), expected, rtol=1e-4, atol=1e-5)
            params = r.get_response().get("parameters") or {}
            stages = {
                k[len("stage_"):-len("_ms")]: v
                for k, v in params.items()
                if k.startswith("stage_") and k.endswith("_ms")
            }
            mine.append((ms, stages))
        client.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models-dir", required=True)
    p.add_argument("--target", action="append", required=True, help="NAME=HOST:PORT")
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--requests", type=int, default=500)
    a = p.parse_args()
    targets = [t.split("=", 1) for t in a.target]
    levels = [int(c) for c in a.concurrency.split(",")]
    for model in a.model:
        feeds = fixture_inputs(a.models_dir, model)
        want = reference(a.models_dir, model, feeds)
        inputs = [infer_input(name, array) for name, array in feeds.items()]
        for c in levels:
            for b in range(a.blocks):
                turn = targets[b % len(targets):] + targets[: b % len(targets)]
                for name, url in turn:
                    for ms, stages in block(url, model, inputs, want, c, a.requests):
                        print(json.dumps({
                            "target": name, "model": model, "concurrency": c, "block": b,
                            "client_ms": ms, "stages": stages,
                        }))
                sys.stdout.flush()
                print(f"{model} c={c} block {b + 1}/{a.blocks}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
