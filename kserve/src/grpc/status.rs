//! Errors as gRPC statuses, and the call's options (deadline, request id) from the
//! request metadata.
//!
//! Codes by [`ErrorCategory`]:
//!
//! | category | code |
//! | --- | --- |
//! | bad_request | INVALID_ARGUMENT |
//! | payload_too_large | RESOURCE_EXHAUSTED (as gRPC itself answers an oversized message; not retryable) |
//! | unauthorized | UNAUTHENTICATED |
//! | model_not_found | NOT_FOUND |
//! | overloaded | RESOURCE_EXHAUSTED (retryable, with `retry-after`) |
//! | model_not_ready, browser_crashed, browser_hung, browser_unavailable, shutting_down | UNAVAILABLE |
//! | deadline_exceeded | DEADLINE_EXCEEDED |
//! | model_load_failed | FAILED_PRECONDITION |
//! | inference_failed, internal | INTERNAL |
//!
//! RESOURCE_EXHAUSTED is therefore both "too large" and "too busy": the
//! `webaccel-category` and `webaccel-retryable` metadata tell them apart, as they do for
//! every status, so a client decides without parsing messages.

use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use webaccel_api::ErrorCategory;

use crate::api::{ApiError, CallOptions};

/// Metadata key of the error's category (`snake_case`, as in HTTP error bodies).
pub const CATEGORY: &str = "webaccel-category";
/// Metadata key saying whether the same request may succeed if sent again.
pub const RETRYABLE: &str = "webaccel-retryable";
/// Metadata key of the whole seconds to wait before retrying (overload).
pub const RETRY_AFTER: &str = "retry-after";
/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";
/// gRPC's deadline metadata.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The gRPC code that carries a category.
pub fn code_for(category: ErrorCategory) -> Code {
    match category {
        ErrorCategory::BadRequest => Code::InvalidArgument,
        ErrorCategory::PayloadTooLarge | ErrorCategory::Overloaded => Code::ResourceExhausted,
        ErrorCategory::Unauthorized => Code::Unauthenticated,
        ErrorCategory::ModelNotFound => Code::NotFound,
        ErrorCategory::ModelNotReady
        | ErrorCategory::BrowserCrashed
        | ErrorCategory::BrowserHung
        | ErrorCategory::BrowserUnavailable
        | ErrorCategory::ShuttingDown => Code::Unavailable,
        ErrorCategory::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCategory::ModelLoadFailed => Code::FailedPrecondition,
        ErrorCategory::InferenceFailed | ErrorCategory::Internal => Code::Internal,
    }
}

/// The status an error is answered with: its code, its message, and the category,
/// retryability and retry delay in the metadata.
pub fn to_status(error: &ApiError) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(
        CATEGORY,
        MetadataValue::from_static(error.category.as_str()),
    );
    metadata.insert(
        RETRYABLE,
        MetadataValue::from_static(if error.category.is_retryable() {
            "true"
        } else {
            "false"
        }),
    );
    if let Some(after) = error.retry_after {
        // Whole seconds, rounded up, as HTTP's Retry-After.
        let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
        metadata.insert(RETRY_AFTER, MetadataValue::from(secs));
    }
    Status::with_metadata(code_for(error.category), error.message.clone(), metadata)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit, `H` (hours), `M`
/// (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
/// (nanoseconds), as gRPC over HTTP/2 defines it.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{GRPC_TIMEOUT} '{value}' is not 1 to 8 digits followed by a unit (H, M, S, m, u or n)"
        )
    };
    let split = value.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = (value.get(..split).ok_or_else(bad)?, &value[split..]);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // At most 8 digits: every product below fits in a u64.
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

/// A usable request id: non-empty, at most 128 characters.
fn usable_id(id: &str) -> Option<&str> {
    Some(id).filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The call's options: the shorter of `grpc-timeout` and the request's `timeout`
/// parameter, and the request id from `x-request-id`, else the request's `id`, else
/// generated.
pub fn call_options(
    metadata: &MetadataMap,
    request_id_field: &str,
    parameter_timeout: Option<Duration>,
) -> Result<CallOptions, ApiError> {
    let grpc_timeout = match metadata.get(GRPC_TIMEOUT) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| format!("{GRPC_TIMEOUT} is not text"))
                .and_then(parse_grpc_timeout)
                .map_err(|m| ApiError::new(ErrorCategory::BadRequest, m))?,
        ),
    };
    let timeout = match (grpc_timeout, parameter_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let request_id = metadata
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(usable_id)
        .or_else(|| usable_id(request_id_field))
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned);
    Ok(CallOptions {
        timeout,
        request_id,
        arrived: Instant::now(),
        report_stages: crate::http::asks_for_stages(
            metadata
                .get(crate::http::STAGES_HEADER)
                .and_then(|v| v.to_str().ok()),
        ),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let cases = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("15S", Duration::from_secs(15)),
            ("250m", Duration::from_millis(250)),
            ("1500000u", Duration::from_millis(1500)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_grpc_timeout(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "S",
            "5",
            "123456789S",
            "1.5S",
            "-1S",
            "10s",
            "10ms",
            "1 S",
        ] {
            let err = parse_grpc_timeout(bad).unwrap_err();
            assert!(err.contains("grpc-timeout"), "{bad}: {err}");
        }
    }

    #[test]
    fn call_options_take_the_shorter_deadline_and_the_first_usable_id() {
        let mut md = MetadataMap::new();
        md.insert(GRPC_TIMEOUT, "2S".parse().unwrap());
        let o = call_options(&md, "body-id", Some(Duration::from_secs(3))).unwrap();
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.request_id, "body-id");
        let o = call_options(&md, "", Some(Duration::from_millis(5))).unwrap();
        assert_eq!(o.timeout, Some(Duration::from_millis(5)));
        assert_eq!(o.request_id.len(), 16, "generated");

        md.insert(REQUEST_ID, "from-metadata".parse().unwrap());
        let o = call_options(&md, "body-id", None).unwrap();
        assert_eq!(o.request_id, "from-metadata");

        let o = call_options(&MetadataMap::new(), &"x".repeat(200), None).unwrap();
        assert_eq!((o.timeout, o.request_id.len()), (None, 16));

        md.insert(GRPC_TIMEOUT, "soon".parse().unwrap());
        let e = call_options(&md, "", None).unwrap_err();
        assert_eq!(e.category, ErrorCategory::BadRequest);
    }

    #[test]
    fn statuses_carry_code_category_retryable_and_retry_after() {
        let e = ApiError::new(ErrorCategory::Overloaded, "queue full")
            .with_retry_after(Duration::from_millis(1500));
        let s = to_status(&e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "queue full");
        assert_eq!(s.metadata().get(CATEGORY).unwrap(), "overloaded");
        assert_eq!(s.metadata().get(RETRYABLE).unwrap(), "true");
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "2");

        let s = to_status(&ApiError::new(ErrorCategory::BadRequest, "no"));
        assert_eq!(s.metadata().get(RETRYABLE).unwrap(), "false");
        assert!(s.metadata().get(RETRY_AFTER).is_none());

        let want = [
            (ErrorCategory::BadRequest, Code::InvalidArgument),
            (ErrorCategory::PayloadTooLarge, Code::ResourceExhausted),
            (ErrorCategory::Unauthorized, Code::Unauthenticated),
            (ErrorCategory::ModelNotFound, Code::NotFound),
            (ErrorCategory::ModelNotReady, Code::Unavailable),
            (ErrorCategory::ModelLoadFailed, Code::FailedPrecondition),
            (ErrorCategory::Overloaded, Code::ResourceExhausted),
            (ErrorCategory::BrowserCrashed, Code::Unavailable),
            (ErrorCategory::BrowserHung, Code::Unavailable),
            (ErrorCategory::BrowserUnavailable, Code::Unavailable),
            (ErrorCategory::ShuttingDown, Code::Unavailable),
            (ErrorCategory::DeadlineExceeded, Code::DeadlineExceeded),
            (ErrorCategory::InferenceFailed, Code::Internal),
            (ErrorCategory::Internal, Code::Internal),
        ];
        for (category, code) in want {
            assert_eq!(code_for(category), code, "{category}");
        }
    }
}
