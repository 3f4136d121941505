//! Rate limits and usage credits: the pure arithmetic, with no clock and no
//! I/O.
//!
//! A key may carry a [`RateLimit`] (GCRA: a sustained `limit` per
//! `period`, in bursts of up to `burst`) and [`Credits`] (a balance spent
//! by each admitted request, optionally *set* back to an amount by a
//! [`Refill`] at fixed times). Both are configuration, kept in the key's
//! record. The moving state, a [`Meter`], is kept by the store beside the
//! key; [`Meter::charge`] admits a request of some cost, charging both, or
//! refuses it, charging neither.
//!
//! All arithmetic is in integer nanoseconds (`i128`): no floats.
//!
//! # Example
//!
//! ```
//! use keyroll::meter::{Credits, Meter, RateLimit, Refusal};
//! use time::{Duration, OffsetDateTime};
//!
//! // 2 a second, in bursts of 3; 4 credits.
//! let rate = RateLimit::new(2, Duration::SECOND)?.with_burst(3)?;
//! let credits = Credits::new(4);
//! let now = OffsetDateTime::UNIX_EPOCH;
//! let mut meter = Meter::new(Some(&credits), now);
//! for _ in 0..3 {
//!     meter.charge(Some(&rate), Some(&credits), 1, now).expect("within the burst");
//! }
//! // The burst is spent: the next request may come in half a second.
//! let refused = meter.charge(Some(&rate), Some(&credits), 1, now);
//! assert!(matches!(
//!     refused,
//!     Err(Refusal::RateLimited { retry_after, .. }) if retry_after == Duration::milliseconds(500)
//! ));
//! let later = now + Duration::milliseconds(500);
//! let allowance = meter.charge(Some(&rate), Some(&credits), 1, later)?;
//! assert_eq!(allowance.credits_remaining(), Some(0));
//! // No credits left: refused, before the rate limit is even looked at.
//! assert!(matches!(
//!     meter.charge(Some(&rate), Some(&credits), 1, later + Duration::HOUR),
//!     Err(Refusal::UsageExceeded { refill_at: None, .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use smol_str::SmolStr;
use time::{Duration, OffsetDateTime};

/// The largest `limit` and `burst`.
const MAX_COUNT: u32 = 1_000_000_000;
/// The shortest and longest rate-limit period.
const MIN_PERIOD: Duration = Duration::SECOND;
const MAX_PERIOD: Duration = Duration::days(366);
/// The shortest and longest time between refills.
const MIN_EVERY: Duration = Duration::MINUTE;
const MAX_EVERY: Duration = Duration::days(36_600);
/// The largest credit balance or refill amount: what a signed 64-bit
/// column holds.
pub const MAX_CREDITS: u64 = i64::MAX as u64;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// A rate limit that cannot be: the value it refused is in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRateLimit {
    /// `limit` outside 1 to 10^9.
    #[error("invalid rate limit: limit {0} must be 1 to 1000000000")]
    Limit(u32),
    /// `burst` outside 1 to 10^9.
    #[error("invalid rate limit: burst {0} must be 1 to 1000000000")]
    Burst(u32),
    /// `period` outside 1 second to 366 days.
    #[error("invalid rate limit: period {0} must be 1s to 366d")]
    Period(Duration),
    /// `burst` requests' worth of time at this rate overflows 64-bit
    /// nanoseconds (about 292 years).
    #[error(
        "invalid rate limit: a burst of {burst} at {limit} per {period} spans more than 2^63 nanoseconds; lower the burst"
    )]
    BurstTooLong {
        /// The limit.
        limit: u32,
        /// The period.
        period: Duration,
        /// The refused burst.
        burst: u32,
    },
}

/// A refill that cannot be: the value it refused is in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRefill {
    /// `every` outside 1 minute to 36,600 days.
    #[error("invalid refill: every {0} must be 1min to 36600d")]
    Every(Duration),
    /// An amount above [`MAX_CREDITS`].
    #[error("invalid refill: amount {0} must be at most 9223372036854775807")]
    Amount(u64),
}

/// A sustained rate of `limit` requests per `period`, in bursts of up to
/// `burst` (by default `limit`): the generic cell rate algorithm, a token
/// bucket of `burst` tokens that refills one token every
/// `T = ceil(period / limit)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    limit: u32,
    period: Duration,
    burst: u32,
    /// `T` in nanoseconds, computed once: it is at most `period`.
    interval_ns: i64,
}

impl RateLimit {
    /// `limit` requests per `period`, in bursts of up to `limit`.
    ///
    /// # Errors
    ///
    /// [`InvalidRateLimit`] for a `limit` outside 1 to 10^9 or a `period`
    /// outside 1 second to 366 days.
    pub fn new(limit: u32, period: Duration) -> Result<RateLimit, InvalidRateLimit> {
        if !(1..=MAX_COUNT).contains(&limit) {
            return Err(InvalidRateLimit::Limit(limit));
        }
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(InvalidRateLimit::Period(period));
        }
        let period_ns = period.whole_nanoseconds();
        let interval_ns = (period_ns + i128::from(limit) - 1) / i128::from(limit);
        RateLimit {
            limit,
            period,
            burst: limit,
            // At most 366 days in nanoseconds: an i64.
            interval_ns: interval_ns as i64,
        }
        .with_burst(limit)
    }

    /// The same rate in bursts of up to `burst`.
    ///
    /// # Errors
    ///
    /// [`InvalidRateLimit`] for a `burst` outside 1 to 10^9, or one whose
    /// span (`burst · T`) exceeds `i64::MAX` nanoseconds.
    pub fn with_burst(self, burst: u32) -> Result<RateLimit, InvalidRateLimit> {
        if !(1..=MAX_COUNT).contains(&burst) {
            return Err(InvalidRateLimit::Burst(burst));
        }
        let limit = RateLimit { burst, ..self };
        if limit.span() > i128::from(i64::MAX) {
            return Err(InvalidRateLimit::BurstTooLong {
                limit: self.limit,
                period: self.period,
                burst,
            });
        }
        Ok(limit)
    }

    /// Requests per period, sustained.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period of the limit.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The most requests admitted at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// `T`, the time one request's worth of the bucket takes to refill:
    /// `ceil(period / limit)` nanoseconds.
    pub fn interval(&self) -> Duration {
        Duration::nanoseconds(self.interval_ns() as i64)
    }

    /// The time a full burst takes to refill (`burst · T`): how long an
    /// empty bucket takes to be full again.
    pub fn window(&self) -> Duration {
        Duration::nanoseconds(self.span() as i64)
    }

    fn interval_ns(&self) -> i128 {
        i128::from(self.interval_ns)
    }

    fn span(&self) -> i128 {
        i128::from(self.burst) * self.interval_ns()
    }
}

/// The refill of a credit balance: at every `every` after the credits were
/// set, the balance is **set** to `amount` (not added to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refill {
    amount: u64,
    every: Duration,
}

impl Refill {
    /// A refill to `amount` every `every`.
    ///
    /// # Errors
    ///
    /// [`InvalidRefill`] for an `amount` above [`MAX_CREDITS`] or an
    /// `every` outside 1 minute to 36,600 days.
    pub fn new(amount: u64, every: Duration) -> Result<Refill, InvalidRefill> {
        if amount > MAX_CREDITS {
            return Err(InvalidRefill::Amount(amount));
        }
        if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
            return Err(InvalidRefill::Every(every));
        }
        Ok(Refill { amount, every })
    }

    /// What the balance is set to at each refill.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The time between refills.
    pub fn every(&self) -> Duration {
        self.every
    }
}

/// A credit balance as configured: what it starts at, and its refill.
/// A key may hold at most [`MAX_CREDITS`]; setting more on a key is
/// refused there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credits {
    remaining: u64,
    refill: Option<Refill>,
}

impl Credits {
    /// A balance of `remaining`, never refilled.
    pub fn new(remaining: u64) -> Credits {
        Credits {
            remaining,
            refill: None,
        }
    }

    /// The same balance, refilled by `refill`.
    pub fn with_refill(self, refill: Refill) -> Credits {
        Credits {
            refill: Some(refill),
            ..self
        }
    }

    /// The balance the credits start at.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The refill, if any.
    pub fn refill(&self) -> Option<&Refill> {
        self.refill.as_ref()
    }
}

/// What a charge left: the rate limit's and the credits' state after it
/// (each `None` when the key has no such limit), and, for a key whose
/// owner has limits, what the owner's allow ([`owner`](Self::owner)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowance {
    rate: Option<RateState>,
    credits: Option<CreditState>,
    period: Option<CreditsPeriod>,
    /// Shared, not boxed: a lease answers each request it serves with a
    /// copy of its allowance.
    pub(crate) owner: Option<Arc<OwnerPart>>,
}

/// The owner's part of an allowance: whose limits, and what they allow.
/// The id is kept as its string, as this module sits below the ids
/// (`OwnerLimits` adds the typed accessors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerPart {
    pub(crate) owner: SmolStr,
    pub(crate) allowance: Allowance,
}

/// The refill period of a key's credits that a charge was taken from: the
/// setting of the credits (the key version that set them) and the refill
/// (0 before the first). Credits handed back
/// ([`KeyStore::refund`](crate::store::KeyStore::refund)) go back into
/// this period only: after a refill, or once the credits were set again,
/// a refund is void.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CreditsPeriod {
    generation: u64,
    refills: u64,
}

impl CreditsPeriod {
    /// The key version whose setting of the credits the period is of.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The index of the refill that started the period (0: the credits as
    /// set).
    pub fn refills(&self) -> u64 {
        self.refills
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RateState {
    limit: RateLimit,
    remaining: u32,
    reset: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CreditState {
    credits: Credits,
    remaining: u64,
    next_refill: Option<OffsetDateTime>,
}

impl Allowance {
    /// An allowance of these parts, without a credits period (the model
    /// of `testing` builds its own).
    #[cfg(feature = "proptest")]
    pub(crate) fn of(
        rate: Option<(RateLimit, u32, Duration)>,
        credits: Option<(Credits, u64, Option<OffsetDateTime>)>,
    ) -> Allowance {
        Allowance {
            rate: rate.map(|(limit, remaining, reset)| RateState {
                limit,
                remaining,
                reset,
            }),
            credits: credits.map(|(credits, remaining, next_refill)| CreditState {
                credits,
                remaining,
                next_refill,
            }),
            period: None,
            owner: None,
        }
    }

    /// How many more requests of cost 1 the rate limit admits now.
    pub fn rate_remaining(&self) -> Option<u32> {
        self.rate.map(|r| r.remaining)
    }

    /// The time until the rate limit's bucket is full again.
    pub fn rate_reset(&self) -> Option<Duration> {
        self.rate.map(|r| r.reset)
    }

    /// The rate limit this allowance is of.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.rate.as_ref().map(|r| &r.limit)
    }

    /// The credits as set (their starting amount and refill) this
    /// allowance is of.
    pub fn credits(&self) -> Option<&Credits> {
        self.credits.as_ref().map(|c| &c.credits)
    }

    /// The credits left.
    pub fn credits_remaining(&self) -> Option<u64> {
        self.credits.map(|c| c.remaining)
    }

    /// When the credits are next set to their refill amount.
    pub fn next_refill(&self) -> Option<OffsetDateTime> {
        self.credits.and_then(|c| c.next_refill)
    }

    /// The refill period the credits were charged in (for a refund of
    /// what a lease did not spend), or are in at a peek.
    pub fn credits_period(&self) -> Option<CreditsPeriod> {
        self.period
    }

    /// What the limits the key's owner shares allow, when it has any
    /// ([`OwnerLimits`](crate::OwnerLimits)); its
    /// [`owner_id`](Self::owner_id) names it.
    pub fn owner(&self) -> Option<&Allowance> {
        self.owner.as_ref().map(|part| &part.allowance)
    }
}

/// Whose limit refused a request: the key's own, or the one shared by
/// its owner's keys (owner limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Subject {
    /// The key's own rate limit or credits.
    #[default]
    Key,
    /// The rate limit or credits its owner's keys share.
    Owner,
}

impl Subject {
    /// `"key"` or `"owner"`: the name HTTP answers give it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Subject::Key => "key",
            Subject::Owner => "owner",
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a charge was refused. A refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The rate limit's bucket holds less than the cost: the same request
    /// is admitted after `retry_after` (exactly: not a nanosecond before).
    #[error("rate limited by the {subject}'s limit: retry after {} s", whole_seconds(*.retry_after))]
    #[non_exhaustive]
    RateLimited {
        /// How long to wait; always positive.
        retry_after: Duration,
        /// The rate limit that refused.
        limit: RateLimit,
        /// Whose rate limit it is.
        subject: Subject,
        /// What the subject's limits allow at the refusal (nothing was
        /// charged): boxed, as refusals are rare and `Result`s carry them.
        allowance: Box<Allowance>,
    },
    /// The credits left are fewer than the cost. `refill_at` is the next
    /// refill, `None` when there is none or its amount is below the cost.
    #[error("usage exceeded: not enough of the {subject}'s credits left")]
    #[non_exhaustive]
    UsageExceeded {
        /// When the credits are next refilled.
        refill_at: Option<OffsetDateTime>,
        /// Whose credits they are.
        subject: Subject,
        /// What the subject's limits allow at the refusal (nothing was
        /// charged): boxed, as refusals are rare and `Result`s carry them.
        allowance: Box<Allowance>,
    },
    /// A cost of 0, or above the rate limit's burst: no wait can make it
    /// admitted.
    #[error("cost {cost} is out of range: it must be 1 to {max}")]
    CostOutOfRange {
        /// The refused cost.
        cost: u32,
        /// The largest cost the key admits (its burst, or `u32::MAX`).
        max: u32,
    },
}

impl Refusal {
    /// The same refusal, made by the owner's limits.
    pub(crate) fn by_owner(mut self) -> Refusal {
        if let Refusal::RateLimited { subject, .. } | Refusal::UsageExceeded { subject, .. } =
            &mut self
        {
            *subject = Subject::Owner;
        }
        self
    }
}

/// The moving state of one key's limits: the rate limit's theoretical
/// arrival time, the credits left, and the refills applied. A store keeps
/// it beside the key; it is not part of the key's record, and charging
/// never changes the key.
///
/// [`charge`](Self::charge) takes the configuration as arguments, so the
/// same state serves whatever the key's record says at the time of the
/// charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    /// GCRA's theoretical arrival time, in nanoseconds since the epoch.
    tat: i128,
    remaining: u64,
    /// The index `k` of the last refill applied (refill `k` is due at
    /// `anchor + k · every`).
    refills: u64,
    /// When the credits were set: refills count from here.
    anchor: i128,
}

impl Meter {
    /// A full meter: the bucket full, the balance at `credits`' starting
    /// amount, refills counted from `now`.
    pub fn new(credits: Option<&Credits>, now: OffsetDateTime) -> Meter {
        let now = now.unix_timestamp_nanos();
        Meter {
            tat: now,
            remaining: credits.map_or(0, |c| c.remaining),
            refills: 0,
            anchor: now,
        }
    }

    /// Admits a request of `cost` at `now`, charging the credits and the
    /// rate limit both, or refuses it and changes nothing.
    ///
    /// Credits are looked at first: [`Refusal::UsageExceeded`] comes
    /// before [`Refusal::RateLimited`].
    ///
    /// # Errors
    ///
    /// A [`Refusal`].
    pub fn charge(
        &mut self,
        rate: Option<&RateLimit>,
        credits: Option<&Credits>,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Allowance, Refusal> {
        let max = rate.map_or(u32::MAX, |r| r.burst);
        if cost == 0 || cost > max {
            return Err(Refusal::CostOutOfRange { cost, max });
        }
        let now = now.unix_timestamp_nanos();
        let mut next = self.clone();
        if let Some(credits) = credits {
            next.refill(credits, now);
        }
        // What a refusal reports: the meter refilled, nothing charged.
        let refilled = next.clone();
        let refused = || Box::new(refilled.allowance(rate, credits, now));
        if let Some(credits) = credits {
            if u64::from(cost) > next.remaining {
                return Err(Refusal::UsageExceeded {
                    refill_at: next.next_refill(credits, now, cost),
                    subject: Subject::Key,
                    allowance: refused(),
                });
            }
            next.remaining -= u64::from(cost);
        }
        if let Some(rate) = rate {
            let tat = next.tat.max(now) + i128::from(cost) * rate.interval_ns();
            let over = tat - now - rate.span();
            if over > 0 {
                return Err(Refusal::RateLimited {
                    retry_after: nanos(over),
                    limit: *rate,
                    subject: Subject::Key,
                    allowance: refused(),
                });
            }
            next.tat = tat;
        }
        *self = next;
        Ok(self.allowance(rate, credits, now))
    }

    /// What the meter allows at `now`, without charging.
    pub fn peek(
        &self,
        rate: Option<&RateLimit>,
        credits: Option<&Credits>,
        now: OffsetDateTime,
    ) -> Allowance {
        let now = now.unix_timestamp_nanos();
        let mut view = self.clone();
        if let Some(credits) = credits {
            view.refill(credits, now);
        }
        view.allowance(rate, credits, now)
    }

    /// Gives back `amount` credits taken in the period whose last refill is
    /// `refills`: nothing if a refill came since, and never above what the
    /// period started with.
    fn refund(&mut self, credits: &Credits, amount: u64, refills: u64) {
        if self.refills != refills {
            return;
        }
        let start = match (refills, credits.refill) {
            (1.., Some(refill)) => refill.amount,
            _ => credits.remaining,
        };
        self.remaining = self.remaining.saturating_add(amount).min(start);
    }

    /// The credits as `credits` starts them, refills counted from `set_at`;
    /// the rate limit's state kept.
    pub(crate) fn reset_credits(&mut self, credits: Option<&Credits>, set_at: OffsetDateTime) {
        let fresh = Meter::new(credits, set_at);
        *self = Meter {
            tat: self.tat,
            ..fresh
        };
    }

    fn allowance(
        &self,
        rate: Option<&RateLimit>,
        credits: Option<&Credits>,
        now: i128,
    ) -> Allowance {
        Allowance {
            rate: rate.map(|&limit| {
                let backlog = (self.tat - now).max(0);
                // At most the span, which the bounds keep within i64: a
                // 64-bit division.
                let room = (limit.span() - backlog).max(0) as i64 / limit.interval_ns;
                RateState {
                    limit,
                    remaining: u32::try_from(room).unwrap_or(u32::MAX),
                    reset: nanos(backlog),
                }
            }),
            credits: credits.map(|&credits| CreditState {
                credits,
                remaining: self.remaining,
                next_refill: self.next_refill(&credits, now, 1),
            }),
            period: None,
            owner: None,
        }
    }

    /// Applies the latest refill due at `now`, if it is one not applied
    /// yet (a clock stepping back never refills twice).
    fn refill(&mut self, credits: &Credits, now: i128) {
        let Some(refill) = credits.refill else { return };
        let due = self.due_refills(&refill, now);
        if due > self.refills {
            self.refills = due;
            self.remaining = refill.amount;
        }
    }

    /// The index of the last refill due at `now`.
    fn due_refills(&self, refill: &Refill, now: i128) -> u64 {
        let since = now - self.anchor;
        if since < 0 {
            return 0;
        }
        u64::try_from(since / refill.every.whole_nanoseconds()).unwrap_or(u64::MAX)
    }

    /// The next refill after `now`, if its amount covers `cost`.
    fn next_refill(&self, credits: &Credits, now: i128, cost: u32) -> Option<OffsetDateTime> {
        let refill = credits.refill?;
        if refill.amount < u64::from(cost) {
            return None;
        }
        let k = self
            .refills
            .max(self.due_refills(&refill, now))
            .checked_add(1)?;
        let at = self.anchor + i128::from(k) * refill.every.whole_nanoseconds();
        OffsetDateTime::from_unix_timestamp_nanos(at).ok()
    }

    /// The stored form's parts: the theoretical arrival time and the
    /// anchor, each as whole seconds and nanoseconds since the epoch; the
    /// credits left; the refills applied.
    #[cfg(feature = "serde")]
    pub(crate) fn parts(&self) -> MeterParts {
        let split = |ns: i128| {
            (
                ns.div_euclid(NANOS_PER_SECOND) as i64,
                ns.rem_euclid(NANOS_PER_SECOND) as u32,
            )
        };
        MeterParts {
            tat: split(self.tat),
            remaining: self.remaining,
            refills: self.refills,
            anchor: split(self.anchor),
        }
    }

    /// The meter of stored parts.
    #[cfg(feature = "serde")]
    pub(crate) fn from_parts(parts: &MeterParts) -> Meter {
        let join =
            |(secs, nanos): (i64, u32)| i128::from(secs) * NANOS_PER_SECOND + i128::from(nanos);
        Meter {
            tat: join(parts.tat),
            remaining: parts.remaining,
            refills: parts.refills,
            anchor: join(parts.anchor),
        }
    }
}

/// A meter's fields as a store keeps them (see `record::MeterRow`).
#[cfg(feature = "serde")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MeterParts {
    pub(crate) tat: (i64, u32),
    pub(crate) remaining: u64,
    pub(crate) refills: u64,
    pub(crate) anchor: (i64, u32),
}

/// `d` in whole seconds, rounded up (what a message or a `Retry-After`
/// tells).
pub(crate) fn whole_seconds(d: Duration) -> i64 {
    let ns = d.whole_nanoseconds().max(0);
    i64::try_from((ns + NANOS_PER_SECOND - 1) / NANOS_PER_SECOND).unwrap_or(i64::MAX)
}

/// `ns` nanoseconds, which the bounds keep within `i64`.
fn nanos(ns: i128) -> Duration {
    Duration::nanoseconds(i64::try_from(ns).unwrap_or(i64::MAX))
}

/// A meter as a store keeps it beside a key: the moving state, and which
/// setting of the key's credits it counts (a key whose credits were set
/// again starts its balance over at its next charge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMeter {
    pub(crate) generation: u64,
    pub(crate) meter: Meter,
}

impl StoredMeter {
    /// A meter counting the key's credits as set at `generation` (the key
    /// version of that `set_credits`, 0 for a key without credits).
    pub fn new(generation: u64, meter: Meter) -> StoredMeter {
        StoredMeter { generation, meter }
    }

    /// The key version whose setting of credits the meter counts.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The moving state.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }
}

/// A key's limits as its record keeps them: the rate limit, and the
/// credits with when they were set (refills count from then) and the key
/// version that set them (a meter counting an older setting starts its
/// balance over).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    pub(crate) rate: Option<RateLimit>,
    pub(crate) credits: Option<CreditsSetting>,
}

/// Credits as set on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreditsSetting {
    pub(crate) credits: Credits,
    pub(crate) set_at: OffsetDateTime,
    pub(crate) generation: u64,
}

impl Limits {
    /// Whether the key has no limit at all (and is never charged).
    pub(crate) fn is_empty(&self) -> bool {
        self.rate.is_none() && self.credits.is_none()
    }

    fn credits(&self) -> Option<&Credits> {
        self.credits.as_ref().map(|c| &c.credits)
    }

    /// [`Meter::charge`] on the stored meter (or a full one), brought up to
    /// the key's setting of its credits first: the meter to store if
    /// admitted, and the allowance.
    pub(crate) fn charge(
        &self,
        stored: Option<&StoredMeter>,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<(StoredMeter, Allowance), Refusal> {
        let mut stored = self.current(stored, now);
        let allowance = stored
            .meter
            .charge(self.rate.as_ref(), self.credits(), cost, now)?;
        Ok((stored.clone(), self.with_period(allowance, &stored)))
    }

    /// `allowance` with the period of `stored`'s credits, if the key has
    /// credits.
    fn with_period(&self, allowance: Allowance, stored: &StoredMeter) -> Allowance {
        Allowance {
            period: self.credits.as_ref().map(|_| CreditsPeriod {
                generation: stored.generation,
                refills: stored.meter.refills,
            }),
            ..allowance
        }
    }

    /// The meter with `amount` credits taken in `period` given back, or
    /// `None` when the refund is void: no credits, no meter, or another
    /// setting of the credits or another refill period than `period`.
    pub(crate) fn refund(
        &self,
        stored: Option<&StoredMeter>,
        amount: u64,
        period: CreditsPeriod,
    ) -> Option<StoredMeter> {
        let credits = self.credits.as_ref()?;
        let mut stored = stored?.clone();
        if stored.generation != period.generation || credits.generation != period.generation {
            return None;
        }
        stored
            .meter
            .refund(&credits.credits, amount, period.refills);
        Some(stored)
    }

    /// [`Meter::peek`] on the stored meter, brought up to date the same way.
    pub(crate) fn peek(&self, stored: Option<&StoredMeter>, now: OffsetDateTime) -> Allowance {
        let (mut current, now) = (self.current(stored, now), now.unix_timestamp_nanos());
        if let Some(credits) = self.credits() {
            current.meter.refill(credits, now);
        }
        let allowance = current
            .meter
            .allowance(self.rate.as_ref(), self.credits(), now);
        self.with_period(allowance, &current)
    }

    fn current(&self, stored: Option<&StoredMeter>, now: OffsetDateTime) -> StoredMeter {
        let (generation, set_at) = self
            .credits
            .as_ref()
            .map_or((0, now), |c| (c.generation, c.set_at));
        let meter = match stored {
            Some(stored) if stored.generation == generation => return stored.clone(),
            Some(stored) => {
                let mut meter = stored.meter.clone();
                meter.reset_credits(self.credits(), set_at);
                meter
            }
            None => Meter::new(self.credits(), set_at),
        };
        StoredMeter { generation, meter }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    //! The JSON form of the configuration, checked on load (records and
    //! events carry it).
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
    use time::Duration;

    use super::{Credits, RateLimit, Refill};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RateLimitForm {
        limit: u32,
        #[serde(with = "crate::duration")]
        period: Duration,
        /// Always written; when read, `limit` if left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        burst: Option<u32>,
    }

    impl Serialize for RateLimit {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            RateLimitForm {
                limit: self.limit,
                period: self.period,
                burst: Some(self.burst),
            }
            .serialize(s)
        }
    }

    impl<'de> Deserialize<'de> for RateLimit {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let form = RateLimitForm::deserialize(d)?;
            let rate = RateLimit::new(form.limit, form.period).map_err(D::Error::custom)?;
            match form.burst {
                Some(burst) => rate.with_burst(burst).map_err(D::Error::custom),
                None => Ok(rate),
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RefillForm {
        amount: u64,
        #[serde(with = "crate::duration")]
        every: Duration,
    }

    impl Serialize for Refill {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            RefillForm {
                amount: self.amount,
                every: self.every,
            }
            .serialize(s)
        }
    }

    impl<'de> Deserialize<'de> for Refill {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let form = RefillForm::deserialize(d)?;
            Refill::new(form.amount, form.every).map_err(D::Error::custom)
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CreditsForm {
        remaining: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refill: Option<Refill>,
    }

    impl Serialize for Credits {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            CreditsForm {
                remaining: self.remaining,
                refill: self.refill,
            }
            .serialize(s)
        }
    }

    impl<'de> Deserialize<'de> for Credits {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let form = CreditsForm::deserialize(d)?;
            let credits = Credits {
                remaining: form.remaining,
                refill: form.refill,
            };
            Ok(credits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    fn at(ns: i64) -> OffsetDateTime {
        EPOCH + Duration::nanoseconds(ns)
    }

    #[test]
    fn bounds_are_refused_quoting_the_value() {
        assert_eq!(
            RateLimit::new(0, Duration::SECOND),
            Err(InvalidRateLimit::Limit(0))
        );
        assert_eq!(
            RateLimit::new(1, Duration::milliseconds(999)),
            Err(InvalidRateLimit::Period(Duration::milliseconds(999)))
        );
        assert!(RateLimit::new(1, Duration::days(367)).is_err());
        let ok = RateLimit::new(1_000_000_000, Duration::days(366)).unwrap();
        assert_eq!(ok.with_burst(0), Err(InvalidRateLimit::Burst(0)));
        assert_eq!(
            ok.with_burst(1_000_000_001),
            Err(InvalidRateLimit::Burst(1_000_000_001))
        );
        // One a year in bursts of a billion: 10^9 years.
        let slow = RateLimit::new(1, Duration::days(366)).unwrap();
        let refused = slow.with_burst(1_000_000_000).unwrap_err();
        assert!(refused.to_string().contains("1000000000"), "{refused}");
        assert_eq!(
            Refill::new(1, Duration::seconds(59)),
            Err(InvalidRefill::Every(Duration::seconds(59)))
        );
        assert_eq!(
            Refill::new(u64::MAX, Duration::HOUR),
            Err(InvalidRefill::Amount(u64::MAX))
        );
        assert_eq!(
            InvalidRateLimit::Limit(0).to_string(),
            "invalid rate limit: limit 0 must be 1 to 1000000000"
        );
    }

    #[test]
    fn the_interval_rounds_up() {
        let r = RateLimit::new(3, Duration::SECOND).unwrap();
        assert_eq!(r.interval(), Duration::nanoseconds(333_333_334));
        assert_eq!(r.window(), Duration::nanoseconds(1_000_000_002));
    }

    #[test]
    fn costs_out_of_range_are_never_a_wait() {
        let rate = RateLimit::new(10, Duration::SECOND)
            .unwrap()
            .with_burst(5)
            .unwrap();
        let mut meter = Meter::new(None, EPOCH);
        assert_eq!(
            meter.charge(Some(&rate), None, 6, EPOCH),
            Err(Refusal::CostOutOfRange { cost: 6, max: 5 })
        );
        assert_eq!(
            meter.charge(None, None, 0, EPOCH),
            Err(Refusal::CostOutOfRange {
                cost: 0,
                max: u32::MAX
            })
        );
        assert!(meter.charge(Some(&rate), None, 5, EPOCH).is_ok());
    }

    #[test]
    fn usage_exceeded_comes_before_rate_limited_and_neither_charges() {
        let rate = RateLimit::new(1, Duration::SECOND).unwrap();
        let credits = Credits::new(1);
        let mut meter = Meter::new(Some(&credits), EPOCH);
        let allowance = meter.charge(Some(&rate), Some(&credits), 1, EPOCH).unwrap();
        assert_eq!(allowance.credits_remaining(), Some(0));
        assert_eq!(allowance.rate_remaining(), Some(0));
        assert_eq!(allowance.rate_reset(), Some(Duration::SECOND));
        let before = meter.clone();
        assert_eq!(
            meter.charge(Some(&rate), Some(&credits), 1, EPOCH),
            Err(Refusal::UsageExceeded {
                refill_at: None,
                subject: Subject::Key,
                // What remains, as a look without charging says.
                allowance: Box::new(before.peek(Some(&rate), Some(&credits), EPOCH)),
            })
        );
        assert_eq!(meter, before);
        // Credits without the rate limit's room: the rate limit refuses
        // and the credits are not spent.
        let plenty = Credits::new(10);
        let mut meter = Meter::new(Some(&plenty), EPOCH);
        meter.charge(Some(&rate), Some(&plenty), 1, EPOCH).unwrap();
        assert_eq!(
            meter.charge(Some(&rate), Some(&plenty), 1, EPOCH),
            Err(Refusal::RateLimited {
                retry_after: Duration::SECOND,
                limit: rate,
                subject: Subject::Key,
                allowance: Box::new(meter.peek(Some(&rate), Some(&plenty), EPOCH)),
            })
        );
        let allowance = meter.peek(Some(&rate), Some(&plenty), EPOCH);
        assert_eq!(allowance.credits_remaining(), Some(9));
    }

    #[test]
    fn refills_set_the_balance_at_exact_boundaries() {
        let every = Duration::MINUTE;
        let credits = Credits::new(2).with_refill(Refill::new(3, every).unwrap());
        let mut meter = Meter::new(Some(&credits), EPOCH);
        meter.charge(None, Some(&credits), 2, EPOCH).unwrap();
        let refused = meter.charge(
            None,
            Some(&credits),
            1,
            EPOCH + every - Duration::NANOSECOND,
        );
        assert_eq!(
            refused,
            Err(Refusal::UsageExceeded {
                refill_at: Some(EPOCH + every),
                subject: Subject::Key,
                allowance: Box::new(meter.peek(
                    None,
                    Some(&credits),
                    EPOCH + every - Duration::NANOSECOND
                )),
            })
        );
        // Set to 3, not added to: unused credits do not pile up.
        let a = meter
            .charge(None, Some(&credits), 1, EPOCH + every)
            .unwrap();
        assert_eq!(a.credits_remaining(), Some(2));
        assert_eq!(a.next_refill(), Some(EPOCH + every * 2));
        let a = meter.peek(None, Some(&credits), EPOCH + every * 5);
        assert_eq!(a.credits_remaining(), Some(3));
        // A cost above the refill amount waits for no refill.
        assert_eq!(
            meter.charge(None, Some(&credits), 4, EPOCH + every),
            Err(Refusal::UsageExceeded {
                refill_at: None,
                subject: Subject::Key,
                allowance: Box::new(meter.peek(None, Some(&credits), EPOCH + every)),
            })
        );
        // A clock stepping back does not refill again.
        meter
            .charge(None, Some(&credits), 2, EPOCH + every)
            .unwrap();
        assert!(
            meter
                .charge(None, Some(&credits), 1, EPOCH + every - Duration::SECOND)
                .is_err()
        );
    }

    #[test]
    fn parts_round_trip_before_and_after_the_epoch() {
        let credits = Credits::new(7);
        for ns in [-1_500_000_001_i64, -1, 0, 1, 1_999_999_999] {
            let meter = Meter::new(Some(&credits), at(ns));
            assert_eq!(Meter::from_parts(&meter.parts()), meter);
            assert!(meter.parts().tat.1 < 1_000_000_000);
        }
    }

    fn rate_limits() -> impl Strategy<Value = RateLimit> {
        (1u32..=20, 1i64..=120, 1u32..=30).prop_map(|(limit, secs, burst)| {
            RateLimit::new(limit, Duration::seconds(secs))
                .unwrap()
                .with_burst(burst)
                .unwrap()
        })
    }

    proptest! {
        /// Over any interval of length `d`, the admitted cost is at most
        /// `burst + floor(d / T)`.
        #[test]
        fn admitted_cost_over_any_interval_is_bounded(
            rate in rate_limits(),
            requests in proptest::collection::vec((0i64..3_000_000_000, 1u32..=4), 1..80),
        ) {
            let mut meter = Meter::new(None, EPOCH);
            let mut now = 0i64;
            let mut admitted = Vec::new();
            for (gap, cost) in requests {
                now += gap;
                if meter.charge(Some(&rate), None, cost.min(rate.burst()), at(now)).is_ok() {
                    admitted.push((now, i128::from(cost.min(rate.burst()))));
                }
            }
            let t = rate.interval_ns();
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let mut total = 0;
                for &(end, cost) in &admitted[i..] {
                    total += cost;
                    let d = i128::from(end - start);
                    prop_assert!(total <= i128::from(rate.burst()) + d / t,
                        "{total} admitted over {d} ns with T = {t}");
                }
            }
        }

        /// A refusal changes nothing; `retry_after` is exact.
        #[test]
        fn refusals_change_nothing_and_retry_after_is_exact(
            rate in rate_limits(),
            credits in proptest::option::of(0u64..50),
            requests in proptest::collection::vec((0i64..2_000_000_000, 1u32..=4), 1..60),
        ) {
            let credits = credits.map(Credits::new);
            let mut meter = Meter::new(credits.as_ref(), EPOCH);
            let mut now = 0i64;
            for (gap, cost) in requests {
                now += gap;
                let before = meter.clone();
                match meter.charge(Some(&rate), credits.as_ref(), cost, at(now)) {
                    Ok(_) => {}
                    Err(refusal) => {
                        prop_assert_eq!(&meter, &before);
                        if let Refusal::RateLimited { retry_after, .. } = refusal {
                            prop_assert!(retry_after.is_positive());
                            let ra = retry_after.whole_nanoseconds() as i64;
                            let mut early = meter.clone();
                            prop_assert!(
                                early.charge(Some(&rate), credits.as_ref(), cost, at(now + ra - 1)).is_err()
                            );
                            let mut on_time = meter.clone();
                            prop_assert!(
                                on_time.charge(Some(&rate), credits.as_ref(), cost, at(now + ra)).is_ok()
                            );
                        }
                    }
                }
            }
        }

        /// Refills happen at `anchor + k · every` exactly, and set the
        /// balance.
        #[test]
        fn refill_boundaries_are_exact(
            start in 0u64..5,
            amount in 1u64..5,
            minutes in 1i64..10,
            k in 1i64..5,
        ) {
            let every = Duration::minutes(minutes);
            let credits = Credits::new(start).with_refill(Refill::new(amount, every).unwrap());
            let anchor = at(123);
            let meter = Meter::new(Some(&credits), anchor);
            let before = meter.peek(None, Some(&credits), anchor + every * k as i32 - Duration::NANOSECOND);
            let after = meter.peek(None, Some(&credits), anchor + every * k as i32);
            prop_assert_eq!(before.credits_remaining(), Some(if k == 1 { start } else { amount }));
            prop_assert_eq!(after.credits_remaining(), Some(amount));
            prop_assert_eq!(after.next_refill(), Some(anchor + every * (k as i32 + 1)));
        }
    }
}
