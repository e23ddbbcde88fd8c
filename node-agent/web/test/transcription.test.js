// @ts-check
// The page's generation loop with an encoder-decoder (src/generation/decoder.js, the
// `cross_attention` layout) on real onnxruntime-web (wasm, under Node) with the
// Whisper-style fixture (tests/fixtures/make_whisper.py): the encoder runs once per
// sequence on its log-mel features and its outputs are fed back as the cross-attention
// cache at every step; tokens and logits against onnxruntime's own loop
// (models/whisper/reference.json), alone and batched.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

// @ts-ignore: onnxruntime-web's Node build, untyped here
import * as ort from '../node_modules/onnxruntime-web/dist/ort.node.min.mjs';
import { createDecoder } from '../src/generation/decoder.js';

const dir = fileURLToPath(new URL('../../tests/fixtures/models/whisper/', import.meta.url));
const reference = JSON.parse(readFileSync(`${dir}reference.json`, 'utf8'));
ort.env.wasm.numThreads = 1;
const decoderSession = await ort.InferenceSession.create(readFileSync(`${dir}model.onnx`), { executionProviders: ['wasm'] });
const encoderSession = await ort.InferenceSession.create(readFileSync(`${dir}encoder_model.onnx`), { executionProviders: ['wasm'] });

/** @type {Promise<unknown>} */
let queue = Promise.resolve();
const exclusive = (/** @type {() => any} */ fn) => {
  const p = queue.then(fn);
  queue = p.catch(() => {});
  return p;
};

const layout = { layers: 2, kv_heads: 4, head_dim: 16, vocab: 320, ids_type: /** @type {const} */ ('int64'), position_ids: true, cross_attention: true };
const GREEDY = { temperature: 0, top_k: 0, top_p: 1, seed: 0, repetition_penalty: 1 };

function decoderWith(encoder = () => encoderSession) {
  /** @type {import('../src/generation/decoder.js').StepEvent[]} */
  const steps = [];
  const decoder = createDecoder({
    ort,
    session: decoderSession,
    exclusive,
    config: {
      layout, kv_cache: 'fp32', continuous_batching: true, max_batch: 8, context_length: 64, pad_token_id: 0,
      encoder_model: 'whisper#encoder',
    },
    emit: (step) => steps.push(step),
    encoder,
  });
  const tokensOf = (/** @type {number} */ req) => steps.flatMap((s) => s.tokens).filter((t) => t.req === req);
  return { decoder, tokensOf };
}

let nextReq = 1;
/** @param {any} sound */
const request = (sound) => ({
  req: nextReq++, model: 'whisper', prompt: reference.prompt, max_new_tokens: reference.new_tokens,
  sampling: GREEDY, stop_token_ids: [reference.eos_token_id], logprobs: null, logits: true,
  features: { dims: [1, sound.features.length, sound.features[0].length], data: sound.features.flat() },
});

/**
 * @param {any} sound
 * @param {any[]} got
 */
function assertReference(sound, got) {
  assert.deepEqual(got.map((t) => t.id), sound.tokens, sound.name);
  let worst = 0;
  sound.logits.forEach((/** @type {number[]} */ want, /** @type {number} */ step) => {
    want.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - got[step].logits[i])); });
  });
  assert.ok(worst < 1e-4, `${sound.name}: logits differ by ${worst}`);
}

test('an encoder-decoder transcribes as onnxruntime does: the encoder once, its cache fed back every step', async () => {
  const { decoder, tokensOf } = decoderWith();
  for (const sound of reference.sounds) {
    const r = request(sound);
    const summary = await decoder.generate(r);
    assert.equal(summary.completion_tokens, reference.new_tokens);
    assertReference(sound, tokensOf(r.req));
  }
});

test('sequences of different audio batched together each get their own transcription', async () => {
  const { decoder, tokensOf } = decoderWith();
  const requests = [...reference.sounds, ...reference.sounds].map(request);
  await Promise.all(requests.map((r) => decoder.generate(r)));
  requests.forEach((r, i) => assertReference(reference.sounds[i % 2], tokensOf(r.req)));
});

test('a request without features, or with no encoder loaded, is refused with the reason', async () => {
  const { decoder } = decoderWith();
  const r = { ...request(reference.sounds[0]), features: undefined };
  await assert.rejects(decoder.generate(r), /no input features/);
  const orphan = decoderWith(() => undefined).decoder;
  await assert.rejects(orphan.generate(request(reference.sounds[0])), /encoder model 'whisper#encoder' is not loaded/);
});
