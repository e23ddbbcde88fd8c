// @ts-check
// Milliseconds on a clock the page and its workers share: each has its own
// `performance.now()` origin, `timeOrigin` puts them on one.

/** @returns {number} */
export const now = () => performance.timeOrigin + performance.now();
