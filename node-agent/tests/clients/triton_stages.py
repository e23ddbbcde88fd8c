#!/usr/bin/env python3
"""Sends a model's fixture request N times with the stock `tritonclient.http` (default
settings), asking for the answer's stages with the `webaccel-stages: 1` header, checks
each answer against native onnxruntime, and prints one JSON line per request: the
client's own milliseconds and the `stage_*_ms` parameters the server returned.

Usage: triton_stages.py URL MODELS_DIR MODEL N [--token T] [--served-as NAME]
"""

import argparse
import json
import sys
import time

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, __import__("os").path.dirname(__file__))
from triton_http import fixture_inputs, infer_input, reference  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("models_dir")
    p.add_argument("model")
    p.add_argument("n", type=int)
    p.add_argument("--token")
    p.add_argument("--served-as")
    a = p.parse_args()
    url = a.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url)
    headers = {"webaccel-stages": "1"}
    if a.token:
        headers["Authorization"] = f"Bearer {a.token}"
    feeds = fixture_inputs(a.models_dir, a.model)
    want = reference(a.models_dir, a.model, feeds)
    inputs = [infer_input(name, array) for name, array in feeds.items()]
    for _ in range(a.n):
        start = time.perf_counter()
        result = client.infer(a.served_as or a.model, inputs, headers=headers)
        client_ms = (time.perf_counter() - start) * 1e3
        for name, expected in want.items():
            np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-4, atol=1e-5)
        params = result.get_response().get("parameters", {})
        print(json.dumps({"client_ms": client_ms, "parameters": params}), flush=True)


if __name__ == "__main__":
    main()
