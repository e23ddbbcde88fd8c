// @ts-check
// Runs an ensemble (api/src/agent/ensemble.rs): its steps back to back in this
// onnxruntime-web instance, each step's outputs kept where the step left them (typed
// arrays for wasm, GPU buffers for webgpu sessions, which return their outputs on the
// GPU) and handed to the next step as they are. Only the ensemble's outputs are read
// back; every intermediate tensor is disposed when the request ends.

import { datatypeOf, ortType } from './frame.js';

// The tensor `value` as an input of a session made by the build `ort`: a request tensor
// ({datatype, shape, data}) becomes a Tensor; a Tensor of another build (a wasm step
// feeding a webgpu step) is read back and made again; a Tensor of the same build is
// passed as it is, on the GPU if it is there.
async function asInput(ort, value) {
  if (!(value instanceof Object) || !('dims' in value)) {
    return new ort.Tensor(ortType(value.datatype), value.data, value.shape);
  }
  if (value instanceof ort.Tensor) return value;
  const data = value.location === 'cpu' ? value.data : await value.getData();
  return new ort.Tensor(value.type, data, value.dims);
}

// A result tensor as a response tensor ({name, datatype, shape, data}).
export async function readBack(name, tensor) {
  const data = tensor.location === 'cpu' ? tensor.data : await tensor.getData();
  return { name, datatype: datatypeOf(tensor.type), shape: tensor.dims.map(Number), data };
}

// Frees a result tensor that lives outside the JavaScript heap (a GPU buffer).
export function release(tensor) {
  if (tensor?.location && tensor.location !== 'cpu') tensor.dispose();
}

// Runs `ensemble` ({steps: [{model, input_map, output_map}], outputs}) on the request's
// tensors; `sessions` maps model names to {session, ort}. Returns the output tensors
// named in `wanted` (all of the ensemble's outputs when empty).
export async function runEnsemble(ensemble, sessions, tensors, wanted) {
  const env = new Map(tensors.map((t) => [t.name, t]));
  const made = [];
  try {
    for (const step of ensemble.steps) {
      const entry = sessions.get(step.model);
      if (!entry?.session) throw new Error(`ensemble step model '${step.model}' is not loaded in this page`);
      const feeds = {};
      for (const [input, tensor] of Object.entries(step.input_map)) {
        if (!env.has(tensor)) throw new Error(`ensemble tensor '${tensor}' is missing for step '${step.model}'`);
        feeds[input] = await asInput(entry.ort, env.get(tensor));
      }
      const results = await entry.session.run(feeds);
      for (const [output, result] of Object.entries(results)) {
        made.push(result);
        const tensor = step.output_map[output];
        if (tensor !== undefined) env.set(tensor, result);
      }
    }
    const names = wanted?.length ? wanted : ensemble.outputs;
    return await Promise.all(names.map((name) => {
      if (!env.has(name)) throw new Error(`ensemble output '${name}' was not produced`);
      return readBack(name, env.get(name));
    }));
  } finally {
    made.forEach(release);
  }
}
