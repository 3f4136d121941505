//! [`CachedStore`]: keys kept in memory in front of a slower store, for at
//! most a bounded time.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use time::OffsetDateTime;

use super::{KeyStore, StoreError, Verification};
use crate::counts::UsageRow;
use crate::entry::{self, EntryId, EntryState, OutboxCounts};
use crate::event::Event;
use crate::id::{KeyId, OwnerId};
use crate::key::ApiKey;
use crate::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
use crate::owner::OwnerLimits;
use crate::padded::Padded;
use crate::revision::Revision;
use crate::token::PresentedToken;

/// Entries are spread over this many locks.
const SHARDS: usize = 16;

/// A store that keeps the keys it reads in memory, in front of `inner`,
/// another [`KeyStore`].
///
/// - **Authentication** (`verify`) is answered from memory for at most
///   `max_staleness` after the key was read from `inner` (measured with
///   [`Instant`], from before the read), checking the token against the
///   cached key in place, without copying it.
/// - **`get`** reads `inner` and refreshes the entry: the managers load a
///   key with `get` to change it, and a transition decided on a stale copy
///   could be refused for a state the key has left (say `AlreadyActive`
///   after another replica deactivated it), which no compare-and-swap
///   would catch, since nothing is written.
/// - **Writes** go through to `inner`; one that succeeds refreshes the
///   entry, so a write made through this `CachedStore` is seen by its next
///   read. One that `inner` refuses (a `Conflict` above all) drops the
///   entry, so a manager's retry reads the stored key.
/// - **Other writers** (other replicas, other processes) are seen when the
///   entry expires, or sooner when something calls
///   [`invalidate`](Self::invalidate) / [`invalidate_all`](Self::invalidate_all):
///   `keyroll-postgres`'s listener does on every change notification, so a
///   revocation reaches every replica in milliseconds, and never later
///   than `max_staleness`.
/// - **Capacity** is bounded: at most `capacity` entries in all. When full,
///   an entry of the same shard (one of 16; each may hold up to twice its
///   share, so uneven hashing loses nothing) not read since the eviction
///   hand last passed it makes room (the CLOCK policy: keys in use stay,
///   keys read once go first); if every entry of the shard was read since,
///   the newcomer is not kept.
/// - **Unknown ids** cost one read of `inner` each: a request naming an
///   id no key has is answered after that read. The answer is then
///   remembered for `max_staleness` (or less, with
///   [`with_negative_caching`](Self::with_negative_caching)), among at most
///   [`with_unknown_capacity`](Self::with_unknown_capacity) unknown ids (a
///   quarter of `capacity` by default), kept apart from the keys: a flood
///   of junk ids never evicts a key. Past that bound, until remembered ids
///   expire, each junk id reaches `inner` every time it is named: a flood
///   of distinct junk ids costs one read each, which is what a rate limit
///   in front of authentication (by client address) must bound. A
///   remembered unknown id is answered from memory as fast as a known one.
///   Key ids are not secrets anyway: every token names its key, and events
///   and logs carry ids. A key created through this cache, or announced by
///   an invalidation (the listener's), is seen at once.
/// - **Owner limits** are kept too, for `verify` to know that a key
///   without limits of its own is charged to its owner's: read from
///   `inner` at most once per owner per `max_staleness`, and at once when
///   set through this cache. Limits set elsewhere apply within
///   `max_staleness` to keys without limits of their own, or as soon as
///   [`invalidate_owner`](Self::invalidate_owner) is called
///   (`keyroll-postgres`'s listener does); a charge always reads the
///   stored limits. At most `capacity` owners are kept; past that, every
///   owner is forgotten at once, and read again.
///
/// A read that raced with a write or an invalidation of its key is
/// answered but not kept, so the cache never keeps a key older than the
/// last invalidation it was told of. `list` is not cached.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use keyroll::store::{CachedStore, InMemoryStore};
/// use keyroll::{KeyId, KeyManager};
/// use time::OffsetDateTime;
///
/// # pollster::block_on(async {
/// // Any store: in a service, the PostgreSQL one.
/// let store = CachedStore::new(InMemoryStore::new(), 100_000, Duration::from_secs(5));
/// let manager = KeyManager::new(store);
/// let now = OffsetDateTime::now_utc();
/// let (token, _) = manager.create_key(KeyId::new("acme")?, now, &mut rand::rng()).await?;
/// // Answered from memory: the write went through the cache.
/// assert!(manager.authenticate(token.expose_secret(), now).await.is_ok());
/// manager.store().invalidate(&KeyId::new("acme")?); // e.g. on a notification
/// assert_eq!(manager.store().len(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CachedStore<S> {
    inner: S,
    shards: Box<[Padded<RwLock<Shard>>]>,
    hasher: RandomState,
    room: Room,
    max_staleness: Duration,
    negative_ttl: Duration,
    /// Owner limits as read from `inner` (`None`: never set), until when:
    /// read on the path of every owned key without limits of its own, so
    /// shared, not locked.
    owners: RwLock<HashMap<OwnerId, (Option<OwnerLimits>, Instant)>>,
}

/// How many entries the cache may hold, and holds.
#[derive(Debug)]
struct Room {
    capacity: usize,
    per_shard: usize,
    held: AtomicUsize,
    /// The most unknown ids a shard remembers, and how many are.
    unknown_per_shard: usize,
    unknown_held: AtomicUsize,
}

impl Room {
    /// Takes a place for a new entry, if there is one.
    fn take(&self) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Positions in `entries`, by the hash of their id (the hash that also
    /// chose the shard: an id is hashed once per lookup).
    index: HashTable<usize>,
    entries: Vec<Entry>,
    /// The CLOCK hand: the next entry eviction looks at.
    hand: usize,
    /// Bumped by every write and invalidation in this shard: a read that
    /// began at another epoch does not keep what it read.
    epoch: u64,
    /// Ids no key has, by hash: apart from the keys, under a bound of
    /// their own.
    unknown: HashTable<Unknown>,
}

#[derive(Debug)]
struct Entry {
    hash: u64,
    id: KeyId,
    key: ApiKey,
    /// Served until then.
    until: Instant,
    /// Read since the hand last passed.
    referenced: AtomicBool,
}

/// An id that no key had when it was read, remembered until `until`.
#[derive(Debug)]
struct Unknown {
    hash: u64,
    id: KeyId,
    until: Instant,
}

/// A read or a write that began at `epoch` of a shard, at `started`.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    epoch: u64,
    started: Instant,
}

impl<S> CachedStore<S> {
    /// A cache of at most `capacity` keys (0 keeps none) in front of
    /// `inner`, serving each for at most `max_staleness`.
    pub fn new(inner: S, capacity: usize, max_staleness: Duration) -> CachedStore<S> {
        CachedStore {
            inner,
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            hasher: RandomState::new(),
            room: Room {
                capacity,
                per_shard: (2 * capacity).div_ceil(SHARDS),
                held: AtomicUsize::new(0),
                unknown_per_shard: (capacity / 4).div_ceil(SHARDS),
                unknown_held: AtomicUsize::new(0),
            },
            max_staleness,
            negative_ttl: max_staleness,
            owners: RwLock::default(),
        }
    }

    /// Remembers for `ttl` (at most `max_staleness`, the default) that no
    /// key has an id: requests naming unknown ids then reach `inner` once
    /// per id per `ttl`. A key created through this cache, or announced by
    /// an invalidation, is seen at once; one created elsewhere without an
    /// invalidation is seen after `ttl`. Zero turns it off.
    pub fn with_negative_caching(mut self, ttl: Duration) -> CachedStore<S> {
        self.negative_ttl = ttl.min(self.max_staleness);
        self
    }

    /// Remembers at most about `capacity` unknown ids (a quarter of the
    /// keys' capacity by default), apart from the keys, so that they never
    /// evict one. Zero remembers none: every request naming an unknown id
    /// reads `inner`.
    pub fn with_unknown_capacity(mut self, capacity: usize) -> CachedStore<S> {
        self.room.unknown_per_shard = capacity.div_ceil(SHARDS);
        self
    }

    /// Forgets key `id`: its next read goes to `inner`.
    pub fn invalidate(&self, id: &KeyId) {
        let (hash, shard) = self.locate(id);
        let mut shard = write(shard);
        shard.epoch += 1;
        shard.remove(hash, id, &self.room);
    }

    /// Forgets `owner`'s limits: their next read goes to `inner`.
    pub fn invalidate_owner(&self, owner: &OwnerId) {
        write(&self.owners).remove(owner);
    }

    /// Forgets every key, and every owner's limits.
    pub fn invalidate_all(&self) {
        for shard in &self.shards {
            let mut shard = write(shard);
            shard.epoch += 1;
            shard.clear(&self.room);
        }
        write(&self.owners).clear();
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How long an entry is served at most.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// How many entries (keys and remembered unknown ids) are held,
    /// including expired ones not yet replaced.
    pub fn len(&self) -> usize {
        self.room.held.load(Ordering::Relaxed) + self.room.unknown_held.load(Ordering::Relaxed)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of `id` and its shard. The shard is chosen by bits the
    /// shard's table does not use for its buckets or tags.
    fn locate(&self, id: &KeyId) -> (u64, &RwLock<Shard>) {
        let hash = self.hasher.hash_one(id);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    /// `answer` applied to the fresh entry of `id` (`None`: known unknown),
    /// or the ticket to read it from `inner` with.
    fn cached<T>(
        &self,
        id: &KeyId,
        answer: impl FnOnce(Option<&ApiKey>) -> T,
    ) -> Result<T, Ticket> {
        let now = Instant::now();
        let (hash, shard) = self.locate(id);
        let shard = read(shard);
        let miss = Err(Ticket {
            epoch: shard.epoch,
            started: now,
        });
        match shard.find(hash, id).map(|n| &shard.entries[n]) {
            Some(entry) if now < entry.until => {
                if !entry.referenced.load(Ordering::Relaxed) {
                    entry.referenced.store(true, Ordering::Relaxed);
                }
                Ok(answer(Some(&entry.key)))
            }
            Some(_) => miss,
            None => match shard.unknown.find(hash, |u| u.id == *id) {
                Some(unknown) if now < unknown.until => Ok(answer(None)),
                _ => miss,
            },
        }
    }

    /// Keeps `owner`'s limits as read from `inner` by a read that began at
    /// `started`, for `max_staleness` from then.
    fn keep_owner(&self, owner: &OwnerId, limits: Option<OwnerLimits>, started: Instant) {
        if self.room.capacity == 0 || self.max_staleness.is_zero() {
            return;
        }
        let mut owners = write(&self.owners);
        if owners.len() >= self.room.capacity && !owners.contains_key(owner) {
            owners.clear();
        }
        owners.insert(owner.clone(), (limits, started + self.max_staleness));
    }

    /// Keeps what a read that began with `ticket` found in `inner`, unless
    /// the key was written or invalidated since.
    fn fill(&self, id: &KeyId, found: Option<&ApiKey>, ticket: Ticket) {
        let ttl = match found {
            Some(_) => self.max_staleness,
            None => self.negative_ttl,
        };
        if ttl.is_zero() || self.room.capacity == 0 {
            return;
        }
        let (hash, shard) = self.locate(id);
        let mut shard = write(shard);
        if shard.epoch == ticket.epoch {
            let until = ticket.started + ttl;
            match found {
                Some(key) => shard.put(hash, id, key.clone(), until, &self.room),
                None => shard.put_unknown(hash, id, until, &self.room),
            }
        }
    }

    /// Begins a read or a write of key `id` in `inner`.
    fn begin(&self, id: &KeyId) -> Ticket {
        let epoch = read(self.locate(id).1).epoch;
        Ticket {
            epoch,
            started: Instant::now(),
        }
    }

    /// Ends a write of key `id` begun with `ticket`: keeps `written` (the
    /// key now stored) if no other write or invalidation came between,
    /// and forgets the key otherwise, or when the write failed or deleted.
    fn end_write(&self, id: &KeyId, written: Option<&ApiKey>, ticket: Ticket) {
        let (hash, shard) = self.locate(id);
        let mut shard = write(shard);
        let undisturbed = shard.epoch == ticket.epoch;
        shard.epoch += 1;
        match written {
            Some(key) if undisturbed && self.room.capacity > 0 && !self.max_staleness.is_zero() => {
                let until = ticket.started + self.max_staleness;
                shard.put(hash, id, key.clone(), until, &self.room);
            }
            _ => shard.remove(hash, id, &self.room),
        }
    }
}

// An entry is a plain value: a panic elsewhere cannot leave one half
// written, so a poisoned lock is still good to use.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// The position of `id`'s entry.
    fn find(&self, hash: u64, id: &KeyId) -> Option<usize> {
        let entries = &self.entries;
        self.index.find(hash, |&n| entries[n].id == *id).copied()
    }

    fn clear(&mut self, room: &Room) {
        room.give_back(self.entries.len());
        room.unknown_held
            .fetch_sub(self.unknown.len(), Ordering::Relaxed);
        self.index.clear();
        self.entries.clear();
        self.unknown.clear();
        self.hand = 0;
    }

    /// Forgets that `id` is unknown.
    fn remove_unknown(&mut self, hash: u64, id: &KeyId, room: &Room) {
        if let Ok(found) = self.unknown.find_entry(hash, |u| u.id == *id) {
            found.remove();
            room.unknown_held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Remembers until `until` that no key has `id`, if the shard's bound
    /// of unknown ids leaves room (once expired ones are dropped).
    fn put_unknown(&mut self, hash: u64, id: &KeyId, until: Instant, room: &Room) {
        self.remove_unknown(hash, id, room);
        if self.unknown.len() >= room.unknown_per_shard {
            let now = Instant::now();
            let before = self.unknown.len();
            self.unknown.retain(|u| now < u.until);
            room.unknown_held
                .fetch_sub(before - self.unknown.len(), Ordering::Relaxed);
            if self.unknown.len() >= room.unknown_per_shard {
                return;
            }
        }
        let unknown = Unknown {
            hash,
            id: id.clone(),
            until,
        };
        self.unknown.insert_unique(hash, unknown, |u| u.hash);
        room.unknown_held.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&mut self, hash: u64, id: &KeyId, room: &Room) {
        self.remove_unknown(hash, id, room);
        let entries = &self.entries;
        let Ok(found) = self.index.find_entry(hash, |&n| entries[n].id == *id) else {
            return;
        };
        let (n, _) = found.remove();
        self.entries.swap_remove(n);
        room.give_back(1);
        // The last entry moved into the hole: point its index there.
        if let Some(moved) = self.entries.get(n) {
            let last = self.entries.len();
            if let Some(position) = self.index.find_mut(moved.hash, |&m| m == last) {
                *position = n;
            }
        }
        if self.hand >= self.entries.len() {
            self.hand = 0;
        }
    }

    /// Stores the entry of `id`, evicting one of this shard's if there is
    /// no room; keeps nothing if there is none and nothing to evict.
    fn put(&mut self, hash: u64, id: &KeyId, key: ApiKey, until: Instant, room: &Room) {
        self.remove_unknown(hash, id, room);
        let entry = Entry {
            hash,
            id: id.clone(),
            key,
            until,
            referenced: AtomicBool::new(false),
        };
        if let Some(n) = self.find(hash, id) {
            self.entries[n] = entry;
        } else if self.entries.len() < room.per_shard && room.take() {
            self.entries.push(entry);
            let entries = &self.entries;
            self.index
                .insert_unique(hash, entries.len() - 1, |&m| entries[m].hash);
        } else {
            // CLOCK: pass over (and clear) entries read since the hand last
            // passed; the first one not read makes room. At most one turn:
            // if every entry was read, the newcomer is not kept (the marks
            // are cleared, so an entry not read again goes next time). A
            // shard holding a single key in use keeps it.
            for _ in 0..self.entries.len() {
                let n = self.hand;
                self.hand = (n + 1) % self.entries.len();
                if !self.entries[n].referenced.swap(false, Ordering::Relaxed) {
                    if let Ok(old) = self.index.find_entry(self.entries[n].hash, |&m| m == n) {
                        old.remove();
                    }
                    self.entries[n] = entry;
                    let entries = &self.entries;
                    self.index.insert_unique(hash, n, |&m| entries[m].hash);
                    return;
                }
            }
        }
    }
}

impl<S: KeyStore> KeyStore for CachedStore<S> {
    type Error = S::Error;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, S::Error> {
        let ticket = self.begin(id);
        let found = self.inner.get(id).await?;
        self.fill(id, found.as_ref(), ticket);
        Ok(found)
    }

    async fn insert(&self, key: &ApiKey, events: &[Event]) -> Result<(), StoreError<S::Error>> {
        let ticket = self.begin(key.id());
        let result = self.inner.insert(key, events).await;
        self.end_write(key.id(), result.is_ok().then_some(key), ticket);
        result
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<S::Error>> {
        let ticket = self.begin(key.id());
        let result = self.inner.update(key, expected, events).await;
        self.end_write(key.id(), result.is_ok().then_some(key), ticket);
        result
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<S::Error>> {
        let ticket = self.begin(id);
        let result = self.inner.delete(id, expected, events).await;
        self.end_write(id, None, ticket);
        result
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, S::Error> {
        self.inner.list(after, limit).await
    }

    async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, S::Error> {
        self.inner.list_owned(owner, after, limit).await
    }

    /// Forwarded: counts are never cached.
    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), S::Error> {
        self.inner.add_usage(rows).await
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, S::Error> {
        self.inner.usage(id, incarnation, hours).await
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, S::Error> {
        self.inner.prune_usage(before).await
    }

    async fn marker(&self, name: &str) -> Result<Option<OffsetDateTime>, S::Error> {
        self.inner.marker(name).await
    }

    async fn set_marker(&self, name: &str, at: Option<OffsetDateTime>) -> Result<(), S::Error> {
        self.inner.set_marker(name, at).await
    }

    /// Forwarded: meters are never cached.
    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<S::Error>> {
        self.inner.charge(id, incarnation, cost, now).await
    }

    /// Forwarded: meters are never cached.
    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), S::Error> {
        self.inner.refund(id, incarnation, amount, period).await
    }

    /// Forwarded: meters are never cached.
    async fn meter(&self, id: &KeyId, incarnation: u64) -> Result<Option<StoredMeter>, S::Error> {
        self.inner.meter(id, incarnation).await
    }

    /// Answered from a fresh entry (of a key, or of a known absence), else
    /// from `inner`'s key, which is then kept.
    async fn verify(
        &self,
        id: &KeyId,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Verification, S::Error> {
        // The owner of an accepted key without limits of its own, whose
        // limits tell whether it is charged.
        let answer = |key: Option<&ApiKey>| {
            let verification = Verification::of(key, token, now);
            let owner = match &verification {
                Verification::Accepted(accepted) if !accepted.metered => {
                    key.and_then(ApiKey::owner).cloned()
                }
                _ => None,
            };
            (verification, owner)
        };
        let cached = self.cached(id, answer);
        crate::telemetry::cache_lookup(cached.is_ok());
        let (verification, owner) = match cached {
            Ok(answered) => answered,
            Err(ticket) => {
                let found = self.inner.get(id).await?;
                self.fill(id, found.as_ref(), ticket);
                answer(found.as_ref())
            }
        };
        let Some(owner) = owner else {
            return Ok(verification);
        };
        let fresh = read(&self.owners)
            .get(&owner)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(limits, _)| limits.clone());
        let limits = match fresh {
            Some(limits) => limits,
            None => {
                let started = Instant::now();
                let limits = self.inner.owner_limits(&owner).await?;
                self.keep_owner(&owner, limits.clone(), started);
                limits
            }
        };
        Ok(verification.with_owner_limits(limits.as_ref()))
    }

    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, S::Error> {
        let started = Instant::now();
        let limits = self.inner.owner_limits(owner).await?;
        self.keep_owner(owner, limits.clone(), started);
        Ok(limits)
    }

    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<S::Error>> {
        let started = Instant::now();
        let set = self
            .inner
            .set_owner_limits(owner, limits, expected, events)
            .await;
        match &set {
            Ok(()) => self.keep_owner(owner, Some(limits.clone()), started),
            Err(_) => {
                write(&self.owners).remove(owner);
            }
        }
        set
    }

    /// Forwarded: meters are never cached.
    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, S::Error> {
        self.inner.owner_meter(owner).await
    }

    /// Forwarded: meters are never cached.
    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), S::Error> {
        self.inner.refund_owner(owner, amount, period).await
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: time::Duration,
    ) -> Result<Vec<entry::Entry>, S::Error> {
        self.inner.claim_outbox(limit, now, hold).await
    }

    async fn update_outbox(&self, entries: &[entry::Entry]) -> Result<(), S::Error> {
        self.inner.update_outbox(entries).await
    }

    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<entry::Entry>, S::Error> {
        self.inner.outbox(state, after, limit).await
    }

    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<entry::Entry>, S::Error> {
        self.inner.outbox_of(subject, before, limit).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, S::Error> {
        self.inner.outbox_counts().await
    }

    async fn prune_outbox(&self, before: OffsetDateTime) -> Result<u64, S::Error> {
        self.inner.prune_outbox(before).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemoryStore;

    /// Each `verify` tells the metrics whether the cache answered it: a
    /// miss reads `inner`, the next lookup of that id is a hit.
    #[test]
    fn lookups_are_counted_as_hits_and_misses() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let cache = CachedStore::new(InMemoryStore::new(), 100, Duration::from_secs(60));
            let (key, token, _) = ApiKey::issue(
                KeyId::new("acme").unwrap(),
                OffsetDateTime::UNIX_EPOCH,
                &mut rand::rng(),
            )
            .unwrap();
            pollster::block_on(cache.inner().insert(&key, &[])).unwrap();
            let token = PresentedToken::parse(token.expose_secret()).unwrap();
            for _ in 0..3 {
                let now = OffsetDateTime::UNIX_EPOCH;
                pollster::block_on(cache.verify(key.id(), &token, now)).unwrap();
            }
        });
        let mut counts: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let result = key.key().labels().find(|l| l.key() == "result");
                match value {
                    DebugValue::Counter(n) => (result.unwrap().value().to_owned(), n),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        counts.sort();
        assert_eq!(counts, [("hit".to_owned(), 2), ("miss".to_owned(), 1)]);
    }

    /// Removing entries moves others inside their shards; every key left
    /// is still found in memory, and every key removed is not.
    #[test]
    fn removals_keep_every_other_entry_findable() {
        let cache = CachedStore::new(InMemoryStore::new(), 1000, Duration::from_secs(3600));
        let mut rng = rand::rng();
        let ids: Vec<KeyId> = (0..200)
            .map(|i| {
                let id = KeyId::new(format!("k{i}")).unwrap();
                let (key, _, _) =
                    ApiKey::issue(id.clone(), OffsetDateTime::UNIX_EPOCH, &mut rng).unwrap();
                pollster::block_on(cache.insert(&key, &[])).unwrap();
                id
            })
            .collect();
        assert_eq!(cache.len(), 200);
        for id in ids.iter().step_by(3) {
            cache.invalidate(id);
        }
        for (i, id) in ids.iter().enumerate() {
            let held = cache.cached(id, |key| key.map(|k| k.id().clone()));
            match held {
                Ok(found) => {
                    assert!(i % 3 != 0, "{id} was invalidated");
                    assert_eq!(found.as_ref(), Some(id));
                }
                Err(_) => assert!(i % 3 == 0, "{id} should be held"),
            }
        }
        assert_eq!(cache.len(), 200 - 67);
    }

    /// Puts an entry for key `id` into `shard`.
    fn put(shard: &mut Shard, id: &str, room: &Room) -> (u64, KeyId) {
        let id = KeyId::new(id).unwrap();
        let hash = RandomState::new().hash_one(&id);
        let (key, _, _) =
            ApiKey::issue(id.clone(), OffsetDateTime::UNIX_EPOCH, &mut rand::rng()).unwrap();
        shard.put(hash, &id, key, Instant::now(), room);
        (hash, id)
    }

    fn held(shard: &Shard) -> Vec<&str> {
        shard.entries.iter().map(|e| e.id.as_str()).collect()
    }

    /// A key in use that is alone in its shard when the cache is full is
    /// not evicted by keys read once; once it is not read again, it is.
    #[test]
    fn a_key_in_use_alone_in_its_shard_stays() {
        let room = Room {
            capacity: 1,
            per_shard: 2,
            held: AtomicUsize::new(0),
            unknown_per_shard: 0,
            unknown_held: AtomicUsize::new(0),
        };
        let mut shard = Shard::default();
        put(&mut shard, "hot", &room);
        for cold in ["cold-1", "cold-2", "cold-3"] {
            shard.entries[0].referenced.store(true, Ordering::Relaxed); // read
            put(&mut shard, cold, &room);
            assert_eq!(held(&shard), ["hot"]);
        }
        let (hash, id) = put(&mut shard, "cold-4", &room);
        assert_eq!(held(&shard), ["cold-4"]);
        assert_eq!(shard.find(hash, &id), Some(0));
    }
}
