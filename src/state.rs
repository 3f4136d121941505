//! The small enums that describe a key and what happens to its tokens
//! ([`KeyStatus`], [`RenewalState`], [`Decision`], [`OldTokenDeletion`],
//! [`TokenMatch`], [`Freshness`]), with their text forms: `Display` and
//! `FromStr`, for command lines and HTTP APIs. Each reads what it writes;
//! the names are those of the serde forms.
//!
//! | type | text |
//! |---|---|
//! | `TokenMatch` | `current`, `old` |
//! | `KeyStatus` | `active`, `inactive` |
//! | `Decision` | `undecided`, `later`, `at=<RFC 3339>`, `after-use=<seconds>s` |
//! | `OldTokenDeletion` | `now`, `later`, `at=<RFC 3339>`, `after-use=<seconds>s` |

use std::fmt;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::errors::ParseError;

/// Whether requests made with the key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum KeyStatus {
    /// Requests verify.
    Active,
    /// Every request fails with [`VerifyError::KeyInactive`](crate::VerifyError::KeyInactive).
    Inactive,
}

/// Where a key is in its renewal cycle. `#[non_exhaustive]`, like
/// [`Decision`]: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RenewalState {
    /// One token.
    Single,
    /// Two tokens: the new (current) one and the old one, until the old one
    /// is deleted or the renewal undone.
    Renewing {
        /// What was decided about the old token.
        decision: Decision,
    },
}

/// What was decided about the old token of a pending renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Decision {
    /// Nothing yet. Behaves exactly like `Later`, as in the product when the
    /// page is closed before a choice.
    Undecided,
    /// Kept until [`ApiKey::delete_old`](crate::ApiKey::delete_old) or [`ApiKey::undo_renewal`](crate::ApiKey::undo_renewal).
    Later,
    /// Deleted at `at`: from then on it no longer verifies, and
    /// [`ApiKey::housekeep`](crate::ApiKey::housekeep) removes it.
    Scheduled {
        /// When the old token stops verifying.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
    },
    /// Kept until the new token's first recorded use, then for `grace`
    /// more: that use turns this into `Scheduled { at: use + grace }`.
    AfterNewTokenUse {
        /// How long the old token lives after the new one is first used.
        #[cfg_attr(feature = "serde", serde(with = "crate::duration"))]
        grace: Duration,
    },
}

/// How [`ApiKey::finalize`](crate::ApiKey::finalize) treats the old token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum OldTokenDeletion {
    /// Delete it now; only the new token stays valid.
    Now,
    /// Keep both valid until the old one is deleted by hand.
    Later,
    /// Keep the old token until this instant; an instant not after `now`
    /// deletes it at once, as [`Now`](OldTokenDeletion::Now).
    #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
    At(OffsetDateTime),
    /// Keep the old token until the new one has been used (as recorded by
    /// [`ApiKey::record_use`](crate::ApiKey::record_use)), then for `grace` more.
    AfterNewTokenUse {
        /// How long the old token lives after the new one's first use.
        #[cfg_attr(feature = "serde", serde(with = "crate::duration"))]
        grace: Duration,
    },
}

impl Decision {
    /// Whether the old token still lives at `now`: not once its scheduled
    /// deletion is due.
    pub(crate) fn keeps_old_token(&self, now: OffsetDateTime) -> bool {
        !matches!(*self, Decision::Scheduled { at } if at <= now)
    }
}

/// Which of a key's tokens a presented token matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum TokenMatch {
    /// The current token.
    Current,
    /// The old token of a pending renewal: the integration using it should
    /// move to the new one.
    Old,
}

/// How the current token stands against its renewal period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "freshness", rename_all = "snake_case"))]
pub enum Freshness {
    /// Before its due date.
    Fresh {
        /// When it becomes due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
    },
    /// Due, for less than 3 months (the product's orange alert).
    Outdated {
        /// When it became due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
    },
    /// Due for 3 months or more (the product's red alert).
    LongOutdated {
        /// When it became due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
    },
}

impl Freshness {
    /// Whether the token is past its due date (`Outdated` or `LongOutdated`).
    pub fn is_outdated(&self) -> bool {
        !matches!(self, Freshness::Fresh { .. })
    }

    /// The due date, whatever the variant.
    pub fn due_at(&self) -> OffsetDateTime {
        match *self {
            Freshness::Fresh { due_at }
            | Freshness::Outdated { due_at }
            | Freshness::LongOutdated { due_at } => due_at,
        }
    }
}

impl fmt::Display for TokenMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenMatch::Current => "current",
            TokenMatch::Old => "old",
        })
    }
}

impl FromStr for TokenMatch {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "current" => Ok(TokenMatch::Current),
            "old" => Ok(TokenMatch::Old),
            _ => Err(ParseError::new("token match", s, "current or old")),
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStatus::Active => "active",
            KeyStatus::Inactive => "inactive",
        })
    }
}

impl FromStr for KeyStatus {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "active" => Ok(KeyStatus::Active),
            "inactive" => Ok(KeyStatus::Inactive),
            _ => Err(ParseError::new("key status", s, "active or inactive")),
        }
    }
}

/// `at=<RFC 3339>` or `after-use=<seconds>s`, shared by both enums.
enum Timed {
    At(OffsetDateTime),
    AfterUse(Duration),
}

fn write_timed(f: &mut fmt::Formatter<'_>, timed: Timed) -> fmt::Result {
    match timed {
        Timed::At(at) => match at.format(&Rfc3339) {
            Ok(text) => write!(f, "at={text}"),
            Err(_) => write!(f, "at={at}"),
        },
        Timed::AfterUse(grace) => write!(f, "after-use={}s", grace.whole_seconds()),
    }
}

fn parse_timed(s: &str) -> Option<Timed> {
    let (name, value) = s.split_once('=')?;
    match name {
        "at" => OffsetDateTime::parse(value, &Rfc3339).ok().map(Timed::At),
        "after-use" => value
            .strip_suffix('s')?
            .parse::<i64>()
            .ok()
            .map(|seconds| Timed::AfterUse(Duration::seconds(seconds))),
        _ => None,
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Decision::Undecided => f.write_str("undecided"),
            Decision::Later => f.write_str("later"),
            Decision::Scheduled { at } => write_timed(f, Timed::At(at)),
            Decision::AfterNewTokenUse { grace } => write_timed(f, Timed::AfterUse(grace)),
        }
    }
}

impl FromStr for Decision {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "undecided" => Ok(Decision::Undecided),
            "later" => Ok(Decision::Later),
            _ => match parse_timed(s) {
                Some(Timed::At(at)) => Ok(Decision::Scheduled { at }),
                Some(Timed::AfterUse(grace)) => Ok(Decision::AfterNewTokenUse { grace }),
                None => Err(ParseError::new(
                    "decision",
                    s,
                    "undecided, later, at=<RFC 3339> or after-use=<seconds>s",
                )),
            },
        }
    }
}

impl fmt::Display for OldTokenDeletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OldTokenDeletion::Now => f.write_str("now"),
            OldTokenDeletion::Later => f.write_str("later"),
            OldTokenDeletion::At(at) => write_timed(f, Timed::At(at)),
            OldTokenDeletion::AfterNewTokenUse { grace } => write_timed(f, Timed::AfterUse(grace)),
        }
    }
}

impl FromStr for OldTokenDeletion {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "now" => Ok(OldTokenDeletion::Now),
            "later" => Ok(OldTokenDeletion::Later),
            _ => match parse_timed(s) {
                Some(Timed::At(at)) => Ok(OldTokenDeletion::At(at)),
                Some(Timed::AfterUse(grace)) => Ok(OldTokenDeletion::AfterNewTokenUse { grace }),
                None => Err(ParseError::new(
                    "deletion",
                    s,
                    "now, later, at=<RFC 3339> or after-use=<seconds>s",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::quote;

    #[test]
    fn every_value_reads_back_what_it_writes() {
        let at = time::macros::datetime!(2026-03-01 12:00 UTC);
        let grace = Duration::hours(2);
        for m in [TokenMatch::Current, TokenMatch::Old] {
            assert_eq!(m.to_string().parse::<TokenMatch>(), Ok(m));
        }
        for s in [KeyStatus::Active, KeyStatus::Inactive] {
            assert_eq!(s.to_string().parse::<KeyStatus>(), Ok(s));
        }
        for d in [
            Decision::Undecided,
            Decision::Later,
            Decision::Scheduled { at },
            Decision::AfterNewTokenUse { grace },
        ] {
            assert_eq!(d.to_string().parse::<Decision>(), Ok(d));
        }
        for d in [
            OldTokenDeletion::Now,
            OldTokenDeletion::Later,
            OldTokenDeletion::At(at),
            OldTokenDeletion::AfterNewTokenUse { grace },
        ] {
            assert_eq!(d.to_string().parse::<OldTokenDeletion>(), Ok(d));
        }
        assert_eq!(
            OldTokenDeletion::At(at).to_string(),
            "at=2026-03-01T12:00:00Z"
        );
        assert_eq!(
            OldTokenDeletion::AfterNewTokenUse { grace }.to_string(),
            "after-use=7200s"
        );
    }

    #[test]
    fn bad_text_is_refused_naming_it() {
        assert_eq!(
            "Current".parse::<TokenMatch>().unwrap_err().to_string(),
            "invalid token match \"Current\": expected current or old"
        );
        for bad in ["soon", "at=yesterday", "after-use=1h", "after-use=s", ""] {
            let error = bad.parse::<OldTokenDeletion>().unwrap_err().to_string();
            assert!(error.contains(&quote(bad)), "{error}");
        }
    }
}
