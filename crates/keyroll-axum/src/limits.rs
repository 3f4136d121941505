//! Rate limits and credits over HTTP: the 429 answers to a refused charge,
//! and the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers) of every answer to a metered key.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use keyroll::meter::{Allowance, Subject};
use time::{Duration, OffsetDateTime};

use crate::error::ApiError;

/// `RateLimit-Policy: "key";q=<burst>;w=<seconds to refill a burst>,
/// "credits";q=<refill amount>;w=<refill period in seconds>`, then
/// `"owner"` and `"owner-credits"` the same way for owner limits.
pub const RATE_LIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit: "key";r=<remaining>;t=<seconds until full>,
/// "credits";r=<credits left>;t=<seconds to the next refill>`, then
/// `"owner"` and `"owner-credits"` the same way for owner limits.
pub const RATE_LIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up.
fn seconds(d: Duration) -> i64 {
    let ns = d.whole_nanoseconds().max(0);
    i64::try_from((ns + 999_999_999) / 1_000_000_000).unwrap_or(i64::MAX)
}

/// The two fields for `allowance` (of `subject`'s limits, and its owner's
/// part if any), one list item per policy that applies (none for a key
/// without limits); `now` is read only for credits that refill:
///
/// - `"key"` (or `"owner"`), the rate limit: `q` its burst, `w` the
///   seconds to refill a burst; `r` the requests of cost 1 left, `t` the
///   seconds until the bucket is full (`rate`, when given, says otherwise
///   for `subject`: a 429's `r=0` and its retry);
/// - `"credits"` (or `"owner-credits"`), the credits: `q` the refill
///   amount (the credits as set, without a refill), `w` the refill period
///   in seconds (none without a refill); `r` the credits left, `t` the
///   seconds to the next refill (none without one).
fn fields(
    headers: &mut HeaderMap,
    allowance: &Allowance,
    subject: Subject,
    rate: Option<(u32, Duration)>,
    now: impl Fn() -> OffsetDateTime,
) {
    let (mut policy, mut state) = (Vec::new(), Vec::new());
    let owner = allowance.owner().map(|owner| (owner, Subject::Owner, None));
    for (allowance, subject, rate) in [(allowance, subject, rate)].into_iter().chain(owner) {
        if let (Some(limit), Some(remaining), Some(reset)) = (
            allowance.rate_limit(),
            allowance.rate_remaining(),
            allowance.rate_reset(),
        ) {
            let (remaining, reset) = rate.unwrap_or((remaining, reset));
            let (burst, window) = (limit.burst(), seconds(limit.window()));
            policy.push(format!("\"{subject}\";q={burst};w={window}"));
            state.push(format!("\"{subject}\";r={remaining};t={}", seconds(reset)));
        }
        if let (Some(credits), Some(remaining)) =
            (allowance.credits(), allowance.credits_remaining())
        {
            let name = match subject {
                Subject::Owner => "owner-credits",
                _ => "credits",
            };
            policy.push(match credits.refill() {
                Some(refill) => format!(
                    "\"{name}\";q={};w={}",
                    refill.amount(),
                    seconds(refill.every())
                ),
                None => format!("\"{name}\";q={}", credits.remaining()),
            });
            state.push(match allowance.next_refill() {
                Some(at) => format!("\"{name}\";r={remaining};t={}", seconds(at - now())),
                None => format!("\"{name}\";r={remaining}"),
            });
        }
    }
    for (name, items) in [(RATE_LIMIT_POLICY, policy), (RATE_LIMIT, state)] {
        if items.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::try_from(items.join(", ")) {
            headers.insert(name, value);
        }
    }
}

/// The fields an admitted request's answer carries: none for a key
/// without limits.
pub(crate) fn allowance_headers(headers: &mut HeaderMap, allowance: &Allowance) {
    fields(
        headers,
        allowance,
        Subject::Key,
        None,
        OffsetDateTime::now_utc,
    );
}

/// A 429: `code` and `message` in the body with whose limit refused it,
/// the fields of what remains, and `Retry-After` in whole seconds, rounded
/// up and at least 1, when there is a time to retry.
fn too_many(
    code: &'static str,
    message: String,
    subject: Subject,
    retry_after: Option<Duration>,
    headers: HeaderMap,
) -> ApiError {
    let mut error =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).with_subject(subject);
    if let Some(wait) = retry_after {
        error = error.with_header(header::RETRY_AFTER, HeaderValue::from(seconds(wait).max(1)));
    }
    for (name, value) in headers.into_iter().filter_map(|(n, v)| Some((n?, v))) {
        error = error.with_header(name, value);
    }
    error
}

/// The answer to a rate limit's refusal: 429, `Retry-After`, and the
/// fields (for the key's rate limit: nothing remains, and the retry).
pub(crate) fn rate_limited(
    retry_after: Duration,
    allowance: &Allowance,
    subject: Subject,
    now: OffsetDateTime,
) -> ApiError {
    let mut headers = HeaderMap::new();
    fields(
        &mut headers,
        allowance,
        subject,
        Some((0, retry_after)),
        || now,
    );
    let message = format!(
        "rate limited by the {subject}'s limit: retry after {} s",
        seconds(retry_after).max(1)
    );
    too_many("rate_limited", message, subject, Some(retry_after), headers)
}

/// The answer to spent credits: 429, with `Retry-After` until the next
/// refill that covers the cost, if there is one, and the fields.
pub(crate) fn usage_exceeded(
    refill_at: Option<OffsetDateTime>,
    allowance: &Allowance,
    subject: Subject,
    now: OffsetDateTime,
) -> ApiError {
    let mut headers = HeaderMap::new();
    fields(&mut headers, allowance, subject, None, || now);
    let message = match refill_at {
        Some(at) => format!(
            "usage exceeded: none of the {subject}'s credits left until {}",
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| at.to_string())
        ),
        None => format!("usage exceeded: none of the {subject}'s credits left"),
    };
    let retry_after = refill_at.map(|at| at - now);
    too_many("usage_exceeded", message, subject, retry_after, headers)
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;
    use keyroll::meter::{Credits, Meter, RateLimit, Refill};
    use keyroll::{OwnerId, OwnerLimits};

    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::nanoseconds(1)), 1);
        assert_eq!(seconds(Duration::SECOND), 1);
        assert_eq!(seconds(Duration::milliseconds(1001)), 2);
        assert_eq!(seconds(Duration::nanoseconds(-5)), 0);
    }

    /// The allowance after `n` requests at the epoch of a key with `rate`
    /// and `credits`.
    fn after(n: u32, rate: Option<&RateLimit>, credits: Option<&Credits>) -> Allowance {
        let mut meter = Meter::new(credits, OffsetDateTime::UNIX_EPOCH);
        let mut allowance = Allowance::default();
        for _ in 0..n {
            allowance = meter
                .charge(rate, credits, 1, OffsetDateTime::UNIX_EPOCH)
                .unwrap();
        }
        allowance
    }

    #[test]
    fn the_fields_follow_the_draft() {
        let rate = RateLimit::new(10, Duration::MINUTE)
            .unwrap()
            .with_burst(5)
            .unwrap();
        let credits = Credits::new(100).with_refill(Refill::new(1000, Duration::DAY).unwrap());
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut headers = HeaderMap::new();
        fields(
            &mut headers,
            &after(2, Some(&rate), Some(&credits)),
            Subject::Key,
            None,
            || now,
        );
        // A burst of 5 at one per 6 s refills in 30 s; 2 spent, full in 12 s.
        assert_eq!(
            headers[RATE_LIMIT_POLICY],
            "\"key\";q=5;w=30, \"credits\";q=1000;w=86400"
        );
        assert_eq!(
            headers[RATE_LIMIT],
            "\"key\";r=3;t=12, \"credits\";r=98;t=86400"
        );
        // Credits without a refill: no window, no time to a refill.
        let mut headers = HeaderMap::new();
        let once = Credits::new(7);
        fields(
            &mut headers,
            &after(1, None, Some(&once)),
            Subject::Key,
            None,
            || now,
        );
        assert_eq!(headers[RATE_LIMIT_POLICY], "\"credits\";q=7");
        assert_eq!(headers[RATE_LIMIT], "\"credits\";r=6");
        // No limits, no fields.
        let mut headers = HeaderMap::new();
        fields(
            &mut headers,
            &Allowance::default(),
            Subject::Key,
            None,
            || now,
        );
        assert!(headers.is_empty());
        // Owner limits follow the key's own, named for the owner.
        let owner = OwnerId::new("acme").unwrap();
        let shared = OwnerLimits::new().rate_limit(rate).credits(once);
        let key = after(2, Some(&rate), None);
        let (_, both) = shared.charge(&owner, None, key, 1, now).unwrap();
        let mut headers = HeaderMap::new();
        fields(&mut headers, &both, Subject::Key, None, || now);
        assert_eq!(
            headers[RATE_LIMIT_POLICY],
            "\"key\";q=5;w=30, \"owner\";q=5;w=30, \"owner-credits\";q=7"
        );
        assert_eq!(
            headers[RATE_LIMIT],
            "\"key\";r=3;t=12, \"owner\";r=4;t=6, \"owner-credits\";r=6"
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let rate = RateLimit::new(1000, Duration::SECOND).unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        let allowance = after(1, Some(&rate), None);
        let answer =
            rate_limited(Duration::milliseconds(1), &allowance, Subject::Key, now).into_response();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "1");
        assert_eq!(answer.headers()[RATE_LIMIT], "\"key\";r=0;t=1");
        let credits = Credits::new(1);
        let spent = after(1, None, Some(&credits));
        let answer = usage_exceeded(None, &spent, Subject::Key, now).into_response();
        assert!(!answer.headers().contains_key(header::RETRY_AFTER));
        // A 429 for spent credits carries their fields too.
        assert_eq!(answer.headers()[RATE_LIMIT], "\"credits\";r=0");
        let later = Some(now + Duration::seconds(90));
        let answer = usage_exceeded(later, &spent, Subject::Owner, now).into_response();
        assert_eq!(answer.headers()[header::RETRY_AFTER], "90");
        assert_eq!(answer.headers()[RATE_LIMIT], "\"owner-credits\";r=0");
    }
}
