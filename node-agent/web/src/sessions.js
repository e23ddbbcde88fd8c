// @ts-check
// One onnxruntime-web instance and the sessions it holds: loads models, runs request
// frames, releases sessions. The page's main thread uses one of these directly when it
// runs a single worker; with page workers each Web Worker (worker.js) holds its own, so
// several requests compute at once, each on its own wasm instance and threads.

// The agent serves onnxruntime-web's dist/ folder as ./ort/ (http/page.rs); its types are
// the package's.
// @ts-ignore: resolved by the agent's routes, not on disk under src/
import * as ortWasmModule from './ort/ort.wasm.min.mjs';
import { now } from './clock.js';
import { readBack, release, runEnsemble } from './ensemble.js';
import { datatypeOf, decodeFrame, errorFrame, ortType, responseFrame } from './frame.js';
import { cacheNames, crossNames } from './generation/cross.js';
import { createDecoder } from './generation/decoder.js';
import { relayoutOnGpu } from './generation/kv.js';

/** @typedef {typeof import('onnxruntime-web')} Ort */
/** @typedef {import('./protocol.js').LoadCommand} LoadCommand */
/** @typedef {import('./protocol.js').EnsembleCommand} EnsembleCommand */
/** @typedef {import('./protocol.js').SessionLoad} SessionLoad */
/** @typedef {import('./protocol.js').BackendCandidate} BackendCandidate */
/** @typedef {import('./protocol.js').Runtime} Runtime */
/** @typedef {import('./protocol.js').ExternalData} ExternalData */
/** @typedef {import('./generation/decoder.js').GenerationConfig} GenerationConfig */

const ortWasm = /** @type {Ort} */ (ortWasmModule);

// A one-node model (Identity over one float), serialised by onnx.helper (opset 17,
// IR 8). Running it before serving compiles and starts onnxruntime's wasm, the slowest
// part of a start, before the agent begins to watch the heartbeat.
const IDENTITY_MODEL = new Uint8Array([
  8, 8, 18, 0, 58, 58, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121,
  18, 4, 119, 97, 114, 109, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10,
  1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0, 16, 17,
]);

// onnxruntime's wasm binds the console's functions when it starts, so a tap to capture
// its log (node placements, see `unplacedNodes`) has to be in place before that.
let consoleCapture = null;
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    if (consoleCapture) consoleCapture.push(args.join(' '));
    else original(...args);
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timed(fn) {
  const t0 = performance.now();
  const value = await fn();
  return [value, performance.now() - t0];
}

function typedArrayFor(ortName) {
  return {
    bool: Uint8Array, uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array,
    float16: Uint16Array, uint32: Uint32Array, int32: Int32Array, float32: Float32Array,
    float64: Float64Array, int64: BigInt64Array, uint64: BigUint64Array,
  }[ortName];
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
// auto measurement. A decoder gets a short prompt with an empty cache instead (its mask
// must cover past and new positions).
function syntheticFeeds(ort, session, generation) {
  if (generation) return prefillFeeds(ort, generation.layout, 4, session);
  const feeds = {};
  for (const m of session.inputMetadata) {
    if (!m.isTensor) throw new Error(`input '${m.name}' is not a tensor; cannot warm up`);
    const dims = m.shape.map((d) => (typeof d === 'number' && d > 0 ? d : 1));
    const count = dims.reduce((a, b) => a * b, 1);
    if (!datatypeOf(m.type)) throw new Error(`input '${m.name}' has type ${m.type}, which webaccel cannot synthesise`);
    feeds[m.name] = new ort.Tensor(m.type, new (typedArrayFor(m.type))(count), dims);
  }
  return feeds;
}

// A prefill of `n` tokens (ids 0..n-1) with an empty cache, as a decoder's warm-up; an
// encoder-decoder's cross-attention inputs zero, as long as the graph fixes them (else 1).
function prefillFeeds(ort, layout, n, session) {
  const Ids = layout.ids_type === 'int32' ? Int32Array : BigInt64Array;
  const seq = (/** @type {(i: number) => number} */ f) => (Ids === Int32Array
    ? Int32Array.from({ length: n }, (_, i) => f(i))
    : BigInt64Array.from({ length: n }, (_, i) => BigInt(f(i))));
  const feeds = {
    input_ids: new ort.Tensor(layout.ids_type, seq((i) => i), [1, n]),
    attention_mask: new ort.Tensor(layout.ids_type, seq(() => 1), [1, n]),
  };
  if (layout.position_ids) feeds.position_ids = new ort.Tensor(layout.ids_type, seq((i) => i), [1, n]);
  for (const { past } of cacheNames(layout)) {
    feeds[past] = new ort.Tensor('float32', new Float32Array(0), [1, layout.kv_heads, 0, layout.head_dim]);
  }
  for (const { input } of crossNames(layout)) {
    const shape = session.inputMetadata.find((/** @type {any} */ m) => m.name === input)?.shape ?? [];
    const dims = [1, layout.kv_heads, 1, layout.head_dim].map((d, i) => (i > 0 && typeof shape[i] === 'number' && shape[i] > 0 ? shape[i] : d));
    feeds[input] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  }
  return feeds;
}

/**
 * @param {string} backend
 * @param {string} webnnDevice
 * @param {{external?: ExternalData[], generation?: GenerationConfig}} [model] the
 * model's external data files, and how it generates if it does
 */
function sessionOptions(backend, webnnDevice, { external = [], generation } = {}) {
  const ep = backend === 'webnn' ? { name: 'webnn', deviceType: webnnDevice } : backend;
  // WebGPU outputs stay in GPU buffers: an ensemble's next step reads them there, and
  // only what a response needs is read back (ensemble.js). A decoder's cache stays
  // there between steps; its logits come back every step, so they are read back at once.
  let location = {};
  if (backend === 'webgpu') {
    location = { preferredOutputLocation: 'gpu-buffer' };
    if (generation) {
      const outputs = { logits: 'cpu' };
      for (const { present } of cacheNames(generation.layout)) outputs[present] = 'gpu-buffer';
      location = { preferredOutputLocation: outputs };
    }
  }
  return {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    ...location,
    ...(external.length ? { externalData: external } : {}),
    // Without this onnxruntime silently places nodes the chosen provider cannot run on
    // its CPU provider; webaccel reports one backend per model, so a model that does not
    // fit the provider whole is refused instead. A decoder on WebGPU is let through and
    // checked node by node after (shapeOnlyOnCpu): its attention-mask and position
    // arithmetic is int64 shape work that onnxruntime keeps on the CPU by design.
    extra: backend === 'wasm' || (backend === 'webgpu' && generation)
      ? {} : { session: { disable_cpu_ep_fallback: '1' } },
  };
}

// Operators onnxruntime-web's WebGPU provider leaves to the CPU in a decoder when they
// only compute shapes, indices and masks (int64): cheap, and read back by design. Any
// other operator on the CPU is real compute off the GPU, and refused.
const SHAPE_OPS = new Set([
  'Shape', 'Gather', 'Range', 'Unsqueeze', 'Squeeze', 'Sub', 'Add', 'Mul', 'Div', 'Equal',
  'Less', 'LessOrEqual', 'Greater', 'GreaterOrEqual', 'Cast', 'Concat', 'Slice', 'Reshape',
  'Expand', 'ConstantOfShape', 'Where', 'And', 'Or', 'Not', 'ReduceSum', 'CumSum',
]);

// Why `backend` cannot run here, from the page's capability report, or null.
export function refusal(capabilities, backend, webnnDevice) {
  if (backend === 'webgpu' && !capabilities.webgpu.available) {
    return `backend webgpu is unavailable: ${capabilities.webgpu.reason}`;
  }
  if (backend === 'webnn') {
    const d = capabilities.webnn[webnnDevice];
    if (!d?.available) return `backend webnn (${webnnDevice}) is unavailable: ${d?.reason ?? 'unknown device type'}`;
  }
  return null;
}

// `threads`: wasm threads of this instance (0: onnxruntime-web's default). `build`:
// 'all' puts wasm sessions on the WebGPU build too (the agent's --wasm-build all).
// `capabilities`: the page's report. `onGpuLost(message)`: called once if the WebGPU
// device this instance holds is lost.
// `onTokens(step)`: called with each step of text generation (decoder.js's StepEvent).
export function createSessions({ threads, build, capabilities, onGpuLost, onTokens }) {
  function configure(ort) {
    ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
    if (threads > 0) ort.env.wasm.numThreads = threads;
    ort.env.logLevel = 'warning';
    return ort;
  }
  configure(ortWasm);
  // Two builds of onnxruntime-web: wasm sessions run on the plain WebAssembly build,
  // which lacks the asyncify/JSEP machinery the WebGPU and WebNN build carries into
  // every kernel call; that build is imported only when a model asks for webgpu or
  // webnn. Each build is its own module instance (own env, own wasm memory, own Tensor
  // class), so a session's tensors are made with the build that made the session.
  let ortAllLoading = null;
  const ortFor = (backend) => {
    if (backend === 'wasm' && build !== 'all') return Promise.resolve(ortWasm);
    // @ts-ignore: resolved by the agent's routes, like ./ort/ort.wasm.min.mjs above
    ortAllLoading ??= import('./ort/ort.all.min.mjs').then(configure);
    return ortAllLoading;
  };

  // name -> {session, ort (the build that made it), backend, key, result, decoder?}
  const sessions = new Map();

  // onnxruntime-web allows one asynchronous operation (create, run, release) at a time
  // per instance, across all its sessions: a second one throws "Session already
  // started". Every call into this instance goes through this queue.
  /** @type {Promise<unknown>} */
  let queue = Promise.resolve();
  /**
   * @template T
   * @param {() => T | PromiseLike<T>} fn
   * @returns {Promise<T>}
   */
  const exclusive = (fn) => {
    const p = queue.then(fn);
    queue = p.catch(() => {});
    return p;
  };

  // When the GPU process dies, the WebGPU device onnxruntime-web holds is lost for
  // good: every WebGPU session of this instance is dead.
  let gpuLost = null;
  let gpuWatched = false;
  function watchGpuDevice(ort) {
    if (gpuWatched) return;
    gpuWatched = true;
    Promise.resolve(ort.env.webgpu.device).then((device) => device?.lost?.then((info) => {
      gpuLost = `${info?.reason ?? 'unknown'}: ${info?.message || 'the WebGPU device was lost'}`;
      onGpuLost(gpuLost);
    })).catch(() => {});
  }
  // Whether a failed run was caused by losing the GPU (which may be reported a moment
  // after the run fails).
  async function failedForGpuLoss(entry) {
    if (!entry.backend.includes('webgpu')) return false;
    for (let i = 0; i < 10 && !gpuLost; i++) await new Promise((r) => setTimeout(r, 10));
    return gpuLost !== null;
  }

  async function start() {
    const t0 = performance.now();
    const session = await exclusive(() => ortWasm.InferenceSession.create(IDENTITY_MODEL, { executionProviders: ['wasm'] }));
    const out = await exclusive(() => session.run({ x: new ortWasm.Tensor('float32', new Float32Array([2]), [1]) }));
    await exclusive(() => session.release());
    if (out.y.data[0] !== 2) throw new Error('onnxruntime-web self-check failed');
    return { start_ms: performance.now() - t0, ort_version: ortWasm.env.versions?.web || null };
  }

  // Why `backend` cannot take the whole model, naming the operators it would leave to the
  // CPU provider: onnxruntime's own refusal (fallback disabled) does not name them, so the
  // session is created once more with fallback allowed and onnxruntime's verbose log of
  // node placements captured from the console.
  async function unplacedNodes(ort, bytes, backend, webnnDevice, model) {
    const lines = [];
    consoleCapture = lines;
    try {
      const options = { ...sessionOptions(backend, webnnDevice, model), extra: {}, logSeverityLevel: 0, logVerbosityLevel: 0 };
      const session = await exclusive(() => ort.InferenceSession.create(bytes, options));
      await exclusive(() => session.release());
    } catch (e) {
      lines.push(String(e?.message ?? e));
    } finally {
      consoleCapture = null;
    }
    // "Node(s) placed on [CPUExecutionProvider]. Number of nodes: 6", then one line per
    // node: "  MatMulInteger (name)", until the next provider's list.
    const counts = new Map();
    let onCpu = false;
    for (const line of lines.flatMap((l) => l.split('\n'))) {
      const placed = line.match(/Node\(s\) placed on \[(\w+)\]/);
      if (placed) {
        onCpu = placed[1] === 'CPUExecutionProvider';
        continue;
      }
      const node = onCpu && line.match(/VerifyEachNodeIsAssignedToAnEp\]\s+(\S+) \(/);
      if (node) counts.set(node[1], (counts.get(node[1]) ?? 0) + 1);
      else if (!line.includes('VerifyEachNodeIsAssignedToAnEp')) onCpu = false;
    }
    return [...counts].map(([op, n]) => `${op} (${n} node${n === 1 ? '' : 's'})`);
  }

  // Creates a session on one backend and measures it: creation, first run, steady runs.
  // `model`: its external data and generation config (sessionOptions).
  async function tryBackend(bytes, backend, webnnDevice, warmup, runs, model) {
    const why = refusal(capabilities, backend, webnnDevice);
    if (why) throw new Error(why);
    const ort = await ortFor(backend);
    let created;
    try {
      created = await timed(() => exclusive(() => ort.InferenceSession.create(bytes, sessionOptions(backend, webnnDevice, model))));
    } catch (e) {
      const message = String(e?.message ?? e);
      if (backend !== 'wasm' && message.includes('fallback to CPU EP has been explicitly disabled')) {
        const ops = await unplacedNodes(ort, bytes, backend, webnnDevice, model);
        if (ops.length) {
          throw new Error(`backend ${backend} cannot run these operators of the model (onnxruntime-web ${ortWasm.env.versions?.web ?? ''} has no ${backend} kernel for them; they would fall back to the CPU): ${ops.join(', ')}`);
        }
      }
      throw e;
    }
    const [session, createMs] = created;
    if (backend === 'webgpu' && model.generation) {
      const onCpu = await unplacedNodes(ort, bytes, backend, webnnDevice, model);
      const compute = onCpu.filter((n) => !SHAPE_OPS.has(n.split(' ')[0]));
      if (compute.length) {
        await exclusive(() => session.release());
        throw new Error(`backend webgpu cannot run these operators of the model (onnxruntime-web ${ortWasm.env.versions?.web ?? ''} has no webgpu kernel for them; they would fall back to the CPU): ${compute.join(', ')}`);
      }
    }
    if (backend === 'webgpu') watchGpuDevice(ort);
    const result = { session, ort, backend, create_ms: createMs, warmup_ms: null, steady_ms: null };
    if (!warmup) return result;
    try {
      const feeds = syntheticFeeds(ort, session, model.generation);
      // A run whose outputs are dropped (GPU buffers freed), timed.
      const once = () => exclusive(async () => {
        const [outputs, ms] = await timed(() => session.run(feeds));
        Object.values(outputs).forEach(release);
        return ms;
      });
      result.warmup_ms = await once();
      const times = [];
      for (let i = 0; i < runs; i++) times.push(await once());
      result.steady_ms = median(times);
    } catch (e) {
      await exclusive(() => session.release());
      throw e;
    }
    return result;
  }

  // Loads `bytes` as model `msg.name` on `msg.backend` ('auto' measures every backend
  // this browser has and keeps the fastest).
  // `external`: the model's external data files, fetched by the page.
  async function load(msg, bytes, external = []) {
    const { name, url, backend, webnn_device: webnnDevice = 'cpu', warmup = true } = msg;
    const model = { external, generation: msg.generation ?? undefined };
    // A standby page preloads the serving models; when it takes over, the same load
    // finds the session ready.
    const key = JSON.stringify([url.split('?')[0], backend, webnnDevice, warmup, msg.generation ?? null]);
    const existing = sessions.get(name);
    if (existing?.key === key) return existing.result;
    let chosen;
    let candidates = null;
    if (backend === 'auto') {
      candidates = [];
      const order = [['webgpu', 'cpu'], ...['gpu', 'npu', 'cpu'].map((d) => ['webnn', d]), ['wasm', 'cpu']];
      for (const [b, d] of order) {
        const label = b === 'webnn' ? `webnn:${d}` : b;
        // The agent's reasons to skip a backend (it would compute this model wrongly).
        const why = msg.avoid?.[label] ?? refusal(capabilities, b, d);
        if (why) {
          candidates.push({ backend: label, ok: false, error: why });
          continue;
        }
        try {
          const r = await tryBackend(bytes, b, d, true, 5, model);
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
      const r = await tryBackend(bytes, backend, webnnDevice, warmup, 3, model);
      chosen = { ...r, label: backend === 'webnn' ? `webnn:${webnnDevice}` : backend };
    }
    const result = {
      backend: chosen.label,
      create_ms: chosen.create_ms,
      warmup_ms: chosen.warmup_ms,
      steady_ms: chosen.steady_ms,
      candidates,
      inputs: metadata(chosen.session.inputMetadata),
      outputs: metadata(chosen.session.outputMetadata),
    };
    const old = sessions.get(name);
    const decoder = msg.generation ? createDecoder({
      ort: chosen.ort,
      session: chosen.session,
      exclusive,
      config: msg.generation,
      emit: (step) => onTokens({ ...step, model: name }),
      relayoutGpu: (sources, heads, dim, width) => relayoutOnGpu(chosen.ort, sources, heads, dim, width),
      // An encoder-decoder's encoder: a session of its own, loaded before it.
      encoder: msg.generation.encoder_model ? () => sessions.get(msg.generation.encoder_model)?.session : undefined,
    }) : null;
    sessions.set(name, { session: chosen.session, ort: chosen.ort, backend: chosen.label, key, result, decoder });
    if (old) {
      old.decoder?.close();
      exclusive(() => old.session.release());
    }
    return result;
  }

  async function unload(name) {
    const entry = sessions.get(name);
    if (!entry) return { unloaded: false };
    sessions.delete(name);
    entry.decoder?.close();
    if (entry.session) await exclusive(() => entry.session.release());
    return { unloaded: true };
  }

  // Registers an ensemble of models loaded here ({name, steps, outputs, backend}); the
  // agent has checked that the steps fit together.
  function ensemble(msg) {
    const missing = msg.steps.map((s) => s.model).filter((m) => !sessions.get(m)?.session);
    if (missing.length) throw new Error(`ensemble '${msg.name}': step models not loaded in this page: ${missing.join(', ')}`);
    sessions.set(msg.name, { ensemble: msg, backend: msg.backend, key: null, result: null });
    return { registered: msg.name };
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

  // Runs one request frame and answers with the encoded response (or error) frame.
  // `received`: when the page got the frame (`now()`), so `page_ms` covers queueing
  // and the hop to a worker too. The frame's stages tile `page_ms`: `page_queue` (to this
  // executor, then waiting for the session), `decode` (the frame, then the feeds), `run`
  // (onnxruntime, outputs read back: `compute_ms`) and `encode` (the response frame).
  async function infer(buf, received) {
    const arrived = now();
    const { id, header, tensors } = decodeFrame(buf);
    const decoded = now();
    const entry = sessions.get(header.model);
    if (!entry) return errorFrame(id, 'model_not_ready', `model '${header.model}' is not loaded in this page`);
    return exclusive(async () => {
      try {
        const started = now();
        let outputs;
        let ran;
        let fed = started;
        if (entry.ensemble) {
          outputs = await runEnsemble(entry.ensemble, sessions, tensors, header.outputs);
          ran = now();
        } else {
          const feeds = {};
          for (const t of tensors) feeds[t.name] = new entry.ort.Tensor(ortType(t.datatype), t.data, t.shape);
          fed = now();
          const results = header.outputs?.length
            ? await entry.session.run(feeds, header.outputs)
            : await entry.session.run(feeds);
          const names = header.outputs?.length ? header.outputs : entry.session.outputNames;
          try {
            outputs = await Promise.all(names.map((name) => readBack(name, results[name])));
          } finally {
            Object.values(results).forEach(release);
          }
          ran = now();
        }
        const stages = {
          page_queue: arrived - received + (started - decoded),
          decode: decoded - arrived + (fed - started),
          run: ran - fed,
        };
        return responseFrame(id, {
          model: header.model, backend: entry.backend, compute_ms: ran - fed, page_ms: ran - received, stages,
        }, outputs, () => {
          const done = now();
          return { page_ms: done - received, stages: { ...stages, encode: done - ran } };
        });
      } catch (e) {
        const message = String(e?.message ?? e);
        if (await failedForGpuLoss(entry)) {
          return errorFrame(id, 'browser_crashed', `the GPU device was lost (${gpuLost}): ${message}`);
        }
        return errorFrame(id, 'inference_failed', message);
      }
    });
  }

  // Generates text with decoder model `msg.model`: its steps go out through `onTokens`
  // as they are made; resolves with how the generation ended.
  async function generate(msg) {
    const entry = sessions.get(msg.model);
    if (!entry) throw new Error(`model '${msg.model}' is not loaded in this page`);
    if (!entry.decoder) throw new Error(`model '${msg.model}' was not loaded for text generation`);
    try {
      return { ...(await entry.decoder.generate(msg)), backend: entry.backend };
    } catch (e) {
      if (await failedForGpuLoss(entry)) throw new Error(`the GPU device was lost (${gpuLost}): ${e?.message ?? e}`);
      throw e;
    }
  }

  // Stops generation `req` (whichever model runs it) before its next step.
  function cancel(req) {
    for (const entry of sessions.values()) if (entry.decoder?.cancel(req)) return { cancelled: true };
    return { cancelled: false };
  }

  return { start, load, unload, retain, ensemble, infer, generate, cancel, has: (name) => sessions.has(name) };
}
