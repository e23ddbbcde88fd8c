// @ts-check
// Text generation with one decoder session of one onnxruntime-web instance: the
// sequences it is generating, their KV caches (kept here between steps: typed arrays on
// wasm, GPU buffers on WebGPU, never sent to the agent), and the loop that runs them.
//
// Continuous batching: the sequences decoding together form one batch whose cache
// tensors are [rows, kv_heads, width, head_dim], each row's real positions
// right-aligned and the pads before them masked (attention_mask 0) with per-row
// position_ids, so a row computes what it would alone. Between two steps, new sequences
// are prefilled (together, left-padded) and join the batch, and finished or cancelled
// ones leave it; nobody waits for the longest. Without continuous batching every
// sequence is a batch of its own and the batches take turns, one step each.
//
// The graph convention (checked by the agent at load, node-agent/src/generation/graph.rs):
// inputs input_ids, attention_mask, position_ids (optional), past_key_values.{i}.key|value
// [batch, kv_heads, past, head_dim]; outputs logits [batch, seq, vocab], present.{i}.key|value.
// An encoder-decoder (Whisper's layout, `cross_attention`: see cross.js) runs its
// encoder once per sequence and feeds its outputs back at every step.

import { createCacheOps } from './batch_cache.js';
import { KV_BLOCK } from './kv.js';
import { cacheNames, createCross } from './cross.js';
import { createSampler, logprobs } from './sampler.js';
import { now } from '../clock.js';

/**
 * The graph's layout as the agent read it from the model file.
 * @typedef {{layers: number, kv_heads: number, head_dim: number, vocab: number,
 *   ids_type: 'int64' | 'int32', position_ids: boolean, cross_attention?: boolean}} DecoderLayout
 */
/**
 * How a deployment generates (the load command's `generation`).
 * @typedef {{layout: DecoderLayout, kv_cache: 'fp32' | 'int8' | 'int4',
 *   continuous_batching: boolean, max_batch: number, context_length: number,
 *   pad_token_id: number, prefill_chunk?: number, encoder_model?: string}} GenerationConfig
 */
/**
 * One generation asked of the page (protocol.js's GenerateCommand, less its op).
 * @typedef {{req: number, model: string, prompt: number[], max_new_tokens: number,
 *   sampling: import('./sampler.js').Sampling, stop_token_ids: number[],
 *   logprobs: number | null, logits: boolean, prompt_logprobs?: boolean,
 *   features?: {dims: number[], data: number[]}}} GenerateRequest `features`: an
 *   encoder-decoder's encoder input (input_features)
 */
/**
 * The model's log-probability of one prompt token given the tokens before it.
 * @typedef {{logprob: number, top?: [number, number][]}} PromptLogprob
 */
/**
 * One token of one sequence in a step event. A sequence's first token carries, when
 * asked, the log-probabilities of its prompt's tokens after the first (`prompt`).
 * @typedef {{req: number, id: number, logprob?: number, top?: [number, number][],
 *   logits?: number[], finish?: 'stop' | 'length', prompt?: PromptLogprob[]}} TokenOut
 */
/**
 * What a step sends the agent: the tokens it made, when, and what it cost.
 * @typedef {{t: number, step_ms: number, run_ms: number, batch: number,
 *   prefill: boolean, tokens: TokenOut[]}} StepEvent
 */
/**
 * How a generation ended (the generate call's reply).
 * @typedef {{finish_reason: 'stop' | 'length' | 'cancelled', prompt_tokens: number,
 *   completion_tokens: number, queue_ms: number, prefill_ms: number, decode_ms: number,
 *   max_batch: number, kv_bytes: number, kv_bytes_per_token: number}} GenerateSummary
 */

// A macrotask's pause: between steps the page must read its socket (new sequences,
// cancellations, other models' requests). setTimeout(0) is clamped to 4 ms once nested,
// a message to oneself is not. (Node, which runs the tests, has setImmediate.)
/** @type {() => Promise<void>} */
const yieldToEvents = (() => {
  if (typeof setImmediate === 'function') return () => new Promise((resolve) => { setImmediate(resolve); });
  const channel = new MessageChannel();
  /** @type {(() => void)[]} */
  const yielded = [];
  channel.port1.onmessage = () => yielded.shift()?.();
  return () => new Promise((resolve) => {
    yielded.push(resolve);
    channel.port2.postMessage(null);
  });
})();

class Sequence {
  /**
   * @param {GenerateRequest} request
   * @param {(s: GenerateSummary) => void} resolve
   * @param {(e: Error) => void} reject
   */
  constructor(request, resolve, reject) {
    this.request = request;
    this.resolve = resolve;
    this.reject = reject;
    this.sampler = createSampler(request.sampling);
    this.stops = new Set(request.stop_token_ids);
    /** Every token of the sequence: the prompt, then what it generated. */
    this.tokens = [...request.prompt];
    this.generated = 0;
    /** Positions in the cache. */
    this.n = 0;
    /** @type {'stop' | 'length' | 'cancelled' | null} */
    this.finish = null;
    this.cancelled = false;
    this.enqueued = now();
    this.started = 0;
    this.prefillMs = 0;
    this.maxBatch = 0;
    /** With `prompt_logprobs`: its prompt tokens' scores so far (see TokenOut). */
    /** @type {PromptLogprob[]} */
    this.promptScores = [];
    /** An encoder-decoder's: its cross-attention cache, by input name ([1, ...]). */
    /** @type {Map<string, any> | null} */
    this.cross = null;
    /** With a quantized cache: the rows of its cache, by cache tensor name. */
    /** @type {Map<string, QuantizedRow> | null} */
    this.quantized = null;
  }

  get last() {
    return this.tokens[this.tokens.length - 1];
  }
}

/**
 * A batch of sequences decoding together.
 * @typedef {{rows: Sequence[], width: number, past: Map<string, any> | null}} Batch
 */

/**
 * The generator of one decoder session.
 * @param {{
 *   ort: any,
 *   session: any,
 *   exclusive: <T>(fn: () => T | PromiseLike<T>) => Promise<T>,
 *   config: GenerationConfig,
 *   emit: (step: StepEvent) => void,
 *   relayoutGpu?: (sources: {tensor: any, row: number, n: number}[], heads: number, dim: number, width: number) => any,
 *   encoder?: () => any,
 * }} deps `exclusive`: the instance's queue (one run at a time); `emit`: sends a step's
 * tokens to the agent; `relayoutGpu`: relayout of GPU-resident cache tensors (WebGPU);
 * `encoder`: an encoder-decoder's encoder session (looked up when a sequence starts).
 */
export function createDecoder({ ort, session, exclusive, config, emit, relayoutGpu, encoder }) {
  const { layout } = config;
  const names = cacheNames(layout);
  const cross = createCross({ ort, exclusive, layout, encoder, encoderName: config.encoder_model });
  const bits = config.kv_cache === 'int8' ? 8 : config.kv_cache === 'int4' ? 4 : 0;
  const heads = layout.kv_heads;
  const dim = layout.head_dim;
  const { pastOf, rebuild, dispose, keepCache } = createCacheOps({ ort, names, heads, dim, bits, relayoutGpu });
  const positionBytes = names.length * heads * (bits ? (dim * bits) / 8 + 4 / KV_BLOCK : dim * 4);
  const Ids = layout.ids_type === 'int32' ? Int32Array : BigInt64Array;
  const ids = (/** @type {number[]} */ xs) => (Ids === Int32Array ? Int32Array.from(xs) : BigInt64Array.from(xs, BigInt));

  /** @type {Sequence[]} */
  const waiting = [];
  /** @type {Batch[]} */
  let batches = [];
  /** Every sequence not yet answered, by request number. @type {Map<number, Sequence>} */
  const live = new Map();
  let running = false;
  // Sequences that ended in this turn of the loop, answered once `batches` no longer
  // holds them (so a caller told of the end never sees them in `report`).
  /** @type {Sequence[]} */
  const ended = [];

  const active = () => batches.reduce((n, b) => n + b.rows.length, 0);

  /**
   * @param {any} data
   * @param {number[]} dims
   */
  const idTensor = (data, dims) => new ort.Tensor(layout.ids_type, data, dims);

  /**
   * A sequence's end: its summary to the caller.
   * @param {Sequence} s
   */
  function settle(s) {
    live.delete(s.request.req);
    s.cross = null;
    const end = now();
    s.resolve({
      finish_reason: /** @type {'stop' | 'length' | 'cancelled'} */ (s.finish),
      prompt_tokens: s.request.prompt.length,
      completion_tokens: s.generated,
      queue_ms: (s.started || end) - s.enqueued,
      prefill_ms: s.prefillMs,
      decode_ms: s.started ? end - s.started - s.prefillMs : 0,
      max_batch: s.maxBatch,
      kv_bytes: s.n * positionBytes,
      kv_bytes_per_token: positionBytes,
    });
  }

  /**
   * Picks a row's next token from `logits` (vocab floats) and records it.
   * @param {Sequence} s
   * @param {Float32Array} logits
   * @returns {TokenOut}
   */
  function choose(s, logits) {
    const { request } = s;
    const id = s.sampler.next(logits, s.tokens);
    s.tokens.push(id);
    s.generated += 1;
    /** @type {TokenOut} */
    const out = { req: request.req, id };
    if (request.logprobs !== null) {
      const lp = logprobs(logits, id, request.logprobs);
      out.logprob = lp.logprob;
      if (request.logprobs > 0) out.top = lp.top;
    }
    if (request.logits) out.logits = Array.from(logits);
    if (request.prompt_logprobs && s.generated === 1) out.prompt = s.promptScores.splice(0);
    if (s.stops.has(id)) s.finish = 'stop';
    else if (s.generated >= request.max_new_tokens) s.finish = 'length';
    // The next step would feed this token at position n: it must fit the context.
    else if (s.n >= config.context_length) s.finish = 'length';
    if (s.finish) out.finish = s.finish;
    return out;
  }

  /**
   * Runs the graph once over `rows` (each feeding `feed[r]`), masks and positions as
   * each row's cache says; returns the logits and the presents by past name.
   * @param {number[][]} feed tokens per row (prompt on prefill, one token on decode)
   * @param {Sequence[]} rows
   * @param {number} width positions in `past`
   * @param {Map<string, any>} past
   */
  async function run(feed, rows, width, past) {
    const steps = Math.max(...feed.map((f) => f.length));
    const input = [];
    const mask = [];
    const positions = [];
    rows.forEach((s, r) => {
      const pad = steps - feed[r].length;
      for (let i = 0; i < steps; i++) {
        input.push(i < pad ? config.pad_token_id : feed[r][i - pad]);
        // Pads hold position 1, as transformers does: masked, any position would do.
        positions.push(i < pad ? 1 : s.n + i - pad);
      }
      for (let j = 0; j < width + steps; j++) mask.push(j >= width - s.n && (j < width || j - width >= pad) ? 1 : 0);
    });
    const feeds = {
      input_ids: idTensor(ids(input), [rows.length, steps]),
      attention_mask: idTensor(ids(mask), [rows.length, width + steps]),
    };
    if (layout.position_ids) feeds.position_ids = idTensor(ids(positions), [rows.length, steps]);
    for (const [name, tensor] of past) feeds[name] = tensor;
    for (const [name, tensor] of cross.feeds(rows)) feeds[name] = tensor;
    const t0 = performance.now();
    const out = await exclusive(() => session.run(feeds));
    const runMs = performance.now() - t0;
    const logits = out.logits.location === 'cpu' ? out.logits.data : await out.logits.getData(true);
    const presents = new Map(names.map(({ past: p, present }) => [p, out[present]]));
    return { logits: /** @type {Float32Array} */ (logits), steps, presents, runMs };
  }

  /**
   * The last position's logits of row r.
   * @param {Float32Array} logits [rows, steps, vocab]
   * @param {number} r
   * @param {number} steps
   */
  const lastLogits = (logits, r, steps) => logits.subarray(((r * steps) + steps - 1) * layout.vocab, (r * steps + steps) * layout.vocab);

  /**
   * Scores the prompt tokens that row `r`'s positions in a run predict: the run fed
   * `fed` (right-aligned in its `steps`), prompt tokens `from` onwards, and the logits
   * at each of them score the prompt token after it (the last prompt position predicts
   * the first generated token, which is not the prompt's).
   * @param {Sequence} s
   * @param {Float32Array} logits [rows, steps, vocab]
   * @param {number} r
   * @param {number} steps
   * @param {number[]} fed
   * @param {number} from
   */
  function scorePrompt(s, logits, r, steps, fed, from) {
    const { prompt } = s.request;
    const top = s.request.logprobs ?? 0;
    const pad = steps - fed.length;
    for (let i = 0; i < fed.length && from + i + 1 < prompt.length; i++) {
      const at = (r * steps + pad + i) * layout.vocab;
      const lp = logprobs(logits.subarray(at, at + layout.vocab), prompt[from + i + 1], top);
      s.promptScores.push(top > 0 ? lp : { logprob: lp.logprob });
    }
  }

  /**
   * Prefills the sequences `rows` together: their prompts left-padded in one run. Each
   * gets its first token; returns the batch they form (finished ones already out).
   *
   * With `prefill_chunk`, a longer prompt (alone in `rows`: see the loop) is fed that
   * many positions per run, each run attending to the cache the ones before it left,
   * as later decode steps do: a run's size stays bounded, and a quantized cache is
   * what the prompt's later positions see.
   * @param {Sequence[]} rows
   * @returns {Promise<Batch | null>}
   */
  async function prefill(rows) {
    const t0 = performance.now();
    const start = now();
    rows.forEach((s) => { s.started = start; });
    // Each encoder run holds the page's thread for as long as it takes: between them
    // the page answers its heartbeats and messages.
    if (cross.active) {
      for (const s of rows) {
        if (s.cross) continue;
        s.cross = await cross.encode(s.request.features);
        // A timer, not a message to itself: Chromium runs the socket's tasks (the
        // agent's heartbeats) before a timer, not always before a posted message.
        await new Promise((resolve) => { setTimeout(resolve, 0); });
      }
    }
    const chunk = rows.length === 1 && config.prefill_chunk ? config.prefill_chunk : Infinity;
    let batch = /** @type {Batch} */ ({ rows, width: 0, past: null });
    let runMs = 0;
    for (let from = 0; ; from += chunk) {
      const feed = rows.map((s) => s.request.prompt.slice(from, from + chunk));
      const last = rows.every((s) => from + chunk >= s.request.prompt.length);
      const past = batch.width === 0
        ? new Map(names.map(({ past: name }) => [name, new ort.Tensor('float32', new Float32Array(0), [rows.length, heads, 0, dim])]))
        : pastOf(batch);
      const out = await run(feed, rows, batch.width, past);
      if (batch.past) dispose(batch.past);
      runMs += out.runMs;
      rows.forEach((s, r) => {
        if (s.request.prompt_logprobs) scorePrompt(s, out.logits, r, out.steps, feed[r], from);
        s.n += feed[r].length;
      });
      const fed = feed.map((f) => f.length);
      const width = batch.width + out.steps;
      if (last) return finishStep({ rows, width, past: null }, out.presents, out.logits, out.steps, t0, runMs, fed);
      batch = { rows, width, past: await keepCache(rows, width, out.presents, fed) };
    }
  }

  /**
   * One decode step of a batch; returns the batch as it goes on (null when empty).
   * @param {Batch} batch
   */
  async function decode(batch) {
    const t0 = performance.now();
    const past = pastOf(batch);
    const { logits, steps, presents, runMs } = await run(batch.rows.map((s) => [s.last]), batch.rows, batch.width, past);
    if (batch.past) dispose(batch.past);
    batch.rows.forEach((s) => { s.n += 1; });
    return finishStep({ ...batch, width: batch.width + 1 }, presents, logits, steps, t0, runMs, null);
  }

  /**
   * After a run: keeps the presents as the batch's cache (or quantizes the new
   * positions), chooses every row's token, sends them, and takes finished rows out.
   * @param {Batch} batch rows and width after the run
   * @param {Map<string, any>} presents
   * @param {Float32Array} logits
   * @param {number} steps positions the run added to each row (padded)
   * @param {number} t0
   * @param {number} runMs
   * @param {number[] | null} prefilled a prefill's last run: the positions it fed each
   *   row; null for a decode step (one each)
   * @returns {Promise<Batch | null>}
   */
  async function finishStep(batch, presents, logits, steps, t0, runMs, prefilled) {
    const { rows, width } = batch;
    const isPrefill = prefilled !== null;
    const past = await keepCache(rows, width, presents, prefilled ?? rows.map(() => 1));
    const tokens = rows.map((s, r) => {
      s.maxBatch = Math.max(s.maxBatch, rows.length);
      return choose(s, lastLogits(logits, r, steps));
    });
    const t = now();
    emit({ t, step_ms: performance.now() - t0, run_ms: runMs, batch: rows.length, prefill: isPrefill, tokens });
    if (isPrefill) rows.forEach((s) => { s.prefillMs = performance.now() - t0; });
    return leave({ rows, width, past }, rows.filter((s) => s.finish));
  }

  /**
   * Takes `gone` out of `batch` (answering them) and narrows the cache to the widest
   * row left; null when no row is left.
   * @param {Batch} batch
   * @param {Sequence[]} gone
   * @returns {Promise<Batch | null>}
   */
  async function leave(batch, gone) {
    if (!gone.length) return batch;
    ended.push(...gone);
    const rows = batch.rows.filter((s) => !gone.includes(s));
    if (!rows.length) {
      dispose(batch.past);
      return null;
    }
    const width = Math.max(...rows.map((s) => s.n));
    if (!batch.past) return { rows, width, past: null };
    const past = await rebuild([{ rows, from: batch.past, at: rows.map((s) => batch.rows.indexOf(s)) }], width);
    dispose(batch.past);
    return { rows, width, past };
  }

  /**
   * Joins batch `b` to `into` (continuous batching).
   * @param {Batch} into
   * @param {Batch} b
   * @returns {Promise<Batch>}
   */
  async function join(into, b) {
    const rows = [...into.rows, ...b.rows];
    const width = Math.max(...rows.map((s) => s.n));
    if (!into.past || !b.past) return { rows, width, past: null };
    const past = await rebuild([
      { rows: into.rows, from: into.past, at: into.rows.map((_, i) => i) },
      { rows: b.rows, from: b.past, at: b.rows.map((_, i) => i) },
    ], width);
    dispose(into.past);
    dispose(b.past);
    return { rows, width, past };
  }

  /**
   * Takes cancelled rows out of every batch.
   */
  async function dropCancelled() {
    const next = [];
    for (const b of batches) {
      const gone = b.rows.filter((s) => s.cancelled && !s.finish);
      gone.forEach((s) => { s.finish = 'cancelled'; });
      const kept = await leave(b, gone);
      if (kept) next.push(kept);
    }
    batches = next;
    ended.splice(0).forEach(settle);
  }

  /**
   * Fails every sequence of `list` with `error`.
   * @param {Sequence[]} list
   * @param {Error} error
   */
  function fail(list, error) {
    for (const s of list) {
      live.delete(s.request.req);
      s.reject(error);
    }
  }

  async function loop() {
    running = true;
    try {
      while (waiting.length || batches.length) {
        await dropCancelled();
        const room = config.max_batch - active();
        const admitted = waiting.splice(0, Math.max(0, room));
        if (admitted.length) {
          // Without continuous batching each sequence is prefilled alone, its own batch;
          // so is a prompt longer than the prefill chunk (it is fed in chunks).
          const chunked = (/** @type {Sequence} */ s) => !!config.prefill_chunk && s.request.prompt.length > config.prefill_chunk;
          const together = admitted.filter((s) => config.continuous_batching && !chunked(s));
          const groups = [...(together.length ? [together] : []), ...admitted.filter((s) => !together.includes(s)).map((s) => [s])];
          for (const group of groups) {
            try {
              const b = await prefill(group);
              if (!b) continue;
              if (config.continuous_batching && batches.length) batches[0] = await join(batches[0], b);
              else batches.push(b);
            } catch (e) {
              fail(group, /** @type {Error} */ (e));
            }
          }
        }
        const next = [];
        for (const b of batches) {
          try {
            const kept = await decode(b);
            if (kept) next.push(kept);
          } catch (e) {
            dispose(b.past);
            fail(b.rows, /** @type {Error} */ (e));
          }
        }
        batches = next;
        ended.splice(0).forEach(settle);
        await yieldToEvents();
      }
    } finally {
      running = false;
    }
  }

  return {
    /**
     * Generates for `request`; resolves when the sequence ends, its tokens having been
     * emitted step by step.
     * @param {GenerateRequest} request
     * @returns {Promise<GenerateSummary>}
     */
    generate(request) {
      const { prompt } = request;
      if (!prompt.length) return Promise.reject(new Error('the prompt has no tokens'));
      if (prompt.length >= config.context_length) {
        return Promise.reject(new Error(`the prompt has ${prompt.length} tokens; the model's context holds ${config.context_length}, so at most ${config.context_length - 1} leave room for a new token`));
      }
      if (live.has(request.req)) return Promise.reject(new Error(`generation ${request.req} is already running`));
      return new Promise((resolve, reject) => {
        const s = new Sequence(request, resolve, reject);
        live.set(request.req, s);
        waiting.push(s);
        if (!running) loop();
      });
    },
    /**
     * Stops generation `req` before its next step and frees its cache; false if it is
     * not here.
     * @param {number} req
     */
    cancel(req) {
      const s = live.get(req);
      if (!s) return false;
      const queued = waiting.indexOf(s);
      if (queued >= 0) {
        waiting.splice(queued, 1);
        s.finish = 'cancelled';
        settle(s);
      } else {
        // Between steps it leaves its batch (dropCancelled), its cache with it.
        s.cancelled = true;
      }
      return true;
    },
    /** What this generator holds now. */
    report() {
      const rows = batches.flatMap((b) => b.rows);
      return {
        sequences: rows.length,
        waiting: waiting.length,
        kv_bytes: bits
          ? rows.reduce((n, s) => n + [...(s.quantized?.values() ?? [])].reduce((m, q) => m + q.bytes(), 0), 0)
          : batches.reduce((n, b) => n + b.rows.length * b.width * positionBytes, 0),
      };
    },
    /** Fails what is generating and waiting (the model is being unloaded). */
    close() {
      const error = new Error('the model was unloaded while generating');
      fail(waiting.splice(0), error);
      for (const b of batches) {
        dispose(b.past);
        fail(b.rows, error);
      }
      batches = [];
    },
  };
}
