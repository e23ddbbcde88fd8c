// @ts-check
// Reads the golden messages in golden/, which the agent's tests (node-agent/src/page/
// protocol/tests.rs) write and check too: control messages one JSON file each, wire
// frames with frames.json listing what each holds.

import { readFileSync } from 'node:fs';

const dir = new URL('./golden/', import.meta.url);

/**
 * Control message `name` (golden/control/<name>.json), parsed.
 * @param {string} name
 * @returns {any}
 */
export const control = (name) => JSON.parse(readFileSync(new URL(`control/${name}.json`, dir), 'utf8'));

/**
 * The bytes of golden file `rel`, as an ArrayBuffer of their own.
 * @param {string} rel
 * @returns {ArrayBuffer}
 */
export function bytes(rel) {
  const b = readFileSync(new URL(rel, dir));
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}

/**
 * What frames.json says of each golden frame.
 * @typedef {{name: string, datatype: string, shape: number[], values: (number | string)[]}} TensorValues
 * @typedef {{file: string, kind: number, id: number, header: any, tensors: TensorValues[]}} GoldenFrame
 * @type {GoldenFrame[]}
 */
export const frames = JSON.parse(readFileSync(new URL('frames.json', dir), 'utf8'));

/** @param {string} file */
export const frame = (file) => {
  const found = frames.find((f) => f.file === `frames/${file}.bin`);
  if (!found) throw new Error(`no golden frame ${file}`);
  return found;
};

// The typed array the page views each datatype as (64-bit integers as BigInt arrays,
// FP16 as its bits).
const ARRAYS = {
  BOOL: Uint8Array, UINT8: Uint8Array, INT8: Int8Array, UINT16: Uint16Array, INT16: Int16Array,
  FP16: Uint16Array, UINT32: Uint32Array, INT32: Int32Array, FP32: Float32Array,
  UINT64: BigUint64Array, INT64: BigInt64Array, FP64: Float64Array,
};

/**
 * A golden tensor as the page holds one: {name, datatype, shape, data: TypedArray}.
 * @param {TensorValues} t
 */
export function tensor({ name, datatype, shape, values }) {
  const Arr = ARRAYS[/** @type {keyof typeof ARRAYS} */ (datatype)];
  const big = Arr === BigInt64Array || Arr === BigUint64Array;
  const data = new Arr(/** @type {any} */ (values.map((v) => (big ? BigInt(v) : Number(v)))));
  return { name, datatype, shape, data };
}

/**
 * A typed array's elements as frames.json lists them.
 * @param {ArrayBufferView & ArrayLike<number | bigint>} data
 */
export const listed = (data) => Array.from(data, (v) => (typeof v === 'bigint' ? v.toString() : v));
