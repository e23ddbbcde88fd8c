// Where the page's requests run: a LocalExecutor holds an onnxruntime-web instance in the
// page's own thread; a WorkerExecutor holds one in a dedicated Web Worker (worker.js) and
// replaces the worker when it stops answering. Both take the same calls
// (`init`, `load`, `unload`, `retain`, `infer`) and run one request at a time.

import { createSessions, now } from './sessions.js';

class Executor {
  constructor(index, hooks) {
    this.index = index;
    this.hooks = hooks;
    this.ready = false;
    // The request running here, if any (set and cleared by the page's dispatcher).
    this.current = null;
    this.runs = 0;
    this.restarts = 0;
  }

  report() {
    return { runs: this.runs, restarts: this.restarts, busy: this.current !== null, ready: this.ready };
  }

  checkHung() {}
}

export class LocalExecutor extends Executor {
  constructor(index, config, capabilities, hooks) {
    super(index, hooks);
    this.runtime = createSessions({ ...config, capabilities, onGpuLost: hooks.onGpuLost });
    this.started = this.runtime.start();
    this.started.then(() => { this.ready = true; }, () => {});
  }

  // A busy loop here would freeze the whole page, which the agent's own heartbeat
  // catches; nothing to watch.
  async call(op, data) {
    switch (op) {
      case 'load': return this.runtime.load(data.msg, data.bytes);
      case 'unload': return this.runtime.unload(data.name);
      case 'retain': return this.runtime.retain(data.names);
      case 'ensemble': return this.runtime.ensemble(data.msg);
      case 'infer': return this.runtime.infer(data.buf, data.received);
      default: throw new Error(`unknown call '${op}'`);
    }
  }
}

export class WorkerExecutor extends Executor {
  constructor(index, config, capabilities, hooks) {
    super(index, hooks);
    this.config = config;
    this.capabilities = capabilities;
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
    this.started = (async () => {
      const info = await this.post('init', { threads, build, capabilities: this.capabilities });
      const all = [...this.hooks.models()];
      // Models first, then the ensembles made of them.
      for (const msg of all.filter((m) => m.op !== 'ensemble')) {
        await this.post('load', { msg, bytes: await this.hooks.fetchModel(msg.url) });
      }
      for (const msg of all.filter((m) => m.op === 'ensemble')) await this.post('ensemble', { msg });
      return info;
    })();
    this.started.then(() => {
      this.ready = true;
      this.hooks.onReady();
    }, () => {});
  }

  onReply(data) {
    if (data.event === 'gpu_lost') {
      this.hooks.onGpuLost(data.message);
      return;
    }
    const call = this.calls.get(data.seq);
    if (!call) return;
    this.calls.delete(data.seq);
    if (data.ok) call.resolve(data.value);
    else call.reject(new Error(data.error));
  }

  post(op, data = {}, transfer = []) {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.calls.set(seq, { resolve, reject, op, sent: now() });
      this.worker.postMessage({ ...data, seq, op }, transfer);
    });
  }

  // A call once this worker has started (a replaced worker's calls wait for its
  // replacement).
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
      const bound = call.op === 'load' || call.op === 'init' ? this.config.loadHangMs : this.config.hangMs;
      if (t - call.sent > bound) {
        this.replace(`page worker ${this.index} did not answer a '${call.op}' call for ${Math.round(t - call.sent)} ms: replaced`);
        return;
      }
    }
  }

  // Terminates the worker, fails what it was doing (retryable for requests: the page
  // answers them as browser_crashed) and starts another in its place.
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
