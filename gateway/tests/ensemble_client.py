#!/usr/bin/env python3
"""Calls an ensemble through a KServe v2 endpoint with the stock tritonclient (HTTP with
its default binary tensors, and gRPC), and checks the answers and the metadata against
native onnxruntime running the ensemble's two models one after the other
(`ensemble.json` of make_ensemble.py).

Usage: ensemble_client.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL ENSEMBLE_JSON
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_url, grpc_url, model, reference = sys.argv[1:5]
http_url = http_url.removeprefix("http://")
with open(reference) as f:
    ref = json.load(f)
x = np.array(ref["inputs"][0]["data"], dtype=np.float32).reshape(ref["inputs"][0]["shape"])
y = np.array(ref["outputs"][0]["data"], dtype=np.float32).reshape(ref["outputs"][0]["shape"])


def check(label, got):
    err = float(np.max(np.abs(got - y)))
    if got.shape != y.shape or err > 1e-5:
        sys.exit(f"{label}: shape {got.shape}, max error {err}")
    print(f"ok {label} max error {err:.2e}")


http = httpclient.InferenceServerClient(http_url)
meta = http.get_model_metadata(model)
if [i["name"] for i in meta["inputs"]] != ["INPUT"] or [o["name"] for o in meta["outputs"]] != ["OUTPUT"]:
    sys.exit(f"metadata: {meta}")
print("ok http metadata")
inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
inp.set_data_from_numpy(x)  # binary, tritonclient's default
check("http binary", http.infer(model, [inp]).as_numpy("OUTPUT"))

grpc = grpcclient.InferenceServerClient(grpc_url)
meta = grpc.get_model_metadata(model)
if [i.name for i in meta.inputs] != ["INPUT"]:
    sys.exit(f"grpc metadata: {meta}")
ginp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
ginp.set_data_from_numpy(x)
check("grpc", grpc.infer(model, [ginp]).as_numpy("OUTPUT"))
