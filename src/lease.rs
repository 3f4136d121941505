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
///   `max_lag`), halves when one ends unspent or is refused, and never
///   takes more than an eighth of the credits left, nor more than the rate
///   limit's bucket held: near exhaustion every charge is exact.
/// - **One lease of a key at a time per replica.** The request that finds
///   it spent takes the next one; the others meanwhile charge the store for
///   themselves. (Taking the next lease ahead, with no executor to do it
///   in the background, made the request that took it wait all the same,
///   and measured slower: BENCHMARKS.md.)
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

/// One key's lease on this replica, if any, and what its next one takes.
#[derive(Debug)]
struct Slot {
    lease: Option<Lease>,
    /// Whether a request is taking the next lease: the others meanwhile
    /// charge the store for themselves, so that one replica takes one
    /// lease at a time.
    fetching: bool,
    /// The size of the next lease.
    size: u32,
    /// What the store said at the last lease: what remains bounds the
    /// next one.
    last: Allowance,
}

/// Units taken from the store and not spent yet.
#[derive(Debug)]
struct Lease {
    units: u32,
    /// When the store call that took it was sent: on the monotonic clock,
    /// and on the manager's.
    sent: Instant,
    sent_at: OffsetDateTime,
    /// The credits' refill period it was taken in, where its unspent
    /// credits go back.
    period: Option<CreditsPeriod>,
}

impl Lease {
    /// How long it has lived, on the clock that says longer.
    fn age(&self, clock: Instant, now: OffsetDateTime) -> Duration {
        let monotonic =
            Duration::try_from(clock.duration_since(self.sent)).unwrap_or(Duration::MAX);
        monotonic.max(now - self.sent_at)
    }
}

impl Slot {
    /// The size of the next lease for a request of `cost`: at least
    /// `cost`, at most what the rate limit's bucket held and an eighth of
    /// the credits left at the last lease.
    fn next_size(&self, cost: u32) -> u32 {
        let mut size = self.size;
        if let Some(room) = self.last.rate_remaining() {
            size = size.min(room.max(1));
        }
        if let Some(left) = self.last.credits_remaining() {
            size = size.min(u32::try_from(left / 8).unwrap_or(u32::MAX));
        }
        size.max(cost)
    }
}

/// The largest lease, whatever the key's limits.
const MAX_SIZE: u32 = 1 << 16;

/// The slots by key and incarnation, and the size at which the next sweep
/// forgets the slots that hold nothing (keys used once keep none).
#[derive(Debug, Default)]
struct Table {
    slots: HashMap<(KeyId, u64), Slot>,
    sweep_at: usize,
}

impl Table {
    /// Forgets the slots holding no units and taking none, once the table
    /// has doubled since the last sweep (amortised: a sweep per as many
    /// leases as it keeps).
    fn sweep(&mut self) {
        if self.slots.len() < self.sweep_at.max(1024) {
            return;
        }
        self.slots
            .retain(|_, slot| slot.fetching || slot.lease.as_ref().is_some_and(|l| l.units > 0));
        self.sweep_at = 2 * self.slots.len();
    }
}

/// A manager's leases, by key and incarnation.
#[derive(Debug)]
pub(crate) struct Leases {
    policy: LeasePolicy,
    table: Mutex<Table>,
}

impl Leases {
    pub(crate) fn new(policy: LeasePolicy) -> Leases {
        Leases {
            policy,
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `cost` to key `id` of `incarnation`: from its lease if one
    /// is live and holds enough, else from a new lease taken at the store
    /// (the unspent credits of an ended one given back first); while
    /// another request takes that lease, from the store directly.
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
        let taking = {
            let mut table = self.table();
            let slot = table.slots.entry(key.clone()).or_insert_with(|| Slot {
                lease: None,
                fetching: false,
                size: cost,
                last: Allowance::default(),
            });
            let clock = Instant::now();
            if let Some(lease) = &mut slot.lease
                && lease.units >= cost
                && lease.age(clock, now) < max_lag
            {
                lease.units -= cost;
                return Ok(Ok(slot.last));
            }
            if slot.fetching {
                None
            } else {
                slot.fetching = true;
                // The lease ended: spent (the key is hot if within half of
                // max_lag), or expired with units unspent, to give back.
                let mut ended = None;
                if let Some(lease) = slot.lease.take() {
                    if lease.units > 0 {
                        slot.size = (slot.size / 2).max(1);
                        ended = lease.period.map(|period| (lease.units, period));
                    } else if lease.age(clock, now) < max_lag / 2 {
                        slot.size = slot.size.saturating_mul(2).min(MAX_SIZE);
                    }
                }
                Some((slot.next_size(cost), ended))
            }
        };
        let Some((size, ended)) = taking else {
            return store.charge(id, incarnation, cost, now).await;
        };
        let (sent, sent_at) = (Instant::now(), now);
        let taken = async {
            if let Some((units, period)) = ended {
                let refunded = store.refund(id, incarnation, u64::from(units), period);
                refunded.await.map_err(StoreError::Backend)?;
            }
            let charged = store.charge(id, incarnation, size, now).await?;
            if charged.is_err() && size > cost {
                // Not enough for the lease: exactly what this request
                // costs, and a smaller lease next.
                let charged = store.charge(id, incarnation, cost, now).await?;
                return Ok((charged, cost, (size / 2).max(1)));
            }
            Ok((charged, size, size))
        }
        .await;
        let mut table = self.table();
        table.sweep();
        let slot = table.slots.entry(key).or_insert_with(|| Slot {
            lease: None,
            fetching: false,
            size,
            last: Allowance::default(),
        });
        slot.fetching = false;
        let (charged, taken, next) = taken?;
        if let Ok(allowance) = charged {
            slot.lease = Some(Lease {
                units: taken - cost,
                sent,
                sent_at,
                period: allowance.credits_period(),
            });
            (slot.size, slot.last) = (next, allowance);
        }
        Ok(charged)
    }

    /// Every lease with units left, emptied: what to give back.
    pub(crate) fn drain(&self) -> Vec<(HeldLease, Option<CreditsPeriod>)> {
        let mut table = self.table();
        table
            .slots
            .iter_mut()
            .filter_map(|((key_id, incarnation), slot)| {
                let lease = slot.lease.take().filter(|lease| lease.units > 0)?;
                let held = HeldLease {
                    key_id: key_id.clone(),
                    incarnation: *incarnation,
                    units: lease.units,
                };
                Some((held, lease.period))
            })
            .collect()
    }

    /// What each lease holds now, in key order.
    pub(crate) fn held(&self) -> Vec<HeldLease> {
        let mut held: Vec<HeldLease> = self
            .table()
            .slots
            .iter()
            .filter_map(|((key_id, incarnation), slot)| {
                let units = slot.lease.as_ref()?.units;
                (units > 0).then(|| HeldLease {
                    key_id: key_id.clone(),
                    incarnation: *incarnation,
                    units,
                })
            })
            .collect();
        held.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(units: Option<u32>, fetching: bool) -> Slot {
        Slot {
            lease: units.map(|units| Lease {
                units,
                sent: Instant::now(),
                sent_at: OffsetDateTime::UNIX_EPOCH,
                period: None,
            }),
            fetching,
            size: 1,
            last: Allowance::default(),
        }
    }

    #[test]
    fn a_sweep_forgets_the_slots_that_hold_nothing_once_the_table_doubled() {
        let mut table = Table::default();
        for n in 0..2000 {
            let id = KeyId::new(format!("k{n}")).unwrap();
            let units = match n % 4 {
                0 => Some(3),
                1 => Some(0),
                _ => None,
            };
            table.slots.insert((id, 1), slot(units, n == 2));
        }
        table.sweep();
        // The 500 holding units, and the one being taken.
        assert_eq!(table.slots.len(), 501);
        assert_eq!(table.sweep_at, 1002);
        // Below the next mark, nothing is swept.
        table
            .slots
            .insert((KeyId::new("spent").unwrap(), 1), slot(Some(0), false));
        table.sweep();
        assert_eq!(table.slots.len(), 502);
    }
}
