//! The backend kit (feature `serde`): what a store shares with keyroll's
//! own, so that a store of yours is a few lines of glue over your storage.
//!
//! - **The key ↔ row codec**: the JSON record of an [`ApiKey`], checked on
//!   load ([`encode`], [`decode`], [`decode_row`]), and [`KeyRow`], the
//!   columns every keyroll store keeps a key in (its revision as two signed
//!   64-bit integers, and its record). A change of the record schema
//!   reaches every backend at once.
//! - **The meter's stored form**: [`StoredMeter`] as it is, or
//!   [`MeterRow`]'s columns; [`LimitColumns`] for a store that charges in
//!   SQL.
//! - **The arithmetic**: [`ApiKey::charge_with_owner`] on the meters you
//!   keep (the key's, and its owner's with the owner's
//!   [`OwnerLimits`]: both or neither), under your store's atomicity (a
//!   lock, a transaction), or, for a store that keeps the limits in
//!   columns beside the record, [`LimitColumns::charge`] then
//!   [`OwnerLimits::charge`]: one arithmetic behind all; never the
//!   meter's internals. [`LimitColumns::of_owner`] and
//!   [`LimitColumns::owner_limits`] store owner limits in the same
//!   columns.
//! - **The outbox**: [`EntryRow`], the columns of an outbox entry, with
//!   the SQL of a claim; or [`MemoryOutbox`](crate::outbox::MemoryOutbox),
//!   the whole outbox of a store in memory.
//! - **Verification**: [`Verification::of`] answers
//!   [`KeyStore::verify`](crate::store::KeyStore::verify) from a loaded
//!   key (the trait's default does exactly that).
//!
//! `examples/third_party_store.rs` is a complete store built from this kit,
//! in 229 lines, which passes the conformance suite (a test runs
//! it):
//!
//! ```rust,ignore
#![doc = include_str!("../examples/third_party_store.rs")]
//! ```
//!
//! # Example
//!
//! ```
//! use keyroll::{ApiKey, KeyId, record};
//! use time::OffsetDateTime;
//!
//! let (key, _, _) = ApiKey::issue(KeyId::new("acme")?, OffsetDateTime::now_utc(), &mut rand::rng())?;
//! let json = record::encode(&key)?;
//! // A store that keeps the id and the revision in columns checks them too.
//! assert_eq!(record::decode_row(&json, "acme", key.revision())?, key);
//! assert!(record::decode_row(&json, "other", key.revision()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A record carries `"schema": 4`, the key's `incarnation` and, when it has
//! them, its `scopes`, `metadata`, `expires_at`, limits, owner, last use and the notices it was sent; a token issued by
//! keyroll 0.1 carries `"legacy_framing": true`. Records of schema 1
//! (keyroll 0.1) have none of these: they load with no attributes, an
//! incarnation derived from the key id and creation time (so every load of
//! one record agrees), and their tokens marked as issued by keyroll 0.1.
//! Records of schema 2 (keyroll 0.2) load as written; 0.2 kept no mark on
//! tokens, so the tokens of a key that it loaded from a schema-1 record
//! (whose incarnation is still the derived one) are marked too. Records of
//! schema 3 (keyroll 0.3) load as written. Every record is written back as
//! schema 4.
//!
//! Loading refuses, with a message saying what is wrong, any record that
//! would build an impossible key: an unknown schema, a missing or
//! out-of-range incarnation, a version too low for the key's state, two
//! tokens with one id or one hash, a hash that is not 64 lower-case hex
//! digits, or a due date that is not the token's creation plus the policy's
//! renewal period.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::attributes::{Metadata, Scopes};
use crate::change::Settings;
use crate::entry::{Entry, EntryId, EntryState};
use crate::event::Event;
use crate::id::{KeyId, OwnerId};
use crate::key::{ApiKey, Parts, Renewal, TokenInfo};
use crate::meter::{
    Allowance, Credits, CreditsSetting, Limits, Meter, MeterParts, RateLimit, Refill, Refusal,
    StoredMeter,
};
use crate::notice::NoticeClaims;
use crate::owner::OwnerLimits;
use crate::policy::Policy;
use crate::revision::Revision;
use crate::state::KeyStatus;
pub use crate::store::Verification;

/// Why a record could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The key could not be encoded (it cannot happen to a key built by
    /// keyroll's public calls; kept as an error rather than a panic).
    #[error("key {id} cannot be encoded: {source}")]
    Encode {
        /// The key's id.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record does not load: bad JSON, an unknown schema, or a
    /// broken invariant (the message says which).
    #[error("stored key {id} is unreadable: {source}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// Why it does not load.
        #[source]
        source: serde_json::Error,
    },
    /// A key whose revision does not fit the signed 64-bit columns stores
    /// keep it in (no key that keyroll's calls build has one).
    #[error(
        "key {id} cannot be written: its revision {revision} does not fit signed 64-bit columns"
    )]
    OutOfRange {
        /// The key's id.
        id: String,
        /// Its revision.
        revision: Revision,
    },
    /// A stored record names another id or revision than its row (a record
    /// copied into another row must never authenticate there).
    #[error("stored key {id} does not match its row: {problem}")]
    Mismatch {
        /// The row's id.
        id: String,
        /// What differs.
        problem: String,
    },
    /// A stored outbox entry does not load (the message says why).
    #[error("stored outbox entry {id} is unreadable: {problem}")]
    Entry {
        /// The row's id.
        id: i64,
        /// Why it does not load.
        problem: String,
    },
}

/// The columns keyroll's SQL stores keep an outbox [`Entry`] in: the id a
/// sequence gives (an identity column, `AUTOINCREMENT`), the subject its
/// order is kept within ([`Entry::subject`]), the state
/// ([`EntryState::code`]), instants as whole microseconds since the epoch
/// (what `timestamptz` keeps; so that `next_at <= now` compares numbers),
/// and the event as JSON.
///
/// A claim ([`KeyStore::claim_outbox`](crate::store::KeyStore::claim_outbox))
/// in SQL, with an index on `(subject, id)` of the pending rows:
///
/// ```sql
/// SELECT * FROM outbox o WHERE o.state = 0 AND o.next_at <= $now
///   AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 0
///       AND p.subject = o.subject AND p.id < o.id AND p.next_at > $now)
/// ORDER BY o.id LIMIT $limit
/// ```
///
/// then the claimed rows' `next_at` set to `now + hold`, in the same
/// transaction, with claims serialised (a lock), so that two claims never
/// take one entry nor race on one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    /// The entry's id (0 before it is stored).
    pub id: i64,
    /// [`Entry::subject`] of its event.
    pub subject: String,
    /// [`EntryState::code`].
    pub state: i16,
    /// The failed attempts.
    pub attempts: i32,
    /// When it is due, in microseconds since the epoch.
    pub next_at: i64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When it was delivered, in microseconds since the epoch.
    pub delivered_at: Option<i64>,
    /// The event, as JSON.
    pub event: String,
}

impl EntryRow {
    /// The row of a new, pending entry of `event` (due at the event's
    /// time).
    ///
    /// # Errors
    ///
    /// [`RecordError::Encode`] (it cannot happen to an event keyroll
    /// made).
    pub fn pending(event: &Event) -> Result<EntryRow, RecordError> {
        let json = serde_json::to_string(event).map_err(|source| RecordError::Encode {
            id: Entry::subject(event),
            source,
        })?;
        Ok(EntryRow {
            id: 0,
            subject: Entry::subject(event),
            state: EntryState::Pending.code(),
            attempts: 0,
            next_at: micros(event.at()),
            last_error: None,
            delivered_at: None,
            event: json,
        })
    }

    /// The delivery columns of `entry` (its id, state, attempts, due
    /// time, last error and delivery time), for
    /// [`KeyStore::update_outbox`](crate::store::KeyStore::update_outbox);
    /// `subject` and `event` are left empty, as they never change.
    pub fn delivery(entry: &Entry) -> EntryRow {
        EntryRow {
            id: entry.id.get() as i64,
            subject: String::new(),
            state: entry.state.code(),
            attempts: i32::try_from(entry.attempts).unwrap_or(i32::MAX),
            next_at: micros(entry.next_attempt_at),
            last_error: entry.last_error.clone(),
            delivered_at: entry.delivered_at.map(micros),
            event: String::new(),
        }
    }

    /// The entry this row holds.
    ///
    /// # Errors
    ///
    /// [`RecordError::Entry`] for a negative id, an unknown state, an
    /// instant out of range or an event that does not load.
    pub fn decode(self) -> Result<Entry, RecordError> {
        let id = self.id;
        let bad = |problem: String| RecordError::Entry { id, problem };
        let event: Event = serde_json::from_str(&self.event).map_err(|e| bad(e.to_string()))?;
        let state = EntryState::from_code(self.state)
            .ok_or_else(|| bad(format!("unknown state {}", self.state)))?;
        let number = u64::try_from(id).map_err(|_| bad("negative id".into()))?;
        let instant = |us: i64| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
                .map_err(|e| bad(format!("instant {us}: {e}")))
        };
        Ok(Entry::new(EntryId::new(number), event).with_delivery(
            state,
            u32::try_from(self.attempts).unwrap_or(0),
            instant(self.next_at)?,
            self.last_error,
            self.delivered_at.map(instant).transpose()?,
        ))
    }
}

/// `at` in whole microseconds since the epoch (as SQL stores keep
/// instants; saturating beyond ±292,000 years, which no `OffsetDateTime`
/// reaches).
pub fn micros(at: OffsetDateTime) -> i64 {
    let us = at.unix_timestamp_nanos().div_euclid(1000);
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

/// The columns a keyroll store keeps a key in, beside its id: the
/// revision (what `update` and `delete` compare-and-swap on) as two signed
/// 64-bit integers, which SQL's `BIGINT` and SQLite's `INTEGER` hold, and
/// the JSON record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// The key's incarnation (below 2^63).
    pub incarnation: i64,
    /// The key's version.
    pub version: i64,
    /// The key's record ([`encode`]).
    pub record: String,
}

impl KeyRow {
    /// The row of `key`.
    ///
    /// # Errors
    ///
    /// [`RecordError::Encode`], or [`RecordError::OutOfRange`] for a
    /// revision beyond 2^63 - 1 (no key that keyroll's calls build has
    /// one).
    pub fn of(key: &ApiKey) -> Result<KeyRow, RecordError> {
        let revision = key.revision();
        let signed = |n: u64| {
            i64::try_from(n).map_err(|_| RecordError::OutOfRange {
                id: key.id().to_string(),
                revision,
            })
        };
        Ok(KeyRow {
            incarnation: signed(revision.incarnation())?,
            version: signed(revision.version())?,
            record: encode(key)?,
        })
    }

    /// The revision of a row's columns (written by [`KeyRow::of`]).
    pub fn revision(incarnation: i64, version: i64) -> Revision {
        Revision::new(incarnation as u64, version as u64)
    }

    /// The key of this row, stored under `id`: checked, and refused unless
    /// it is the row's id and revision ([`decode_row`]).
    ///
    /// # Errors
    ///
    /// [`RecordError::Corrupt`], [`RecordError::Mismatch`].
    pub fn decode(&self, id: &str) -> Result<ApiKey, RecordError> {
        decode_row(
            &self.record,
            id,
            KeyRow::revision(self.incarnation, self.version),
        )
    }
}

/// The JSON record of `key`.
///
/// # Errors
///
/// [`RecordError::Encode`].
pub fn encode(key: &ApiKey) -> Result<String, RecordError> {
    serde_json::to_string(key).map_err(|source| RecordError::Encode {
        id: key.id().to_string(),
        source,
    })
}

/// The key in a JSON record, checked (as serde's `Deserialize` does).
///
/// # Errors
///
/// [`RecordError::Corrupt`], naming `row_id`.
pub fn decode(record: &str, row_id: &str) -> Result<ApiKey, RecordError> {
    serde_json::from_str(record).map_err(|source| RecordError::Corrupt {
        id: row_id.to_owned(),
        source,
    })
}

/// The key in a row's JSON record, refused unless its id is the row's id
/// and its revision the row's revision: for backends that keep those in
/// columns (and compare-and-swap on them).
///
/// # Errors
///
/// [`RecordError::Corrupt`], [`RecordError::Mismatch`].
pub fn decode_row(
    record: &str,
    row_id: &str,
    row_revision: Revision,
) -> Result<ApiKey, RecordError> {
    let key = decode(record, row_id)?;
    let problem = if key.id().as_str() != row_id {
        format!("the record is of key {}", key.id())
    } else if key.revision() != row_revision {
        format!(
            "the record is at revision {}, the row at {row_revision}",
            key.revision()
        )
    } else {
        return Ok(key);
    };
    Err(RecordError::Mismatch {
        id: row_id.to_owned(),
        problem,
    })
}

/// A [`StoredMeter`] as a database row keeps it: signed 64-bit columns
/// (instants as whole seconds and nanoseconds since the epoch, which hold
/// every instant of the years 1 to 9999). Both database stores write and
/// read meters through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterRow {
    /// The key version whose setting of credits the meter counts.
    pub generation: i64,
    /// The rate limit's theoretical arrival time: seconds.
    pub tat_secs: i64,
    /// The rate limit's theoretical arrival time: nanoseconds, 0 to 10^9 - 1.
    pub tat_nanos: i32,
    /// The credits left.
    pub remaining: i64,
    /// The index of the last refill applied.
    pub refills: i64,
    /// When the credits were set: seconds.
    pub anchor_secs: i64,
    /// When the credits were set: nanoseconds, 0 to 10^9 - 1.
    pub anchor_nanos: i32,
}

impl MeterRow {
    /// The row of `stored`.
    pub fn of(stored: &StoredMeter) -> MeterRow {
        let parts = stored.meter.parts();
        // Every field fits: credits and generations are bounded by
        // `i64::MAX` where they are set, refills count from a set instant.
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        MeterRow {
            generation: signed(stored.generation),
            tat_secs: parts.tat.0,
            tat_nanos: parts.tat.1 as i32,
            remaining: signed(parts.remaining),
            refills: signed(parts.refills),
            anchor_secs: parts.anchor.0,
            anchor_nanos: parts.anchor.1 as i32,
        }
    }

    /// The meter in a row of key `row_id`, checked.
    ///
    /// # Errors
    ///
    /// [`RecordError::Mismatch`] naming the field out of range.
    pub fn load(&self, row_id: &str) -> Result<StoredMeter, RecordError> {
        let bad = |problem: String| RecordError::Mismatch {
            id: row_id.to_owned(),
            problem,
        };
        let unsigned = |name: &str, n: i64| {
            u64::try_from(n).map_err(|_| bad(format!("the meter's {name} is negative: {n}")))
        };
        let nanos = |name: &str, n: i32| {
            u32::try_from(n)
                .ok()
                .filter(|&n| n < 1_000_000_000)
                .ok_or_else(|| {
                    bad(format!(
                        "the meter's {name} nanoseconds are out of range: {n}"
                    ))
                })
        };
        Ok(StoredMeter {
            generation: unsigned("generation", self.generation)?,
            meter: Meter::from_parts(&MeterParts {
                tat: (self.tat_secs, nanos("tat", self.tat_nanos)?),
                remaining: unsigned("remaining", self.remaining)?,
                refills: unsigned("refills", self.refills)?,
                anchor: (self.anchor_secs, nanos("anchor", self.anchor_nanos)?),
            }),
        })
    }
}

/// A key's limits as plain signed 64-bit columns, for a store that charges
/// in SQL (PostgreSQL does, so that a charge is one statement): the rate
/// limit's `limit`, `period` (nanoseconds) and `burst`, and the credits
/// with their refill (`every` in nanoseconds), the instant they were set
/// (seconds and nanoseconds since the epoch) and their generation (see
/// [`StoredMeter`]). `None` where the key has no such limit. A store
/// writes them with the key's record, in the same statement, and reads
/// them back with the meter to [`charge`](LimitColumns::charge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitColumns {
    /// The rate limit's requests per period.
    pub rate_limit: Option<i64>,
    /// The rate limit's period in nanoseconds.
    pub rate_period_ns: Option<i64>,
    /// The rate limit's burst.
    pub rate_burst: Option<i64>,
    /// The credits as set.
    pub credits: Option<i64>,
    /// What a refill sets the balance to.
    pub refill_amount: Option<i64>,
    /// The time between refills in nanoseconds.
    pub refill_every_ns: Option<i64>,
    /// When the credits were set: seconds.
    pub credits_set_secs: Option<i64>,
    /// When the credits were set: nanoseconds, 0 to 10^9 - 1.
    pub credits_set_nanos: Option<i32>,
    /// The key version that set the credits.
    pub credits_generation: Option<i64>,
}

impl LimitColumns {
    /// The columns of `key`'s limits.
    pub fn of(key: &ApiKey) -> LimitColumns {
        LimitColumns::of_limits(key.limits())
    }

    /// The columns of an owner's limits (stored with their
    /// [`version`](OwnerLimits::version) beside them).
    pub fn of_owner(limits: &OwnerLimits) -> LimitColumns {
        LimitColumns::of_limits(Some(limits.limits()))
    }

    /// The owner's limits these columns hold, stored at `version` (the
    /// signed column beside them).
    ///
    /// # Errors
    ///
    /// [`RecordError::Mismatch`] (naming `row_owner`) for columns that hold
    /// no valid limit, or a negative version.
    pub fn owner_limits(&self, row_owner: &str, version: i64) -> Result<OwnerLimits, RecordError> {
        let version = u64::try_from(version).map_err(|_| RecordError::Mismatch {
            id: row_owner.to_owned(),
            problem: format!("version {version} is negative"),
        })?;
        Ok(OwnerLimits::from_parts(self.limits(row_owner)?, version))
    }

    fn of_limits(limits: Option<&Limits>) -> LimitColumns {
        // Every value fits: the bounds of `RateLimit`, `Refill` and
        // `MAX_CREDITS` keep them within `i64`.
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let nanos = |d: time::Duration| i64::try_from(d.whole_nanoseconds()).unwrap_or(i64::MAX);
        let rate = limits.and_then(|l| l.rate.as_ref());
        let credits = limits.and_then(|l| l.credits.as_ref());
        let refill = credits.and_then(|c| c.credits.refill());
        let set_at = credits.map(|c| Meter::new(None, c.set_at).parts().anchor);
        LimitColumns {
            rate_limit: rate.map(|r| i64::from(r.limit())),
            rate_period_ns: rate.map(|r| nanos(r.period())),
            rate_burst: rate.map(|r| i64::from(r.burst())),
            credits: credits.map(|c| signed(c.credits.remaining())),
            refill_amount: refill.map(|r| signed(r.amount())),
            refill_every_ns: refill.map(|r| nanos(r.every())),
            credits_set_secs: set_at.map(|(secs, _)| secs),
            credits_set_nanos: set_at.map(|(_, nanos)| nanos as i32),
            credits_generation: credits.map(|c| signed(c.generation)),
        }
    }

    /// Whether the columns hold a limit: a key without is never charged.
    pub fn is_metered(&self) -> bool {
        self.rate_limit.is_some() || self.credits.is_some()
    }

    /// [`ApiKey::charge`] with the limits these columns hold: the meter to
    /// store if admitted, and the allowance; or the refusal.
    ///
    /// # Errors
    ///
    /// [`RecordError::Mismatch`] for columns that hold no valid limit
    /// (half a rate limit, a bound broken).
    pub fn charge(
        &self,
        row_id: &str,
        stored: Option<&StoredMeter>,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<(StoredMeter, Allowance), Refusal>, RecordError> {
        Ok(self.limits(row_id)?.charge(stored, cost, now))
    }

    fn limits(&self, row_id: &str) -> Result<Limits, RecordError> {
        let bad = |problem: String| RecordError::Mismatch {
            id: row_id.to_owned(),
            problem: format!("the limit columns: {problem}"),
        };
        let unsigned = |n: i64| u64::try_from(n).map_err(|_| bad(format!("{n} is negative")));
        let rate = match (self.rate_limit, self.rate_period_ns, self.rate_burst) {
            (None, None, None) => None,
            (Some(limit), Some(period), Some(burst)) => {
                let count =
                    |n: i64| u32::try_from(n).map_err(|_| bad(format!("{n} is out of range")));
                let (limit, burst) = (count(limit)?, count(burst)?);
                let rate = RateLimit::new(limit, time::Duration::nanoseconds(period))
                    .and_then(|r| r.with_burst(burst))
                    .map_err(|e| bad(e.to_string()))?;
                Some(rate)
            }
            _ => return Err(bad("half a rate limit".into())),
        };
        let credits = match (
            self.credits,
            self.credits_set_secs,
            self.credits_set_nanos,
            self.credits_generation,
        ) {
            (None, None, None, None) => None,
            (Some(remaining), Some(secs), Some(nanos), Some(generation)) => {
                let credits = Credits::new(unsigned(remaining)?);
                let credits = match (self.refill_amount, self.refill_every_ns) {
                    (None, None) => credits,
                    (Some(amount), Some(every)) => credits.with_refill(
                        Refill::new(unsigned(amount)?, time::Duration::nanoseconds(every))
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    _ => return Err(bad("half a refill".into())),
                };
                let set_at = OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(secs) * 1_000_000_000 + i128::from(nanos),
                )
                .map_err(|e| bad(e.to_string()))?;
                Some(CreditsSetting {
                    credits,
                    set_at,
                    generation: unsigned(generation)?,
                })
            }
            _ => return Err(bad("half a setting of credits".into())),
        };
        Ok(Limits { rate, credits })
    }
}

/// The record schema this version writes.
const SCHEMA: u32 = 4;
/// The schema of keyroll 0.3, which this version still reads.
const SCHEMA_3: u32 = 3;
/// The schema of keyroll 0.2, which this version still reads.
const SCHEMA_2: u32 = 2;
/// The schema of keyroll 0.1, which this version still reads.
const SCHEMA_1: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord<'a> {
    schema: u32,
    id: Cow<'a, KeyId>,
    label: Cow<'a, str>,
    status: KeyStatus,
    /// Absent in schema 1.
    #[serde(default)]
    incarnation: Option<u64>,
    version: u64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    policy: Policy,
    /// Absent in schema 1, and when empty.
    #[serde(default, skip_serializing_if = "Scopes::is_empty")]
    scopes: Cow<'a, Scopes>,
    /// Absent in schema 1, and when empty.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Cow<'a, Metadata>,
    /// Absent in schema 1, and when the key has none.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    expires_at: Option<OffsetDateTime>,
    current_token: Cow<'a, TokenInfo>,
    #[serde(default)]
    renewal: Option<Cow<'a, Renewal>>,
    /// Absent before schema 3, and when the key has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    /// Absent before schema 3, and when the key has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits: Option<CreditsRecord>,
    /// Absent before schema 3, and when the key has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<Cow<'a, OwnerId>>,
    /// The key's latest use by any token, deleted ones included. Absent
    /// before schema 4 (the tokens' own then tell), and before a first use.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    last_used_at: Option<OffsetDateTime>,
    /// The settings the key keeps only as data (networks, ...). Absent
    /// before schema 4, and when the key has none.
    #[serde(default, skip_serializing_if = "Settings::is_empty")]
    settings: Cow<'a, Settings>,
    /// The notices the key was sent. Absent before keyroll 0.4, and
    /// before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    notices: Option<NoticeClaims>,
}

/// A key's credits with when they were set and the version that set them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsRecord {
    remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refill: Option<Refill>,
    #[serde(with = "time::serde::rfc3339")]
    set_at: OffsetDateTime,
    generation: u64,
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every field named: a new one breaks this build until it is kept.
        let Parts {
            id,
            label,
            status,
            incarnation,
            version,
            created_at,
            policy,
            scopes,
            metadata,
            expires_at,
            current,
            renewal,
            limits,
            owner,
            last_used_at,
            settings,
            notices,
        } = self.clone().into_parts();
        let (rate_limit, credits) = limits.map_or((None, None), |l| (l.rate, l.credits));
        KeyRecord {
            schema: SCHEMA,
            id: Cow::Owned(id),
            label: Cow::Owned(label.into()),
            status,
            incarnation: Some(incarnation),
            version,
            created_at,
            policy,
            scopes: Cow::Owned(scopes),
            metadata: Cow::Owned(metadata),
            expires_at,
            current_token: Cow::Owned(current),
            renewal: renewal.map(|r| Cow::Owned(*r)),
            rate_limit,
            credits: credits.map(|c| CreditsRecord {
                remaining: c.credits.remaining(),
                refill: c.credits.refill().copied(),
                set_at: c.set_at,
                generation: c.generation,
            }),
            owner: owner.map(Cow::Owned),
            last_used_at,
            settings: Cow::Owned(settings),
            notices: notices.map(|n| *n),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let record = KeyRecord::deserialize(d)?;
        let derived = schema_1_incarnation(&record.id, record.created_at);
        // Whether keyroll 0.1 issued the key, and so maybe its tokens.
        let (incarnation, of_0_1) = match (record.schema, record.incarnation) {
            (SCHEMA | SCHEMA_3, Some(incarnation)) => (incarnation, false),
            // Keyroll 0.2 kept no mark on tokens issued by 0.1. A key it
            // loaded from a schema-1 record kept the incarnation derived
            // for it; one 0.2 issued has a random one (equal to the derived
            // one with odds of 2^-63).
            (SCHEMA_2, Some(incarnation)) => (incarnation, incarnation == derived),
            (SCHEMA | SCHEMA_3 | SCHEMA_2, None) => {
                return Err(D::Error::custom(format_args!(
                    "invalid key record: schema {} needs an incarnation",
                    record.schema
                )));
            }
            (SCHEMA_1, _) => (derived, true),
            (other, _) => {
                return Err(D::Error::custom(format_args!(
                    "unsupported key record schema {other}: this version of keyroll reads schemas {SCHEMA_1} to {SCHEMA}"
                )));
            }
        };
        let mut current = record.current_token.into_owned();
        let mut renewal = record.renewal.map(|r| Box::new(r.into_owned()));
        if of_0_1 {
            current.legacy = true;
            if let Some(renewal) = &mut renewal {
                renewal.old.legacy = true;
            }
        }
        let limits = Limits {
            rate: record.rate_limit,
            credits: record.credits.map(|c| {
                let credits = Credits::new(c.remaining);
                CreditsSetting {
                    credits: match c.refill {
                        Some(refill) => credits.with_refill(refill),
                        None => credits,
                    },
                    set_at: c.set_at,
                    generation: c.generation,
                }
            }),
        };
        // The key's last use is at least its tokens' (records before
        // schema 4 kept only those).
        let tokens_last_use = current
            .last_used_at
            .max(renewal.as_ref().and_then(|r| r.old.last_used_at));
        let key = ApiKey::from_parts(Parts {
            id: record.id.into_owned(),
            label: record.label.into_owned().into_boxed_str(),
            status: record.status,
            incarnation,
            version: record.version,
            created_at: record.created_at,
            policy: record.policy,
            scopes: record.scopes.into_owned(),
            metadata: record.metadata.into_owned(),
            expires_at: record.expires_at,
            current,
            renewal,
            limits: (!limits.is_empty()).then(|| Box::new(limits)),
            owner: record.owner.map(Cow::into_owned),
            last_used_at: record.last_used_at.max(tokens_last_use),
            settings: record.settings.into_owned(),
            notices: record.notices.map(Box::new),
        });
        key.check_invariants()
            .map_err(|problem| D::Error::custom(format_args!("invalid key record: {problem}")))?;
        Ok(key)
    }
}

/// The incarnation of a schema-1 record, which has none: derived from what
/// never changes in a key's life (its id and creation time), so that every
/// load of the record, by any replica, gets the same.
fn schema_1_incarnation(id: &KeyId, created_at: OffsetDateTime) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"keyroll schema-1 incarnation\0")
        .chain_update(id.as_str().as_bytes())
        .chain_update(created_at.unix_timestamp_nanos().to_le_bytes())
        .finalize();
    let (first, _) = digest
        .split_first_chunk::<8>()
        .unwrap_or_else(|| unreachable!("32 bytes"));
    u64::from_le_bytes(*first) >> 1
}

/// A token hash as 64 lower-case hex digits.
pub(crate) mod hash {
    use super::*;
    use crate::token::TokenHash;

    pub(crate) fn serialize<S: Serializer>(h: &TokenHash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(&h.0))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TokenHash, D::Error> {
        let text = <Cow<'de, str>>::deserialize(d)?;
        crate::hex::decode::<32>(&text)
            .map(TokenHash)
            .ok_or_else(|| {
                D::Error::custom("invalid token hash: expected 64 lower-case hex digits")
            })
    }
}
