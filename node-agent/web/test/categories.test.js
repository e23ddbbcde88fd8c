// @ts-check
// The page's error frames carry the retry policy of the agent (categories.js, generated
// from ErrorCategory::is_retryable and checked by the agent's test), for every category.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RETRYABLE } from '../src/categories.js';
import { KIND_ERROR, decodeFrame, errorFrame } from '../src/frame.js';

test('the retry table names every category the agent knows', () => {
  assert.equal(Object.keys(RETRYABLE).length, 14);
  for (const [category, retryable] of Object.entries(RETRYABLE)) {
    assert.match(category, /^[a-z_]+$/);
    assert.equal(typeof retryable, 'boolean', category);
  }
});

test("an error frame's retryable flag is the table's, whatever the category", () => {
  for (const [category, retryable] of Object.entries(RETRYABLE)) {
    const { kind, header } = decodeFrame(errorFrame(7, /** @type {any} */ (category), 'm'));
    assert.equal(kind, KIND_ERROR);
    assert.deepEqual(header, { category, message: 'm', retryable }, category);
  }
});
