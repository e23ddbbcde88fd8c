// @ts-check
// The op table and the executor call table (src/protocol.js): every op the golden
// control messages use is in the one table, and the calls an executor takes reach its
// runtime.

import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { test } from 'node:test';

import { Op, callFor, runtimeCalls } from '../src/protocol.js';
import { control } from './golden.js';

test('the op table is frozen and holds every op of the golden messages', () => {
  assert.ok(Object.isFrozen(Op));
  const names = new Set(Object.values(Op));
  const files = readdirSync(new URL('./golden/control/', import.meta.url)).filter((f) => f.endsWith('.json'));
  assert.ok(files.length >= 15, `${files.length} golden control messages`);
  for (const file of files) {
    const { op } = control(file.replace(/\.json$/, ''));
    assert.ok(names.has(op), `${file}: op '${op}' is not in the table`);
  }
});

test("an executor's calls reach its runtime, and an unknown one is named", async () => {
  /** @type {any[][]} */
  const seen = [];
  /** @type {any} */
  const runtime = new Proxy({}, {
    get: (_, method) => (/** @type {any[]} */ ...args) => {
      seen.push([method, ...args]);
      return `${String(method)} done`;
    },
  });
  const calls = runtimeCalls(() => runtime);
  const buf = new ArrayBuffer(1);
  const msg = control('load');
  assert.equal(await callFor(calls, Op.load)({ msg, bytes: 'b' }), 'load done');
  await callFor(calls, Op.unload)({ name: 'm' });
  await callFor(calls, Op.retain)({ names: ['m'] });
  await callFor(calls, Op.ensemble)({ msg: control('ensemble') });
  await callFor(calls, Op.infer)({ buf, received: 1.5 });
  const decoder = control('load_decoder');
  const external = [{ path: 'model.onnx.data', data: new Uint8Array(2) }];
  await callFor(calls, Op.load)({ msg: decoder, bytes: 'b', external });
  await callFor(calls, Op.generate)({ msg: control('generate') });
  await callFor(calls, Op.cancel)({ req: 13 });
  assert.deepEqual(seen, [
    ['load', msg, 'b', undefined], ['unload', 'm'], ['retain', ['m']], ['ensemble', control('ensemble')],
    ['infer', buf, 1.5], ['load', decoder, 'b', external], ['generate', control('generate')], ['cancel', 13],
  ]);
  assert.throws(() => callFor(calls, 'toString'), /unknown call 'toString'/);
  assert.throws(() => callFor(calls, Op.hang), /unknown call 'hang'/);
});
