//! Uses of tokens noted in memory by the managers' `authenticate`, and
//! written to the store later by their `flush_usage`: recording uses costs
//! a request no store call and no copy of its key.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};

use hashbrown::HashTable;
use time::OffsetDateTime;

use crate::counts::CountLog;
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

/// The notes of one key, under the hash of its id.
#[derive(Debug)]
struct Pending {
    hash: u64,
    id: KeyId,
    notes: Vec<Noted>,
}

/// The notes of some keys, by the hash of their id (the hash that also
/// chose the shard: an id is hashed once per use noted).
type Notes = HashTable<Pending>;

/// The notes of every key, in shards.
#[derive(Debug)]
pub(crate) struct UsageLog {
    shards: Box<[Padded<RwLock<Notes>>]>,
    /// The usage counts, written by the same flush.
    pub(crate) counts: CountLog,
    /// foldhash: only the ids of keys that authenticated are noted, so no
    /// one outside can pile up colliding ids.
    hasher: foldhash::fast::RandomState,
}

impl Default for UsageLog {
    fn default() -> Self {
        UsageLog {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            counts: CountLog::default(),
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

    /// Notes a use of `token` of key `id` at `at` (the last use of a
    /// token to within a second).
    pub(crate) fn note(&self, id: &KeyId, token: TokenId, at: OffsetDateTime) {
        let (hash, shard) = self.locate(id);
        let noted = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, |p| p.id == *id)
            .is_some_and(|p| {
                p.notes
                    .iter()
                    .any(|n| n.token == token && n.first <= at && at < n.quiet_until)
            });
        if !noted {
            add(&mut write(shard), hash, id, [Noted::new(token, at, at)]);
        }
    }

    /// Takes every note out, one entry per key.
    pub(crate) fn take_all(&self) -> Vec<(KeyId, Vec<Noted>)> {
        let mut all = Notes::new();
        for shard in &self.shards {
            for taken in std::mem::take(&mut *write(shard)) {
                add(&mut all, taken.hash, &taken.id, taken.notes);
            }
        }
        all.into_iter().map(|p| (p.id, p.notes)).collect()
    }

    /// Takes the notes of key `id` out.
    pub(crate) fn take(&self, id: &KeyId) -> Vec<Noted> {
        let hash = self.hasher.hash_one(id);
        let mut kept = Vec::new();
        for shard in &self.shards {
            if let Ok(found) = write(shard).find_entry(hash, |p| p.id == *id) {
                let (taken, _) = found.remove();
                taken.notes.into_iter().for_each(|n| merge(&mut kept, n));
            }
        }
        kept
    }

    /// Puts back notes that could not be written, merged with any noted
    /// since they were taken.
    pub(crate) fn put_back(&self, id: &KeyId, notes: Vec<Noted>) {
        let (hash, shard) = self.locate(id);
        add(&mut write(shard), hash, id, notes);
    }

    /// How many keys have notes waiting.
    pub(crate) fn keys(&self) -> usize {
        let mut ids = std::collections::HashSet::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            ids.extend(shard.iter().map(|p| p.id.clone()));
        }
        ids.len()
    }
}

/// Merges `notes` into key `id`'s in `table`.
fn add(table: &mut Notes, hash: u64, id: &KeyId, notes: impl IntoIterator<Item = Noted>) {
    let kept = match table.find_mut(hash, |p| p.id == *id) {
        Some(pending) => &mut pending.notes,
        None => {
            let pending = Pending {
                hash,
                id: id.clone(),
                notes: Vec::new(),
            };
            &mut table
                .insert_unique(hash, pending, |p| p.hash)
                .into_mut()
                .notes
        }
    };
    notes.into_iter().for_each(|n| merge(kept, n));
}

fn merge(notes: &mut Vec<Noted>, new: Noted) {
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

    #[test]
    fn notes_keep_the_first_and_last_use_of_each_token() {
        let log = UsageLog::default();
        let id = KeyId::new("acme").unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        log.note(&id, token(1), t0 + Duration::seconds(5));
        log.note(&id, token(1), t0);
        log.note(&id, token(1), t0 + Duration::seconds(9));
        log.note(&id, token(2), t0 + Duration::seconds(1));
        // Within a second of the last use noted: not noted again.
        log.note(&id, token(1), t0 + Duration::milliseconds(9500));
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
        log.note(&id, token(1), t0 + Duration::seconds(20));
        log.put_back(&id, notes);
        let all = log.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1[0].first, t0);
        assert_eq!(all[0].1[0].last, t0 + Duration::seconds(20));
    }

    #[test]
    fn notes_from_many_threads_are_taken_as_one() {
        let log = UsageLog::default();
        let id = KeyId::new("busy").unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let (log, id) = (&log, &id);
                scope.spawn(move || log.note(id, token(1), t0 + Duration::seconds(thread)));
            }
        });
        assert_eq!(log.keys(), 1);
        let all = log.take_all();
        assert_eq!(all.len(), 1, "one entry for the key");
        assert_eq!(
            all[0].1,
            [Noted::new(token(1), t0, t0 + Duration::seconds(7))]
        );
        assert_eq!(log.keys(), 0);
    }
}
