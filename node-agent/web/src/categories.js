// @ts-check
// Generated from ErrorCategory::is_retryable (api/src/error.rs), the one retry policy:
// whether a client may send a request again, by the category of its failure. Do not
// edit: `WEBACCEL_UPDATE_GOLDEN=1 cargo test -p webaccel-node-agent --lib categories`
// writes it afresh (that test fails while it is stale).

/** @type {Readonly<Record<string, boolean>>} */
export const RETRYABLE = Object.freeze({
  bad_request: false,
  unauthorized: false,
  model_not_found: false,
  model_not_ready: true,
  model_load_failed: false,
  payload_too_large: false,
  overloaded: true,
  browser_crashed: true,
  browser_hung: true,
  browser_unavailable: true,
  shutting_down: true,
  deadline_exceeded: true,
  inference_failed: false,
  internal: false,
});
