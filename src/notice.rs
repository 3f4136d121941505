//! Notices: when a key is told that its expiry or its renewal is near, or
//! its credits low or spent ([`NoticePolicy`]), and what it was told
//! already ([`NoticeClaims`], kept in its record, so that a notice is
//! claimed by the compare-and-swap of the key's write: exactly once
//! however many replicas sweep).

use time::{Duration, OffsetDateTime};

use crate::event::Event;
use crate::id::{KeyId, TokenId};
use crate::meter::{Allowance, CreditsPeriod};

/// When [`KeyManager::sweep_notices`](crate::KeyManager::sweep_notices)
/// sends notices.
///
/// - [`Event::KeyExpiring`] and [`Event::RenewalDue`] once the hard
///   expiry or the current token's renewal due date is within a
///   threshold: 30, 7 and 1 days by default. A key gets one notice per
///   threshold, per expiry date and per token; a sweep that finds several
///   thresholds crossed at once sends the nearest only.
/// - [`Event::CreditsLow`] once the credits left fall below a fraction
///   (10% by default) of what their period started with, and
///   [`Event::CreditsExhausted`] once none are left: each once per refill
///   period (and setting) of the credits.
///
/// Inactive keys get no notices.
///
/// # Example
///
/// ```
/// use keyroll::NoticePolicy;
/// use time::Duration;
///
/// let policy = NoticePolicy::new()
///     .thresholds([Duration::days(14), Duration::days(2)])?
///     .credits_low(0.2)?;
/// assert_eq!(policy.threshold_list(), [Duration::days(14), Duration::days(2)]);
/// assert!(NoticePolicy::new().credits_low(1.5).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NoticePolicy {
    /// Distinct, positive, largest first.
    thresholds: Vec<Duration>,
    credits_low: f64,
}

impl Default for NoticePolicy {
    fn default() -> Self {
        NoticePolicy {
            thresholds: vec![Duration::days(30), Duration::days(7), Duration::days(1)],
            credits_low: 0.1,
        }
    }
}

/// A notice policy refused, naming the bad value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidNoticePolicy {
    /// A threshold was not positive.
    #[error("notice threshold {0} is not positive: give a duration before the date")]
    Threshold(Duration),
    /// The fraction was not between 0 and 1.
    #[error("credits-low fraction {0} is not between 0 and 1")]
    Fraction(f64),
}

impl NoticePolicy {
    /// The default policy: 30, 7 and 1 days; credits low below 10%.
    pub fn new() -> NoticePolicy {
        NoticePolicy::default()
    }

    /// Notices at these thresholds before the expiry and the due date (in
    /// any order; none: no such notices).
    ///
    /// # Errors
    ///
    /// [`InvalidNoticePolicy::Threshold`] for a threshold of zero or less.
    pub fn thresholds(
        mut self,
        thresholds: impl IntoIterator<Item = Duration>,
    ) -> Result<NoticePolicy, InvalidNoticePolicy> {
        let mut list: Vec<Duration> = thresholds.into_iter().collect();
        if let Some(bad) = list.iter().find(|t| !t.is_positive()) {
            return Err(InvalidNoticePolicy::Threshold(*bad));
        }
        list.sort_unstable_by(|a, b| b.cmp(a));
        list.dedup();
        self.thresholds = list;
        Ok(self)
    }

    /// [`Event::CreditsLow`] once the credits left fall below `fraction`
    /// of what their period started with (0: never).
    ///
    /// # Errors
    ///
    /// [`InvalidNoticePolicy::Fraction`] unless `0 <= fraction <= 1`.
    pub fn credits_low(mut self, fraction: f64) -> Result<NoticePolicy, InvalidNoticePolicy> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(InvalidNoticePolicy::Fraction(fraction));
        }
        self.credits_low = fraction;
        Ok(self)
    }

    /// The thresholds, largest first.
    pub fn threshold_list(&self) -> Vec<Duration> {
        self.thresholds.clone()
    }

    /// The credits-low fraction.
    pub fn credits_low_fraction(&self) -> f64 {
        self.credits_low
    }

    /// The nearest threshold crossed at `now` before `date`, if any.
    fn crossed(&self, date: OffsetDateTime, now: OffsetDateTime) -> Option<Duration> {
        let left = date - now;
        if left.is_negative() {
            return None;
        }
        self.thresholds.iter().rev().find(|t| left <= **t).copied()
    }
}

/// What a key was told already: the nearest threshold noticed for an
/// expiry date and for a token, and the credit notices of a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub(crate) struct NoticeClaims {
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    expiry: Option<Claim<OffsetDateTimeKey>>,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    renewal: Option<Claim<TokenId>>,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    credits: Option<CreditsClaim>,
}

/// An instant as the whole nanoseconds since the epoch (what a claim
/// compares).
type OffsetDateTimeKey = i128;

/// The nearest threshold noticed for `of`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Claim<T> {
    of: T,
    #[cfg_attr(feature = "serde", serde(with = "crate::duration"))]
    within: Duration,
}

/// The credit notices sent in one period.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct CreditsClaim {
    generation: u64,
    refills: u64,
    low: bool,
    exhausted: bool,
}

/// What a key is, for its notices.
pub(crate) struct Subject<'a> {
    pub(crate) key_id: &'a KeyId,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) token_id: TokenId,
    pub(crate) due_at: OffsetDateTime,
    /// What the key's own limits allow now (with the period of its
    /// credits).
    pub(crate) allowance: &'a Allowance,
}

impl NoticeClaims {
    /// Claims the notices due at `now` for `key` under `policy`: the
    /// events to send, of the key's `version` once the claims are stored.
    pub(crate) fn claim(
        &mut self,
        policy: &NoticePolicy,
        key: &Subject<'_>,
        now: OffsetDateTime,
        version: u64,
    ) -> Vec<Event> {
        let mut due = Vec::new();
        let key_id = key.key_id.clone();
        if let Some(expires_at) = key.expires_at
            && let Some(within) = policy.crossed(expires_at, now)
            && claim(&mut self.expiry, expires_at.unix_timestamp_nanos(), within)
        {
            due.push(Event::KeyExpiring {
                key_id: key_id.clone(),
                at: now,
                version,
                expires_at,
                within,
            });
        }
        if let Some(within) = policy.crossed(key.due_at, now)
            && claim(&mut self.renewal, key.token_id, within)
        {
            due.push(Event::RenewalDue {
                key_id: key_id.clone(),
                at: now,
                version,
                token_id: key.token_id,
                due_at: key.due_at,
                within,
            });
        }
        if let (Some(credits), Some(remaining), Some(period)) = (
            key.allowance.credits(),
            key.allowance.credits_remaining(),
            key.allowance.credits_period(),
        ) {
            let of = match (period.refills(), credits.refill()) {
                (1.., Some(refill)) => refill.amount(),
                _ => credits.remaining(),
            };
            let claimed = self.credits_of(period);
            if remaining == 0 && !claimed.exhausted {
                claimed.exhausted = true;
                claimed.low = true;
                due.push(Event::CreditsExhausted {
                    key_id,
                    at: now,
                    version,
                    next_refill: key.allowance.next_refill(),
                });
            } else if remaining > 0
                && (remaining as f64) < of as f64 * policy.credits_low
                && !claimed.low
            {
                claimed.low = true;
                due.push(Event::CreditsLow {
                    key_id,
                    at: now,
                    version,
                    remaining,
                    of,
                });
            }
        }
        due
    }

    /// The claims of `period`, started afresh if they were of another.
    fn credits_of(&mut self, period: CreditsPeriod) -> &mut CreditsClaim {
        let fresh = CreditsClaim {
            generation: period.generation(),
            refills: period.refills(),
            low: false,
            exhausted: false,
        };
        match &mut self.credits {
            Some(c) if (c.generation, c.refills) == (fresh.generation, fresh.refills) => {}
            other => *other = Some(fresh),
        }
        self.credits.as_mut().expect("set just above")
    }
}

/// Claims threshold `within` for `of`: whether it is nearer than the one
/// claimed for `of` already (or none was).
fn claim<T: PartialEq>(slot: &mut Option<Claim<T>>, of: T, within: Duration) -> bool {
    match slot {
        Some(claimed) if claimed.of == of && claimed.within <= within => false,
        _ => {
            *slot = Some(Claim { of, within });
            true
        }
    }
}
