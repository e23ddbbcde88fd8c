// @ts-check
// The binary frame format of webaccel's wire protocol; the Rust side is api/src/wire.rs,
// which documents the layout. Kept byte for byte in step with it: test/golden/frames/
// holds frames both sides' tests read and write.

import { RETRYABLE } from './categories.js';

const MAGIC = [0x57, 0x41, 0x46, 0x31]; // "WAF1"
const PREFIX_LEN = 20;
const ALIGN = 8;
export const KIND_REQUEST = 1;
export const KIND_RESPONSE = 2;
export const KIND_ERROR = 3;
// A model the page answers by sending the request's tensors straight back (ECHO_MODEL in
// api/src/wire.rs): the bridge's floor, for benchmarks.
export const ECHO_MODEL = '__echo__';

const SIZES = {
  BOOL: 1, UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, FP16: 2,
  UINT32: 4, INT32: 4, FP32: 4, UINT64: 8, INT64: 8, FP64: 8,
};
// onnxruntime-web type names, and the typed array each one is viewed as.
const ORT_TYPES = {
  BOOL: ['bool', Uint8Array], UINT8: ['uint8', Uint8Array], INT8: ['int8', Int8Array],
  UINT16: ['uint16', Uint16Array], INT16: ['int16', Int16Array], FP16: ['float16', Uint16Array],
  UINT32: ['uint32', Uint32Array], INT32: ['int32', Int32Array], FP32: ['float32', Float32Array],
  UINT64: ['uint64', BigUint64Array], INT64: ['int64', BigInt64Array], FP64: ['float64', Float64Array],
};
const FROM_ORT = Object.fromEntries(Object.entries(ORT_TYPES).map(([k, [o]]) => [o, k]));

/** @type {(datatype: string) => string | undefined} */
export const ortType = (datatype) => ORT_TYPES[datatype]?.[0];
/** @type {(ortName: string) => string | undefined} */
export const datatypeOf = (ortName) => FROM_ORT[ortName];

/** @typedef {{name: string, datatype: string, shape: number[]}} TensorHeader */
/**
 * A tensor of a frame: its data a typed array (BigInt64Array for INT64, Uint16Array of
 * IEEE half bits for FP16, Uint8Array for BOOL).
 * @typedef {TensorHeader & {data: ArrayBufferView}} FrameTensor
 */

/** @param {number} n */
const alignUp = (n) => Math.ceil(n / ALIGN) * ALIGN;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Decodes a frame into {kind, id, header, tensors} where each tensor's data is a typed
 * array viewing the frame's buffer (no copy: tensors are 8-aligned).
 * @param {ArrayBuffer} buf
 * @returns {{kind: number, id: bigint, header: any, tensors: FrameTensor[]}}
 */
export function decodeFrame(buf) {
  const view = new DataView(buf);
  if (buf.byteLength < PREFIX_LEN) throw new Error('frame shorter than its prefix');
  for (let i = 0; i < 4; i++) if (view.getUint8(i) !== MAGIC[i]) throw new Error('bad magic');
  const kind = view.getUint8(4);
  const id = view.getBigUint64(8, true);
  const headerLen = view.getUint32(16, true);
  const header = JSON.parse(decoder.decode(new Uint8Array(buf, PREFIX_LEN, headerLen)));
  let cursor = PREFIX_LEN + headerLen;
  const list = kind === KIND_REQUEST ? header.inputs : kind === KIND_RESPONSE ? header.outputs : [];
  const tensors = list.map((/** @type {TensorHeader} */ t) => {
    const count = t.shape.reduce((a, b) => a * b, 1);
    const start = alignUp(cursor);
    const bytes = count * SIZES[t.datatype];
    if (start + bytes > buf.byteLength) throw new Error(`tensor '${t.name}' runs past the frame`);
    cursor = start + bytes;
    const Arr = ORT_TYPES[t.datatype][1];
    return { ...t, data: new Arr(buf, start, count) };
  });
  return { kind, id, header, tensors };
}

/**
 * Encodes a frame; the header lists the tensors, whose data follows in this order.
 * @param {number} kind
 * @param {bigint | number} id
 * @param {object} header
 * @param {{data: ArrayBufferView}[]} tensors
 * @param {number} slack spaces after the header's JSON, room for `rewriteHeader`
 * @returns {ArrayBuffer}
 */
export function encodeFrame(kind, id, header, tensors = [], slack = 0) {
  const headerBytes = encoder.encode(JSON.stringify(header) + ' '.repeat(slack));
  let size = PREFIX_LEN + headerBytes.length;
  const offsets = tensors.map((t) => {
    const start = alignUp(size);
    size = start + t.data.byteLength;
    return start;
  });
  const buf = new ArrayBuffer(size);
  const bytes = new Uint8Array(buf);
  const view = new DataView(buf);
  bytes.set(MAGIC, 0);
  view.setUint8(4, kind);
  view.setBigUint64(8, BigInt(id), true);
  view.setUint32(16, headerBytes.length, true);
  bytes.set(headerBytes, PREFIX_LEN);
  tensors.forEach((t, i) => {
    bytes.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), offsets[i]);
  });
  return buf;
}

/**
 * Writes `header` over an encoded frame's header, padded with spaces (JSON whitespace) to
 * the length the frame has room for; false (the frame unchanged) when it does not fit.
 * @param {ArrayBuffer} buf
 * @param {object} header
 */
export function rewriteHeader(buf, header) {
  const room = new DataView(buf).getUint32(16, true);
  const bytes = encoder.encode(JSON.stringify(header));
  if (bytes.length > room) return false;
  const view = new Uint8Array(buf, PREFIX_LEN, room);
  view.set(bytes);
  view.fill(0x20, bytes.length);
  return true;
}

// Room left in a response header for the figures known only once the frame is made.
const LATE_ROOM = 96;

/**
 * A response frame: what ran the request, how long it took (`compute_ms` in the runtime,
 * `page_ms` in the page from receiving the request, `stages` each stage's
 * milliseconds), and the outputs. `finish`, when given, is asked once the outputs are
 * copied in, for figures that include making the frame (the `encode` stage and
 * `page_ms`): they are written over the header in the room left for them.
 * @param {bigint | number} id
 * @param {{model: string, backend: string, compute_ms: number, page_ms: number, stages?: object}} run
 * @param {FrameTensor[]} outputs
 * @param {() => {page_ms: number, stages: object}} [finish]
 */
export function responseFrame(id, { model, backend, compute_ms: computeMs, page_ms: pageMs, stages }, outputs, finish) {
  const meta = outputs.map(({ name, datatype, shape }) => ({ name, datatype, shape }));
  const header = { model, backend, compute_ms: computeMs, page_ms: pageMs, stages, outputs: meta };
  const buf = encodeFrame(KIND_RESPONSE, id, header, outputs, finish ? LATE_ROOM : 0);
  if (finish) rewriteHeader(buf, { ...header, ...finish() });
  return buf;
}

/**
 * An error frame answering request `id`, retryable as the agent's retry policy says
 * (categories.js, generated from ErrorCategory::is_retryable).
 * @param {bigint | number} id
 * @param {'model_not_ready' | 'browser_crashed' | 'inference_failed'} category
 * @param {string} message
 */
export function errorFrame(id, category, message) {
  return encodeFrame(KIND_ERROR, id, { category, message, retryable: RETRYABLE[category] === true });
}
