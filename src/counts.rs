//! Usage counts: how many authentications of each key ended in each
//! [`Outcome`], by UTC hour. Counted in memory on the request's path (with
//! the uses, in `usage`), and written by the manager's `flush_usage` in
//! batches of [`UsageRow`]s that add up in the store.

use time::OffsetDateTime;

use crate::id::KeyId;

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
    pub(crate) fn index(self) -> usize {
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

    /// Adds `counts` (accepted, rate limited, usage exceeded, refused),
    /// saturating.
    /// Adds `other`'s counts to this row's (a store's `add_usage` adds a
    /// batch's row to the one it keeps for the same key, incarnation and
    /// hour), saturating.
    pub fn merge(&mut self, other: &UsageRow) {
        self.add(other.counts());
    }

    pub(crate) fn add(&mut self, counts: [u64; 4]) {
        let [a, r, u, f] = counts;
        self.accepted = self.accepted.saturating_add(a);
        self.rate_limited = self.rate_limited.saturating_add(r);
        self.usage_exceeded = self.usage_exceeded.saturating_add(u);
        self.refused = self.refused.saturating_add(f);
    }

    /// The counts: accepted, rate limited, usage exceeded, refused.
    pub(crate) fn counts(&self) -> [u64; 4] {
        [
            self.accepted,
            self.rate_limited,
            self.usage_exceeded,
            self.refused,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn hours_count_from_the_epoch_and_round_down() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::hours(500_000);
        assert_eq!(UsageRow::hour_of(t0), 500_000);
        assert_eq!(UsageRow::hour_of(t0 + Duration::minutes(59)), 500_000);
        let before = OffsetDateTime::UNIX_EPOCH - Duration::seconds(1);
        assert_eq!(UsageRow::hour_of(before), -1);
        let row = UsageRow {
            id: KeyId::new("k").unwrap(),
            incarnation: 1,
            hour: 500_000,
            accepted: 1,
            rate_limited: 2,
            usage_exceeded: 3,
            refused: 4,
        };
        assert_eq!(row.hour_start(), t0);
        assert_eq!(row.count(Outcome::UsageExceeded), 3);
    }
}
