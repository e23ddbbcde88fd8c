// @ts-check
// Where the page's requests run: a LocalExecutor holds an onnxruntime-web instance in the
// page's own thread; a WorkerExecutor holds one in a dedicated Web Worker (worker.js) and
// replaces the worker when it stops answering. Both take the same calls (protocol.js's
// runtimeCalls, and `init` for a worker) and run one request at a time.

import { now } from './clock.js';
import { Op, callFor, runtimeCalls } from './protocol.js';
import { createSessions } from './sessions.js';

/** @typedef {import('./page.js').Hooks} Hooks */
/**
 * @typedef {{threads: number, build: string, workers: number, hangMs: number,
 *   loadHangMs: number}} Config
 */

class Executor {
  /**
   * @param {number} index
   * @param {Hooks} hooks
   */
  constructor(index, hooks) {
    this.index = index;
    this.hooks = hooks;
    this.ready = false;
    // The request running here, if any (set and cleared by the page's dispatcher).
    /** @type {object | null} */
    this.current = null;
    this.runs = 0;
    this.restarts = 0;
    // Generations running here (counted by the page's dispatcher).
    this.sequences = 0;
  }

  report() {
    return {
      runs: this.runs, restarts: this.restarts, busy: this.current !== null, ready: this.ready, sequences: this.sequences,
    };
  }

  checkHung() {}
}

export class LocalExecutor extends Executor {
  /**
   * @param {number} index
   * @param {Config} config
   * @param {any} capabilities
   * @param {Hooks} hooks
   */
  constructor(index, config, capabilities, hooks) {
    super(index, hooks);
    /** @type {'local'} */
    this.kind = 'local';
    this.runtime = createSessions({ ...config, capabilities, onGpuLost: hooks.onGpuLost, onTokens: hooks.onTokens });
    this.calls = runtimeCalls(() => this.runtime);
    this.started = this.runtime.start();
    this.started.then(() => { this.ready = true; }, () => {});
  }

  // A busy loop here would freeze the whole page, which the agent's own heartbeat
  // catches; nothing to watch.
  /**
   * @param {string} op
   * @param {object} [data]
   */
  async call(op, data = {}) {
    return callFor(this.calls, op)(data);
  }
}

export class WorkerExecutor extends Executor {
  /**
   * @param {number} index
   * @param {Config} config
   * @param {any} capabilities
   * @param {Hooks} hooks
   */
  constructor(index, config, capabilities, hooks) {
    super(index, hooks);
    /** @type {'worker'} */
    this.kind = 'worker';
    this.config = config;
    this.capabilities = capabilities;
    /** @type {Map<number, {resolve: (v: any) => void, reject: (e: Error) => void, op: string, sent: number}>} */
    this.calls = new Map();
    this.seq = 0;
    this.heard = now();
    this.spawn();
  }

  // Starts a worker, starts its runtime and loads every model the page serves; it takes
  // requests once all of that is done.
  spawn() {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.calls = new Map();
    this.seq = 0;
    this.worker.onmessage = ({ data }) => this.onReply(data);
    // A worker whose script fails to load, or that dies, errors here: whatever it was
    // doing has failed.
    this.worker.onerror = (ev) => {
      ev.preventDefault?.();
      this.replace(`page worker ${this.index} failed: ${ev.message ?? 'error event'}`);
    };
    const { threads, build } = this.config;
    /** @type {Promise<{start_ms: number, ort_version: string | null}>} */
    this.started = (async () => {
      const info = await this.post(Op.init, { threads, build, capabilities: this.capabilities });
      const all = [...this.hooks.models()];
      // Models first, then the ensembles made of them.
      for (const msg of all.filter((m) => m.op !== Op.ensemble)) {
        const [bytes, external] = await Promise.all([this.hooks.fetchModel(msg.url), this.hooks.fetchExternal(msg)]);
        await this.post(Op.load, { msg, bytes, external });
      }
      for (const msg of all.filter((m) => m.op === Op.ensemble)) await this.post(Op.ensemble, { msg });
      return info;
    })();
    this.started.then(() => {
      this.ready = true;
      this.hooks.onReady();
    }, () => {});
  }

  /** @param {{seq: number, ok: boolean, value?: any, error?: string} | {event: string, message?: string, step?: any}} data */
  onReply(data) {
    // Anything the worker says shows it is not hung: a generation's call stays open
    // for as long as the sequence runs, its steps are the worker's sign of life.
    this.heard = now();
    if ('event' in data) {
      if (data.event === Op.gpuLost) this.hooks.onGpuLost(data.message ?? '');
      if (data.event === Op.tokens) this.hooks.onTokens(data.step);
      return;
    }
    const call = this.calls.get(data.seq);
    if (!call) return;
    this.calls.delete(data.seq);
    if (data.ok) call.resolve(data.value);
    else call.reject(new Error(data.error));
  }

  /**
   * @param {string} op
   * @param {object} [data]
   * @param {Transferable[]} [transfer]
   * @returns {Promise<any>}
   */
  post(op, data = {}, transfer = []) {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.calls.set(seq, { resolve, reject, op, sent: now() });
      this.worker.postMessage({ ...data, seq, op }, transfer);
    });
  }

  // A call once this worker has started (a replaced worker's calls wait for its
  // replacement).
  /**
   * @param {string} op
   * @param {object} [data]
   * @param {Transferable[]} [transfer]
   */
  async call(op, data = {}, transfer = []) {
    await this.started;
    return this.post(op, data, transfer);
  }

  // A worker computes in its own thread and cannot answer while it does, so a hang is a
  // call left unanswered past the agent's bound for the page: compiling a model may take
  // the longer load bound.
  checkHung() {
    const t = now();
    for (const call of this.calls.values()) {
      const bound = call.op === Op.load || call.op === Op.init ? this.config.loadHangMs : this.config.hangMs;
      // A generation is silent between its steps only: measured from the last word.
      const since = call.op === Op.generate ? Math.max(call.sent, this.heard) : call.sent;
      if (t - since > bound) {
        this.replace(`page worker ${this.index} did not answer a '${call.op}' call for ${Math.round(t - since)} ms: replaced`);
        return;
      }
    }
  }

  // Terminates the worker, fails what it was doing (retryable for requests: the page
  // answers them as browser_crashed) and starts another in its place.
  /** @param {string} reason */
  replace(reason) {
    this.worker.terminate();
    this.ready = false;
    this.restarts += 1;
    const calls = [...this.calls.values()];
    this.calls.clear();
    this.hooks.onLog(reason);
    this.spawn();
    for (const call of calls) call.reject(new Error(reason));
  }
}
