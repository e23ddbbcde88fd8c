// @ts-check
// Choosing each sequence's next token from its logits, in the page: greedy, or sampling
// with temperature, top-k and top-p from a seeded generator (the same seed and
// parameters give the same tokens, whatever else the batch holds), after Hugging Face's
// repetition penalty. Also the log-probabilities a request may ask for.

/**
 * What one sequence asks of its sampling (api/src/generate.rs's SamplingParams).
 * `temperature` 0 is greedy; `top_k` 0 and `top_p` 1 keep every token;
 * `repetition_penalty` 1 is off.
 * @typedef {{temperature: number, top_k: number, top_p: number, seed: number,
 *   repetition_penalty: number}} Sampling
 */

/**
 * A generator of uniform numbers in [0, 1) from a 32-bit seed (Mulberry32): small,
 * fast, and the same on every engine, so a seeded request repeats exactly.
 * @param {number} seed
 * @returns {() => number}
 */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The index of the largest value, the lowest index on a tie (as numpy's argmax).
 * @param {ArrayLike<number>} xs
 */
export function argmax(xs) {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

/**
 * log(sum(exp(x))) of `logits`, computed stably.
 * @param {ArrayLike<number>} logits
 */
function logSumExp(logits) {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/**
 * The model's log-probability of `token`, and of its `top` most likely tokens (most
 * likely first), from the raw logits: what the model said, before any penalty or
 * temperature (as vLLM and the OpenAI API report them).
 * @param {ArrayLike<number>} logits
 * @param {number} token
 * @param {number} top
 * @returns {{logprob: number, top: [number, number][]}}
 */
export function logprobs(logits, token, top) {
  const lse = logSumExp(logits);
  /** @type {[number, number][]} */
  let best = [];
  if (top > 0) {
    // A partial selection: `top` is small beside the vocabulary.
    for (let i = 0; i < logits.length; i++) {
      if (best.length < top || logits[i] > best[best.length - 1][1]) {
        best.push([i, logits[i]]);
        best.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
        if (best.length > top) best.pop();
      }
    }
    best = best.map(([i, l]) => [i, l - lse]);
  }
  return { logprob: logits[token] - lse, top: best };
}

/**
 * Hugging Face's repetition penalty (CTRL): every token already in the sequence has its
 * logit divided by `penalty` when positive, multiplied when negative. In place.
 * @param {Float32Array} logits
 * @param {Iterable<number>} seen
 * @param {number} penalty
 */
export function penalise(logits, seen, penalty) {
  if (penalty === 1) return;
  for (const id of new Set(seen)) {
    const l = logits[id];
    logits[id] = l > 0 ? l / penalty : l * penalty;
  }
}

/**
 * A sequence's sampler: `next(logits, seen)` picks its next token.
 * @param {Sampling} params
 */
export function createSampler(params) {
  const { temperature, top_k: topK, top_p: topP, repetition_penalty: penalty } = params;
  const random = seeded(params.seed);
  /**
   * @param {Float32Array} raw the model's logits for the next position (not changed)
   * @param {Iterable<number>} seen the sequence's tokens so far, prompt included
   */
  function next(raw, seen) {
    const logits = penalty === 1 ? raw : Float32Array.from(raw);
    penalise(logits, seen, penalty);
    if (temperature === 0) return argmax(logits);
    // Candidates most likely first (ties: lowest id), cut to top_k. Tokens whose
    // probability is below e^-40 of the likeliest one are left out before sorting (a
    // real vocabulary has 10^5 tokens): together they weigh less than 10^-12, far below
    // the 2^-32 resolution of the uniform draw, so the choice is unchanged.
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
    const floor = max - 40 * temperature;
    /** @type {number[]} */
    let order = [];
    for (let i = 0; i < logits.length; i++) if (logits[i] >= floor) order.push(i);
    order.sort((a, b) => logits[b] - logits[a] || a - b);
    if (topK > 0 && topK < order.length) order = order.slice(0, topK);
    let probs = order.map((i) => Math.exp((logits[i] - max) / temperature));
    let total = probs.reduce((a, b) => a + b, 0);
    if (topP < 1) {
      // The smallest head of the list whose probability reaches top_p (at least one).
      let kept = 0;
      let mass = 0;
      while (kept < probs.length && (kept === 0 || mass / total < topP)) mass += probs[kept++];
      order = order.slice(0, kept);
      probs = probs.slice(0, kept);
      total = mass;
    }
    let u = random() * total;
    for (let i = 0; i < order.length; i++) {
      u -= probs[i];
      if (u < 0) return order[i];
    }
    return order[order.length - 1];
  }
  return { next };
}
