// @ts-check
// The page's frame encoding and decoding against the golden frames the agent's encoder
// and decoder are tested on: a request as the agent writes it must decode to the listed
// values, and the response and error frames the page writes must come out byte for byte.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  KIND_ERROR, KIND_REQUEST, KIND_RESPONSE, datatypeOf, decodeFrame, encodeFrame, errorFrame,
  ortType, responseFrame,
} from '../src/frame.js';
import { bytes, frame, frames, listed, tensor } from './golden.js';

test('every golden frame decodes to what frames.json lists', () => {
  assert.ok(frames.length >= 5);
  for (const want of frames) {
    const got = decodeFrame(bytes(want.file));
    assert.equal(got.kind, want.kind, want.file);
    assert.equal(got.id, BigInt(want.id), want.file);
    assert.deepEqual(got.header, want.header, want.file);
    assert.deepEqual(got.tensors.map(({ name, datatype, shape, data }) => ({
      name, datatype, shape, values: listed(/** @type {any} */ (data)),
    })), want.tensors, want.file);
    for (const t of got.tensors) assert.equal(t.data.byteOffset % 8, 0, `${t.name} is 8-aligned`);
  }
});

test("the agent's request frame re-encodes byte for byte", () => {
  const buf = bytes('frames/request.bin');
  const { kind, id, header, tensors } = decodeFrame(buf);
  assert.equal(kind, KIND_REQUEST);
  assert.deepEqual(new Uint8Array(encodeFrame(kind, id, header, tensors)), new Uint8Array(buf));
});

test('a response frame the page writes is the golden one', () => {
  const want = frame('response');
  assert.equal(want.kind, KIND_RESPONSE);
  const { model, backend, compute_ms, page_ms, stages: s } = want.header;
  // In path order, as the agent writes them (frames.json sorts keys).
  const stages = { page_queue: s.page_queue, decode: s.decode, run: s.run, encode: s.encode };
  const made = responseFrame(want.id, { model, backend, compute_ms, page_ms, stages }, want.tensors.map(tensor));
  assert.deepEqual(new Uint8Array(made), new Uint8Array(bytes(want.file)));
});

test('figures known only once the frame is made are written over its header', () => {
  const want = frame('response');
  const { model, backend, compute_ms, stages } = want.header;
  const early = { page_queue: stages.page_queue, decode: stages.decode, run: stages.run };
  const made = responseFrame(want.id, { model, backend, compute_ms, page_ms: 1, stages: early },
    want.tensors.map(tensor), () => ({ page_ms: 1234.5678901234567, stages: { ...early, encode: 0.000123456789 } }));
  const got = decodeFrame(made);
  assert.equal(got.header.page_ms, 1234.5678901234567);
  assert.deepEqual(got.header.stages, { ...early, encode: 0.000123456789 });
  assert.deepEqual(got.tensors.map((t) => listed(/** @type {any} */ (t.data))), want.tensors.map((t) => t.values));
  // Padded with spaces where the late figures are shorter than the room left.
  const headerLen = new DataView(made).getUint32(16, true);
  assert.equal(new Uint8Array(made, 20 + headerLen - 1, 1)[0], 0x20);
});

test('the error frames the page writes are the golden ones, retryable as the agent says', () => {
  for (const name of ['error_model_not_ready', 'error_inference_failed', 'error_browser_crashed']) {
    const want = frame(name);
    assert.equal(want.kind, KIND_ERROR);
    const made = errorFrame(want.id, want.header.category, want.header.message);
    assert.deepEqual(new Uint8Array(made), new Uint8Array(bytes(want.file)), name);
  }
});

test('malformed frames are refused with the reason', () => {
  assert.throws(() => decodeFrame(new ArrayBuffer(4)), /shorter than its prefix/);
  const bad = new Uint8Array(bytes('frames/request.bin'));
  bad[0] = 0x58;
  assert.throws(() => decodeFrame(bad.buffer), /bad magic/);
  const full = bytes('frames/request.bin');
  assert.throws(() => decodeFrame(full.slice(0, full.byteLength - 1)), /tensor 'h' runs past the frame/);
});

test('datatypes map to onnxruntime-web type names and back', () => {
  for (const dt of ['BOOL', 'UINT8', 'INT8', 'UINT16', 'INT16', 'FP16', 'UINT32', 'INT32', 'FP32', 'UINT64', 'INT64', 'FP64']) {
    assert.equal(datatypeOf(/** @type {string} */ (ortType(dt))), dt);
  }
  assert.equal(ortType('FP32'), 'float32');
  assert.equal(datatypeOf('string'), undefined);
});
