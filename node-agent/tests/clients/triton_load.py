#!/usr/bin/env python3
"""Load through a KServe v2 HTTP endpoint with the stock `tritonclient.http` (PyPI, at its
default settings), one client per thread, every answer checked against native onnxruntime
on the same model file.

Usage: triton_load.py URL MODELS_DIR CLIENTS

Reads commands from stdin, one per line: `MODEL` sends the clients' requests to that
fixture model from now on (the load moves), `stop` ends. At the end prints one JSON line:
{"ok": {model: n}, "failed": [reasons...]}. A failure is any exception or a wrong answer.
"""

import json
import os
import sys
import threading

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

sys.path.insert(0, os.path.dirname(__file__))
from triton_http import fixture_inputs, infer_input  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4


def main():
    url, models_dir, clients = sys.argv[1].removeprefix("http://"), sys.argv[2], int(sys.argv[3])
    cases = {}
    for model in ["mlp", "cnn"]:
        feeds = fixture_inputs(models_dir, model)
        session = ort.InferenceSession(
            os.path.join(models_dir, f"{model}.onnx"), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        cases[model] = (feeds, dict(zip(names, session.run(names, feeds))))

    target = {"model": None}
    stop = threading.Event()
    lock = threading.Lock()
    ok, failed = {}, []

    def run():
        client = httpclient.InferenceServerClient(url)
        while not stop.is_set():
            model = target["model"]
            if model is None:
                stop.wait(0.05)
                continue
            feeds, expected = cases[model]
            try:
                result = client.infer(model, [infer_input(k, v) for k, v in feeds.items()])
                for name, want in expected.items():
                    got = result.as_numpy(name)
                    if got is None or not np.allclose(got, want, atol=ATOL, rtol=RTOL):
                        raise ValueError(f"{model}/{name}: wrong answer")
                with lock:
                    ok[model] = ok.get(model, 0) + 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    failed.append(f"{model}: {type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            break
        if command in cases:
            target["model"] = command
            print(f"load on {command}", file=sys.stderr, flush=True)
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({"ok": ok, "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
