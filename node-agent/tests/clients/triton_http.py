#!/usr/bin/env python3
"""Drives a KServe v2 HTTP endpoint (a webaccel agent or gateway) with the stock
`tritonclient.http` from PyPI, at its default settings, and checks every answer against
native onnxruntime run on the same model file (never against webaccel itself).

Usage: triton_http.py URL MODELS_DIR [--token T] [--prefix P]

The endpoint must serve the fixture models as <prefix>mlp, <prefix>cnn,
<prefix>transformer and <prefix>types (wasm backend). Exits non-zero with the reason on
the first mismatch.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ATOL, RTOL = 1e-5, 1e-4


def reference(models_dir, model, feeds):
    session = ort.InferenceSession(
        os.path.join(models_dir, f"{model}.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


NUMPY = {
    "FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
    "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
    "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
}


def fixture_inputs(models_dir, model):
    """The fixture's stored request inputs, as numpy arrays."""
    with open(os.path.join(models_dir, f"{model}.json")) as f:
        fixture = json.load(f)
    return {
        i["name"]: np.array(i["data"], dtype=NUMPY[i["datatype"]]).reshape(i["shape"])
        for i in fixture["inputs"]
    }


def infer_input(name, array, binary=None):
    datatype = {
        np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16",
        np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
        np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
        np.dtype(np.float64): "FP64", np.dtype(np.int8): "INT8", np.dtype(np.int16): "INT16",
        np.dtype(np.uint16): "UINT16", np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64",
    }[array.dtype]
    i = httpclient.InferInput(name, list(array.shape), datatype)
    if binary is None:
        i.set_data_from_numpy(array)  # the client's default: binary_data=True
    else:
        i.set_data_from_numpy(array, binary_data=binary)
    return i


def check(label, result, expected):
    for name, want in expected.items():
        got = result.as_numpy(name)
        if got is None:
            sys.exit(f"{label}: output {name} missing")
        if got.shape != want.shape or got.dtype != want.dtype:
            sys.exit(f"{label}/{name}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}")
        if want.dtype.kind in "fc":
            if not np.allclose(got.astype(np.float64), want.astype(np.float64), atol=ATOL, rtol=RTOL):
                err = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))
                sys.exit(f"{label}/{name}: max abs error {err}")
        elif not np.array_equal(got, want):
            sys.exit(f"{label}/{name}: {got} != {want}")
    print(f"ok {label}: {', '.join(sorted(expected))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("models_dir")
    ap.add_argument("--token")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    url = args.url.removeprefix("http://")
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}

    # tritonclient adds its Inference-Header-Content-Length to the dict it is given, so
    # every call gets a fresh one.
    def headers():
        return dict(auth)

    client = httpclient.InferenceServerClient(url)

    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(headers=headers()), "server not ready"
    meta = client.get_server_metadata(headers=headers())
    assert "binary_tensor_data" in meta["extensions"], meta

    for model in ["mlp", "cnn", "transformer", "types"]:
        name = args.prefix + model
        assert client.is_model_ready(name, headers=headers()), f"{name} not ready"
        feeds = fixture_inputs(args.models_dir, model)
        expected = reference(args.models_dir, model, feeds)
        inputs = [infer_input(k, v) for k, v in feeds.items()]
        # 1. Defaults: binary inputs, no outputs listed (binary_data_output=true).
        check(f"{model} defaults", client.infer(name, inputs, headers=headers()), expected)
        # 2. Outputs listed with the default binary_data=True.
        outputs = [httpclient.InferRequestedOutput(o) for o in expected]
        check(f"{model} binary outputs", client.infer(name, inputs, outputs=outputs, headers=headers()), expected)
        # 3. JSON both ways.
        json_inputs = [infer_input(k, v, binary=False) for k, v in feeds.items()]
        json_outputs = [httpclient.InferRequestedOutput(o, binary_data=False) for o in expected]
        check(f"{model} json", client.infer(name, json_inputs, outputs=json_outputs, headers=headers()), expected)
        meta = client.get_model_metadata(name, headers=headers())
        assert sorted(i["name"] for i in meta["inputs"]) == sorted(feeds), meta

    # 4. Binary and JSON mixed in one request, both ways.
    feeds = fixture_inputs(args.models_dir, "types")
    expected = reference(args.models_dir, "types", feeds)
    mixed_in = [infer_input(k, v, binary=(n % 2 == 0)) for n, (k, v) in enumerate(feeds.items())]
    mixed_out = [httpclient.InferRequestedOutput(o, binary_data=(n % 2 == 1)) for n, o in enumerate(expected)]
    check("types mixed", client.infer(args.prefix + "types", mixed_in, outputs=mixed_out, headers=headers()), expected)

    # 5. BYTES tensors are refused with a clear 400.
    s = httpclient.InferInput("x", [1], "BYTES")
    s.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
    try:
        client.infer(args.prefix + "mlp", [s], headers=headers())
        sys.exit("a BYTES input was accepted")
    except InferenceServerException as e:
        if e.status() != "400" or "BYTES" not in e.message():
            sys.exit(f"BYTES refusal: status {e.status()}, message {e.message()}")
        print(f"ok BYTES refused: {e.message()}")


if __name__ == "__main__":
    main()
