//! Owner limits: one rate limit and one credit balance shared by all of an
//! owner's keys.
//!
//! A request by a key whose owner has limits is admitted only if the key's
//! own meter and the owner's both admit it; otherwise neither is charged,
//! and the [`Refusal`] names the [`Subject`](crate::meter::Subject) whose
//! limit refused. A store keeps an owner's limits, with the owner's meter,
//! beside its keys: in no key's record.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::id::OwnerId;
use crate::meter::{
    Allowance, Credits, CreditsPeriod, CreditsSetting, Limits, OwnerPart, RateLimit, Refusal,
    StoredMeter,
};

/// The limits an owner's keys share: a rate limit, credits, both or
/// neither (no limits: [`OwnerLimits::new`] alone, which clears them when
/// set).
///
/// Set them with
/// [`KeyManager::set_owner_limits`](crate::KeyManager::set_owner_limits).
/// The store stamps each setting with a version, and the credits with when
/// they were set: setting the same credits again keeps their balance,
/// setting other credits starts it over (as
/// [`Change::Credits`](crate::Change::Credits) does for a key).
///
/// # Example
///
/// ```
/// use keyroll::OwnerLimits;
/// use keyroll::meter::{Credits, RateLimit};
/// use time::Duration;
///
/// let limits = OwnerLimits::new()
///     .rate_limit(RateLimit::new(100, Duration::MINUTE)?)
///     .credits(Credits::new(500));
/// assert_eq!(limits.rate().map(|r| r.limit()), Some(100));
/// assert_eq!(limits.credits_as_set().map(|c| c.remaining()), Some(500));
/// assert!(OwnerLimits::new().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnerLimits {
    limits: Limits,
    version: u64,
}

impl OwnerLimits {
    /// No limits.
    pub fn new() -> OwnerLimits {
        OwnerLimits::default()
    }

    /// These limits with `limit` as the owner's rate limit.
    pub fn rate_limit(mut self, limit: RateLimit) -> OwnerLimits {
        self.limits.rate = Some(limit);
        self
    }

    /// These limits with `credits` as the owner's credits.
    pub fn credits(mut self, credits: Credits) -> OwnerLimits {
        self.limits.credits = Some(CreditsSetting {
            credits,
            set_at: OffsetDateTime::UNIX_EPOCH,
            generation: 0,
        });
        self
    }

    /// The rate limit, if any.
    pub fn rate(&self) -> Option<&RateLimit> {
        self.limits.rate.as_ref()
    }

    /// The credits as set (their starting amount and refill), if any.
    pub fn credits_as_set(&self) -> Option<&Credits> {
        self.limits.credits.as_ref().map(|c| &c.credits)
    }

    /// When the credits were set, as stored (refills count from then).
    pub fn credits_set_at(&self) -> Option<OffsetDateTime> {
        self.limits.credits.as_ref().map(|c| c.set_at)
    }

    /// The setting's version in its store: 1 for the first, one more for
    /// each after (clearing included); 0 before it is stored.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether there is no limit at all (the owner's keys are metered by
    /// their own limits only).
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// These limits as the setting that follows `before` at `now`: the
    /// next version, and the credits' balance kept when they are the same
    /// credits as before, else started over at `now`.
    pub(crate) fn stamped(mut self, before: Option<&OwnerLimits>, now: OffsetDateTime) -> Self {
        self.version = before.map_or(0, |b| b.version) + 1;
        let version = self.version;
        if let Some(setting) = &mut self.limits.credits {
            match before.and_then(|b| b.limits.credits.as_ref()) {
                Some(kept) if kept.credits == setting.credits => *setting = kept.clone(),
                _ => {
                    setting.set_at = now;
                    setting.generation = version;
                }
            }
        }
        self
    }

    /// Limits as a store read them back: `limits` at `version` (the
    /// record kit's columns).
    #[cfg(feature = "serde")]
    pub(crate) fn from_parts(limits: Limits, version: u64) -> OwnerLimits {
        OwnerLimits { limits, version }
    }

    #[cfg(feature = "serde")]
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Charges `cost` to the owner's meter (`stored`, or a full one) for a
    /// request the key's own limits admitted with `key`: the owner's meter
    /// to store, and the request's allowance (the key's, with the owner's
    /// part). The backend kit's second half of a charge: a store stores
    /// the key's new meter and this one together, or neither.
    ///
    /// # Errors
    ///
    /// The owner's [`Refusal`], its subject
    /// [`Subject::Owner`](crate::meter::Subject::Owner); then nothing is
    /// to be stored, the key's meter included.
    pub fn charge(
        &self,
        owner: &OwnerId,
        stored: Option<&StoredMeter>,
        key: Allowance,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<(StoredMeter, Allowance), Refusal> {
        let (next, allowance) = self
            .limits
            .charge(stored, cost, now)
            .map_err(Refusal::by_owner)?;
        Ok((next, key.with_owner(owner, allowance)))
    }

    /// Gives back `amount` credits a charge took in `period` to the
    /// owner's meter: the meter to store, or `None` when the refund is
    /// void (as [`ApiKey::refund`](crate::ApiKey::refund)).
    pub fn refund(
        &self,
        stored: Option<&StoredMeter>,
        amount: u64,
        period: CreditsPeriod,
    ) -> Option<StoredMeter> {
        self.limits.refund(stored, amount, period)
    }

    /// What the owner's meter (`stored`, or a full one) allows at `now`,
    /// without charging (as [`ApiKey::allowance`](crate::ApiKey::allowance)).
    pub fn allowance(&self, stored: Option<&StoredMeter>, now: OffsetDateTime) -> Allowance {
        self.limits.peek(stored, now)
    }
}

/// What a charge of a key and its owner's limits leaves to store: each
/// meter that was charged (`None`: that side has no limits), and the
/// request's allowance. A store writes both meters, or, on a refusal,
/// neither ([`ApiKey::charge_with_owner`](crate::ApiKey::charge_with_owner)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Charged {
    /// The key's meter after the charge.
    pub key: Option<StoredMeter>,
    /// The owner's meter after the charge.
    pub owner: Option<StoredMeter>,
    /// What the limits allow after it.
    pub allowance: Allowance,
}

/// Charges `cost` to the key's `limits` (with its meter) and then to
/// `owner`'s (with theirs), both or neither.
pub(crate) fn charge_both(
    limits: Option<(&Limits, Option<&StoredMeter>)>,
    owner: Option<(&OwnerId, &OwnerLimits, Option<&StoredMeter>)>,
    cost: u32,
    now: OffsetDateTime,
) -> Result<Charged, Refusal> {
    let (key, allowance) = match limits {
        Some((limits, meter)) => {
            let (next, allowance) = limits.charge(meter, cost, now)?;
            (Some(next), allowance)
        }
        None => (None, Allowance::default()),
    };
    match owner.filter(|(_, limits, _)| !limits.is_empty()) {
        Some((owner, limits, meter)) => {
            let (next, allowance) = limits.charge(owner, meter, allowance, cost, now)?;
            Ok(Charged {
                key,
                owner: Some(next),
                allowance,
            })
        }
        None => Ok(Charged {
            key,
            owner: None,
            allowance,
        }),
    }
}

impl Allowance {
    /// The owner whose limits [`owner`](Allowance::owner) is of.
    pub fn owner_id(&self) -> Option<OwnerId> {
        self.owner.as_ref().map(|part| OwnerId(part.owner.clone()))
    }

    /// This allowance with `allowance` as what the limits of `owner`
    /// allow.
    pub(crate) fn with_owner(mut self, owner: &OwnerId, allowance: Allowance) -> Allowance {
        self.owner = Some(Arc::new(OwnerPart {
            owner: owner.0.clone(),
            allowance,
        }));
        self
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::meter::Subject;

    fn owner() -> OwnerId {
        OwnerId::new("acme").unwrap()
    }

    #[test]
    fn the_same_credits_set_again_keep_their_balance_and_others_start_over() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let first = OwnerLimits::new()
            .credits(Credits::new(10))
            .stamped(None, t0);
        assert_eq!((first.version(), first.credits_set_at()), (1, Some(t0)));
        let t1 = t0 + Duration::HOUR;
        let rate = RateLimit::new(5, Duration::SECOND).unwrap();
        let same = OwnerLimits::new()
            .credits(Credits::new(10))
            .rate_limit(rate)
            .stamped(Some(&first), t1);
        assert_eq!((same.version(), same.credits_set_at()), (2, Some(t0)));
        let other = OwnerLimits::new()
            .credits(Credits::new(11))
            .stamped(Some(&same), t1);
        assert_eq!((other.version(), other.credits_set_at()), (3, Some(t1)));
        // A meter of the first setting starts over under the third.
        let (meter, _) = first
            .charge(&owner(), None, Allowance::default(), 4, t0)
            .unwrap();
        let (_, allowance) = other
            .charge(&owner(), Some(&meter), Allowance::default(), 1, t1)
            .unwrap();
        assert_eq!(allowance.owner().unwrap().credits_remaining(), Some(10));
        // ... and not under the second.
        let (_, allowance) = same
            .charge(&owner(), Some(&meter), Allowance::default(), 1, t1)
            .unwrap();
        assert_eq!(allowance.owner().unwrap().credits_remaining(), Some(5));
    }

    #[test]
    fn an_owner_refusal_names_the_owner_and_an_admission_carries_both_parts() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let limits = OwnerLimits::new()
            .credits(Credits::new(1))
            .stamped(None, now);
        let (meter, allowance) = limits
            .charge(&owner(), None, Allowance::default(), 1, now)
            .unwrap();
        assert_eq!(allowance.owner_id(), Some(owner()));
        assert_eq!(allowance.credits_remaining(), None);
        assert_eq!(allowance.owner().unwrap().credits_remaining(), Some(0));
        let refused = limits.charge(&owner(), Some(&meter), Allowance::default(), 1, now);
        assert!(matches!(
            refused,
            Err(Refusal::UsageExceeded {
                subject: Subject::Owner,
                ..
            })
        ));
    }
}
