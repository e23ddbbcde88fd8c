// webaccel's in-page runtime: holds onnxruntime-web sessions and serves the agent over a
// loopback WebSocket. Tensors arrive and leave as binary frames (frame.js); control
// messages (load, unload, ping) are JSON text. The agent supervises this page through
// the pings: a page that stops answering is declared hung and restarted.

// Two builds of onnxruntime-web: wasm sessions run on the plain WebAssembly build, which
// lacks the asyncify/JSEP machinery the WebGPU and WebNN build carries into every kernel
// call; that build is imported only when a model asks for webgpu or webnn. Each build is
// its own module instance (own env, own wasm memory, own Tensor class), so a session's
// tensors are made with the build that made the session.
import * as ortWasm from './ort/ort.wasm.min.mjs';
import { detectAll } from './capabilities.js';
import {
  KIND_ERROR, KIND_REQUEST, KIND_RESPONSE, datatypeOf, decodeFrame, encodeFrame, ortType,
} from './frame.js';

const params = new URLSearchParams(location.search);
// See ECHO_MODEL in crds/src/wire.rs.
const ECHO_MODEL = '__echo__';
const threads = Number(params.get('threads') || 0);
function configure(ort) {
  ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
  if (threads > 0) ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'warning';
  return ort;
}
configure(ortWasm);
let ortAllLoading = null;
// The build that runs `backend`.
// `build=all` (the agent's --wasm-build all) puts wasm sessions on the WebGPU build too,
// to compare the two.
function ortFor(backend) {
  if (backend === 'wasm' && params.get('build') !== 'all') return Promise.resolve(ortWasm);
  ortAllLoading ??= import('./ort/ort.all.min.mjs').then(configure);
  return ortAllLoading;
}

// name -> {session, ort (the build that made it), backend, key, result}
const sessions = new Map();

// onnxruntime-web allows one asynchronous operation (create, run, release) at a time in
// the whole page, across all sessions: a second one throws "Session already started".
// Every ORT call goes through this queue.
let ortQueue = Promise.resolve();
function exclusive(fn) {
  const p = ortQueue.then(fn);
  ortQueue = p.catch(() => {});
  return p;
}
let capabilities = null;
const ws = new WebSocket(`ws://${location.host}/page/ws?s=${encodeURIComponent(params.get('s'))}`);
ws.binaryType = 'arraybuffer';

const send = (obj) => ws.send(JSON.stringify(obj));

// A one-node model (Identity over one float), serialised by onnx.helper (opset 17,
// IR 8). Running it before saying hello compiles and starts onnxruntime's wasm, the
// slowest part of a page's start, before the agent begins to watch the heartbeat.
const IDENTITY_MODEL = new Uint8Array([
  8, 8, 18, 0, 58, 58, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121,
  18, 4, 119, 97, 114, 109, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10,
  1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0, 16, 17,
]);

async function startRuntime() {
  const t0 = performance.now();
  const ort = ortWasm;
  const session = await exclusive(() => ort.InferenceSession.create(IDENTITY_MODEL, { executionProviders: ['wasm'] }));
  const out = await exclusive(() => session.run({ x: new ort.Tensor('float32', new Float32Array([2]), [1]) }));
  await exclusive(() => session.release());
  if (out.y.data[0] !== 2) throw new Error('onnxruntime-web self-check failed');
  return performance.now() - t0;
}

ws.onopen = async () => {
  let runtimeError = null;
  const [caps, runtimeMs] = await Promise.all([
    detectAll(),
    startRuntime().catch((e) => { runtimeError = String(e?.message ?? e); return null; }),
  ]);
  capabilities = caps;
  capabilities.ort_version = ortWasm.env.versions?.web || null;
  capabilities.runtime = { start_ms: runtimeMs, error: runtimeError };
  send({ op: 'hello', capabilities });
};
ws.onclose = () => { document.title = 'webaccel: disconnected'; };

ws.onmessage = (ev) => {
  if (typeof ev.data === 'string') {
    handleControl(JSON.parse(ev.data));
  } else {
    handleFrame(ev.data);
  }
};

async function handleControl(msg) {
  if (msg.op === 'ping') {
    send({ op: 'pong' });
    return;
  }
  try {
    let value;
    if (msg.op === 'load') value = await load(msg);
    else if (msg.op === 'unload') value = await unload(msg.name);
    else if (msg.op === 'retain') value = await retain(msg.names);
    else throw new Error(`unknown op '${msg.op}'`);
    send({ op: 'result', req: msg.req, ok: true, value });
  } catch (e) {
    send({ op: 'result', req: msg.req, ok: false, error: String(e?.message ?? e) });
  }
}

// ---- GPU loss ------------------------------------------------------------------------

// When Chromium's GPU process dies, the WebGPU device onnxruntime-web holds is lost for
// good: every WebGPU session in this page is dead. The agent is told, so it replaces the
// browser, and requests that fail on the lost device are answered as retryable.
let gpuLost = null;
let gpuWatched = false;
function watchGpuDevice(ort) {
  if (gpuWatched) return;
  gpuWatched = true;
  Promise.resolve(ort.env.webgpu.device).then((device) => device?.lost?.then((info) => {
    gpuLost = `${info?.reason ?? 'unknown'}: ${info?.message || 'the WebGPU device was lost'}`;
    send({ op: 'gpu_lost', message: gpuLost });
  })).catch(() => {});
}

// Whether a failed run was caused by losing the GPU (which may be reported a moment
// after the run fails).
async function failedForGpuLoss(entry) {
  if (entry.backend !== 'webgpu') return false;
  for (let i = 0; i < 10 && !gpuLost; i++) await new Promise((r) => setTimeout(r, 10));
  return gpuLost !== null;
}

// ---- loading -------------------------------------------------------------------------

function refusal(backend, webnnDevice) {
  if (backend === 'webgpu' && !capabilities.webgpu.available) {
    return `backend webgpu is unavailable: ${capabilities.webgpu.reason}`;
  }
  if (backend === 'webnn') {
    const d = capabilities.webnn[webnnDevice];
    if (!d?.available) return `backend webnn (${webnnDevice}) is unavailable: ${d?.reason ?? 'unknown device type'}`;
  }
  return null;
}

function sessionOptions(backend, webnnDevice) {
  const ep = backend === 'webnn' ? { name: 'webnn', deviceType: webnnDevice } : backend;
  return {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    // Without this onnxruntime silently places nodes the chosen provider cannot run on
    // its CPU provider; webaccel reports one backend per model, so a model that does not
    // fit the provider whole is refused instead.
    extra: backend === 'wasm' ? {} : { session: { disable_cpu_ep_fallback: '1' } },
  };
}

function metadata(list) {
  return list.map((m) => ({
    name: m.name,
    datatype: m.isTensor ? datatypeOf(m.type) ?? null : null,
    ort_type: m.isTensor ? m.type : 'non-tensor',
    shape: m.isTensor ? m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : -1)) : [],
  }));
}

// Zero-filled inputs shaped like the model's (symbolic dims as 1), for warm-up and the
// auto measurement.
function syntheticFeeds(ort, session) {
  const feeds = {};
  for (const m of session.inputMetadata) {
    if (!m.isTensor) throw new Error(`input '${m.name}' is not a tensor; cannot warm up`);
    const dims = m.shape.map((d) => (typeof d === 'number' && d > 0 ? d : 1));
    const count = dims.reduce((a, b) => a * b, 1);
    const dt = datatypeOf(m.type);
    if (!dt) throw new Error(`input '${m.name}' has type ${m.type}, which webaccel cannot synthesise`);
    const data = new (typedArrayFor(m.type))(count);
    feeds[m.name] = new ort.Tensor(m.type, data, dims);
  }
  return feeds;
}

function typedArrayFor(ortName) {
  return {
    bool: Uint8Array, uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array,
    float16: Uint16Array, uint32: Uint32Array, int32: Int32Array, float32: Float32Array,
    float64: Float64Array, int64: BigInt64Array, uint64: BigUint64Array,
  }[ortName];
}

async function timed(fn) {
  const t0 = performance.now();
  const value = await fn();
  return [value, performance.now() - t0];
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// Creates a session on one backend and measures it: creation, first run, steady runs.
async function tryBackend(bytes, backend, webnnDevice, warmup, runs) {
  const why = refusal(backend, webnnDevice);
  if (why) throw new Error(why);
  const ort = await ortFor(backend);
  const [session, createMs] = await timed(() => exclusive(() => ort.InferenceSession.create(bytes, sessionOptions(backend, webnnDevice))));
  if (backend === 'webgpu') watchGpuDevice(ort);
  const result = { session, ort, backend, create_ms: createMs, warmup_ms: null, steady_ms: null };
  if (!warmup) return result;
  try {
    const feeds = syntheticFeeds(ort, session);
    result.warmup_ms = await exclusive(async () => (await timed(() => session.run(feeds)))[1]);
    const times = [];
    for (let i = 0; i < runs; i++) times.push(await exclusive(async () => (await timed(() => session.run(feeds)))[1]));
    result.steady_ms = median(times);
  } catch (e) {
    await exclusive(() => session.release());
    throw e;
  }
  return result;
}

async function load(msg) {
  const { name, url, backend, webnn_device: webnnDevice = 'cpu', warmup = true } = msg;
  // A standby page preloads the serving models; when it takes over, the same load
  // finds the session ready.
  const key = JSON.stringify([url.split('?')[0], backend, webnnDevice, warmup]);
  const existing = sessions.get(name);
  if (existing?.key === key) return existing.result;
  const [bytes, fetchMs] = await timed(async () => {
    const resp = await fetch(url);
    if (!resp.ok) throw new Error(`fetching the model from the agent failed: HTTP ${resp.status}`);
    return new Uint8Array(await resp.arrayBuffer());
  });
  let chosen;
  let candidates = null;
  if (backend === 'auto') {
    candidates = [];
    const order = [['webgpu', 'cpu'], ...['gpu', 'npu', 'cpu'].map((d) => ['webnn', d]), ['wasm', 'cpu']];
    for (const [b, d] of order) {
      const label = b === 'webnn' ? `webnn:${d}` : b;
      const why = refusal(b, d);
      if (why) {
        candidates.push({ backend: label, ok: false, error: why });
        continue;
      }
      try {
        const r = await tryBackend(bytes, b, d, true, 5);
        candidates.push({ backend: label, ok: true, create_ms: r.create_ms, warmup_ms: r.warmup_ms, steady_ms: r.steady_ms });
        if (!chosen || r.steady_ms < chosen.steady_ms) {
          if (chosen) await exclusive(() => chosen.session.release());
          chosen = { ...r, label };
        } else {
          await exclusive(() => r.session.release());
        }
      } catch (e) {
        candidates.push({ backend: label, ok: false, error: String(e?.message ?? e) });
      }
    }
    if (!chosen) throw new Error(`no backend could run the model: ${JSON.stringify(candidates)}`);
  } else {
    const r = await tryBackend(bytes, backend, webnnDevice, warmup, 3);
    chosen = { ...r, label: backend === 'webnn' ? `webnn:${webnnDevice}` : backend };
  }
  const result = {
    backend: chosen.label,
    fetch_ms: fetchMs,
    create_ms: chosen.create_ms,
    warmup_ms: chosen.warmup_ms,
    steady_ms: chosen.steady_ms,
    candidates,
    inputs: metadata(chosen.session.inputMetadata),
    outputs: metadata(chosen.session.outputMetadata),
  };
  const old = sessions.get(name);
  sessions.set(name, { session: chosen.session, ort: chosen.ort, backend: chosen.label, key, result });
  if (old) exclusive(() => old.session.release());
  return result;
}

// Releases every session whose model is not in `names`.
async function retain(names) {
  const keep = new Set(names);
  const released = [];
  for (const name of [...sessions.keys()]) {
    if (!keep.has(name)) {
      await unload(name);
      released.push(name);
    }
  }
  return { released };
}

async function unload(name) {
  const entry = sessions.get(name);
  if (!entry) return { unloaded: false };
  sessions.delete(name);
  await exclusive(() => entry.session.release());
  return { unloaded: true };
}

// ---- inference -----------------------------------------------------------------------

function errorFrame(id, category, message) {
  const retryable = category === 'model_not_ready' || category === 'browser_crashed';
  return encodeFrame(KIND_ERROR, id, { category, message, retryable });
}

function handleFrame(buf) {
  const received = performance.now();
  let frame;
  try {
    frame = decodeFrame(buf);
  } catch (e) {
    send({ op: 'log', message: `dropped a malformed frame from the agent: ${e}` });
    return;
  }
  if (frame.kind !== KIND_REQUEST) return;
  const { id, header, tensors } = frame;
  if (header.model === ECHO_MODEL) {
    // The bridge's floor: decoded and encoded like a real request, but nothing runs.
    const outputs = tensors.map(({ name, datatype, shape }) => ({ name, datatype, shape }));
    ws.send(encodeFrame(KIND_RESPONSE, id, {
      model: header.model, backend: 'echo', compute_ms: 0, page_ms: performance.now() - received, outputs,
    }, tensors));
    return;
  }
  const entry = sessions.get(header.model);
  if (!entry) {
    ws.send(errorFrame(id, 'model_not_ready', `model '${header.model}' is not loaded in this page`));
    return;
  }
  exclusive(() => run(entry, id, header, tensors, received));
}

async function run(entry, id, header, tensors, received) {
  try {
    const feeds = {};
    for (const t of tensors) feeds[t.name] = new entry.ort.Tensor(ortType(t.datatype), t.data, t.shape);
    const t0 = performance.now();
    const results = header.outputs?.length
      ? await entry.session.run(feeds, header.outputs)
      : await entry.session.run(feeds);
    const computeMs = performance.now() - t0;
    const names = header.outputs?.length ? header.outputs : entry.session.outputNames;
    const outputs = names.map((name) => {
      const r = results[name];
      return { name, datatype: datatypeOf(r.type), shape: r.dims.map(Number), data: r.data };
    });
    const meta = outputs.map(({ name, datatype, shape }) => ({ name, datatype, shape }));
    const pageMs = performance.now() - received;
    ws.send(encodeFrame(KIND_RESPONSE, id, {
      model: header.model, backend: entry.backend, compute_ms: computeMs, page_ms: pageMs, outputs: meta,
    }, outputs));
  } catch (e) {
    const message = String(e?.message ?? e);
    if (await failedForGpuLoss(entry)) {
      ws.send(errorFrame(id, 'browser_crashed', `the GPU device was lost (${gpuLost}): ${message}`));
    } else {
      ws.send(errorFrame(id, 'inference_failed', message));
    }
  }
}
