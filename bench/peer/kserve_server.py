#!/usr/bin/env python3
"""KServe's own Python model server (PyPI `kserve`) serving ONNX files with native
onnxruntime: the peer `webaccel-agent-bench tail` compares an agent against.

Usage: kserve_server.py --http-port P --model NAME=PATH [--model ...] [--threads N]

Each model is a `kserve.Model` whose `predict` runs an onnxruntime CPU session (with
`--threads` intra-op threads, as many as the agent's page has) and answers in the Open
Inference Protocol (binary tensor data when the client asks for it, as tritonclient
does). Its per-request latency log is off: the comparison is with KServe at its best,
not with its logging. Prints "ready" once the models are loaded.
"""

import argparse
import logging
import sys

import numpy as np
import onnxruntime as ort

# kserve's model_server parses sys.argv when imported: hand it only our own arguments
# after parsing them.
parser = argparse.ArgumentParser()
parser.add_argument("--http-port", type=int, required=True)
parser.add_argument("--model", action="append", required=True, help="NAME=PATH")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
sys.argv = sys.argv[:1]

import kserve  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from kserve.utils.numpy_codec import from_np_dtype  # noqa: E402


class OnnxModel(Model):
    def __init__(self, name, path, threads):
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.session = None

    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        outputs = []
        for name, value in zip(self.output_names, results):
            value = np.ascontiguousarray(value)
            out = InferOutput(name=name, shape=list(value.shape), datatype=from_np_dtype(value.dtype))
            out.set_data_from_numpy(value, binary_data=payload.use_binary_outputs)
            outputs.append(out)
        return InferResponse(
            model_name=self.name,
            infer_outputs=outputs,
            response_id=payload.id,
            use_binary_outputs=payload.use_binary_outputs,
        )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    kserve.logging.logger.setLevel(logging.WARNING)
    models = []
    for spec in args.model:
        name, path = spec.split("=", 1)
        m = OnnxModel(name, path, args.threads)
        m.load()
        models.append(m)
    print("ready", flush=True)
    ModelServer(
        http_port=args.http_port,
        enable_grpc=False,
        enable_latency_logging=False,
        workers=1,
    ).start(models)
