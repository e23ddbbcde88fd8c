// @ts-check
// The page's generation loop (src/generation/decoder.js) on real onnxruntime-web (its
// wasm build under Node, the same engine the browser runs) with the fixture decoder
// (tests/fixtures/make_decoder.py): greedy tokens and logits against onnxruntime's
// references (tests/fixtures/decoder_reference.py), continuous batching against each
// sequence alone, seeded sampling, cancellation, and the quantized caches.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

// @ts-ignore: onnxruntime-web's Node build, untyped here
import * as ort from '../node_modules/onnxruntime-web/dist/ort.node.min.mjs';
import { createDecoder } from '../src/generation/decoder.js';

const fixtures = fileURLToPath(new URL('../../tests/fixtures/', import.meta.url));
const modelPath = `${fixtures}models/decoder/model.onnx`;
const reference = JSON.parse(readFileSync(`${fixtures}models/decoder/reference.json`, 'utf8'));
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(readFileSync(modelPath), { executionProviders: ['wasm'] });

// One run at a time on the instance, as sessions.js queues them: every decoder of these
// tests shares the session.
/** @type {Promise<unknown>} */
let queue = Promise.resolve();
const exclusive = (/** @type {() => any} */ fn) => {
  const p = queue.then(fn);
  queue = p.catch(() => {});
  return p;
};

const layout = { layers: 2, kv_heads: 2, head_dim: 16, vocab: 384, ids_type: /** @type {const} */ ('int64'), position_ids: true };
const GREEDY = { temperature: 0, top_k: 0, top_p: 1, seed: 0, repetition_penalty: 1 };

/**
 * onnxruntime's own generation for `prompts` (decoder_reference.py).
 * @param {object} job
 * @returns {{tokens: number[], finish_reason: string, logits?: number[][]}[]}
 */
function referenceRun(job) {
  const out = execFileSync('python3', [`${fixtures}decoder_reference.py`], {
    input: JSON.stringify({ model: modelPath, ...job }),
    maxBuffer: 64 << 20,
  });
  return JSON.parse(out.toString());
}

/**
 * A decoder on the fixture session, with every step event kept.
 * @param {Partial<import('../src/generation/decoder.js').GenerationConfig>} [overrides]
 */
function decoderWith(overrides = {}) {
  /** @type {import('../src/generation/decoder.js').StepEvent[]} */
  const steps = [];
  const decoder = createDecoder({
    ort,
    session,
    exclusive,
    config: {
      layout, kv_cache: 'fp32', continuous_batching: true, max_batch: 16, context_length: 256, pad_token_id: 0,
      ...overrides,
    },
    emit: (step) => steps.push(step),
  });
  /**
   * Tokens and logits each request got, from the step events.
   * @param {number} req
   */
  const tokensOf = (req) => steps.flatMap((s) => s.tokens).filter((t) => t.req === req);
  return { decoder, steps, tokensOf };
}

let nextReq = 1;
/**
 * @param {number[]} prompt
 * @param {Partial<import('../src/generation/decoder.js').GenerateRequest>} [options]
 */
const request = (prompt, options = {}) => ({
  req: nextReq++, model: 'decoder', prompt, max_new_tokens: 24, sampling: GREEDY,
  stop_token_ids: [], logprobs: null, logits: false, ...options,
});

test('greedy tokens equal onnxruntime and logits match within 1e-4 at every step', async () => {
  const { decoder, tokensOf } = decoderWith();
  for (const p of reference.prompts) {
    const r = request(p.input_ids, { logits: true });
    const summary = await decoder.generate(r);
    const got = tokensOf(r.req);
    assert.deepEqual(got.map((t) => t.id), p.tokens, p.name);
    assert.equal(summary.finish_reason, 'length');
    assert.equal(summary.completion_tokens, 24);
    assert.equal(summary.prompt_tokens, p.input_ids.length);
    let worst = 0;
    p.logits.forEach((/** @type {number[]} */ expected, /** @type {number} */ step) => {
      const logits = /** @type {number[]} */ (got[step].logits);
      expected.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - logits[i])); });
    });
    assert.ok(worst < 1e-4, `${p.name}: logits differ by ${worst}`);
  }
});

test('a stop token ends the sequence with finish_reason stop, the token included', async () => {
  const { decoder, tokensOf } = decoderWith();
  const chat = reference.prompts.find((/** @type {any} */ p) => p.name === 'chat');
  const r = request(chat.input_ids, { stop_token_ids: reference.eos_token_ids });
  const summary = await decoder.generate(r);
  const got = tokensOf(r.req).map((t) => t.id);
  assert.deepEqual(got, chat.tokens.slice(0, chat.first_eos_step + 1));
  assert.equal(summary.finish_reason, 'stop');
  assert.equal(tokensOf(r.req).at(-1)?.finish, 'stop');
});

test('continuous batching: sequences joining and leaving mid-stream get exactly their tokens alone', async () => {
  const { decoder, steps, tokensOf } = decoderWith();
  const [a, b, c] = reference.prompts;
  const ra = request(a.input_ids);
  const rb = request(b.input_ids, { max_new_tokens: 10 });
  const first = decoder.generate(ra);
  const second = decoder.generate(rb);
  // c joins once a and b have decoded a few steps together.
  while (tokensOf(ra.req).length < 6) await new Promise((r) => setTimeout(r, 1));
  const rc = request(c.input_ids);
  const third = decoder.generate(rc);
  await Promise.all([first, second, third]);
  assert.deepEqual(tokensOf(ra.req).map((t) => t.id), a.tokens);
  assert.deepEqual(tokensOf(rb.req).map((t) => t.id), b.tokens.slice(0, 10));
  assert.deepEqual(tokensOf(rc.req).map((t) => t.id), c.tokens);
  // They really ran together: some decode step held all three rows.
  assert.equal(Math.max(...steps.filter((s) => !s.prefill).map((s) => s.batch)), 3);
  // And b left while a and c went on in a batch of two.
  assert.ok(steps.some((s) => !s.prefill && s.batch === 2 && s.tokens.every((t) => t.req !== rb.req)));
});

test('without continuous batching each sequence decodes alone, taking turns', async () => {
  const { decoder, steps, tokensOf } = decoderWith({ continuous_batching: false });
  const [a, b] = reference.prompts;
  const ra = request(a.input_ids);
  const rb = request(b.input_ids);
  await Promise.all([decoder.generate(ra), decoder.generate(rb)]);
  assert.deepEqual(tokensOf(ra.req).map((t) => t.id), a.tokens);
  assert.deepEqual(tokensOf(rb.req).map((t) => t.id), b.tokens);
  assert.ok(steps.every((s) => s.batch === 1));
});

test('seeded sampling repeats exactly, alone or batched, and another seed differs', async () => {
  const { decoder, tokensOf } = decoderWith();
  const prompt = reference.prompts[0].input_ids;
  const sampling = { temperature: 0.9, top_k: 50, top_p: 0.95, seed: 1234, repetition_penalty: 1.1 };
  const alone = request(prompt, { sampling, max_new_tokens: 32 });
  await decoder.generate(alone);
  const again = request(prompt, { sampling, max_new_tokens: 32 });
  const other = request(prompt, { sampling: { ...sampling, seed: 99 }, max_new_tokens: 32 });
  const beside = request(reference.prompts[1].input_ids, { sampling: { ...sampling, seed: 7 }, max_new_tokens: 32 });
  await Promise.all([decoder.generate(again), decoder.generate(other), decoder.generate(beside)]);
  const ids = (/** @type {number} */ req) => tokensOf(req).map((t) => t.id);
  assert.deepEqual(ids(again.req), ids(alone.req));
  assert.notDeepEqual(ids(other.req), ids(alone.req));
  assert.notDeepEqual(ids(alone.req).slice(0, 24), reference.prompts[0].tokens);
});

test('log-probabilities: the chosen token and the top ones, from the raw logits', async () => {
  const { decoder, tokensOf } = decoderWith();
  const p = reference.prompts[1];
  const r = request(p.input_ids, { logprobs: 3, max_new_tokens: 4 });
  await decoder.generate(r);
  tokensOf(r.req).forEach((t, step) => {
    const logits = p.logits[step];
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((/** @type {number} */ a, /** @type {number} */ v) => a + Math.exp(v - max), 0));
    assert.ok(Math.abs(/** @type {number} */ (t.logprob) - (logits[t.id] - lse)) < 1e-4);
    const top = /** @type {[number, number][]} */ (t.top);
    assert.equal(top.length, 3);
    assert.equal(top[0][0], t.id);
    assert.ok(top[0][1] >= top[1][1] && top[1][1] >= top[2][1]);
  });
});

test('a cancelled sequence leaves at the next step and frees its cache', async () => {
  const { decoder, steps, tokensOf } = decoderWith();
  const [a, b] = reference.prompts;
  const ra = request(a.input_ids, { max_new_tokens: 200 });
  const rb = request(b.input_ids, { max_new_tokens: 40 });
  const pa = decoder.generate(ra);
  const pb = decoder.generate(rb);
  while (tokensOf(ra.req).length < 5) await new Promise((r) => setTimeout(r, 1));
  const before = decoder.report();
  assert.equal(before.sequences, 2);
  const atCancel = tokensOf(ra.req).length;
  assert.ok(decoder.cancel(ra.req));
  const summary = await pa;
  assert.equal(summary.finish_reason, 'cancelled');
  const made = tokensOf(ra.req).length;
  const stepsAtCancel = steps.length;
  // Gone within one step: at most one more token after the cancel (the step running
  // when it came).
  assert.ok(made <= atCancel + 1, `${made} tokens, ${atCancel} at the cancel`);
  const after = decoder.report();
  assert.equal(after.sequences, 1);
  assert.ok(after.kv_bytes < before.kv_bytes);
  await pb;
  // b went on as if a had never been there.
  assert.deepEqual(tokensOf(rb.req).map((t) => t.id).slice(0, 24), b.tokens);
  assert.ok(steps.length > stepsAtCancel);
  assert.equal(decoder.cancel(ra.req), false);
  assert.equal(decoder.report().sequences, 0);
  assert.equal(decoder.report().kv_bytes, 0);
});

test('the context length is enforced: a prompt that fills it is refused, generation stops at it', async () => {
  const { decoder, tokensOf } = decoderWith({ context_length: 30 });
  const long = Array.from({ length: 30 }, (_, i) => 5 + i);
  await assert.rejects(decoder.generate(request(long)), /context holds 30/);
  const r = request(reference.prompts[0].input_ids, { max_new_tokens: 100 });
  const summary = await decoder.generate(r);
  // 20 prompt tokens: positions 0..29 hold the prompt and 10 fed tokens; the 11th is made last.
  assert.equal(summary.finish_reason, 'length');
  assert.equal(tokensOf(r.req).length, 11);
});

for (const [kv, bits] of /** @type {const} */ ([['int8', 8], ['int4', 4]])) {
  test(`${kv} KV cache: the tokens onnxruntime makes with the same quantized cache, and ${32 / bits}x less memory`, async () => {
    const prompts = reference.prompts.map((/** @type {any} */ p) => p.input_ids);
    const expected = referenceRun({ prompts, max_new_tokens: 64, kv_dtype: kv });
    const fp32 = referenceRun({ prompts, max_new_tokens: 64 });
    const { decoder, tokensOf } = decoderWith({ kv_cache: kv });
    const requests = prompts.map((/** @type {number[]} */ p) => request(p, { max_new_tokens: 64 }));
    const summaries = await Promise.all(requests.map((r) => decoder.generate(r)));
    let agree = 0;
    requests.forEach((r, i) => {
      const got = tokensOf(r.req).map((t) => t.id);
      assert.deepEqual(got, expected[i].tokens, `prompt ${i}`);
      agree += got.filter((t, j) => t === fp32[i].tokens[j]).length;
    });
    const perToken = summaries[0].kv_bytes_per_token;
    const fp32PerToken = 2 * 2 * 2 * 16 * 4;
    assert.ok(fp32PerToken / perToken > (bits === 8 ? 3.5 : 6.5), `${fp32PerToken / perToken}x`);
    if (bits === 8) assert.ok(agree / (64 * prompts.length) >= 0.95, `agreement ${agree}`);
  });
}

/** A long prompt: the reference prompts' tokens, over and over, `n` of them. */
const longPrompt = (/** @type {number} */ n) => {
  const all = reference.prompts.flatMap((/** @type {any} */ p) => p.input_ids);
  return Array.from({ length: n }, (_, i) => all[i % all.length]);
};

/**
 * The prompt's scores a decoder sends with a sequence's first token.
 * @param {ReturnType<typeof decoderWith>} d
 * @param {{req: number}} r
 */
const promptScores = (d, r) => (d.tokensOf(r.req)[0].prompt ?? []).map((s) => s.logprob);

/**
 * @param {number[]} got
 * @param {number[]} want
 */
const worstDiff = (got, want) => {
  assert.equal(got.length, want.length);
  return Math.max(...got.map((v, i) => Math.abs(v - want[i])));
};

test('prompt log-probabilities: every prompt token after the first, as onnxruntime scores it, batched or alone', async () => {
  const prompts = [longPrompt(100), reference.prompts[1].input_ids];
  const expected = referenceRun({ prompts, max_new_tokens: 4, prompt_logprobs: true });
  const d = decoderWith();
  const requests = prompts.map((p) => request(p, { max_new_tokens: 4, prompt_logprobs: true, logprobs: 2 }));
  await Promise.all(requests.map((r) => d.decoder.generate(r)));
  requests.forEach((r, i) => {
    const got = promptScores(d, r);
    assert.equal(got.length, prompts[i].length - 1, 'one per prompt token after the first');
    assert.ok(worstDiff(got, expected[i].prompt_logprobs) < 1e-4, `prompt ${i}`);
    const first = /** @type {any} */ (d.tokensOf(r.req)[0].prompt)[0];
    assert.equal(first.top.length, 2, 'the top alternatives when logprobs asks for them');
    assert.deepEqual(d.tokensOf(r.req).map((t) => t.id), expected[i].tokens);
    // Only the first token carries them.
    assert.ok(d.tokensOf(r.req).slice(1).every((t) => t.prompt === undefined));
  });
});

for (const kv of /** @type {const} */ (['fp32', 'int8', 'int4'])) {
  test(`chunked prefill (${kv} cache): a long prompt fed 32 positions a run scores and continues as onnxruntime does with the same chunks`, async () => {
    const prompt = longPrompt(150);
    const kvDtype = kv === 'fp32' ? 'float32' : kv;
    const [expected] = referenceRun({ prompts: [prompt], max_new_tokens: 24, kv_dtype: kvDtype, prompt_logprobs: true, prefill_chunk: 32 });
    const d = decoderWith({ kv_cache: kv, prefill_chunk: 32 });
    const r = request(prompt, { prompt_logprobs: true });
    const short = request(reference.prompts[0].input_ids);
    const summary = await Promise.all([d.decoder.generate(r), d.decoder.generate(short)]);
    assert.equal(summary[0].prompt_tokens, 150);
    assert.ok(worstDiff(promptScores(d, r), expected.prompt_logprobs) < 1e-4);
    assert.deepEqual(d.tokensOf(r.req).map((t) => t.id), expected.tokens);
    // Five runs (32 * 4 + 22 positions), one step event: the last run made the first token.
    const prefills = d.steps.filter((s) => s.prefill && s.tokens.some((t) => t.req === r.req));
    assert.equal(prefills.length, 1, 'one step event for the whole prefill');
    // A short prompt beside it is not held to the chunk and keeps its own tokens.
    if (kv === 'fp32') assert.deepEqual(d.tokensOf(short.req).map((t) => t.id), reference.prompts[0].tokens);
  });
}
