// @ts-check
// The names and shapes of every control message of the page: between the agent and the
// page (JSON text on the WebSocket; the agent's side is node-agent/src/page/protocol.rs,
// one Rust type per message), and between the page and its executors (worker.js,
// executors.js). test/golden/control/ holds one message of each kind as the agent writes
// it or reads it; both sides' tests check them.

// Every op, once. Agent → page: ping, load, unload, retain, ensemble, generate, cancel,
// hang_worker. Page → agent: hello, pong, result, tokens, gpu_lost, log. Page → executor
// (each answered by one reply): init, load, unload, retain, ensemble, infer, generate,
// cancel, ping, hang; executor → page, unprompted: gpu_lost, tokens.
export const Op = Object.freeze({
  ping: 'ping',
  load: 'load',
  unload: 'unload',
  retain: 'retain',
  ensemble: 'ensemble',
  generate: 'generate',
  cancel: 'cancel',
  hangWorker: 'hang_worker',
  tokens: 'tokens',
  hello: 'hello',
  pong: 'pong',
  result: 'result',
  gpuLost: 'gpu_lost',
  log: 'log',
  init: 'init',
  infer: 'infer',
  hang: 'hang',
});

// ---- agent → page ---------------------------------------------------------------------

/** @typedef {'auto' | 'webgpu' | 'webnn' | 'wasm'} Backend */
/** @typedef {'cpu' | 'gpu' | 'npu'} WebNnDevice */

/** @typedef {{op: 'ping'}} PingCommand */
/**
 * A file of the model's weights beside its graph: `path` as the graph names it, `url`
 * where the page fetches it from the agent.
 * @typedef {{path: string, url: string}} ExternalDataFile
 */
/** An external data file as onnxruntime-web takes it. @typedef {{path: string, data: Uint8Array}} ExternalData */
/**
 * Creates the model's session in every executor, from bytes fetched at `url` (and its
 * external data files). `avoid`: backends `auto` must skip (label → why).
 * `generation`: a decoder, served for text generation (generation/decoder.js).
 * @typedef {{op: 'load', req: number, name: string, url: string, backend: Backend,
 *   webnn_device: WebNnDevice, warmup: boolean, avoid?: Record<string, string>,
 *   external_data?: ExternalDataFile[],
 *   generation?: import('./generation/decoder.js').GenerationConfig | null}} LoadCommand
 */
/** @typedef {{op: 'unload', req: number, name: string}} UnloadCommand */
/** @typedef {{op: 'retain', req: number, names: string[]}} RetainCommand */
/**
 * @typedef {{model: string, input_map: Record<string, string>,
 *   output_map: Record<string, string>}} EnsembleStep
 */
/**
 * @typedef {{op: 'ensemble', req: number, name: string, steps: EnsembleStep[],
 *   outputs: string[], backend: string}} EnsembleCommand
 */
/**
 * Generates text: the result comes when the sequence ends; its tokens come before it,
 * step by step, in `tokens` events.
 * @typedef {{op: 'generate'} & import('./generation/decoder.js').GenerateRequest} GenerateCommand
 */
/** Stops generation `generation` before its next step. @typedef {{op: 'cancel', req: number, generation: number}} CancelCommand */
/** @typedef {{op: 'hang_worker', req: number, index: number}} HangWorkerCommand */
/**
 * @typedef {PingCommand | LoadCommand | UnloadCommand | RetainCommand | EnsembleCommand
 *   | GenerateCommand | CancelCommand | HangWorkerCommand} PageCommand
 */
/** A load or ensemble command, kept to (re)load the model into every executor. @typedef {LoadCommand | EnsembleCommand} ModelCommand */

// ---- replies, the `value` of a result --------------------------------------------------

/** @typedef {{name: string, datatype: string | null, ort_type: string, shape: number[]}} IoMeta */
/**
 * One backend `auto` tried: its times, or why it could not run the model.
 * @typedef {{backend: string, ok: boolean, create_ms?: number, warmup_ms?: number | null,
 *   steady_ms?: number | null, error?: string}} BackendCandidate
 */
/**
 * What an executor made of a load (sessions.js).
 * @typedef {{backend: string, create_ms: number, warmup_ms: number | null,
 *   steady_ms: number | null, candidates: BackendCandidate[] | null, inputs: IoMeta[],
 *   outputs: IoMeta[]}} SessionLoad
 */
/** The reply to a load: also how long the page took to fetch the bytes. @typedef {SessionLoad & {fetch_ms: number}} LoadReply */
/** @typedef {{unloaded: boolean}} UnloadReply */
/** @typedef {{released: string[]}} RetainReply */
/** @typedef {{registered: string}} EnsembleReply */
/** @typedef {{hanging: number}} HangWorkerReply */
/** How a generation ended. @typedef {import('./generation/decoder.js').GenerateSummary & {backend: string}} GenerateReply */
/** @typedef {{cancelled: boolean}} CancelReply */
/**
 * @typedef {LoadReply | UnloadReply | RetainReply | EnsembleReply | GenerateReply
 *   | CancelReply | HangWorkerReply} Reply
 */

// ---- page → agent ---------------------------------------------------------------------

/**
 * An executor as the page's pong reports it: `sequences` it is generating.
 * @typedef {{runs: number, restarts: number, busy: boolean, ready: boolean,
 *   sequences: number}} WorkerReport
 */
/** @typedef {{op: 'hello', capabilities: object}} HelloEvent */
/** @typedef {{op: 'pong', workers: WorkerReport[]}} PongEvent */
/**
 * The answer to call `req`: `value` when `ok`, else `error`.
 * @typedef {{op: 'result', req: number, ok: true, value: Reply}
 *   | {op: 'result', req: number, ok: false, error: string}} ResultEvent
 */
/**
 * One step of text generation in model `model`: the token each of its sequences made.
 * @typedef {{op: 'tokens', model: string} & import('./generation/decoder.js').StepEvent} TokensEvent
 */
/** @typedef {{op: 'gpu_lost', message: string}} GpuLostEvent */
/** @typedef {{op: 'log', message: string}} LogEvent */
/** @typedef {HelloEvent | PongEvent | ResultEvent | TokensEvent | GpuLostEvent | LogEvent} PageEvent */

// ---- page ↔ executor ------------------------------------------------------------------

/**
 * The instance an executor calls into (sessions.js's createSessions).
 * @typedef {{
 *   start: () => Promise<{start_ms: number, ort_version: string | null}>,
 *   load: (msg: LoadCommand, bytes: Uint8Array, external?: ExternalData[]) => Promise<SessionLoad>,
 *   unload: (name: string) => Promise<UnloadReply>,
 *   retain: (names: string[]) => Promise<RetainReply>,
 *   ensemble: (msg: EnsembleCommand) => EnsembleReply,
 *   infer: (buf: ArrayBuffer, received: number) => Promise<ArrayBuffer>,
 *   generate: (msg: GenerateCommand) => Promise<GenerateReply>,
 *   cancel: (req: number) => CancelReply,
 * }} Runtime
 */

/**
 * The calls an executor takes that go straight to its runtime, by op: the same table
 * for the page's own instance (LocalExecutor) and a worker's (worker.js).
 * @param {() => Runtime} runtime the instance, once it exists
 * @returns {Map<string, (data: any) => unknown>}
 */
export function runtimeCalls(runtime) {
  return new Map(/** @type {[string, (data: any) => unknown][]} */ ([
    [Op.load, ({ msg, bytes, external }) => runtime().load(msg, bytes, external)],
    [Op.unload, ({ name }) => runtime().unload(name)],
    [Op.retain, ({ names }) => runtime().retain(names)],
    [Op.ensemble, ({ msg }) => runtime().ensemble(msg)],
    [Op.infer, ({ buf, received }) => runtime().infer(buf, received)],
    [Op.generate, ({ msg }) => runtime().generate(msg)],
    [Op.cancel, ({ req }) => runtime().cancel(req)],
  ]));
}

/**
 * The handler of `op` in `calls`, or an error naming the call.
 * @template T
 * @param {Map<string, T>} calls
 * @param {string} op
 * @returns {T}
 */
export function callFor(calls, op) {
  const fn = calls.get(op);
  if (!fn) throw new Error(`unknown call '${op}'`);
  return fn;
}
