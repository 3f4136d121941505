//! Uses of tokens noted, and outcomes counted, in memory by the managers'
//! `authenticate`, and written to the store later by their `flush_usage`:
//! recording costs a request no store call and no copy of its key.
//!
//! A note is per token (by [`TokenId`], not by "current" or "old": a
//! renewal between a use and its flush must not move the use to the other
//! token). It keeps the first and the last use since the last flush: the
//! first is what an after-use deletion schedule starts from, the last what
//! `last_used_at` shows.
//!
//! The notes are spread over shards by key *and* by thread: threads noting
//! uses of one busy key take different locks, so no lock word travels
//! between cores on every request. A flush merges a key's notes from every
//! shard.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};

use hashbrown::HashTable;
use smallvec::SmallVec;
use time::OffsetDateTime;

use crate::counts::{Outcome, UsageRow};
use crate::id::{KeyId, TokenId};
use crate::key::ApiKey;
use crate::padded::Padded;
use crate::state::TokenMatch;

/// Locks taken by `authenticate` are spread over this many maps, so
/// concurrent requests seldom wait for each other.
const SHARDS: usize = 16;

/// This thread's stripe: mixed into the shard choice.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    STRIPE.with(|s| *s)
}

/// A use this close after the last one noted of its token is not noted
/// again: requests on a busy key take a shared lock only.
const GRANULARITY: time::Duration = time::Duration::SECOND;

/// The uses of one token since the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Noted {
    pub(crate) token: TokenId,
    pub(crate) first: OffsetDateTime,
    pub(crate) last: OffsetDateTime,
    /// `last` + [`GRANULARITY`], kept so that a use, noted or not, is two
    /// comparisons and no date arithmetic.
    quiet_until: OffsetDateTime,
}

impl Noted {
    pub(crate) fn new(token: TokenId, first: OffsetDateTime, last: OffsetDateTime) -> Noted {
        Noted {
            token,
            first,
            last,
            quiet_until: last.saturating_add(GRANULARITY),
        }
    }
}

/// The outcomes of one incarnation of a key in one UTC hour, counted.
#[derive(Debug)]
struct Counted {
    incarnation: u64,
    hour: i64,
    counts: [AtomicU64; 4],
}

impl Counted {
    fn new(incarnation: u64, hour: i64, counts: [u64; 4]) -> Counted {
        Counted {
            incarnation,
            hour,
            counts: counts.map(AtomicU64::new),
        }
    }

    fn add(&self, counts: [u64; 4]) {
        for (cell, n) in self.counts.iter().zip(counts) {
            if n > 0 {
                cell.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn row(&self, id: &KeyId) -> UsageRow {
        let [accepted, rate_limited, usage_exceeded, refused] =
            self.counts.each_ref().map(|n| n.load(Ordering::Relaxed));
        UsageRow {
            id: id.clone(),
            incarnation: self.incarnation,
            hour: self.hour,
            accepted,
            rate_limited,
            usage_exceeded,
            refused,
        }
    }
}

/// A key's notes or counts: nearly always one (one token used, one
/// incarnation and hour), kept in the entry itself so that a use noted
/// follows no pointer out of the table.
type Few<T> = SmallVec<[T; 1]>;

/// The notes and counts of one key, under the hash of its id.
#[derive(Debug)]
struct Pending {
    hash: u64,
    id: KeyId,
    notes: Few<Noted>,
    counts: Few<Counted>,
}

/// The notes of some keys, by the hash of their id (the hash that also
/// chose the shard: an id is hashed once per use noted).
type Notes = HashTable<Pending>;

/// The notes of every key, in shards.
#[derive(Debug)]
pub(crate) struct UsageLog {
    shards: Box<[Padded<RwLock<Notes>>]>,
    /// foldhash: only the ids of keys that authenticated are noted, so no
    /// one outside can pile up colliding ids.
    hasher: foldhash::fast::RandomState,
}

impl Default for UsageLog {
    fn default() -> Self {
        UsageLog {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

// A note is a plain value: a panic elsewhere cannot leave it half written,
// so a poisoned lock is still good to use.
fn write(shard: &RwLock<Notes>) -> RwLockWriteGuard<'_, Notes> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

impl UsageLog {
    /// The hash of `id`, and the shard this thread notes it in (chosen by
    /// bits the shard's table does not use for its buckets or tags).
    fn locate(&self, id: &KeyId) -> (u64, &RwLock<Notes>) {
        let hash = self.hasher.hash_one(id);
        (
            hash,
            &self.shards[((hash >> 32) as usize ^ stripe()) % SHARDS],
        )
    }

    /// Counts an authentication of key `id` of `incarnation` at `at`
    /// ending in `outcome`, and notes the use of its `token` if it was
    /// accepted (the last use of a token to within a second). On a key
    /// already counted this hour, and a use already noted, a shared lock and
    /// an atomic add.
    pub(crate) fn record(
        &self,
        id: &KeyId,
        incarnation: u64,
        outcome: Outcome,
        used: Option<TokenId>,
        at: OffsetDateTime,
    ) {
        let hour = UsageRow::hour_of(at);
        let mut one = [0; 4];
        one[outcome.index()] = 1;
        let (hash, shard) = self.locate(id);
        let (mut counted, mut noted) = (false, used.is_none());
        if let Some(pending) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, |p| p.id == *id)
        {
            if let Some(c) = pending.counted(incarnation, hour) {
                c.add(one);
                counted = true;
            }
            noted |= used.is_some_and(|token| {
                pending
                    .notes
                    .iter()
                    .any(|n| n.token == token && n.first <= at && at < n.quiet_until)
            });
        }
        if counted && noted {
            return;
        }
        let mut table = write(shard);
        let pending = entry(&mut table, hash, id);
        if !counted {
            pending.count(incarnation, hour, one);
        }
        if let (false, Some(token)) = (noted, used) {
            merge(&mut pending.notes, Noted::new(token, at, at));
        }
    }

    /// Takes every note and count out: the notes one entry per key, the
    /// counts one row per key, incarnation and hour.
    pub(crate) fn take_all(&self) -> (Vec<(KeyId, Vec<Noted>)>, Vec<UsageRow>) {
        let mut all = Notes::new();
        for shard in &self.shards {
            for taken in std::mem::take(&mut *write(shard)) {
                let pending = entry(&mut all, taken.hash, &taken.id);
                taken
                    .notes
                    .into_iter()
                    .for_each(|n| merge(&mut pending.notes, n));
                for c in taken.counts {
                    let row = c.row(&taken.id);
                    pending.count(row.incarnation, row.hour, row.counts());
                }
            }
        }
        let mut notes = Vec::new();
        let mut counts = Vec::new();
        for pending in all {
            counts.extend(pending.counts.iter().map(|c| c.row(&pending.id)));
            if !pending.notes.is_empty() {
                notes.push((pending.id, pending.notes.into_vec()));
            }
        }
        (notes, counts)
    }

    /// Takes the notes of key `id` out (its counts stay).
    pub(crate) fn take(&self, id: &KeyId) -> Vec<Noted> {
        let hash = self.hasher.hash_one(id);
        let mut kept = Few::new();
        for shard in &self.shards {
            let mut table = write(shard);
            if let Some(pending) = table.find_mut(hash, |p| p.id == *id) {
                std::mem::take(&mut pending.notes)
                    .into_iter()
                    .for_each(|n| merge(&mut kept, n));
            }
        }
        kept.into_vec()
    }

    /// Puts back notes that could not be written, merged with any noted
    /// since they were taken.
    pub(crate) fn put_back(&self, id: &KeyId, notes: Vec<Noted>) {
        let (hash, shard) = self.locate(id);
        let mut table = write(shard);
        let pending = entry(&mut table, hash, id);
        notes.into_iter().for_each(|n| merge(&mut pending.notes, n));
    }

    /// Puts back counts that could not be written, added to any counted
    /// since they were taken.
    pub(crate) fn put_back_counts(&self, rows: &[UsageRow]) {
        for row in rows {
            let (hash, shard) = self.locate(&row.id);
            let mut table = write(shard);
            entry(&mut table, hash, &row.id).count(row.incarnation, row.hour, row.counts());
        }
    }

    /// How many keys have notes waiting.
    pub(crate) fn keys(&self) -> usize {
        let mut ids = std::collections::HashSet::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            ids.extend(
                shard
                    .iter()
                    .filter(|p| !p.notes.is_empty())
                    .map(|p| p.id.clone()),
            );
        }
        ids.len()
    }
}

impl Pending {
    /// The counter of `incarnation` and `hour`, if there is one.
    fn counted(&self, incarnation: u64, hour: i64) -> Option<&Counted> {
        self.counts
            .iter()
            .find(|c| c.incarnation == incarnation && c.hour == hour)
    }

    /// Adds `counts` to the counter of `incarnation` and `hour`, made if
    /// need be.
    fn count(&mut self, incarnation: u64, hour: i64, counts: [u64; 4]) {
        match self.counted(incarnation, hour) {
            Some(c) => c.add(counts),
            None => self.counts.push(Counted::new(incarnation, hour, counts)),
        }
    }
}

/// Key `id`'s entry in `table`, made if need be.
fn entry<'a>(table: &'a mut Notes, hash: u64, id: &KeyId) -> &'a mut Pending {
    if table.find(hash, |p| p.id == *id).is_none() {
        let pending = Pending {
            hash,
            id: id.clone(),
            notes: Few::new(),
            counts: Few::new(),
        };
        table.insert_unique(hash, pending, |p| p.hash);
    }
    table
        .find_mut(hash, |p| p.id == *id)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

fn merge(notes: &mut Few<Noted>, new: Noted) {
    match notes.iter_mut().find(|n| n.token == new.token) {
        Some(n) => *n = Noted::new(n.token, n.first.min(new.first), n.last.max(new.last)),
        None => notes.push(new),
    }
}

/// Records `notes` on `key` with [`ApiKey::record_use`]: the first use of
/// each token, then its last, none later than `now`. Notes of a token the
/// key no longer has are dropped. Returns whether the key changed.
pub(crate) fn apply(key: &mut ApiKey, notes: &[Noted], now: OffsetDateTime) -> bool {
    let mut changed = false;
    for noted in notes {
        let matched = if key.current_token().id() == noted.token {
            TokenMatch::Current
        } else if key.old_token().is_some_and(|old| old.id() == noted.token) {
            TokenMatch::Old
        } else {
            continue;
        };
        changed |= key.record_use(matched, noted.first.min(now));
        changed |= key.record_use(matched, noted.last.min(now));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn token(n: u8) -> TokenId {
        format!("{n:032x}").parse().unwrap()
    }

    /// An accepted authentication: counted, and its use noted.
    fn used(log: &UsageLog, id: &KeyId, token: TokenId, at: OffsetDateTime) {
        log.record(id, 1, Outcome::Accepted, Some(token), at);
    }

    #[test]
    fn notes_keep_the_first_and_last_use_of_each_token() {
        let log = UsageLog::default();
        let id = KeyId::new("acme").unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        used(&log, &id, token(1), t0 + Duration::seconds(5));
        used(&log, &id, token(1), t0);
        used(&log, &id, token(1), t0 + Duration::seconds(9));
        used(&log, &id, token(2), t0 + Duration::seconds(1));
        // Within a second of the last use noted: not noted again.
        used(&log, &id, token(1), t0 + Duration::milliseconds(9500));
        assert_eq!(log.keys(), 1);
        let notes = log.take(&id);
        assert_eq!(
            notes,
            [
                Noted::new(token(1), t0, t0 + Duration::seconds(9)),
                Noted::new(
                    token(2),
                    t0 + Duration::seconds(1),
                    t0 + Duration::seconds(1)
                ),
            ]
        );
        assert_eq!(log.keys(), 0);
        used(&log, &id, token(1), t0 + Duration::seconds(20));
        log.put_back(&id, notes);
        let (all, counts) = log.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1[0].first, t0);
        assert_eq!(all[0].1[0].last, t0 + Duration::seconds(20));
        // Every authentication was counted, noted or not, taken or not.
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].accepted, 6);
    }

    #[test]
    fn notes_and_counts_from_many_threads_are_taken_as_one() {
        let log = UsageLog::default();
        let id = KeyId::new("busy").unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::hours(500_000);
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let (log, id) = (&log, &id);
                scope.spawn(move || {
                    for i in 0..1000 {
                        used(log, id, token(1), t0 + Duration::seconds(thread));
                        if i % 10 == 0 {
                            log.record(id, 1, Outcome::Refused, None, t0 + Duration::minutes(59));
                            log.record(id, 2, Outcome::RateLimited, None, t0);
                        }
                    }
                });
            }
        });
        log.record(
            &id,
            1,
            Outcome::UsageExceeded,
            None,
            t0 + Duration::hours(1),
        );
        assert_eq!(log.keys(), 1);
        let (all, mut counts) = log.take_all();
        assert_eq!(all.len(), 1, "one entry for the key");
        assert_eq!(
            all[0].1,
            [Noted::new(token(1), t0, t0 + Duration::seconds(7))]
        );
        counts.sort_by_key(|r| (r.incarnation, r.hour));
        let hour = UsageRow::hour_of(t0);
        let seen: Vec<_> = counts
            .iter()
            .map(|r| (r.incarnation, r.hour, r.counts()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, hour, [8000, 0, 0, 800]),
                (1, hour + 1, [0, 0, 1, 0]),
                (2, hour, [0, 800, 0, 0]),
            ]
        );
        assert_eq!(log.keys(), 0);
        log.put_back_counts(&counts);
        log.record(&id, 2, Outcome::RateLimited, None, t0);
        let (_, again) = log.take_all();
        let two = again.iter().find(|r| r.incarnation == 2).unwrap();
        assert_eq!(two.rate_limited, 801);
    }

    #[test]
    fn taking_a_keys_notes_leaves_its_counts() {
        let log = UsageLog::default();
        let id = KeyId::new("acme").unwrap();
        used(&log, &id, token(1), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(log.take(&id).len(), 1);
        let (notes, counts) = log.take_all();
        assert!(notes.is_empty());
        assert_eq!(counts.len(), 1);
    }
}
