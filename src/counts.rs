//! Usage counts: how many authentications of each key ended in each
//! [`Outcome`], by UTC hour. Counted in memory on the request's path (an
//! atomic increment under a shared lock, no store call), and written by the
//! manager's `flush_usage` in batches of [`UsageRow`]s that add up in the
//! store.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use hashbrown::HashTable;
use time::OffsetDateTime;

use crate::id::KeyId;
use crate::padded::Padded;

/// How an authentication of a stored key ended, as usage counts tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Authenticated (and, for a key with limits, charged).
    Accepted,
    /// Refused by the key's rate limit.
    RateLimited,
    /// Refused for spent credits.
    UsageExceeded,
    /// A well-formed token naming a stored key that refused it: a wrong
    /// secret, a revoked token, an inactive or expired key.
    Refused,
}

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Accepted => 0,
            Outcome::RateLimited => 1,
            Outcome::UsageExceeded => 2,
            Outcome::Refused => 3,
        }
    }
}

/// The counts of one incarnation of one key in one UTC hour: what a store
/// keeps, and adds to ([`KeyStore::add_usage`](crate::store::KeyStore::add_usage)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The key.
    pub id: KeyId,
    /// The key's incarnation: a key deleted and created again starts with
    /// no counts.
    pub incarnation: u64,
    /// The hour, as whole hours since the Unix epoch (UTC).
    pub hour: i64,
    /// Authentications accepted.
    pub accepted: u64,
    /// Refused by the rate limit.
    pub rate_limited: u64,
    /// Refused for spent credits.
    pub usage_exceeded: u64,
    /// Refused by the key (wrong secret, revoked, inactive, expired).
    pub refused: u64,
}

impl UsageRow {
    /// The hour that holds `at`, as whole hours since the Unix epoch.
    pub fn hour_of(at: OffsetDateTime) -> i64 {
        at.unix_timestamp().div_euclid(3600)
    }

    /// When the row's hour starts.
    pub fn hour_start(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.hour.saturating_mul(3600))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The count of `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Accepted => self.accepted,
            Outcome::RateLimited => self.rate_limited,
            Outcome::UsageExceeded => self.usage_exceeded,
            Outcome::Refused => self.refused,
        }
    }

    /// The same row with `other`'s counts added (saturating).
    pub(crate) fn add(&mut self, counts: [u64; 4]) {
        let [a, r, u, f] = counts;
        self.accepted = self.accepted.saturating_add(a);
        self.rate_limited = self.rate_limited.saturating_add(r);
        self.usage_exceeded = self.usage_exceeded.saturating_add(u);
        self.refused = self.refused.saturating_add(f);
    }

    fn counts(&self) -> [u64; 4] {
        [
            self.accepted,
            self.rate_limited,
            self.usage_exceeded,
            self.refused,
        ]
    }
}

/// Counts are spread over this many tables: threads counting different
/// keys seldom share a lock.
const SHARDS: usize = 16;

/// One key, incarnation and hour, counting.
#[derive(Debug)]
struct Counter {
    hash: u64,
    id: KeyId,
    incarnation: u64,
    hour: i64,
    counts: [AtomicU64; 4],
}

/// The counts noted since the last flush.
#[derive(Debug)]
pub(crate) struct CountLog {
    shards: Box<[Padded<RwLock<HashTable<Counter>>>]>,
    /// foldhash: only ids of stored keys are counted.
    hasher: foldhash::fast::RandomState,
}

impl Default for CountLog {
    fn default() -> Self {
        CountLog {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl CountLog {
    /// Counts one authentication of key `id` of `incarnation` at `at`.
    pub(crate) fn count(&self, id: &KeyId, incarnation: u64, outcome: Outcome, at: OffsetDateTime) {
        self.add(id, incarnation, UsageRow::hour_of(at), {
            let mut counts = [0; 4];
            counts[outcome.index()] = 1;
            counts
        });
    }

    /// Adds `counts` to key `id`'s for `hour`: an atomic add under the
    /// shard's shared lock when the counter exists, else it is made.
    fn add(&self, id: &KeyId, incarnation: u64, hour: i64, counts: [u64; 4]) {
        let hash = self.hasher.hash_one((id, incarnation, hour));
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        let same = |c: &Counter| c.incarnation == incarnation && c.hour == hour && c.id == *id;
        let bump = |c: &Counter| {
            for (cell, n) in c.counts.iter().zip(counts) {
                if n > 0 {
                    cell.fetch_add(n, Ordering::Relaxed);
                }
            }
        };
        if let Some(counter) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, same)
        {
            bump(counter);
            return;
        }
        let mut table = shard.write().unwrap_or_else(PoisonError::into_inner);
        match table.find(hash, same) {
            Some(counter) => bump(counter),
            None => {
                table.insert_unique(
                    hash,
                    Counter {
                        hash,
                        id: id.clone(),
                        incarnation,
                        hour,
                        counts: counts.map(AtomicU64::new),
                    },
                    |c| c.hash,
                );
            }
        }
    }

    /// Takes every count out, one row per key, incarnation and hour.
    pub(crate) fn take_all(&self) -> Vec<UsageRow> {
        let mut rows = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.write().unwrap_or_else(PoisonError::into_inner));
            rows.extend(taken.into_iter().map(|c| UsageRow {
                id: c.id,
                incarnation: c.incarnation,
                hour: c.hour,
                accepted: c.counts[0].load(Ordering::Relaxed),
                rate_limited: c.counts[1].load(Ordering::Relaxed),
                usage_exceeded: c.counts[2].load(Ordering::Relaxed),
                refused: c.counts[3].load(Ordering::Relaxed),
            }));
        }
        rows
    }

    /// Puts back rows that could not be written, added to any counted
    /// since they were taken.
    pub(crate) fn put_back(&self, rows: &[UsageRow]) {
        for row in rows {
            self.add(&row.id, row.incarnation, row.hour, row.counts());
        }
    }

    /// How many counters are waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn counts_add_up_by_key_incarnation_and_hour_across_threads() {
        let log = CountLog::default();
        let id = KeyId::new("acme").unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::hours(500_000);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (log, id) = (&log, &id);
                scope.spawn(move || {
                    for i in 0..1000 {
                        log.count(id, 7, Outcome::Accepted, t0);
                        if i % 10 == 0 {
                            log.count(id, 7, Outcome::Refused, t0 + Duration::minutes(59));
                        }
                    }
                });
            }
        });
        log.count(&id, 7, Outcome::RateLimited, t0 + Duration::hours(1));
        log.count(&id, 8, Outcome::UsageExceeded, t0);
        let mut rows = log.take_all();
        rows.sort_by_key(|r| (r.incarnation, r.hour));
        let hour = UsageRow::hour_of(t0);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (
                rows[0].hour,
                rows[0].accepted,
                rows[0].refused,
                rows[0].rate_limited
            ),
            (hour, 4000, 400, 0)
        );
        assert_eq!((rows[1].hour, rows[1].rate_limited), (hour + 1, 1));
        assert_eq!((rows[2].incarnation, rows[2].usage_exceeded), (8, 1));
        assert_eq!(rows[0].hour_start(), t0);
        assert_eq!(log.len(), 0);
        log.put_back(&rows);
        log.count(&id, 7, Outcome::Accepted, t0);
        let again = log.take_all();
        let first = again
            .iter()
            .find(|r| r.incarnation == 7 && r.hour == hour)
            .unwrap();
        assert_eq!(first.accepted, 4001);
    }

    #[test]
    fn hours_before_the_epoch_round_down() {
        let before = OffsetDateTime::UNIX_EPOCH - Duration::seconds(1);
        assert_eq!(UsageRow::hour_of(before), -1);
    }
}
