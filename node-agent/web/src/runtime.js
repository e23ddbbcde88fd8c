// webaccel's in-page runtime: serves the agent over a loopback WebSocket and runs its
// requests on one or more onnxruntime-web instances. Tensors arrive and leave as binary
// frames (frame.js); control messages (load, unload, ping) are JSON text. The agent
// supervises this page through the pings: a page that stops answering is declared hung
// and restarted.
//
// Page workers: onnxruntime-web runs one request at a time per instance, so a page with
// one instance uses one request's worth of the machine however many cores it has. With
// `workers` > 1 the page starts that many Web Workers, each with its own instance and
// its own sessions of every loaded model (executors.js), and hands each request to a
// free one. With one worker the instance lives in this thread: no hop between threads.

import { detectAll } from './capabilities.js';
import { LocalExecutor, WorkerExecutor } from './executors.js';
import { KIND_REQUEST, KIND_RESPONSE, decodeFrame, encodeFrame } from './frame.js';
import { errorFrame, now } from './sessions.js';

const params = new URLSearchParams(location.search);
// See ECHO_MODEL in crds/src/wire.rs.
const ECHO_MODEL = '__echo__';
const config = {
  threads: Number(params.get('threads') || 0),
  build: params.get('build') || 'plain',
  workers: Math.max(1, Number(params.get('workers') || 1)),
  // How long a worker may leave a call unanswered before it is declared hung and
  // replaced: the agent's own bounds for the page (--hang-timeout, --load-hang-timeout).
  hangMs: Number(params.get('hang_ms') || 10000),
  loadHangMs: Number(params.get('load_hang_ms') || 120000),
};

const ws = new WebSocket(`ws://${location.host}/page/ws?s=${encodeURIComponent(params.get('s'))}`);
ws.binaryType = 'arraybuffer';
const send = (obj) => ws.send(JSON.stringify(obj));

// The models loaded, as the load (or ensemble) messages every executor (re)loads them
// with: a worker that is replaced loads all of them again before it takes requests.
const models = new Map();
const fetchModel = async (url) => {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`fetching the model from the agent failed: HTTP ${resp.status}`);
  return new Uint8Array(await resp.arrayBuffer());
};

let executors = [];
// Requests waiting for a free executor, oldest first: {id, buf, received}.
const waiting = [];
let nextExecutor = 0;

const hooks = {
  onGpuLost: (message) => send({ op: 'gpu_lost', message }),
  onLog: (message) => send({ op: 'log', message }),
  onReady: () => pump(),
  models: () => models.values(),
  fetchModel,
};

ws.onopen = async () => {
  const capabilities = await detectAll();
  const make = config.workers === 1
    ? () => [new LocalExecutor(0, config, capabilities, hooks)]
    : () => Array.from({ length: config.workers }, (_, i) => new WorkerExecutor(i, config, capabilities, hooks));
  executors = make();
  let runtimeError = null;
  const starts = await Promise.all(executors.map((e) => e.started.catch((err) => {
    runtimeError = String(err?.message ?? err);
    return null;
  })));
  capabilities.ort_version = starts.find((s) => s)?.ort_version ?? null;
  const startMs = starts.every((s) => s) ? Math.max(...starts.map((s) => s.start_ms)) : null;
  capabilities.runtime = { start_ms: startMs, error: runtimeError };
  capabilities.page_workers = { workers: executors.length, threads_per_worker: config.threads };
  send({ op: 'hello', capabilities });
  setInterval(() => executors.forEach((e) => e.checkHung()), 250);
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
    send({ op: 'pong', workers: executors.map((e) => e.report()) });
    return;
  }
  try {
    let value;
    if (msg.op === 'load') value = await load(msg);
    else if (msg.op === 'unload') value = await unload(msg.name);
    else if (msg.op === 'retain') value = await retain(msg.names);
    else if (msg.op === 'ensemble') value = await ensemble(msg);
    else if (msg.op === 'hang_worker') value = hangWorker(msg.index);
    else throw new Error(`unknown op '${msg.op}'`);
    send({ op: 'result', req: msg.req, ok: true, value });
  } catch (e) {
    send({ op: 'result', req: msg.req, ok: false, error: String(e?.message ?? e) });
  }
}

// ---- models --------------------------------------------------------------------------

// The load message with the backend `auto` chose, so the other executors (and replaced
// workers) create that backend's session without measuring every backend again.
function pinned(msg, label) {
  const [backend, device] = label.split(':');
  return { ...msg, backend, webnn_device: device ?? msg.webnn_device };
}

async function load(msg) {
  const t0 = performance.now();
  const bytes = await fetchModel(msg.url);
  const fetchMs = performance.now() - t0;
  const first = await executors[0].call('load', { msg, bytes });
  const rest = pinned(msg, first.backend);
  await Promise.all(executors.slice(1).map((e) => e.call('load', { msg: rest, bytes })));
  models.set(msg.name, rest);
  return { ...first, fetch_ms: fetchMs };
}

// An ensemble of loaded models: registered in every executor, which each hold all the
// step models' sessions.
async function ensemble(msg) {
  const results = await Promise.all(executors.map((e) => e.call('ensemble', { msg })));
  models.set(msg.name, msg);
  return results[0];
}

async function unload(name) {
  models.delete(name);
  const results = await Promise.all(executors.map((e) => e.call('unload', { name })));
  return { unloaded: results.some((r) => r.unloaded) };
}

async function retain(names) {
  const keep = new Set(names);
  for (const name of [...models.keys()]) if (!keep.has(name)) models.delete(name);
  const results = await Promise.all(executors.map((e) => e.call('retain', { names })));
  return { released: [...new Set(results.flatMap((r) => r.released))] };
}

// Fault injection (debug endpoint): worker `index` spins forever, as a runaway kernel
// would; the hang watchdog must replace it.
function hangWorker(index) {
  const e = executors[index];
  if (!(e instanceof WorkerExecutor)) throw new Error(`no page worker ${index} (the page runs ${config.workers === 1 ? 'no workers' : `${executors.length} workers`})`);
  e.call('hang').catch(() => {});
  return { hanging: index };
}

// ---- inference -----------------------------------------------------------------------

function handleFrame(buf) {
  const received = now();
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
      model: header.model, backend: 'echo', compute_ms: 0, page_ms: now() - received, outputs,
    }, tensors));
    return;
  }
  if (!models.has(header.model)) {
    ws.send(errorFrame(id, 'model_not_ready', `model '${header.model}' is not loaded in this page`));
    return;
  }
  waiting.push({ id, buf, received });
  pump();
}

// Hands waiting requests to free executors, taking turns so every worker is used.
function pump() {
  for (let tried = 0; tried < executors.length && waiting.length; tried++) {
    const e = executors[nextExecutor];
    nextExecutor = (nextExecutor + 1) % executors.length;
    if (!e.ready || e.current) continue;
    const job = waiting.shift();
    e.current = job;
    e.runs += 1;
    e.call('infer', { buf: job.buf, received: job.received }, [job.buf])
      .then((reply) => ws.send(reply), (err) => ws.send(errorFrame(
        job.id, 'browser_crashed', `page worker ${e.index} failed while running the request: ${err?.message ?? err}`,
      )))
      .finally(() => {
        e.current = null;
        pump();
      });
    tried = -1;
  }
}
