#!/usr/bin/env python3
"""Helper of the webaccel-onnx tests: checks stage models with onnx and onnxruntime.

    run_stages.py infer IN.onnx OUT.onnx
        strict onnx shape inference: OUT gets every intermediate tensor's type and
        shape in graph.value_info (what sharding needs)

    run_stages.py run WHOLE.onnx REFERENCE.json STAGE0.onnx [STAGE1.onnx ...]
        runs WHOLE and then the stages one after another with onnxruntime (CPU) on the
        inputs of REFERENCE.json (KServe v2 tensors, as make_models.py writes them).
        Stage i is fed only the original inputs it names and the outputs of stage i-1,
        as a pipeline of browsers would be. Each stage must pass onnx's full checker.
        Prints a JSON report on stdout: the largest absolute difference between the
        last stage's outputs and the whole model's, and per stage its inputs, outputs,
        initializers (names and bytes) and any initializer no node of it reads or whose
        values differ from the whole model's.

Exits non-zero, with the reason on stderr, when a stage is invalid or cannot be run.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference

DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
          "UINT8": np.uint8, "BOOL": np.bool_}


def infer(src, dst):
    onnx.save(shape_inference.infer_shapes(onnx.load(src), strict_mode=True), dst)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def load_inputs(path):
    with open(path) as f:
        ref = json.load(f)
    return {t["name"]: np.array(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in ref["inputs"]}


def run(whole_path, reference, stage_paths):
    inputs = load_inputs(reference)
    whole = onnx.load(whole_path)
    whole_out_names = [o.name for o in whole.graph.output]
    expected = dict(zip(whole_out_names, session(whole).run(whole_out_names, inputs)))
    originals = {t.name: numpy_helper.to_array(t) for t in whole.graph.initializer}

    previous = {}
    stages = []
    copies = {}
    for i, path in enumerate(stage_paths):
        stage = onnx.load(path)
        onnx.checker.check_model(stage, full_check=True)
        g = stage.graph
        feeds = {}
        for inp in g.input:
            if inp.name in previous:
                feeds[inp.name] = previous[inp.name]
            elif inp.name in inputs:
                feeds[inp.name] = inputs[inp.name]
            else:
                raise SystemExit(f"{path}: input '{inp.name}' is neither an original input "
                                 f"nor an output of stage {i - 1}")
        out_names = [o.name for o in g.output]
        previous = dict(zip(out_names, session(stage).run(out_names, feeds)))
        read = {name for node in g.node for name in node.input}
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for name in inits:
            copies[name] = copies.get(name, 0) + 1
        stages.append({
            "file": path,
            "name": g.name,
            "nodes": len(g.node),
            "inputs": [v.name for v in g.input],
            "outputs": out_names,
            "initializers": sorted(inits),
            "parameter_bytes": int(sum(a.nbytes for a in inits.values())),
            "unused_initializers": sorted(n for n in inits if n not in read),
            "changed_initializers": sorted(
                n for n, a in inits.items()
                if n not in originals or not np.array_equal(a, originals[n])),
            "ir_version": stage.ir_version,
            "opset_import": [[o.domain, o.version] for o in stage.opset_import],
        })

    missing = [n for n in whole_out_names if n not in previous]
    if missing:
        raise SystemExit(f"the last stage does not give the model's outputs {missing}")
    error = max(float(np.max(np.abs(previous[n].astype(np.float64) - expected[n].astype(np.float64))))
                for n in whole_out_names)
    report = {
        "max_abs_error": error,
        "outputs": whole_out_names,
        "whole_parameter_bytes": int(sum(a.nbytes for a in originals.values())),
        "unique_parameter_bytes": int(sum(originals[n].nbytes for n in copies if n in originals)),
        "duplicated_parameter_bytes": int(sum(originals[n].nbytes * (c - 1)
                                              for n, c in copies.items() if n in originals)),
        "duplicated_initializers": sorted(n for n, c in copies.items() if c > 1),
        "stages": stages,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "infer":
        infer(args[1], args[2])
    elif len(args) >= 4 and args[0] == "run":
        run(args[1], args[2], args[3:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
