// @ts-check
// A page worker: one onnxruntime-web instance in a dedicated Web Worker, so requests of
// the page run on several wasm instances at once. The page's main thread (runtime.js)
// keeps the WebSocket and sends each worker calls `{seq, op, ...}` (op: protocol.js's
// Op); every call gets one reply `{seq, ok, value | error}`. Request frames arrive and
// leave as transferred ArrayBuffers, so tensors are not copied between the threads.

import { Op, callFor, runtimeCalls } from './protocol.js';
import { createSessions } from './sessions.js';

/** @type {import('./protocol.js').Runtime | null} */
let runtime = null;

// This module runs as a dedicated worker; the DOM typings it is checked with describe
// a window, whose postMessage takes a target origin.
const post = /** @type {(message: any, transfer?: Transferable[]) => void} */ (
  /** @type {unknown} */ (globalThis.postMessage.bind(globalThis))
);

const calls = runtimeCalls(() => /** @type {import('./protocol.js').Runtime} */ (runtime));
calls.set(Op.init, ({ threads, build, capabilities }) => {
  runtime = createSessions({
    threads, build, capabilities,
    onGpuLost: (message) => post({ event: Op.gpuLost, message }),
    onTokens: (step) => post({ event: Op.tokens, step }),
  });
  return runtime.start();
});
calls.set(Op.ping, () => null);
// Fault injection (the agent's debug endpoint): a busy loop that never yields, as a
// runaway kernel would.
calls.set(Op.hang, () => { for (;;) { /* spin */ } });

onmessage = async ({ data }) => {
  const { seq, op } = data;
  try {
    const value = await callFor(calls, op)(data);
    post({ seq, ok: true, value }, value instanceof ArrayBuffer ? [value] : []);
  } catch (e) {
    post({ seq, ok: false, error: String(e?.message ?? e) });
  }
};
