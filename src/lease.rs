//! Leases: a slice of a key's allowance taken from the store in one
//! charge, then spent in memory by one replica ([`LeasePolicy`],
//! [`KeyManager::with_leases`](crate::KeyManager::with_leases)).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use time::{Duration, OffsetDateTime};

use crate::errors::StoreError;
use crate::id::KeyId;
use crate::meter::{Allowance, CreditsPeriod, Refusal};
use crate::store::KeyStore;

/// How a [`KeyManager`](crate::KeyManager) leases: how long a lease lives
/// (`max_lag`), measured on the replica's monotonic clock from before the
/// store call that took it was sent (and, so that tests can move time, on
/// the `now` given to the manager too: a lease ends at whichever comes
/// first).
///
/// A lease is a charge of `k` units at the store (`k` cells of the rate
/// limit, `k` credits), which the replica then spends in memory:
///
/// - **Credits are exact.** A lease never takes more than remain; what it
///   did not spend goes back ([`KeyStore::refund`]) when it ends or on
///   [`KeyManager::release_leases`](crate::KeyManager::release_leases),
///   into the refill period it was taken from only. The cost admitted in a
///   refill period never exceeds the credits of that period, whatever the
///   replicas and crashes; a replica that crashes strands at most its
///   outstanding leases ([`KeyManager::leases`](crate::KeyManager::leases)),
///   until the next refill.
/// - **Rate limits keep a stated bound.** Over any interval of length `d`
///   the cost admitted across every replica is at most
///   `burst + floor((d + max_lag) / T)`, `T` being the limit's period
///   divided by its limit: a lease's cells are admitted at the store when
///   it is taken, and spent within `max_lag` after.
/// - **Sizes adapt.** A key's first lease is one request's worth; it
///   doubles while the key is hot (a lease spent within half of
///   `max_lag`), halves when one ends unspent, and never takes more than an
///   eighth of the credits left, nor more than the burst: near exhaustion
///   every charge is exact.
/// - Verification still happens on every request: a deactivated, revoked
///   or deleted key is refused whatever its leases hold. A change of limits
///   applies at the next lease, at most `max_lag` later.
///
/// Turn leases on when a hot key's requests would queue on the store (one
/// row's lock in PostgreSQL); leave them off for an in-memory store (it is
/// already local), and where the rate limit must be exact to the request.
///
/// # Example
///
/// ```
/// use keyroll::{KeyManager, LeasePolicy};
/// use keyroll::store::InMemoryStore;
/// use time::Duration;
///
/// let keys = KeyManager::new(InMemoryStore::new())
///     .with_leases(LeasePolicy::new(Duration::milliseconds(50))?);
/// assert!(LeasePolicy::new(Duration::seconds(11)).is_err());
/// # Ok::<(), keyroll::error::InvalidLeasePolicy>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    max_lag: Duration,
}

impl LeasePolicy {
    /// The longest `max_lag`: 10 seconds.
    pub const MAX_LAG: Duration = Duration::seconds(10);

    /// Leases that live `max_lag` at most; 0 turns leases off (every
    /// charge is a store call, as without a policy).
    ///
    /// # Errors
    ///
    /// [`InvalidLeasePolicy`] for a negative `max_lag`, or one over
    /// [`MAX_LAG`](Self::MAX_LAG).
    pub fn new(max_lag: Duration) -> Result<LeasePolicy, InvalidLeasePolicy> {
        if max_lag.is_negative() || max_lag > Self::MAX_LAG {
            return Err(InvalidLeasePolicy { max_lag });
        }
        Ok(LeasePolicy { max_lag })
    }

    /// How long a lease lives at most.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }
}

/// A lease policy refused: a `max_lag` below zero or over 10 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid lease policy: max_lag {max_lag} must be 0 (leases off) to 10 s")]
pub struct InvalidLeasePolicy {
    max_lag: Duration,
}

/// What a replica holds of a key's allowance
/// ([`KeyManager::leases`](crate::KeyManager::leases)): units taken from
/// the store and not spent yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldLease {
    /// The key.
    pub key_id: KeyId,
    /// The key's incarnation.
    pub incarnation: u64,
    /// The units (cells and credits) not spent.
    pub units: u32,
}

/// One key's lease on this replica, and the size of its next one.
#[derive(Debug)]
struct Lease {
    /// Units taken and not spent.
    units: u32,
    /// When the store call that took it was sent: on the monotonic clock,
    /// and on the manager's.
    sent: Instant,
    sent_at: OffsetDateTime,
    /// The credits' refill period it was taken in, where its unspent
    /// credits go back.
    period: Option<CreditsPeriod>,
    /// What the store said when it was taken: its rate limit bounds the
    /// next lease, and requests served from it are answered with it.
    allowance: Allowance,
    /// The size of the next lease.
    size: u32,
}

impl Lease {
    /// The size of its successor for a request of `cost`: at least
    /// `cost`, at most what the rate limit's bucket held and an eighth of
    /// the credits left when it was taken.
    fn next_size(&self, cost: u32) -> u32 {
        let mut size = self.size;
        if let Some(room) = self.allowance.rate_remaining() {
            // What the bucket held after the last lease, and at least one.
            size = size.min(room.max(1));
        }
        if let Some(left) = self.allowance.credits_remaining() {
            size = size.min(u32::try_from(left / 8).unwrap_or(u32::MAX));
        }
        size.max(cost)
    }

    /// How long it has lived, on the clock that says longer.
    fn age(&self, clock: Instant, now: OffsetDateTime) -> Duration {
        let monotonic =
            Duration::try_from(clock.duration_since(self.sent)).unwrap_or(Duration::MAX);
        monotonic.max(now - self.sent_at)
    }
}

/// The largest lease, whatever the key's limits.
const MAX_SIZE: u32 = 1 << 16;

/// A manager's leases, by key and incarnation.
#[derive(Debug)]
pub(crate) struct Leases {
    policy: LeasePolicy,
    table: Mutex<HashMap<(KeyId, u64), Lease>>,
}

impl Leases {
    pub(crate) fn new(policy: LeasePolicy) -> Leases {
        Leases {
            policy,
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<(KeyId, u64), Lease>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `cost` to key `id` of `incarnation`: from its lease if one
    /// is live and holds enough, else from a new lease taken at the store
    /// (the unspent credits of an ended one given back first).
    pub(crate) async fn charge<S: KeyStore>(
        &self,
        store: &S,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<S::Error>> {
        let max_lag = self.policy.max_lag;
        let key = (id.clone(), incarnation);
        let (size, ended) = {
            let mut table = self.table();
            match table.get_mut(&key) {
                None => (cost, None),
                Some(lease) => {
                    let age = lease.age(Instant::now(), now);
                    if age < max_lag && lease.units >= cost {
                        lease.units -= cost;
                        return Ok(Ok(lease.allowance));
                    }
                    // Ended: spent (hot if within half of max_lag), or
                    // expired with units unspent, to give back.
                    let unspent = std::mem::take(&mut lease.units);
                    if unspent > 0 {
                        lease.size = (lease.size / 2).max(1);
                    } else if age < max_lag / 2 {
                        lease.size = lease.size.saturating_mul(2).min(MAX_SIZE);
                    }
                    let ended = lease.period.filter(|_| unspent > 0);
                    (lease.next_size(cost), ended.map(|p| (unspent, p)))
                }
            }
        };
        if let Some((units, period)) = ended {
            store
                .refund(id, incarnation, u64::from(units), period)
                .await
                .map_err(StoreError::Backend)?;
        }
        let (sent, sent_at) = (Instant::now(), now);
        let (mut taken, mut next) = (size, size);
        let mut charged = store.charge(id, incarnation, taken, now).await?;
        if charged.is_err() && taken > cost {
            // Not enough for the lease: exactly what this request costs,
            // and a smaller lease next.
            (taken, next) = (cost, (size / 2).max(1));
            charged = store.charge(id, incarnation, taken, now).await?;
        }
        let Ok(allowance) = charged else {
            return Ok(charged);
        };
        let fresh = Lease {
            units: taken - cost,
            sent,
            sent_at,
            period: allowance.credits_period(),
            allowance,
            size: next,
        };
        let mut table = self.table();
        match table.get_mut(&key) {
            // Another request of this replica took a lease meanwhile: the
            // units join it, under its older clocks.
            Some(held)
                if held.units > 0
                    && held.period == fresh.period
                    && held.age(Instant::now(), now) < max_lag =>
            {
                held.units = held.units.saturating_add(fresh.units);
            }
            // Else this one stands (one of another period is left unspent:
            // under-spent, never over).
            _ => _ = table.insert(key, fresh),
        }
        Ok(Ok(allowance))
    }

    /// Every lease with units left, emptied: what to give back.
    pub(crate) fn drain(&self) -> Vec<(HeldLease, Option<CreditsPeriod>)> {
        self.table()
            .drain()
            .filter(|(_, lease)| lease.units > 0)
            .map(|((key_id, incarnation), lease)| {
                let held = HeldLease {
                    key_id,
                    incarnation,
                    units: lease.units,
                };
                (held, lease.period)
            })
            .collect()
    }

    /// What each lease holds now.
    pub(crate) fn held(&self) -> Vec<HeldLease> {
        let mut held: Vec<HeldLease> = self
            .table()
            .iter()
            .filter(|(_, lease)| lease.units > 0)
            .map(|((key_id, incarnation), lease)| HeldLease {
                key_id: key_id.clone(),
                incarnation: *incarnation,
                units: lease.units,
            })
            .collect();
        held.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        held
    }
}
