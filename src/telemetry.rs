//! What keyroll tells the `metrics` facade: every metric's name and
//! labels, written once here (the crate's docs list them, under
//! "Metrics"). Labels take a handful of fixed values, never an id.
//!
//! Every label is a literal, so that each metric's key is a `static` the
//! macro builds once: with labels made at run time, the key was built and
//! hashed on every request (+300 instructions an authentication, +840 a
//! charged one, with no recorder installed; `bash benches/instructions.sh`).

use crate::errors::AuthError;
use crate::meter::{Refusal, Subject};

/// Counts an authentication's answer.
pub(crate) fn authentication<T, E>(answer: &Result<T, AuthError<E>>) {
    macro_rules! count {
        ($outcome:literal) => {
            metrics::counter!("keyroll_authentications_total", "outcome" => $outcome).increment(1)
        };
    }
    match answer {
        Ok(_) => count!("accepted"),
        Err(AuthError::RateLimited { .. }) => count!("rate_limited"),
        Err(AuthError::UsageExceeded { .. }) => count!("usage_exceeded"),
        Err(AuthError::CostOutOfRange { .. }) => count!("cost_out_of_range"),
        Err(AuthError::Verify(_)) => count!("refused"),
        Err(AuthError::Store(_)) => count!("store_error"),
        Err(_) => count!("unknown"),
    }
}

/// Counts a charge's answer: admitted, refused (by whose limit), or a
/// store error (`None`).
pub(crate) fn charge(refusal: Option<Option<&Refusal>>) {
    macro_rules! count {
        ($outcome:literal, $subject:literal) => {
            metrics::counter!(
                "keyroll_charges_total", "outcome" => $outcome, "subject" => $subject
            )
            .increment(1)
        };
    }
    match refusal {
        Some(None) => count!("admitted", "none"),
        Some(Some(Refusal::RateLimited { subject, .. })) => match subject {
            Subject::Owner => count!("rate_limited", "owner"),
            _ => count!("rate_limited", "key"),
        },
        Some(Some(Refusal::UsageExceeded { subject, .. })) => match subject {
            Subject::Owner => count!("usage_exceeded", "owner"),
            _ => count!("usage_exceeded", "key"),
        },
        Some(Some(_)) => count!("cost_out_of_range", "none"),
        None => count!("store_error", "none"),
    }
}

/// Counts a lookup of [`CachedStore`](crate::store::CachedStore).
pub(crate) fn cache_lookup(hit: bool) {
    match hit {
        true => metrics::counter!("keyroll_cache_lookups_total", "result" => "hit").increment(1),
        false => metrics::counter!("keyroll_cache_lookups_total", "result" => "miss").increment(1),
    }
}

/// Reports the units a replica's leases hold.
pub(crate) fn lease_units(units: u64) {
    metrics::gauge!("keyroll_lease_units").set(units as f64);
}

/// Reports how many outbox entries are pending and parked.
pub(crate) fn outbox_counts(pending: u64, parked: u64) {
    metrics::gauge!("keyroll_outbox_pending").set(pending as f64);
    metrics::gauge!("keyroll_outbox_parked").set(parked as f64);
}

/// Counts what a dispatch round did with its entries, and the delay from
/// each delivered event to its delivery.
pub(crate) fn dispatched(delivered: &[f64], retrying: usize, parked: usize) {
    metrics::counter!("keyroll_outbox_deliveries_total", "outcome" => "delivered")
        .increment(delivered.len() as u64);
    metrics::counter!("keyroll_outbox_deliveries_total", "outcome" => "retrying")
        .increment(retrying as u64);
    metrics::counter!("keyroll_outbox_deliveries_total", "outcome" => "parked")
        .increment(parked as u64);
    let lag = metrics::histogram!("keyroll_outbox_lag_seconds");
    for seconds in delivered {
        lag.record(*seconds);
    }
}
