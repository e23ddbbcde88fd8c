// @ts-check
// The KV cache of a batch of sequences between steps (decoder.js): the tensors a step
// feeds (kept as onnxruntime gave them, or the rows' quantized caches dequantized),
// rebuilt when rows join or leave (on the GPU when the cache lives there), and a step's
// presents kept as the next past or quantized into each row's cache.

import { QuantizedRow, relayout } from './kv.js';

/**
 * What the cache needs of a sequence.
 * @typedef {{n: number, quantized: Map<string, QuantizedRow> | null}} CacheRow
 */
/**
 * A batch as the cache sees it (decoder.js's Batch).
 * @typedef {{rows: CacheRow[], width: number, past: Map<string, any> | null}} Batch
 */

/**
 * The cache operations of one decoder.
 * @param {{ort: any, names: {past: string, present: string}[], heads: number, dim: number,
 *   bits: number, relayoutGpu?: (sources: {tensor: any, row: number, n: number}[],
 *   heads: number, dim: number, width: number) => any}} deps `bits`: 8 or 4 for a
 *   quantized cache, 0 for float32
 */
export function createCacheOps({ ort, names, heads, dim, bits, relayoutGpu }) {
  /**
   * The cache tensors a batch feeds: kept ones, or the rows' quantized caches
   * dequantized into one tensor per name.
   * @param {Batch} batch
   */
  function pastOf(batch) {
    if (batch.past) return batch.past;
    const past = new Map();
    for (const { past: name } of names) {
      const data = new Float32Array(batch.rows.length * heads * batch.width * dim);
      batch.rows.forEach((s, r) => /** @type {Map<string, QuantizedRow>} */ (s.quantized).get(name)?.writeInto(data, batch.width, r));
      past.set(name, new ort.Tensor('float32', data, [batch.rows.length, heads, batch.width, dim]));
    }
    return past;
  }

  /**
   * A batch's cache tensors rebuilt for `rows`, width `width`, from the tensors
   * `from` (by name) where each row sits at the index `at` gives.
   * @param {{rows: CacheRow[], from: Map<string, any>, at: number[], width: number}[]} parts
   * @param {number} width
   */
  async function rebuild(parts, width) {
    const past = new Map();
    for (const { past: name } of names) {
      const sources = parts.flatMap((p) => p.rows.map((s, i) => ({ tensor: p.from.get(name), row: p.at[i], n: s.n })));
      const rows = sources.length;
      if (sources.some((src) => src.tensor.location === 'gpu-buffer')) {
        if (!relayoutGpu) throw new Error('cache tensors on the GPU but no GPU relayout');
        past.set(name, await relayoutGpu(sources, heads, dim, width));
      } else {
        const data = relayout(Float32Array, sources.map((src) => ({
          data: src.tensor.data, len: src.tensor.dims[2], row: src.row, n: src.n,
        })), heads, dim, width);
        past.set(name, new ort.Tensor('float32', data, [rows, heads, width, dim]));
      }
    }
    return past;
  }

  /**
   * Disposes cache tensors that live on the GPU.
   * @param {Map<string, any> | null} past
   */
  function dispose(past) {
    for (const t of past?.values() ?? []) if (t.location === 'gpu-buffer') t.dispose();
  }

  /**
   * Keeps a run's presents as the cache of `rows`: as they are (the batch's next past),
   * or, with a quantized cache, the positions each row was just fed (`fed`) appended to
   * its quantized rows and the presents let go (null: the past is rebuilt from them).
   * @param {CacheRow[]} rows
   * @param {number} width positions in the presents
   * @param {Map<string, any>} presents
   * @param {number[]} fed
   * @returns {Promise<Map<string, any> | null>}
   */
  async function keepCache(rows, width, presents, fed) {
    if (!bits) return presents;
    for (const [name, tensor] of presents) {
      const data = tensor.location === 'cpu' ? tensor.data : await tensor.getData(true);
      rows.forEach((s, r) => {
        s.quantized ??= new Map(names.map(({ past: p }) => [p, new QuantizedRow(/** @type {4 | 8} */ (bits), heads, dim)]));
        /** @type {QuantizedRow} */ (s.quantized.get(name)).append(data, width, r, width - fed[r], fed[r]);
      });
    }
    dispose(presents);
    return null;
  }


  return { pastOf, rebuild, dispose, keepCache };
}
