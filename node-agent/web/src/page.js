// @ts-check
// What the page does with the agent's messages, apart from the browser: control messages
// (protocol.js) become calls into the executors and one result each; request frames
// wait for a free executor and its reply frame goes back. runtime.js wires this to the
// WebSocket and the real executors; the tests (test/page.test.js) to fakes.

import { ECHO_MODEL, KIND_REQUEST, decodeFrame, errorFrame, responseFrame } from './frame.js';
import { Op } from './protocol.js';

/** @typedef {import('./protocol.js').PageCommand} PageCommand */
/** @typedef {import('./protocol.js').PageEvent} PageEvent */
/** @typedef {import('./protocol.js').ModelCommand} ModelCommand */
/** @typedef {import('./protocol.js').LoadCommand} LoadCommand */
/** @typedef {import('./protocol.js').EnsembleCommand} EnsembleCommand */
/** @typedef {import('./protocol.js').SessionLoad} SessionLoad */
/** @typedef {import('./protocol.js').WorkerReport} WorkerReport */

/**
 * What the page needs of an executor (executors.js): `call` runs one call on its
 * instance; `current` is the request it runs (set and cleared here).
 * @typedef {{
 *   index: number,
 *   kind: 'local' | 'worker',
 *   ready: boolean,
 *   current: object | null,
 *   runs: number,
 *   sequences: number,
 *   started: Promise<{start_ms: number, ort_version: string | null}>,
 *   call: (op: string, data?: object, transfer?: Transferable[]) => Promise<any>,
 *   report: () => WorkerReport,
 *   checkHung: () => void,
 * }} Executor
 */

/**
 * What executors are told by the page: where to report, and the models to load into a
 * replaced worker.
 * @typedef {{
 *   onGpuLost: (message: string) => void,
 *   onTokens: (step: Omit<import('./protocol.js').TokensEvent, 'op'>) => void,
 *   onLog: (message: string) => void,
 *   onReady: () => void,
 *   models: () => Iterable<ModelCommand>,
 *   fetchModel: (url: string) => Promise<Uint8Array>,
 *   fetchExternal: (msg: LoadCommand) => Promise<import('./protocol.js').ExternalData[]>,
 * }} Hooks
 */

/**
 * The page's message handling.
 * @param {{
 *   send: (event: PageEvent) => void,
 *   sendFrame: (frame: ArrayBuffer) => void,
 *   fetchModel: (url: string) => Promise<Uint8Array>,
 *   workers: number,
 *   threads: number,
 *   now: () => number,
 * }} io `send` a control message, `sendFrame` a binary one; `workers` and `threads`: the
 * page's layout; `now` a clock in milliseconds.
 */
export function createPage({ send, sendFrame, fetchModel, workers, threads, now }) {
  /** @type {Executor[]} */
  let executors = [];
  // The models loaded, as the load (or ensemble) messages every executor (re)loads them
  // with: a worker that is replaced loads all of them again before it takes requests.
  /** @type {Map<string, ModelCommand>} */
  const models = new Map();
  // Requests waiting for a free executor, oldest first.
  /** @type {{id: bigint, buf: ArrayBuffer, received: number}[]} */
  const waiting = [];
  let nextExecutor = 0;
  // The executor running each generation, by its request number (for cancels).
  /** @type {Map<number, Executor>} */
  const generating = new Map();

  // A model's external data files, fetched from the agent.
  /** @param {LoadCommand} msg */
  const fetchExternal = (msg) => Promise.all((msg.external_data ?? []).map(async ({ path, url }) => ({
    path, data: await fetchModel(url),
  })));

  /** @type {Hooks} */
  const hooks = {
    onGpuLost: (message) => send({ op: Op.gpuLost, message }),
    onTokens: (step) => send({ op: Op.tokens, ...step }),
    onLog: (message) => send({ op: Op.log, message }),
    onReady: () => pump(),
    models: () => models.values(),
    fetchModel,
    fetchExternal,
  };

  // The load message with the backend `auto` chose, so the other executors (and replaced
  // workers) create that backend's session without measuring every backend again.
  /**
   * @param {LoadCommand} msg
   * @param {string} label
   * @returns {LoadCommand}
   */
  function pinned(msg, label) {
    const [backend, device] = label.split(':');
    return {
      ...msg,
      backend: /** @type {LoadCommand['backend']} */ (backend),
      webnn_device: /** @type {LoadCommand['webnn_device']} */ (device) ?? msg.webnn_device,
    };
  }

  /** @param {LoadCommand} msg */
  async function load(msg) {
    const t0 = now();
    const [bytes, external] = await Promise.all([fetchModel(msg.url), fetchExternal(msg)]);
    const fetchMs = now() - t0;
    /** @type {SessionLoad} */
    const first = await executors[0].call(Op.load, { msg, bytes, external });
    const rest = pinned(msg, first.backend);
    await Promise.all(executors.slice(1).map((e) => e.call(Op.load, { msg: rest, bytes, external })));
    models.set(msg.name, rest);
    return { ...first, fetch_ms: fetchMs };
  }

  // An ensemble of loaded models: registered in every executor, which each hold all the
  // step models' sessions.
  /** @param {EnsembleCommand} msg */
  async function ensemble(msg) {
    const results = await Promise.all(executors.map((e) => e.call(Op.ensemble, { msg })));
    models.set(msg.name, msg);
    return results[0];
  }

  /** @param {string} name */
  async function unload(name) {
    models.delete(name);
    const results = await Promise.all(executors.map((e) => e.call(Op.unload, { name })));
    return { unloaded: results.some((r) => r.unloaded) };
  }

  /** @param {string[]} names */
  async function retain(names) {
    const keep = new Set(names);
    for (const name of [...models.keys()]) if (!keep.has(name)) models.delete(name);
    const results = await Promise.all(executors.map((e) => e.call(Op.retain, { names })));
    return { released: [...new Set(results.flatMap((r) => r.released))] };
  }

  // A generation goes to the ready executor generating the fewest sequences: with page
  // workers, sequences spread over them (each worker batches its own).
  /** @param {import('./protocol.js').GenerateCommand} msg */
  async function generate(msg) {
    if (!models.has(msg.model)) throw new Error(`model '${msg.model}' is not loaded in this page`);
    const ready = executors.filter((e) => e.ready);
    const e = (ready.length ? ready : executors).reduce((a, b) => (b.sequences < a.sequences ? b : a));
    generating.set(msg.req, e);
    e.sequences += 1;
    try {
      return await e.call(Op.generate, { msg });
    } finally {
      e.sequences -= 1;
      generating.delete(msg.req);
    }
  }

  /** @param {number} req */
  async function cancel(req) {
    const e = generating.get(req);
    if (!e) return { cancelled: false };
    return e.call(Op.cancel, { req });
  }

  // Fault injection (debug endpoint): worker `index` spins forever, as a runaway kernel
  // would; the hang watchdog must replace it.
  /** @param {number} index */
  function hangWorker(index) {
    const e = executors[index];
    if (e?.kind !== 'worker') throw new Error(`no page worker ${index} (the page runs ${workers === 1 ? 'no workers' : `${executors.length} workers`})`);
    e.call(Op.hang).catch(() => {});
    return { hanging: index };
  }

  // The calls the agent makes, by op; each answered by one result.
  const handlers = new Map(/** @type {[string, (msg: any) => unknown][]} */ ([
    [Op.load, load],
    [Op.unload, (msg) => unload(msg.name)],
    [Op.retain, (msg) => retain(msg.names)],
    [Op.ensemble, ensemble],
    [Op.generate, generate],
    [Op.cancel, (msg) => cancel(msg.generation)],
    [Op.hangWorker, (msg) => hangWorker(msg.index)],
  ]));

  /** @param {PageCommand} msg */
  async function onControl(msg) {
    if (msg.op === Op.ping) {
      send({ op: Op.pong, workers: executors.map((e) => e.report()) });
      return;
    }
    try {
      const handler = handlers.get(msg.op);
      if (!handler) throw new Error(`unknown op '${msg.op}'`);
      const value = /** @type {any} */ (await handler(msg));
      send({ op: Op.result, req: msg.req, ok: true, value });
    } catch (e) {
      send({ op: Op.result, req: msg.req, ok: false, error: String(e?.message ?? e) });
    }
  }

  /** @param {ArrayBuffer} buf */
  function onFrame(buf) {
    const received = now();
    let frame;
    try {
      frame = decodeFrame(buf);
    } catch (e) {
      send({ op: Op.log, message: `dropped a malformed frame from the agent: ${e}` });
      return;
    }
    if (frame.kind !== KIND_REQUEST) return;
    const { id, header, tensors } = frame;
    if (header.model === ECHO_MODEL) {
      // The bridge's floor: decoded and encoded like a real request, but nothing runs.
      sendFrame(responseFrame(id, {
        model: header.model, backend: 'echo', compute_ms: 0, page_ms: now() - received,
      }, tensors));
      return;
    }
    if (!models.has(header.model)) {
      sendFrame(errorFrame(id, 'model_not_ready', `model '${header.model}' is not loaded in this page`));
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
      const job = /** @type {typeof waiting[number]} */ (waiting.shift());
      e.current = job;
      e.runs += 1;
      e.call(Op.infer, { buf: job.buf, received: job.received }, [job.buf])
        .then((reply) => sendFrame(reply), (err) => sendFrame(errorFrame(
          job.id, 'browser_crashed', `page worker ${e.index} failed while running the request: ${err?.message ?? err}`,
        )))
        .finally(() => {
          e.current = null;
          pump();
        });
      tried = -1;
    }
  }

  /**
   * Takes the executors (made with `hooks`), waits for them to start, and says hello
   * with `capabilities` (the page's detection) completed by how the runtime started.
   * @param {Executor[]} list
   * @param {any} capabilities
   */
  async function start(list, capabilities) {
    executors = list;
    /** @type {string | null} */
    let runtimeError = null;
    const starts = await Promise.all(executors.map((e) => e.started.catch((err) => {
      runtimeError = String(err?.message ?? err);
      return null;
    })));
    capabilities.ort_version = starts.find((s) => s)?.ort_version ?? null;
    const startMs = starts.every((s) => s)
      ? Math.max(...starts.map((s) => /** @type {{start_ms: number}} */ (s).start_ms))
      : null;
    capabilities.runtime = { start_ms: startMs, error: runtimeError };
    capabilities.page_workers = { workers: executors.length, threads_per_worker: threads };
    send({ op: Op.hello, capabilities });
  }

  return {
    hooks,
    start,
    onControl,
    onFrame,
    /** Replaces executors that stopped answering. */
    checkHung: () => executors.forEach((e) => e.checkHung()),
    /** @param {string} name */
    hasModel: (name) => models.has(name),
  };
}
