//! Every error of keyroll but two that need types from above (the
//! managers' `FlushError`, the record codec's `RecordError`), kept here, at
//! the bottom of the crate, so that the modules that return them import
//! them from one place and never from each other. `keyroll::error` re-exports
//! them all.
//!
//! Messages are short and lower-case. Those that refuse a value quote it
//! (truncated, control characters escaped) and say what is wrong and, where
//! there is one, the way out.

use std::fmt;

use time::{Duration, OffsetDateTime};

use crate::meter::{Allowance, RateLimit, Refusal, Subject};
use crate::revision::Revision;

/// How many characters of a refused value an error quotes.
const QUOTED_CHARS: usize = 32;

/// `value` as errors quote it: in double quotes, its first 32 characters
/// with control characters escaped, and `…` if there were more.
pub(crate) fn quote(value: &str) -> String {
    let mut quoted: String = value
        .chars()
        .take(QUOTED_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().nth(QUOTED_CHARS).is_some() {
        quoted.push('…');
    }
    format!("\"{quoted}\"")
}

/// An instant as messages write it: RFC 3339 (`2026-12-08T10:53:21.035Z`),
/// or, beyond what RFC 3339 can write (years before 1 or after 9999),
/// `time`'s own form.
pub(crate) struct Rfc3339(pub(crate) OffsetDateTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .0
            .format(&time::format_description::well_known::Rfc3339)
        {
            Ok(text) => f.write_str(&text),
            Err(_) => self.0.fmt(f),
        }
    }
}

/// Why a presented token was refused. It says no more than this: a caller
/// cannot learn which part of a wrong token was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a well-formed token of the key's format (prefix, shape, key id,
    /// alphabet or checksum). Nothing was hashed.
    #[error("malformed token")]
    Malformed,
    /// A well-formed token that is neither the current nor the old token:
    /// a wrong token, a token of another key, or a revoked token.
    #[error("token does not match the key")]
    Mismatch,
    /// The token matched, but the key is inactive.
    #[error("the key is inactive")]
    KeyInactive,
    /// The token matched, but the key is past its hard expiry
    /// ([`ApiKey::expires_at`](crate::ApiKey::expires_at)).
    #[error("the key has expired")]
    KeyExpired,
    /// The token matched, but it is past its renewal period and the key's
    /// policy enforces the period
    /// ([`RenewalEnforcement::Enforced`](crate::RenewalEnforcement::Enforced)).
    #[error("the token is past its renewal period; renew the key")]
    RenewalOverdue,
    /// The token matched, but the key has networks
    /// ([`ApiKey::networks`](crate::ApiKey::networks)) and the request came
    /// from outside them, or told no address
    /// ([`Credentials::from_ip`](crate::Credentials::from_ip)). Nothing
    /// was charged.
    #[error("the request's address is not in the key's networks")]
    NetworkNotAllowed,
}

/// A transition refused because of the key's state or because of its input.
/// The key is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// `renew` while a renewal is pending.
    #[error(
        "cannot renew: the key already has a renewed token pending; delete the old token or undo the renewal first"
    )]
    RenewalPending,
    /// `finalize` with no renewal pending.
    #[error("cannot finalize: no renewed token was found; renew the key first")]
    NoRenewalPending,
    /// `finalize` of a renewal already finalized.
    #[error(
        "cannot finalize: the renewal was already finalized; delete the old token or undo the renewal"
    )]
    AlreadyFinalized,
    /// `delete_old` or `undo_renewal` with no old token.
    #[error(
        "cannot delete or restore the old token: the key has none; renew again or delete the key"
    )]
    NoOldToken,
    /// `activate` of an active key.
    #[error("cannot activate: the key is already active")]
    AlreadyActive,
    /// `deactivate` of an inactive key.
    #[error("cannot deactivate: the key is already inactive")]
    AlreadyInactive,
    /// `delete_old_if_idle` while the old token was used recently.
    #[error(
        "cannot delete the old token: it was used at {}; wait until it is idle or delete it anyway with delete_old",
        Rfc3339(*.last_used_at)
    )]
    OldTokenInUse {
        /// The old token's last recorded use.
        last_used_at: OffsetDateTime,
    },
    /// A label longer than 256 bytes or holding a control character.
    #[error(transparent)]
    InvalidLabel(#[from] InvalidLabel),
    /// A key id or owner id that only versions before 0.4 allowed (made by
    /// [`KeyId::existing`](crate::KeyId::existing)), given to a new key or
    /// as a new owner.
    #[error(transparent)]
    InvalidId(#[from] InvalidKeyId),
    /// A policy a key cannot live by: a renewal period that is not positive,
    /// or a negative usage resolution.
    #[error("invalid policy: {field} is {value}, and it must be {rule}")]
    InvalidPolicy {
        /// The refused field of [`Policy`](crate::Policy).
        field: &'static str,
        /// Its value.
        value: Duration,
        /// What it must be.
        rule: &'static str,
    },
    /// A rate limit whose burst is below the largest cost a route charges
    /// ([`KeyManager::with_largest_cost`](crate::KeyManager::with_largest_cost)):
    /// every request of that route would be refused.
    #[error(
        "invalid rate limit: burst {burst} is below {cost}, the largest cost a route charges; raise the burst to at least {cost}"
    )]
    BurstBelowCost {
        /// The refused burst.
        burst: u32,
        /// The largest cost declared.
        cost: u32,
    },
    /// Credits above what a balance can hold (a key's or an owner's).
    #[error(
        "invalid credits: {remaining} is above the most a balance can hold, 9223372036854775807"
    )]
    InvalidCredits {
        /// The refused balance.
        remaining: u64,
    },
    /// A status change given where only a setting is taken
    /// ([`NewKey::with`](crate::NewKey::with)).
    #[error("{change} is not a setting: a new key is active; change its status once it is issued")]
    NotASetting {
        /// The change's name ([`Change::name`](crate::Change::name)).
        change: &'static str,
    },
    /// A negative grace in
    /// [`OldTokenDeletion::AfterNewTokenUse`](crate::OldTokenDeletion::AfterNewTokenUse).
    #[error("invalid grace {grace}: a grace must be zero or positive")]
    InvalidGrace {
        /// The refused grace.
        grace: Duration,
    },
    /// `renew` of a key past its hard expiry
    /// ([`ApiKey::expires_at`](crate::ApiKey::expires_at)): renewals never
    /// extend it. Move or remove it with `set_expiry` first.
    #[error(
        "cannot renew: the key expired at {}; move or remove its expiry with set_expiry first",
        Rfc3339(*.expires_at)
    )]
    KeyExpired {
        /// When the key expired.
        expires_at: OffsetDateTime,
    },
    /// An instant outside the years 1 to 9999 (UTC), the range a key's
    /// record can hold: the `now` given, a deletion time, an expiry, or the
    /// due date it would give a token.
    #[error("{what} {} is outside the years 1 to 9999 (UTC)", Rfc3339(*.at))]
    TimeOutOfRange {
        /// Which instant.
        what: &'static str,
        /// The instant given.
        at: OffsetDateTime,
    },
}

impl TransitionError {
    /// Whether the call was refused for its input (a label, a policy, a
    /// grace, an instant), which no state of the key would accept, rather
    /// than for the key's state. Over HTTP: 400 rather than 409.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::TransitionError;
    ///
    /// assert!(!TransitionError::RenewalPending.is_bad_input());
    /// let grace = time::Duration::seconds(-1);
    /// assert!(TransitionError::InvalidGrace { grace }.is_bad_input());
    /// ```
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TransitionError::InvalidLabel(_)
                | TransitionError::InvalidId(_)
                | TransitionError::InvalidPolicy { .. }
                | TransitionError::InvalidGrace { .. }
                | TransitionError::NotASetting { .. }
                | TransitionError::InvalidCredits { .. }
                | TransitionError::BurstBelowCost { .. }
                | TransitionError::TimeOutOfRange { .. }
        )
    }
}

/// A refused label: longer than 256 bytes, or holding a control character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label {quoted}: {problem}")]
pub struct InvalidLabel {
    quoted: String,
    problem: LabelProblem,
}

impl InvalidLabel {
    pub(crate) fn too_long(label: &str, max: usize) -> InvalidLabel {
        InvalidLabel {
            quoted: quote(label),
            problem: LabelProblem::TooLong(label.len(), max),
        }
    }

    pub(crate) fn control_character(label: &str, c: char) -> InvalidLabel {
        InvalidLabel {
            quoted: quote(label),
            problem: LabelProblem::ControlCharacter(c),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelProblem {
    /// Its length, and the most allowed.
    TooLong(usize, usize),
    ControlCharacter(char),
}

impl fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelProblem::TooLong(len, max) => {
                write!(f, "it is {len} bytes long, and a label holds at most {max}")
            }
            LabelProblem::ControlCharacter(c) => {
                write!(f, "it holds the control character {c:?}")
            }
        }
    }
}

/// A string that is not a valid [`KeyId`](crate::KeyId): 1 to 64
/// characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} {quoted}: {problem}; use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidKeyId {
    pub(crate) what: &'static str,
    pub(crate) quoted: String,
    pub(crate) problem: &'static str,
}

/// A string that is not a valid [`TokenId`](crate::TokenId).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token id: expected 32 lower-case hex digits")]
pub struct InvalidTokenId(pub(crate) ());

/// A string that is not a valid token prefix: 1 to 16 characters of
/// `[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token prefix {quoted}: {problem}; use 1 to 16 characters of a-z or 0-9")]
pub struct InvalidPrefix {
    pub(crate) quoted: String,
    pub(crate) problem: &'static str,
}

/// A refused scope or set of scopes. The message quotes the scope
/// (truncated) and says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidScope(pub(crate) String);

/// Refused metadata. The message quotes the entry (truncated) and says what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMetadata(pub(crate) String);

/// A string that names none of a small enum's values. The message quotes it
/// and lists what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {quoted}: expected {expected}")]
pub struct ParseError {
    what: &'static str,
    quoted: String,
    expected: &'static str,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, text: &str, expected: &'static str) -> ParseError {
        ParseError {
            what,
            quoted: quote(text),
            expected,
        }
    }
}

/// Why a write to a store was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError<E> {
    /// `insert` of an id that is already stored.
    #[error("a key with this id already exists")]
    AlreadyExists,
    /// `update` or `delete` of an id that is not stored.
    #[error("key not found")]
    NotFound,
    /// `update` or `delete` expected another revision: someone else changed
    /// the key (or deleted it and created another under its id) since it
    /// was loaded. Reload it and try again.
    #[error(
        "revision conflict: expected revision {expected}, found {found}; reload the key and try again"
    )]
    Conflict {
        /// The revision the caller expected.
        expected: Revision,
        /// The revision stored.
        found: Revision,
    },
    /// The backend itself failed.
    #[error("store backend error: {0}")]
    Backend(#[source] E),
}

impl<E> StoreError<E> {
    /// The same refusal with its backend error mapped by `f`: for stores
    /// that wrap other stores.
    pub fn map_backend<F>(self, f: impl FnOnce(E) -> F) -> StoreError<F> {
        match self {
            StoreError::AlreadyExists => StoreError::AlreadyExists,
            StoreError::NotFound => StoreError::NotFound,
            StoreError::Conflict { expected, found } => StoreError::Conflict { expected, found },
            StoreError::Backend(e) => StoreError::Backend(f(e)),
        }
    }

    /// The refusal of a compare-and-swap expecting `expected` over a stored
    /// key at `found`, for a write of a key at `writing` (`None` for a
    /// delete); `Ok` when the write may go ahead. Backends that compare in
    /// memory use it to keep the rule in one place.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] unless `found` is `expected` and `writing`
    /// is of the same incarnation.
    pub fn check_revision(
        expected: Revision,
        found: Revision,
        writing: Option<Revision>,
    ) -> Result<(), StoreError<E>> {
        let same_key = writing.is_none_or(|w| w.incarnation() == expected.incarnation());
        if found == expected && same_key {
            Ok(())
        } else {
            Err(StoreError::Conflict { expected, found })
        }
    }

    /// [`check_revision`](Self::check_revision) for a setting that has a
    /// version and no incarnation (an owner's limits: `0` when none is
    /// stored): a conflict reports both versions as revisions of
    /// incarnation 0.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when `found` is not `expected`.
    pub fn check_version(expected: u64, found: u64) -> Result<(), StoreError<E>> {
        StoreError::check_revision(Revision::new(0, expected), Revision::new(0, found), None)
    }
}

/// Why a manager call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError<E> {
    /// No key has this id.
    #[error("key not found")]
    NotFound,
    /// `create_key` with an id already taken.
    #[error("a key with this id already exists; choose another id")]
    AlreadyExists,
    /// The transition was refused, for the key's state or its input;
    /// nothing was written.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Every retry met a concurrent change to the key; nothing was written.
    #[error("the key kept changing under concurrent updates; try again")]
    Conflict,
    /// The store failed. A write may or may not have been applied: reload
    /// the key to see.
    #[error("store error: {0}")]
    Store(#[source] E),
}

impl<E> ManagerError<E> {
    /// Whether the call was refused for its input (see
    /// [`TransitionError::is_bad_input`]), rather than for the key's state,
    /// a missing key, a conflict or the store.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ManagerError::Transition(e) if e.is_bad_input())
    }
}

impl<E> From<StoreError<E>> for ManagerError<E> {
    fn from(e: StoreError<E>) -> Self {
        match e {
            StoreError::AlreadyExists => ManagerError::AlreadyExists,
            StoreError::NotFound => ManagerError::NotFound,
            StoreError::Conflict { .. } => ManagerError::Conflict,
            StoreError::Backend(e) => ManagerError::Store(e),
        }
    }
}

/// Why [`KeyManager::authenticate`](crate::KeyManager::authenticate)
/// refused a request.
///
/// The variants keep the causes apart for logs. A service should answer
/// every refusal of a credential the same way (an unknown key, a malformed,
/// wrong or revoked token, an inactive key), so that answers do not tell
/// which key ids exist, and answer `Store` with a generic "unavailable".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError<E> {
    /// No key has the id the request named.
    #[error("unknown key")]
    UnknownKey,
    /// The key refused the token.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The credits left are fewer than the request's cost (checked
    /// before the rate limit). Nothing was charged.
    #[error("usage exceeded: not enough of the {subject}'s credits left")]
    UsageExceeded {
        /// The next refill that covers the cost, if any.
        refill_at: Option<OffsetDateTime>,
        /// Whose credits they are.
        subject: Subject,
        /// What the limits allow (the fields of a 429).
        allowance: Box<Allowance>,
    },
    /// A rate limit refuses the request for now. Nothing was charged.
    #[error("rate limited by the {subject}'s limit: retry after {} s", crate::meter::whole_seconds(*.retry_after))]
    RateLimited {
        /// How long until the same request is admitted.
        retry_after: Duration,
        /// The rate limit that refused (what a `RateLimit-Policy` header
        /// tells).
        limit: RateLimit,
        /// Whose rate limit it is.
        subject: Subject,
        /// What the limits allow (the fields of a 429).
        allowance: Box<Allowance>,
    },
    /// A cost of 0, or above the key's burst: no retry can succeed, so it
    /// is a mistake of the caller's (a route's cost), not a limit.
    #[error("cost {cost} is out of range for this key: it must be 1 to {max}")]
    CostOutOfRange {
        /// The refused cost.
        cost: u32,
        /// The largest cost the key admits.
        max: u32,
    },
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[source] E),
}

impl<E> AuthError<E> {
    /// The charge's refusal behind a [`RateLimited`](Self::RateLimited),
    /// [`UsageExceeded`](Self::UsageExceeded) or
    /// [`CostOutOfRange`](Self::CostOutOfRange); `None` for the others.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            AuthError::RateLimited {
                retry_after,
                limit,
                subject,
                allowance,
            } => Some(Refusal::RateLimited {
                retry_after: *retry_after,
                limit: *limit,
                subject: *subject,
                allowance: allowance.clone(),
            }),
            AuthError::UsageExceeded {
                refill_at,
                subject,
                allowance,
            } => Some(Refusal::UsageExceeded {
                refill_at: *refill_at,
                subject: *subject,
                allowance: allowance.clone(),
            }),
            &AuthError::CostOutOfRange { cost, max } => Some(Refusal::CostOutOfRange { cost, max }),
            _ => None,
        }
    }

    /// The answer to a charge's refusal.
    pub(crate) fn refused(refusal: Refusal) -> AuthError<E> {
        match refusal {
            Refusal::RateLimited {
                retry_after,
                limit,
                subject,
                allowance,
            } => AuthError::RateLimited {
                retry_after,
                limit,
                subject,
                allowance,
            },
            Refusal::UsageExceeded {
                refill_at,
                subject,
                allowance,
            } => AuthError::UsageExceeded {
                refill_at,
                subject,
                allowance,
            },
            Refusal::CostOutOfRange { cost, max } => AuthError::CostOutOfRange { cost, max },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_in_messages_are_rfc_3339() {
        let at = time::macros::datetime!(2026-12-08 10:53:21.035223373 UTC);
        let error = TransitionError::OldTokenInUse { last_used_at: at };
        assert!(
            error
                .to_string()
                .contains("used at 2026-12-08T10:53:21.035223373Z;"),
            "{error}"
        );
        let far = time::macros::datetime!(-0001-01-01 0:00 UTC);
        let error = TransitionError::TimeOutOfRange {
            what: "now",
            at: far,
        };
        assert!(error.to_string().starts_with("now -0001-01-01"), "{error}");
    }

    #[test]
    fn quotes_escape_and_truncate() {
        assert_eq!(quote("a\u{1}b"), "\"a\\u{1}b\"");
        assert_eq!(quote(&"x".repeat(40)), format!("\"{}…\"", "x".repeat(32)));
        assert_eq!(quote(&"x".repeat(32)), format!("\"{}\"", "x".repeat(32)));
    }

    #[test]
    fn bad_input_is_told_apart_from_the_key_state() {
        let bad: ManagerError<std::convert::Infallible> =
            TransitionError::InvalidLabel(InvalidLabel::control_character("a\nb", '\n')).into();
        assert!(bad.is_bad_input());
        let state: ManagerError<std::convert::Infallible> = TransitionError::NoOldToken.into();
        assert!(!state.is_bad_input());
        assert!(!ManagerError::<std::convert::Infallible>::NotFound.is_bad_input());
    }
}
