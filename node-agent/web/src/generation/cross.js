// @ts-check
// An encoder-decoder's side of generation (Whisper's layout, the decoder's
// `cross_attention`): the decoder names its own cache past_key_values.{i}.decoder.key|value
// and takes the encoder's keys and values as past_key_values.{i}.encoder.key|value
// [batch, heads, encoder_seq, head_dim]. The encoder (a session of its own) runs once per
// sequence on the request's input_features, and its present.{i}.encoder.key|value
// outputs are that sequence's cross-attention cache, fed back unchanged at every step,
// stacked over the rows of a batch.

/** @typedef {import('./decoder.js').DecoderLayout} DecoderLayout */

/**
 * A decoder's own cache tensors: each past input and the present output it becomes.
 * @param {DecoderLayout} layout
 * @returns {{past: string, present: string}[]}
 */
export function cacheNames(layout) {
  const infix = layout.cross_attention ? '.decoder' : '';
  const names = [];
  for (let i = 0; i < layout.layers; i++) {
    for (const kind of ['key', 'value']) names.push({ past: `past_key_values.${i}${infix}.${kind}`, present: `present.${i}${infix}.${kind}` });
  }
  return names;
}

/**
 * An encoder-decoder's cross-attention inputs and the encoder outputs that fill them.
 * @param {DecoderLayout} layout
 * @returns {{input: string, output: string}[]}
 */
export function crossNames(layout) {
  if (!layout.cross_attention) return [];
  const names = [];
  for (let i = 0; i < layout.layers; i++) {
    for (const kind of ['key', 'value']) names.push({ input: `past_key_values.${i}.encoder.${kind}`, output: `present.${i}.encoder.${kind}` });
  }
  return names;
}

/**
 * The cross-attention of one decoder.
 * @param {{ort: any, exclusive: <T>(fn: () => T | PromiseLike<T>) => Promise<T>,
 *   layout: DecoderLayout, encoder?: () => any, encoderName?: string}} deps
 */
export function createCross({ ort, exclusive, layout, encoder, encoderName }) {
  const names = crossNames(layout);
  /** The inputs of the batch last run (its rows by request number), kept while it stays. */
  let fed = { key: '', feeds: /** @type {Map<string, any>} */ (new Map()) };
  return {
    /** Whether the decoder takes cross-attention inputs. */
    active: names.length > 0,
    /**
     * Runs the encoder on one sequence's features: its cross-attention cache, by input
     * name ([1, heads, encoder_seq, head_dim]).
     * @param {{dims: number[], data: number[]} | undefined} features
     * @returns {Promise<Map<string, any>>}
     */
    async encode(features) {
      if (!features) throw new Error('this model transcribes audio: the request has no input features');
      const session = encoder?.();
      if (!session) throw new Error(`the encoder model '${encoderName}' is not loaded in this page`);
      const input = new ort.Tensor('float32', Float32Array.from(features.data), features.dims);
      const out = await exclusive(() => session.run({ input_features: input }));
      const cache = new Map();
      for (const { input: name, output } of names) {
        const t = out[output];
        if (!t) throw new Error(`the encoder has no output '${output}'`);
        const data = t.location === 'cpu' ? t.data : await t.getData(true);
        cache.set(name, new ort.Tensor('float32', data, t.dims));
      }
      return cache;
    },
    /**
     * The cross-attention inputs of `rows`: each row's cache stacked on the batch axis
     * (the encoder's length is the same for all: its chunk).
     * @param {{request: {req: number}, cross: Map<string, any> | null}[]} rows
     * @returns {Map<string, any>}
     */
    feeds(rows) {
      if (!names.length) return new Map();
      const key = rows.map((s) => s.request.req).join(',');
      if (fed.key === key) return fed.feeds;
      const feeds = new Map();
      for (const { input: name } of names) {
        const parts = rows.map((s) => /** @type {Map<string, any>} */ (s.cross).get(name));
        const [, h, t, d] = parts[0].dims;
        if (parts.some((p) => p.dims[2] !== t)) throw new Error('encoder outputs of different lengths cannot share a batch');
        const data = new Float32Array(rows.length * h * t * d);
        parts.forEach((p, r) => data.set(p.data, r * h * t * d));
        feeds.set(name, new ort.Tensor('float32', data, [rows.length, h, t, d]));
      }
      fed = { key, feeds };
      return feeds;
    },
  };
}
