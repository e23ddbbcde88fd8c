#!/usr/bin/env python3
"""Drives a KServe v2 gRPC endpoint (a webaccel agent or gateway) with the stock
`tritonclient.grpc` from PyPI, at its default settings, and checks every answer against
native onnxruntime run on the same model file (never against webaccel itself).

Usage: triton_grpc.py HOST:PORT MODELS_DIR [--token T] [--prefix P]

The endpoint must serve the fixture models as <prefix>mlp, <prefix>cnn,
<prefix>transformer and <prefix>types (wasm backend). Exits non-zero with the reason on
the first mismatch.

tritonclient.grpc sends every input in `raw_input_contents` and reads
`raw_output_contents`; the typed `contents` form, which it has no helper for, is sent
through the same package's generated stub (`service_pb2_grpc`) on its own channel.
"""

import argparse
import json
import os
import sys

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ATOL, RTOL = 1e-5, 1e-4

NUMPY = {
    "FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
    "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
    "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
}
DATATYPE = {np.dtype(v): k for k, v in NUMPY.items()}
# The typed field of InferTensorContents each datatype's elements go in.
TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def reference(models_dir, model, feeds):
    session = ort.InferenceSession(
        os.path.join(models_dir, f"{model}.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def fixture(models_dir, model):
    with open(os.path.join(models_dir, f"{model}.json")) as f:
        return json.load(f)


def fixture_inputs(models_dir, model):
    """The fixture's stored request inputs, as numpy arrays."""
    return {
        i["name"]: np.array(i["data"], dtype=NUMPY[i["datatype"]]).reshape(i["shape"])
        for i in fixture(models_dir, model)["inputs"]
    }


def infer_input(name, array):
    i = grpcclient.InferInput(name, list(array.shape), DATATYPE[array.dtype])
    i.set_data_from_numpy(array)  # the client's only way: raw_input_contents
    return i


def compare(label, name, got, want):
    if got.shape != want.shape or got.dtype != want.dtype:
        sys.exit(f"{label}/{name}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}")
    if want.dtype.kind in "fc":
        if not np.allclose(got.astype(np.float64), want.astype(np.float64), atol=ATOL, rtol=RTOL):
            err = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))
            sys.exit(f"{label}/{name}: max abs error {err}")
    elif not np.array_equal(got, want):
        sys.exit(f"{label}/{name}: {got} != {want}")


def check(label, result, expected):
    response = result.get_response()
    if len(response.outputs) != len(expected):
        sys.exit(f"{label}: {len(response.outputs)} outputs, want {len(expected)}")
    if len(response.raw_output_contents) != len(expected):
        sys.exit(f"{label}: raw inputs must be answered with raw_output_contents")
    for name, want in expected.items():
        got = result.as_numpy(name)
        if got is None:
            sys.exit(f"{label}: output {name} missing")
        compare(label, name, got, want)
    backend = response.parameters["backend"].string_param
    if backend != "wasm":
        sys.exit(f"{label}: backend parameter {backend!r}, want 'wasm'")
    print(f"ok {label}: {', '.join(sorted(expected))}")


def expect_error(label, call, status, text):
    try:
        call()
    except InferenceServerException as e:
        if e.status() != f"StatusCode.{status}" or text not in e.message():
            sys.exit(f"{label}: status {e.status()}, message {e.message()!r}")
        print(f"ok {label}: {e.status()} {e.message()}")
        return
    sys.exit(f"{label}: succeeded, want {status}")


def typed_infer(stub, name, feeds, metadata):
    """The typed `contents` form both ways, through the generated stub."""
    request = service_pb2.ModelInferRequest(model_name=name, id="typed-1")
    for key, array in feeds.items():
        datatype = DATATYPE[array.dtype]
        tensor = request.inputs.add(name=key, datatype=datatype, shape=list(array.shape))
        getattr(tensor.contents, TYPED_FIELD[datatype]).extend(array.flatten().tolist())
    response = stub.ModelInfer(request, metadata=metadata, timeout=60)
    if response.raw_output_contents:
        sys.exit(f"{name} typed: typed inputs must be answered with typed contents")
    if response.id != "typed-1":
        sys.exit(f"{name} typed: response id {response.id!r}")
    outputs = {}
    for out in response.outputs:
        dtype = NUMPY[out.datatype]
        values = getattr(out.contents, TYPED_FIELD[out.datatype])
        outputs[out.name] = np.array(list(values), dtype=dtype).reshape(list(out.shape))
    return outputs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("models_dir")
    ap.add_argument("--token")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    url = args.url.removeprefix("grpc://").removeprefix("http://")
    # gRPC metadata keys are lower case.
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}

    client = grpcclient.InferenceServerClient(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))

    # The probes need no credentials.
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    meta = client.get_server_metadata(headers=headers)
    assert meta.name and meta.version, meta
    print(f"ok server metadata: {meta.name} {meta.version}")

    for model in ["mlp", "cnn", "transformer", "types"]:
        name = args.prefix + model
        assert client.is_model_ready(name, headers=headers), f"{name} not ready"
        assert client.is_model_ready(name, model_version="1", headers=headers)
        feeds = fixture_inputs(args.models_dir, model)
        expected = reference(args.models_dir, model, feeds)
        inputs = [infer_input(k, v) for k, v in feeds.items()]

        # 1. Defaults: raw inputs, no outputs listed.
        check(f"{model} defaults", client.infer(name, inputs, headers=headers), expected)
        # 2. Outputs listed, a request id, the protocol's timeout parameter (µs) and a
        #    client deadline (grpc-timeout), all at once.
        outputs = [grpcclient.InferRequestedOutput(o) for o in expected]
        result = client.infer(
            name, inputs, outputs=outputs, request_id=f"{model}-7", timeout=30_000_000,
            client_timeout=30.0, headers=headers,
        )
        check(f"{model} outputs listed", result, expected)
        assert result.get_response().id == f"{model}-7", result.get_response().id
        assert result.get_response().model_name == name
        # 3. Typed contents both ways (FP16 has no typed field: raw only).
        if all(a.dtype != np.float16 for a in feeds.values()):
            got = typed_infer(stub, name, feeds, list(headers.items()))
            for o, want in expected.items():
                compare(f"{model} typed", o, got[o], want)
            print(f"ok {model} typed: {', '.join(sorted(got))}")

        # Model metadata: names, datatypes and ranks of what the fixture sends.
        meta = client.get_model_metadata(name, headers=headers)
        assert list(meta.versions) == ["1"], meta
        stored = fixture(args.models_dir, model)
        for kind, tensors in [("inputs", meta.inputs), ("outputs", meta.outputs)]:
            want = {t["name"]: (t["datatype"], len(t["shape"])) for t in stored[kind]}
            got = {t.name: (t.datatype, len(t.shape)) for t in tensors}
            assert got == want, f"{model} {kind}: {got} != {want}"
        print(f"ok {model} metadata")

    # 4. A subset of the outputs, FP16 among them, raw.
    feeds = fixture_inputs(args.models_dir, "types")
    expected = reference(args.models_dir, "types", feeds)
    subset = {k: expected[k] for k in ["f16_out", "u8_as_f32"]}
    result = client.infer(
        args.prefix + "types", [infer_input(k, v) for k, v in feeds.items()],
        outputs=[grpcclient.InferRequestedOutput(o) for o in subset], headers=headers,
    )
    check("types subset", result, subset)

    # 5. Refusals, each with its code.
    mlp = args.prefix + "mlp"
    mlp_inputs = [infer_input(k, v) for k, v in fixture_inputs(args.models_dir, "mlp").items()]
    expect_error("unknown model", lambda: client.infer(args.prefix + "nope", mlp_inputs, headers=headers),
                 "NOT_FOUND", "nope")
    expect_error("unknown model metadata",
                 lambda: client.get_model_metadata(args.prefix + "nope", headers=headers),
                 "NOT_FOUND", "nope")
    s = grpcclient.InferInput("x", [1], "BYTES")
    s.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
    expect_error("BYTES refused", lambda: client.infer(mlp, [s], headers=headers),
                 "INVALID_ARGUMENT", "BYTES")
    typed_fp16 = service_pb2.ModelInferRequest(model_name=args.prefix + "types")
    typed_fp16.inputs.add(name="f16", datatype="FP16", shape=[2]).contents.fp32_contents.extend([1, 2])
    try:
        stub.ModelInfer(typed_fp16, metadata=list(headers.items()), timeout=30)
        sys.exit("a typed FP16 input was accepted")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT or "FP16" not in e.details():
            sys.exit(f"typed FP16: {e.code()} {e.details()}")
        print(f"ok typed FP16 refused: {e.details()}")
    if args.token:
        wrong = {"authorization": "Bearer not-the-token"}
        expect_error("wrong token", lambda: client.infer(mlp, mlp_inputs, headers=wrong),
                     "UNAUTHENTICATED", "bearer token")
        expect_error("no token", lambda: client.get_model_metadata(mlp),
                     "UNAUTHENTICATED", "bearer token")
        try:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name=mlp), timeout=30)
            sys.exit("a call without a token was accepted")
        except grpc.RpcError as e:
            md = dict(e.trailing_metadata() or ())
            if md.get("webaccel-category") != "unauthorized" or md.get("webaccel-retryable") != "false":
                sys.exit(f"no token: metadata {md}")
            print(f"ok no token metadata: {md['webaccel-category']}")


if __name__ == "__main__":
    main()
