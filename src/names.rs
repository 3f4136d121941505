//! The small enums as text: `Display` and `FromStr` for [`TokenMatch`],
//! [`KeyStatus`], [`Decision`] and [`OldTokenDeletion`], for command lines
//! and HTTP APIs. Each reads what it writes; the names are those of the
//! serde forms.
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

use crate::input::quote;
use crate::key::{Decision, KeyStatus, OldTokenDeletion};
use crate::verify::TokenMatch;

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
    fn new(what: &'static str, text: &str, expected: &'static str) -> ParseError {
        ParseError {
            what,
            quoted: quote(text),
            expected,
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
