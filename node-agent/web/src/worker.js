// A page worker: one onnxruntime-web instance in a dedicated Web Worker, so requests of
// the page run on several wasm instances at once. The page's main thread (runtime.js)
// keeps the WebSocket and sends each worker calls `{seq, op, ...}`; every call gets one
// reply `{seq, ok, value | error}`. Request frames arrive and leave as transferred
// ArrayBuffers, so tensors are not copied between the threads.

import { createSessions } from './sessions.js';

let runtime = null;

const ops = {
  init({ threads, build, capabilities }) {
    runtime = createSessions({
      threads, build, capabilities,
      onGpuLost: (message) => postMessage({ event: 'gpu_lost', message }),
    });
    return runtime.start();
  },
  load: ({ msg, bytes }) => runtime.load(msg, bytes),
  unload: ({ name }) => runtime.unload(name),
  retain: ({ names }) => runtime.retain(names),
  ensemble: ({ msg }) => runtime.ensemble(msg),
  infer: ({ buf, received }) => runtime.infer(buf, received),
  ping: () => null,
  // Fault injection (the agent's debug endpoint): a busy loop that never yields, as a
  // runaway kernel would.
  hang: () => { for (;;) { /* spin */ } },
};

onmessage = async ({ data }) => {
  const { seq, op } = data;
  try {
    const value = await ops[op](data);
    postMessage({ seq, ok: true, value }, value instanceof ArrayBuffer ? [value] : []);
  } catch (e) {
    postMessage({ seq, ok: false, error: String(e?.message ?? e) });
  }
};
