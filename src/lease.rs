//! Leases: a slice of a key's allowance taken from the store in one
//! charge, then spent in memory by one replica ([`LeasePolicy`],
//! [`KeyManager::with_leases`](crate::KeyManager::with_leases)).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use time::{Duration, OffsetDateTime};

use crate::errors::StoreError;
use crate::id::{KeyId, OwnerId};
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
///   themselves. With
///   [`with_leases_ahead`](crate::KeyManager::with_leases_ahead) the next
///   lease is taken in the background once the current one is half spent,
///   so that no request of a hot key waits on the store.
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
    /// The units (cells and credits) not spent, counting a lease whose
    /// store call is in flight at its size (at most what it takes).
    pub units: u32,
}

/// One key's leases on this replica: the one being spent, the one taken
/// ahead of it, and what the next one takes.
#[derive(Debug, Default)]
struct Slot {
    current: Option<Lease>,
    next: Option<Lease>,
    /// The units of the lease being taken, 0 when none is: one at a time
    /// per replica (the others meanwhile spend what is left, or charge the
    /// store for themselves).
    in_flight: u32,
    /// The size of the next lease (0: none taken yet).
    size: u32,
    /// What the store said at the last lease: what remains bounds the
    /// next one, and requests served from a lease are answered with it.
    last: Allowance,
}

/// Units taken from the store and not spent yet.
#[derive(Debug)]
struct Lease {
    units: u32,
    /// The units it was taken with.
    taken: u32,
    /// When the store call that took it was sent: on the monotonic clock,
    /// and on the manager's.
    sent: Instant,
    sent_at: OffsetDateTime,
    /// Where its unspent credits go back.
    periods: Periods,
}

/// The refill periods a charge took credits in: the key's, and its
/// owner's (owner limits). A lease's unspent units go back to both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Periods {
    key: Option<CreditsPeriod>,
    owner: Option<(OwnerId, CreditsPeriod)>,
}

impl Periods {
    fn of(allowance: &Allowance) -> Periods {
        Periods {
            key: allowance.credits_period(),
            owner: allowance
                .owner_id()
                .zip(allowance.owner().and_then(Allowance::credits_period)),
        }
    }

    /// Whether there are credits to give back to.
    fn any(&self) -> bool {
        self.key.is_some() || self.owner.is_some()
    }

    /// Gives `units` back to key `id` of `incarnation` and to its owner,
    /// in the periods they were taken in.
    pub(crate) async fn refund<S: KeyStore>(
        &self,
        store: &S,
        id: &KeyId,
        incarnation: u64,
        units: u32,
    ) -> Result<(), S::Error> {
        let amount = u64::from(units);
        if let Some(period) = self.key {
            store.refund(id, incarnation, amount, period).await?;
        }
        if let Some((owner, period)) = &self.owner {
            store.refund_owner(owner, amount, *period).await?;
        }
        Ok(())
    }
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
        for allowance in [Some(&self.last), self.last.owner()].into_iter().flatten() {
            if let Some(room) = allowance.rate_remaining() {
                size = size.min(room.max(1));
            }
            if let Some(left) = allowance.credits_remaining() {
                size = size.min(u32::try_from(left / 8).unwrap_or(u32::MAX));
            }
        }
        size.max(cost)
    }

    /// Ends `lease`: the next size halves if it ends unspent and doubles if
    /// it was spent within `hot`; its unspent credits, to give back.
    fn end(&mut self, lease: Lease, age: Duration, hot: Duration) -> Option<(u32, Periods)> {
        if lease.units > 0 {
            self.size = (self.size / 2).max(1);
            return lease.periods.any().then_some((lease.units, lease.periods));
        }
        if age < hot {
            self.size = self.size.saturating_mul(2).min(MAX_SIZE);
        }
        None
    }

    /// Units held, in both leases, and those a lease in flight takes
    /// (at most).
    fn units(&self) -> u32 {
        [&self.current, &self.next]
            .into_iter()
            .flatten()
            .map(|lease| lease.units)
            .sum::<u32>()
            + self.in_flight
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
    /// Releases so far: a lease whose store call was sent before the last
    /// release is given back when it lands, never kept.
    releases: u64,
    /// Store calls for leases in flight, sent since the last release.
    in_flight: usize,
    /// Those sent before it: the release waits for them.
    in_flight_released: usize,
}

impl Table {
    /// A lease's store call for `key` came back, or was given up: the key
    /// may take another. Whether the lease may be kept (no release since
    /// it was sent).
    fn land(&mut self, key: &(KeyId, u64), taking: Taking) -> bool {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.in_flight = 0;
        }
        if taking.releases == self.releases {
            self.in_flight -= 1;
            true
        } else {
            self.in_flight_released -= 1;
            false
        }
    }

    /// Tells the metrics the units held now, in every slot: once a lease
    /// is taken or released (a sum over the slots, as rare as leases).
    fn report(&self) {
        let units = self.slots.values().map(|slot| u64::from(slot.units()));
        crate::telemetry::lease_units(units.sum());
    }

    /// Forgets the slots holding no units and taking none, once the table
    /// has doubled since the last sweep (amortised: a sweep per as many
    /// leases as it keeps).
    fn sweep(&mut self) {
        if self.slots.len() < self.sweep_at.max(1024) {
            return;
        }
        self.slots.retain(|_, slot| slot.units() > 0);
        self.sweep_at = 2 * self.slots.len();
    }
}

/// A lease's store call, from the moment it is decided: dropped before it
/// lands (its request cancelled, or its task never run), the key may take
/// a lease again.
pub(crate) struct Flight<L: Deref<Target = Leases>> {
    leases: L,
    key: (KeyId, u64),
    taking: Taking,
    landed: bool,
}

impl<L: Deref<Target = Leases>> Flight<L> {
    pub(crate) fn new(leases: L, key: (KeyId, u64), taking: Taking) -> Flight<L> {
        Flight {
            leases,
            key,
            taking,
            landed: false,
        }
    }
}

impl<L: Deref<Target = Leases>> Drop for Flight<L> {
    fn drop(&mut self) {
        if !self.landed {
            self.leases.table().land(&self.key, self.taking);
        }
    }
}

/// What a request does, decided under the table's lock.
enum Step {
    /// Served from a lease; the next one is to be taken ahead if the
    /// current one is half spent.
    Served(Allowance, Option<Taking>),
    /// Charged at the store: another request is taking a lease.
    Direct,
    /// Takes a lease, this request's cost included.
    Take(Taking),
}

/// A lease to take: its size, and the releases before its store call was
/// sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taking {
    size: u32,
    releases: u64,
}

/// Takes a key's next lease (key, incarnation, the lease, now) in the
/// background.
pub(crate) type Ahead = Box<dyn Fn(KeyId, u64, Taking, OffsetDateTime) + Send + Sync>;

/// A manager's leases, by key and incarnation.
pub(crate) struct Leases {
    policy: LeasePolicy,
    table: Mutex<Table>,
    /// Takes the next lease ahead, in the background, if the manager was
    /// given a way to run one.
    ahead: Option<Ahead>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("policy", &self.policy)
            .field("ahead", &self.ahead.is_some())
            .finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(policy: LeasePolicy, ahead: Option<Ahead>) -> Leases {
        Leases {
            policy,
            table: Mutex::default(),
            ahead,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `cost` to key `id` of `incarnation`: from its lease if one
    /// is live and holds enough (the next one taken ahead, in the
    /// background, once it is half spent), else from a new lease taken at
    /// the store; while another request takes one, from the store
    /// directly. Leases that ended give their unspent credits back first.
    pub(crate) async fn charge<S: KeyStore>(
        &self,
        store: &S,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<S::Error>> {
        let key = (id.clone(), incarnation);
        let (step, refunds) = self.step(&key, cost, now);
        // Each lease to take is in flight from here: if this request is
        // cancelled before it lands, the key may take one again.
        let flight = match step {
            Step::Take(taking) => Some(Flight::new(self, key, taking)),
            Step::Served(_, Some(taking)) => {
                if let Some(take_ahead) = &self.ahead {
                    take_ahead(id.clone(), incarnation, taking, now);
                }
                None
            }
            _ => None,
        };
        for (units, periods) in refunds {
            let refunded = periods.refund(store, id, incarnation, units);
            refunded.await.map_err(StoreError::Backend)?;
        }
        match (step, flight) {
            (Step::Served(allowance, _), _) => Ok(Ok(allowance)),
            (Step::Take(_), Some(flight)) => Leases::take(store, flight, cost, now).await,
            _ => store.charge(id, incarnation, cost, now).await,
        }
    }

    /// What a request of `cost` does, and the ended leases' credits to
    /// give back.
    fn step(
        &self,
        key: &(KeyId, u64),
        cost: u32,
        now: OffsetDateTime,
    ) -> (Step, Vec<(u32, Periods)>) {
        let (max_lag, clock) = (self.policy.max_lag, Instant::now());
        let mut table = self.table();
        let releases = table.releases;
        let slot = table.slots.entry(key.clone()).or_default();
        // Each lease that ends, and how fast it must have been spent to
        // double the next size.
        let mut ending = Vec::new();
        for lease in [&mut slot.current, &mut slot.next] {
            if lease.as_ref().is_some_and(|l| l.age(clock, now) >= max_lag) {
                ending.extend(lease.take().map(|l| (l, max_lag / 2)));
            }
        }
        // A current lease too small for this request gives way to the one
        // taken ahead, which was sized when it was taken.
        if slot.next.is_some() && slot.current.as_ref().is_none_or(|l| l.units < cost) {
            let next = slot.next.take();
            let done = std::mem::replace(&mut slot.current, next);
            ending.extend(done.map(|l| (l, Duration::ZERO)));
        }
        let spent = match &mut slot.current {
            Some(lease) if lease.units >= cost => {
                lease.units -= cost;
                Some((lease.units * 2 < lease.taken, lease.age(clock, now)))
            }
            _ => None,
        };
        let step = match spent {
            Some((half_spent, age)) => {
                let ahead = half_spent
                    && self.ahead.is_some()
                    && slot.in_flight == 0
                    && slot.next.is_none();
                if ahead && age < max_lag / 4 {
                    // Half spent within a quarter of max_lag: hot.
                    slot.size = slot.size.saturating_mul(2).min(MAX_SIZE);
                }
                let taking = ahead.then(|| Taking {
                    size: slot.next_size(1),
                    releases,
                });
                Step::Served(slot.last.clone(), taking)
            }
            None if slot.in_flight > 0 => Step::Direct,
            None => {
                // The current lease, spent or too small, ends.
                ending.extend(slot.current.take().map(|l| (l, max_lag / 2)));
                Step::Take(Taking { size: 0, releases })
            }
        };
        let refunds = ending
            .into_iter()
            .filter_map(|(lease, hot)| {
                let age = lease.age(clock, now);
                slot.end(lease, age, hot)
            })
            .collect();
        // Sized once the ended leases have adapted the size.
        let step = match step {
            Step::Take(taking) => Step::Take(Taking {
                size: slot.next_size(cost),
                ..taking
            }),
            other => other,
        };
        if let Step::Take(taking) | Step::Served(_, Some(taking)) = &step {
            slot.in_flight = taking.size;
            table.in_flight += 1;
        }
        (step, refunds)
    }

    /// Takes the lease of `flight` at the store for a request of `cost`
    /// (0: a lease ahead, for no request): the request's answer. Not
    /// enough for the lease, the request alone is charged, and the next
    /// lease is smaller. A lease sent before a release is given back as it
    /// lands.
    pub(crate) async fn take<S: KeyStore, L: Deref<Target = Leases>>(
        store: &S,
        mut flight: Flight<L>,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<S::Error>> {
        let ((id, incarnation), size) = (&flight.key, flight.taking.size);
        let (sent, sent_at) = (Instant::now(), now);
        let taken = async {
            let charged = store.charge(id, *incarnation, size, now).await?;
            match charged {
                Ok(_) => Ok((charged, size, size)),
                Err(_) if cost > 0 && size > cost => {
                    let charged = store.charge(id, *incarnation, cost, now).await?;
                    Ok((charged, cost, (size / 2).max(1)))
                }
                Err(_) => Ok((charged, size, (size / 2).max(1))),
            }
        }
        .await;
        let (charged, give_back) = {
            let mut table = flight.leases.table();
            let kept = table.land(&flight.key, flight.taking);
            flight.landed = true;
            table.sweep();
            let slot = table.slots.entry(flight.key.clone()).or_default();
            let (charged, taken, next) = taken?;
            slot.size = next;
            let mut give_back = None;
            if let Ok(allowance) = &charged {
                let lease = Lease {
                    units: taken - cost,
                    taken,
                    sent,
                    sent_at,
                    periods: Periods::of(allowance),
                };
                if !kept {
                    // Sent before a release: given back, never spent.
                    give_back = (lease.units > 0 && lease.periods.any())
                        .then_some((lease.units, lease.periods));
                } else {
                    slot.last = allowance.clone();
                    match cost {
                        0 => slot.next = Some(lease),
                        _ => slot.current = Some(lease),
                    }
                }
            }
            table.report();
            (charged, give_back)
        };
        if let Some((units, periods)) = give_back {
            let refunded = periods.refund(store, id, *incarnation, units);
            refunded.await.map_err(StoreError::Backend)?;
        }
        Ok(charged)
    }

    /// Every lease with units left, emptied: what to give back.
    /// Leases in flight are given back as they land
    /// ([`in_flight_released`](Self::in_flight_released) counts them).
    pub(crate) fn drain(&self) -> Vec<(HeldLease, Periods)> {
        let mut table = self.table();
        table.releases += 1;
        table.in_flight_released += std::mem::take(&mut table.in_flight);
        let mut drained = Vec::new();
        for ((key_id, incarnation), slot) in table.slots.iter_mut() {
            for lease in [slot.current.take(), slot.next.take()]
                .into_iter()
                .flatten()
            {
                if lease.units > 0 {
                    let held = HeldLease {
                        key_id: key_id.clone(),
                        incarnation: *incarnation,
                        units: lease.units,
                    };
                    drained.push((held, lease.periods));
                }
            }
        }
        table.report();
        drained
    }

    /// Leases sent before the last release and not landed yet.
    pub(crate) fn in_flight_released(&self) -> usize {
        self.table().in_flight_released
    }

    /// What each key's leases hold now, in key order.
    pub(crate) fn held(&self) -> Vec<HeldLease> {
        let mut held: Vec<HeldLease> = self
            .table()
            .slots
            .iter()
            .filter(|(_, slot)| slot.units() > 0)
            .map(|((key_id, incarnation), slot)| HeldLease {
                key_id: key_id.clone(),
                incarnation: *incarnation,
                units: slot.units(),
            })
            .collect();
        held.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(units: Option<u32>, taking: bool) -> Slot {
        Slot {
            current: units.map(|units| Lease {
                units,
                taken: units,
                sent: Instant::now(),
                sent_at: OffsetDateTime::UNIX_EPOCH,
                periods: Periods::default(),
            }),
            in_flight: u32::from(taking),
            ..Slot::default()
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
