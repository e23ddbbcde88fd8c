// @ts-check
// The KV cache's layouts in the page. A decoder's cache tensors are
// [rows, kv_heads, positions, head_dim]; a batch's rows are left-padded to one width
// (the pads are masked). `relayout` builds a batch's tensor from rows of other tensors
// (a sequence joins or leaves the batch); `QuantizedRow` keeps one sequence's cache of
// one tensor in int8 or int4, per (head, block of 32 positions), the scheme
// tests/fixtures/decoder_reference.py runs as the reference.

/**
 * The last `n` positions of row `row` of a [*, heads, len, dim] array.
 * @typedef {{data: ArrayLike<number> & {subarray: (a: number, b: number) => any},
 *   len: number, row: number, n: number}} RowSource
 */

/**
 * A new [sources.length, heads, len, dim] array of `Arr` whose row i holds the real
 * positions of `sources[i]`, right-aligned (zeros before them).
 * @template {Float32Array | Uint16Array} T
 * @param {{new (n: number): T}} Arr
 * @param {RowSource[]} sources
 * @param {number} heads
 * @param {number} dim
 * @param {number} len
 * @returns {T}
 */
export function relayout(Arr, sources, heads, dim, len) {
  const out = new Arr(sources.length * heads * len * dim);
  sources.forEach((src, i) => {
    if (src.n > len) throw new Error(`a row of ${src.n} positions does not fit ${len}`);
    for (let h = 0; h < heads; h++) {
      const from = ((src.row * heads + h) * src.len + (src.len - src.n)) * dim;
      const to = ((i * heads + h) * len + (len - src.n)) * dim;
      out.set(src.data.subarray(from, from + src.n * dim), to);
    }
  });
  return out;
}

export const KV_BLOCK = 32;
/** The largest magnitude of a quantized value, by bits. */
const QMAX = { 8: 127, 4: 7 };

/**
 * Rounds half to even, as numpy's rint.
 * @param {number} x
 */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * One sequence's cache of one tensor, quantized: per head, the values of every position
 * (int8, or int4 packed two to a byte) and one float32 scale per block of `KV_BLOCK`
 * positions. A full block keeps its values; the block being filled is quantized again,
 * from its dequantized values and the new ones, when positions join it. Arithmetic is
 * float32, as in the reference.
 */
export class QuantizedRow {
  /**
   * @param {4 | 8} bits
   * @param {number} heads
   * @param {number} dim
   */
  constructor(bits, heads, dim) {
    this.bits = bits;
    this.heads = heads;
    this.dim = dim;
    this.qmax = QMAX[bits];
    this.n = 0;
    this.capacity = 0;
    /** @type {Int8Array[]} values per head, [capacity, dim] (int4: two per byte) */
    this.values = [];
    /** @type {Float32Array[]} scales per head, one per block */
    this.scales = [];
    this.grow(KV_BLOCK);
  }

  /** @param {number} positions */
  grow(positions) {
    let capacity = Math.max(this.capacity, KV_BLOCK);
    while (capacity < positions) capacity *= 2;
    if (capacity === this.capacity) return;
    const bytes = (capacity * this.dim * this.bits) / 8;
    for (let h = 0; h < this.heads; h++) {
      const values = new Int8Array(bytes);
      const scales = new Float32Array(capacity / KV_BLOCK);
      if (this.values[h]) {
        values.set(this.values[h]);
        scales.set(this.scales[h]);
      }
      this.values[h] = values;
      this.scales[h] = scales;
    }
    this.capacity = capacity;
  }

  /** Bytes held for the positions stored (values and scales). */
  bytes() {
    return this.heads * ((this.n * this.dim * this.bits) / 8 + Math.ceil(this.n / KV_BLOCK) * 4);
  }

  /**
   * @param {Int8Array} values
   * @param {number} i element index
   */
  get(values, i) {
    if (this.bits === 8) return values[i];
    const byte = values[i >> 1];
    // Low nibble first; sign-extended from 4 bits.
    const nibble = i & 1 ? (byte >> 4) & 0xf : byte & 0xf;
    return nibble > 7 ? nibble - 16 : nibble;
  }

  /**
   * @param {Int8Array} values
   * @param {number} i
   * @param {number} q
   */
  put(values, i, q) {
    if (this.bits === 8) {
      values[i] = q;
      return;
    }
    const at = i >> 1;
    const nibble = q & 0xf;
    values[at] = i & 1 ? (values[at] & 0x0f) | (nibble << 4) : (values[at] & 0xf0) | nibble;
  }

  /**
   * Appends `count` positions: row `row` of a [*, heads, len, dim] float32 array,
   * positions [from, from + count).
   * @param {Float32Array} data
   * @param {number} len
   * @param {number} row
   * @param {number} from
   * @param {number} count
   */
  append(data, len, row, from, count) {
    const { dim, heads } = this;
    this.grow(this.n + count);
    const first = Math.floor(this.n / KV_BLOCK) * KV_BLOCK;
    const end = this.n + count;
    for (let h = 0; h < heads; h++) {
      const values = this.values[h];
      const scales = this.scales[h];
      const source = ((row * heads + h) * len + from) * dim;
      // Position p's float value: stored (dequantized) below n, new from `data` above.
      const at = (/** @type {number} */ p, /** @type {number} */ d) => (p < this.n
        ? Math.fround(this.get(values, p * dim + d) * scales[Math.floor(p / KV_BLOCK)])
        : data[source + (p - this.n) * dim + d]);
      for (let start = first; start < end; start += KV_BLOCK) {
        const stop = Math.min(start + KV_BLOCK, end);
        const block = new Float32Array((stop - start) * dim);
        let max = 0;
        for (let p = start; p < stop; p++) {
          for (let d = 0; d < dim; d++) {
            const x = at(p, d);
            block[(p - start) * dim + d] = x;
            max = Math.max(max, Math.abs(x));
          }
        }
        const scale = max === 0 ? 1 : Math.fround(max / this.qmax);
        for (let i = 0; i < block.length; i++) {
          const q = roundHalfEven(Math.fround(block[i] / scale));
          this.put(values, start * dim + i, Math.max(-this.qmax, Math.min(this.qmax, q)));
        }
        scales[start / KV_BLOCK] = scale;
      }
    }
    this.n = end;
  }

  /**
   * Writes the dequantized positions into row `row` of a [*, heads, len, dim] float32
   * array, right-aligned.
   * @param {Float32Array} out
   * @param {number} len
   * @param {number} row
   */
  writeInto(out, len, row) {
    const { dim, heads, n } = this;
    for (let h = 0; h < heads; h++) {
      const values = this.values[h];
      const scales = this.scales[h];
      const base = ((row * heads + h) * len + (len - n)) * dim;
      for (let p = 0; p < n; p++) {
        const scale = scales[Math.floor(p / KV_BLOCK)];
        for (let d = 0; d < dim; d++) {
          out[base + p * dim + d] = Math.fround(this.get(values, p * dim + d) * scale);
        }
      }
    }
  }
}

/**
 * `relayout` for cache tensors held in GPU buffers (WebGPU sessions keep their presents
 * there): the rows are copied buffer to buffer on onnxruntime-web's device, nothing is
 * read back. The presents' commands are already submitted: the run read its logits back,
 * which flushes onnxruntime-web's command encoder, and the queue keeps submission order.
 * @param {any} ort the build that made the session (its env holds the device)
 * @param {{tensor: any, row: number, n: number}[]} sources
 * @param {number} heads
 * @param {number} dim
 * @param {number} len
 */
export async function relayoutOnGpu(ort, sources, heads, dim, len) {
  /** @type {any} */
  const device = await ort.env.webgpu.device;
  const rowBytes = heads * len * dim * 4;
  // @ts-ignore: GPUBufferUsage exists where WebGPU does
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  // Buffers start zeroed; a zero-sized one is not allowed.
  const buffer = device.createBuffer({ size: Math.max(16, Math.ceil((sources.length * rowBytes) / 16) * 16), usage });
  const encoder = device.createCommandEncoder();
  sources.forEach((src, i) => {
    const from = src.tensor.gpuBuffer;
    const srcLen = src.tensor.dims[2];
    if (src.n > len) throw new Error(`a row of ${src.n} positions does not fit ${len}`);
    if (!src.n) return;
    for (let h = 0; h < heads; h++) {
      const at = ((src.row * heads + h) * srcLen + (srcLen - src.n)) * dim * 4;
      const to = ((i * heads + h) * len + (len - src.n)) * dim * 4;
      encoder.copyBufferToBuffer(from, at, buffer, to, src.n * dim * 4);
    }
  });
  device.queue.submit([encoder.finish()]);
  return ort.Tensor.fromGpuBuffer(buffer, {
    dataType: 'float32',
    dims: [sources.length, heads, len, dim],
    dispose: () => buffer.destroy(),
  });
}
