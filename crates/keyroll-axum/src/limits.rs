//! Rate limits and credits over HTTP: the 429 answers to a refused charge,
//! and the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers) of an admitted one.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use keyroll::meter::{Allowance, RateLimit, Subject};
use time::{Duration, OffsetDateTime};

use crate::error::ApiError;

/// `RateLimit-Policy: "default";q=<burst>;w=<seconds to refill a burst>`.
pub const RATE_LIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit: "default";r=<remaining>;t=<seconds until full>`.
pub const RATE_LIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up.
fn seconds(d: Duration) -> i64 {
    let ns = d.whole_nanoseconds().max(0);
    i64::try_from((ns + 999_999_999) / 1_000_000_000).unwrap_or(i64::MAX)
}

/// The two fields for `limit`, with `remaining` requests left and the
/// bucket full again after `reset`.
fn fields(headers: &mut HeaderMap, limit: &RateLimit, remaining: u32, reset: Duration) {
    let policy = format!(
        "\"default\";q={};w={}",
        limit.burst(),
        seconds(limit.window())
    );
    let state = format!("\"default\";r={remaining};t={}", seconds(reset));
    for (name, value) in [(RATE_LIMIT_POLICY, policy), (RATE_LIMIT, state)] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
}

/// The fields an admitted request's answer carries: none for a key
/// without a rate limit.
pub(crate) fn allowance_headers(headers: &mut HeaderMap, allowance: &Allowance) {
    if let (Some(limit), Some(remaining), Some(reset)) = (
        allowance.rate_limit(),
        allowance.rate_remaining(),
        allowance.rate_reset(),
    ) {
        fields(headers, limit, remaining, reset);
    }
}

/// A 429: `code` and `message` in the body, and `Retry-After` in whole
/// seconds, rounded up and at least 1, when there is a time to retry.
fn too_many(code: &'static str, message: String, retry_after: Option<Duration>) -> ApiError {
    let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
    match retry_after {
        Some(wait) => {
            error.with_header(header::RETRY_AFTER, HeaderValue::from(seconds(wait).max(1)))
        }
        None => error,
    }
}

/// The answer to a rate limit's refusal: 429, `Retry-After`, the fields
/// (nothing remains; full again after `retry_after`), and whose limit it
/// is in the body.
pub(crate) fn rate_limited(retry_after: Duration, limit: &RateLimit, subject: Subject) -> ApiError {
    let mut error = too_many(
        "rate_limited",
        format!(
            "rate limited by the {subject}'s limit: retry after {} s",
            seconds(retry_after).max(1)
        ),
        Some(retry_after),
    )
    .with_subject(subject);
    let mut headers = HeaderMap::new();
    fields(&mut headers, limit, 0, retry_after);
    for (name, value) in headers.into_iter().filter_map(|(n, v)| Some((n?, v))) {
        error = error.with_header(name, value);
    }
    error
}

/// The answer to spent credits: 429, with `Retry-After` until the next
/// refill that covers the cost, if there is one, and whose credits they
/// are in the body.
pub(crate) fn usage_exceeded(
    refill_at: Option<OffsetDateTime>,
    subject: Subject,
    now: OffsetDateTime,
) -> ApiError {
    let message = match refill_at {
        Some(at) => format!(
            "usage exceeded: none of the {subject}'s credits left until {}",
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| at.to_string())
        ),
        None => format!("usage exceeded: none of the {subject}'s credits left"),
    };
    too_many("usage_exceeded", message, refill_at.map(|at| at - now)).with_subject(subject)
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::nanoseconds(1)), 1);
        assert_eq!(seconds(Duration::SECOND), 1);
        assert_eq!(seconds(Duration::milliseconds(1001)), 2);
        assert_eq!(seconds(Duration::nanoseconds(-5)), 0);
    }

    #[test]
    fn the_fields_follow_the_draft() {
        let limit = RateLimit::new(10, Duration::MINUTE)
            .unwrap()
            .with_burst(5)
            .unwrap();
        let mut headers = HeaderMap::new();
        fields(&mut headers, &limit, 3, Duration::milliseconds(12_500));
        // A burst of 5 at one per 6 s refills in 30 s.
        assert_eq!(headers[RATE_LIMIT_POLICY], "\"default\";q=5;w=30");
        assert_eq!(headers[RATE_LIMIT], "\"default\";r=3;t=13");
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let limit = RateLimit::new(1000, Duration::SECOND).unwrap();
        let answer = rate_limited(Duration::milliseconds(1), &limit, Subject::Key).into_response();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "1");
        let now = OffsetDateTime::UNIX_EPOCH;
        let spent = usage_exceeded(None, Subject::Key, now).into_response();
        assert!(!spent.headers().contains_key(header::RETRY_AFTER));
        let later =
            usage_exceeded(Some(now + Duration::seconds(90)), Subject::Owner, now).into_response();
        assert_eq!(later.headers()[header::RETRY_AFTER], "90");
    }
}
