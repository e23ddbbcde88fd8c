#!/usr/bin/env python3
"""Drives models cut into stages through a KServe v2 HTTP endpoint (webaccel's gateway)
with the stock `tritonclient.http` from PyPI at its default settings, and checks every
answer against native onnxruntime running the whole, uncut model file (never against
webaccel itself).

Usage: sharded_http.py URL GRPC_ADDR WHOLE.onnx REQUEST.json MODEL [MODEL ...]

REQUEST.json holds KServe v2 input tensors (as make_models.py writes them). For each
MODEL: its metadata must list the whole model's inputs and outputs; one request at the
client's defaults (binary tensors), one asking for JSON outputs, one over gRPC
(`tritonclient.grpc`), then 16 concurrent ones (several requests in the pipeline at
once), must each give the whole model's outputs within 1e-5. Prints one JSON line per
model; exits non-zero with the reason on the first mismatch.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ATOL = 1e-5
NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
         "UINT8": np.uint8, "BOOL": np.bool_}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) < 6:
        fail(__doc__)
    url, grpc_addr, whole, request = sys.argv[1:5]
    models = sys.argv[5:]
    with open(request) as f:
        ref = json.load(f)
    feeds = {i["name"]: np.array(i["data"], dtype=NUMPY[i["datatype"]]).reshape(i["shape"])
             for i in ref["inputs"]}
    datatypes = {i["name"]: i["datatype"] for i in ref["inputs"]}
    session = ort.InferenceSession(whole, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, feeds)))

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), concurrency=16)
    grpc = grpcclient.InferenceServerClient(grpc_addr)

    def inputs(module=httpclient):
        out = []
        for name, array in feeds.items():
            i = module.InferInput(name, list(array.shape), datatypes[name])
            i.set_data_from_numpy(array)
            out.append(i)
        return out

    def check(model, result):
        worst = 0.0
        for name in names:
            got = result.as_numpy(name)
            if got is None:
                fail(f"{model}: no output '{name}' in {result.get_response()}")
            if got.shape != expected[name].shape:
                fail(f"{model}: output '{name}' has shape {got.shape}, "
                     f"onnxruntime's {expected[name].shape}")
            err = float(np.max(np.abs(got.astype(np.float64) - expected[name])))
            if not err <= ATOL:
                fail(f"{model}: output '{name}' differs from onnxruntime's by {err}")
            worst = max(worst, err)
        return worst

    for model in models:
        meta = client.get_model_metadata(model)
        got_inputs = [i["name"] for i in meta["inputs"]]
        got_outputs = [o["name"] for o in meta["outputs"]]
        if got_inputs != [i.name for i in session.get_inputs()] or got_outputs != names:
            fail(f"{model}: metadata {meta} is not the whole model's "
                 f"({[i.name for i in session.get_inputs()]} -> {names})")
        result = client.infer(model, inputs())
        worst = check(model, result)
        parameters = result.get_response().get("parameters", {})
        as_json = [httpclient.InferRequestedOutput(n, binary_data=False) for n in names]
        worst = max(worst, check(f"{model} (JSON outputs)", client.infer(model, inputs(), outputs=as_json)))
        worst = max(worst, check(f"{model} (gRPC)", grpc.infer(model, inputs(grpcclient))))
        pending = [client.async_infer(model, inputs()) for _ in range(16)]
        for p in pending:
            worst = max(worst, check(model, p.get_result()))
        print(json.dumps({"model": model, "max_abs_error": worst, "parameters": parameters}))
    client.close()
    grpc.close()


if __name__ == "__main__":
    main()
