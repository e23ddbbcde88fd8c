// @ts-check
// The page's handling of the agent's messages (src/page.js), with fake executors in
// place of onnxruntime-web: each golden command must be answered with the golden event
// the agent's tests read, and request frames must reach a free executor and their
// replies the agent.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ECHO_MODEL, KIND_REQUEST, KIND_RESPONSE, decodeFrame, encodeFrame } from '../src/frame.js';
import { createPage } from '../src/page.js';
import { Op } from '../src/protocol.js';
import { bytes, control, frame, tensor } from './golden.js';

/** @typedef {import('../src/page.js').Executor} Executor */

/**
 * An executor whose calls answer from `replies` (op → value, function of the call's data,
 * or an Error to throw), recording each call.
 * @param {number} index
 * @param {Record<string, any>} [replies]
 * @param {{kind?: 'local' | 'worker', start_ms?: number}} [options]
 */
function fakeExecutor(index, replies = {}, { kind = 'worker', start_ms = 30 } = {}) {
  /** @type {{op: string, data: any, transfer?: Transferable[]}[]} */
  const calls = [];
  const executor = {
    index,
    kind,
    ready: true,
    /** @type {object | null} */
    current: null,
    runs: 0,
    restarts: 0,
    started: Promise.resolve({ start_ms, ort_version: '1.30.0' }),
    calls,
    /**
     * @param {string} op
     * @param {any} [data]
     * @param {Transferable[]} [transfer]
     */
    async call(op, data, transfer) {
      calls.push({ op, data, transfer });
      const reply = replies[op];
      if (reply instanceof Error) throw reply;
      return typeof reply === 'function' ? reply(data) : reply;
    },
    sequences: 0,
    report() {
      return {
        runs: this.runs, restarts: this.restarts, busy: this.current !== null, ready: this.ready, sequences: this.sequences,
      };
    },
    checkHung() {},
  };
  return executor;
}

/**
 * A page on fake executors, with everything it sends recorded. The clock advances 2.5 ms
 * each time it is read.
 * @param {ReturnType<typeof fakeExecutor>[]} executors
 * @param {{workers?: number}} [options]
 */
async function pageWith(executors, { workers = executors.length } = {}) {
  /** @type {any[]} */
  const sent = [];
  /** @type {ArrayBuffer[]} */
  const frames = [];
  /** @type {string[]} */
  const fetched = [];
  let clock = 0;
  const page = createPage({
    send: (event) => sent.push(JSON.parse(JSON.stringify(event))),
    sendFrame: (buf) => frames.push(buf),
    fetchModel: async (url) => {
      fetched.push(url);
      return new Uint8Array([8, 8]);
    },
    workers,
    threads: 1,
    now: () => (clock += 2.5),
  });
  await page.start(executors, { user_agent: 'test' });
  sent.length = 0;
  return { page, sent, frames, fetched };
}

/** Lets pending promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test('the hello carries the capabilities and how the runtime started', async () => {
  const want = control('hello');
  const { ort_version: _v, runtime: _r, page_workers: _p, ...detected } = want.capabilities;
  /** @type {any[]} */
  const sent = [];
  const page = createPage({
    send: (event) => sent.push(JSON.parse(JSON.stringify(event))),
    sendFrame: () => {},
    fetchModel: async () => new Uint8Array(),
    workers: 2,
    threads: 1,
    now: () => 0,
  });
  await page.start([fakeExecutor(0, {}, { start_ms: 41.5 }), fakeExecutor(1)], structuredClone(detected));
  assert.deepEqual(sent, [want]);
});

test('a runtime that failed to start is said in the hello', async () => {
  const broken = fakeExecutor(0, {}, { kind: 'local' });
  broken.started = Promise.reject(new Error('no wasm'));
  /** @type {any[]} */
  const sent = [];
  const page = createPage({
    send: (event) => sent.push(event), sendFrame: () => {}, fetchModel: async () => new Uint8Array(),
    workers: 1, threads: 2, now: () => 0,
  });
  await page.start([broken], {});
  assert.deepEqual(sent[0].capabilities, {
    ort_version: null, runtime: { start_ms: null, error: 'no wasm' }, page_workers: { workers: 1, threads_per_worker: 2 },
  });
});

test('ping is answered with the workers as they are', async () => {
  const [busy, idle] = [fakeExecutor(0), fakeExecutor(1)];
  const { page, sent } = await pageWith([busy, idle]);
  busy.runs = 3;
  busy.current = {};
  busy.sequences = 1;
  idle.runs = 2;
  await page.onControl(control('ping'));
  assert.deepEqual(sent, [control('pong')]);
});

test('load: the first executor chooses, the others load what it chose', async () => {
  const want = control('load_result');
  const { fetch_ms: _f, ...chosen } = want.value;
  const [first, second] = [fakeExecutor(0, { [Op.load]: chosen }), fakeExecutor(1, { [Op.load]: chosen })];
  const { page, sent, fetched } = await pageWith([first, second]);
  const load = control('load');
  await page.onControl(load);
  assert.deepEqual(sent, [want]);
  assert.deepEqual(fetched, [load.url]);
  assert.deepEqual(first.calls[0].data.msg, load);
  assert.deepEqual(second.calls[0].data.msg, { ...load, backend: 'wasm', webnn_device: 'cpu' });
  assert.ok(page.hasModel('mlp'));
});

test('unload, retain and ensemble are answered as the agent reads them', async () => {
  const executors = [0, 1].map((i) => fakeExecutor(i, {
    [Op.unload]: { unloaded: i === 0 },
    [Op.retain]: { released: ['old'] },
    [Op.ensemble]: { registered: 'pipe' },
  }));
  const { page, sent } = await pageWith(executors);
  for (const name of ['unload', 'retain', 'ensemble']) {
    sent.length = 0;
    await page.onControl(control(name));
    assert.deepEqual(sent, [control(`${name}_result`)], name);
    assert.deepEqual(executors[1].calls.at(-1)?.op, control(name).op, name);
  }
  assert.ok(page.hasModel('pipe'));
  assert.deepEqual(executors[0].calls.find((c) => c.op === Op.retain)?.data, { names: ['mlp', 'cnn'] });
});

test('hang_worker is refused without workers and reaches the worker with them', async () => {
  const alone = await pageWith([fakeExecutor(0, {}, { kind: 'local' })], { workers: 1 });
  await alone.page.onControl(control('hang_worker'));
  assert.deepEqual(alone.sent, [control('hang_worker_result')]);

  const workers = [fakeExecutor(0), fakeExecutor(1, { [Op.hang]: new Error('terminated') })];
  const two = await pageWith(workers);
  await two.page.onControl(control('hang_worker'));
  assert.deepEqual(two.sent, [{ op: Op.result, req: 11, ok: true, value: { hanging: 1 } }]);
  assert.equal(workers[1].calls[0].op, Op.hang);
});

test('an unknown op or a failing executor is a refusal with the reason', async () => {
  const { page, sent } = await pageWith([fakeExecutor(0, { [Op.unload]: new Error('session busy') })]);
  await page.onControl(/** @type {any} */ ({ op: 'bogus', req: 1 }));
  await page.onControl(/** @type {any} */ ({ op: 'toString', req: 2 }));
  await page.onControl({ op: 'unload', req: 3, name: 'mlp' });
  assert.deepEqual(sent, [
    { op: Op.result, req: 1, ok: false, error: "unknown op 'bogus'" },
    { op: Op.result, req: 2, ok: false, error: "unknown op 'toString'" },
    { op: Op.result, req: 3, ok: false, error: 'session busy' },
  ]);
});

test('executors report a lost GPU and log lines as the agent reads them', async () => {
  const { page, sent } = await pageWith([fakeExecutor(0)]);
  page.hooks.onGpuLost(control('gpu_lost').message);
  page.hooks.onLog(control('log').message);
  assert.deepEqual(sent, [control('gpu_lost'), control('log')]);
});

/**
 * A request frame for `model` with one FP32 input.
 * @param {number} id
 * @param {string} model
 */
function request(id, model) {
  const x = tensor({ name: 'x', datatype: 'FP32', shape: [2], values: [1, 2] });
  return encodeFrame(KIND_REQUEST, id, {
    model, inputs: [{ name: 'x', datatype: 'FP32', shape: [2] }],
  }, [x]);
}

test('a request for a model the page has not loaded is the golden model_not_ready frame', async () => {
  const { page, frames } = await pageWith([fakeExecutor(0)]);
  page.onFrame(request(43, 'cnn'));
  assert.deepEqual(frames.map((f) => new Uint8Array(f)), [new Uint8Array(bytes(frame('error_model_not_ready').file))]);
});

test('the echo model comes straight back, through no executor', async () => {
  const executor = fakeExecutor(0);
  const { page, frames } = await pageWith([executor]);
  page.onFrame(request(5, ECHO_MODEL));
  const reply = decodeFrame(frames[0]);
  assert.equal(reply.kind, KIND_RESPONSE);
  assert.equal(reply.id, 5n);
  assert.deepEqual(reply.header, {
    model: ECHO_MODEL, backend: 'echo', compute_ms: 0, page_ms: 2.5,
    outputs: [{ name: 'x', datatype: 'FP32', shape: [2] }],
  });
  assert.deepEqual(Array.from(/** @type {Float32Array} */ (reply.tensors[0].data)), [1, 2]);
  assert.equal(executor.calls.length, 0);
});

test('requests go to free executors in turn, and wait while every one is busy', async () => {
  const reply = new ArrayBuffer(8);
  /** @type {((v: ArrayBuffer) => void)[]} */
  const finish = [];
  const executors = [0, 1].map((i) => fakeExecutor(i, {
    [Op.load]: { backend: 'wasm' },
    [Op.infer]: () => new Promise((resolve) => finish.push(resolve)),
  }));
  const { page, frames } = await pageWith(executors);
  await page.onControl(control('load'));
  executors.forEach((e) => { e.calls.length = 0; });
  executors[1].ready = false;
  page.onFrame(bytes('frames/request.bin'));
  page.onFrame(bytes('frames/request.bin'));
  assert.deepEqual(executors.map((e) => e.calls.length), [1, 0], 'one free executor, one run');
  assert.ok(executors[0].calls[0].transfer?.[0] instanceof ArrayBuffer, 'the frame is handed over');
  executors[1].ready = true;
  page.hooks.onReady();
  assert.deepEqual(executors.map((e) => e.calls.length), [1, 1]);
  assert.deepEqual(executors.map((e) => e.runs), [1, 1]);
  finish.forEach((done) => done(reply));
  await settle();
  assert.deepEqual(frames, [reply, reply]);
  assert.deepEqual(executors.map((e) => e.current), [null, null]);
});

test('an executor failing under a request answers the golden browser_crashed frame', async () => {
  const { page, frames } = await pageWith([fakeExecutor(0, {
    [Op.load]: { backend: 'wasm' },
    [Op.infer]: new Error('gone'),
  })]);
  await page.onControl(control('load'));
  const golden = frame('error_browser_crashed');
  const { header, tensors } = decodeFrame(bytes('frames/request.bin'));
  page.onFrame(encodeFrame(KIND_REQUEST, golden.id, header, tensors));
  await settle();
  assert.deepEqual(frames.map((f) => new Uint8Array(f)), [new Uint8Array(bytes(golden.file))]);
});

test('a malformed frame is dropped and logged', async () => {
  const { page, sent, frames } = await pageWith([fakeExecutor(0)]);
  page.onFrame(new ArrayBuffer(3));
  assert.deepEqual(sent, [{ op: Op.log, message: 'dropped a malformed frame from the agent: Error: frame shorter than its prefix' }]);
  assert.deepEqual(frames, []);
});

test('a decoder load fetches its external data and every executor gets it', async () => {
  const want = control('load_decoder_result');
  const { fetch_ms: _f, ...chosen } = want.value;
  const executors = [0, 1].map((i) => fakeExecutor(i, { [Op.load]: chosen }));
  const { page, sent, fetched } = await pageWith(executors);
  const load = control('load_decoder');
  await page.onControl(load);
  assert.deepEqual(sent, [want]);
  assert.deepEqual(fetched, [load.url, load.external_data[0].url]);
  for (const e of executors) {
    assert.deepEqual(e.calls[0].data.external, [{ path: 'model.onnx.data', data: new Uint8Array([8, 8]) }]);
    assert.deepEqual(e.calls[0].data.msg.generation, load.generation);
  }
});

test('generations go to the executor with the fewest sequences; tokens and results reach the agent', async () => {
  const want = control('generate_result');
  /** @type {Map<number, (v: any) => void>} */
  const finish = new Map();
  const executors = [0, 1].map((i) => fakeExecutor(i, {
    [Op.load]: { backend: 'wasm' },
    [Op.generate]: (/** @type {any} */ { msg }) => new Promise((resolve) => finish.set(msg.req, resolve)),
    [Op.cancel]: (/** @type {any} */ { req }) => ({ cancelled: finish.has(req) }),
  }));
  const { page, sent } = await pageWith(executors);
  await page.onControl(control('load_decoder'));
  sent.length = 0;
  const generate = control('generate');
  const a = page.onControl(generate);
  const b = page.onControl({ ...generate, req: 15 });
  await settle();
  assert.deepEqual(executors.map((e) => e.calls.filter((c) => c.op === Op.generate).length), [1, 1]);
  assert.deepEqual(executors.map((e) => e.sequences), [1, 1]);
  // A third goes where a sequence ends first.
  finish.get(15)?.(want.value);
  await b;
  const c = page.onControl({ ...generate, req: 16 });
  await settle();
  assert.equal(executors[1].calls.filter((x) => x.op === Op.generate).length, 2);
  // The page forwards the executors' steps as they come.
  const step = control('tokens');
  const { op: _op, ...event } = step;
  page.hooks.onTokens(event);
  // A cancel reaches the executor running that generation; one unknown is answered.
  await page.onControl(control('cancel'));
  await page.onControl({ ...control('cancel'), req: 17, generation: 99 });
  assert.deepEqual(executors[0].calls.at(-1), { op: Op.cancel, data: { req: 13 }, transfer: undefined });
  finish.get(13)?.(want.value);
  finish.get(16)?.(want.value);
  await Promise.all([a, c]);
  assert.deepEqual(sent, [
    { ...want, req: 15 },
    step,
    control('cancel_result'),
    { op: Op.result, req: 17, ok: true, value: { cancelled: false } },
    want,
    { ...want, req: 16 },
  ]);
  assert.deepEqual(executors.map((e) => e.sequences), [0, 0]);
});

test('a generation for a model the page has not loaded is refused with the reason', async () => {
  const { page, sent } = await pageWith([fakeExecutor(0)]);
  await page.onControl(control('generate'));
  assert.deepEqual(sent, [{ op: Op.result, req: 13, ok: false, error: "model 'llm' is not loaded in this page" }]);
});
