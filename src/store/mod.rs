//! Storage: the [`KeyStore`] trait a backend implements, and the stores
//! that come with keyroll.
//!
//! A store keeps [`ApiKey`] records by [`KeyId`] and offers optimistic
//! concurrency: every write names the [`Revision`] it expects to replace, so
//! two writers that loaded the same revision cannot both succeed, and a copy
//! loaded before the key was deleted and created again matches nothing.
//! [`KeyManager`](crate::KeyManager) builds every transition on that.
//!
//! - [`InMemoryStore`]: keys in memory, sharded so that it scales with cores.
//! - [`CachedStore`]: keys kept in memory in front of a slower store, for a
//!   bounded time.
//! - [`DynKeyStore`]: any store behind one type, chosen at run time.
//! - `Intercept` (feature `conformance`): any store, with hooks that count,
//!   fail or delay chosen calls, for tests.
//! - [`Timed`]: any store, each call's latency told to the `metrics`
//!   facade.
//!
//! `keyroll-sqlite` and `keyroll-postgres` are stores in their own crates.
//! The contract a backend keeps is in [`KeyStore`]'s docs, and the
//! `conformance` suite (feature `conformance`) checks it.

mod cached;
mod dynamic;
#[cfg(feature = "conformance")]
mod intercept;
mod memory;
mod timed;

pub use cached::CachedStore;
pub use dynamic::{DynKeyStore, DynStoreError};
#[cfg(feature = "conformance")]
pub use intercept::{Action, Call, Intercept, InterceptError};
pub use memory::InMemoryStore;
pub use timed::Timed;

pub use crate::errors::StoreError;
pub use crate::revision::Revision;

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

pub use crate::counts::UsageRow;
use crate::entry::{Entry, EntryId, EntryState, OutboxCounts};
use crate::errors::VerifyError;
use crate::event::Event;
use crate::id::{KeyId, OwnerId};
use crate::key::ApiKey;
use crate::key::Authenticated;
use crate::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
pub use crate::owner::Charged;
use crate::owner::OwnerLimits;
use crate::token::PresentedToken;

/// What a store found when it verified a token against the key stored
/// under an id ([`KeyStore::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// `Accepted` is what nearly every request gets: boxing it would allocate
// on each, to save stack on the rare refusals.
#[allow(clippy::large_enum_variant)]
pub enum Verification {
    /// The token is a live token of the key, and the key accepts it.
    Accepted(Authenticated),
    /// The key refused the token.
    Refused {
        /// Why.
        error: VerifyError,
        /// The key's incarnation: the refusal is counted under it.
        incarnation: u64,
    },
    /// No key is stored under the id.
    UnknownKey,
}

impl Verification {
    /// The same answer, with an accepted key marked metered when its
    /// owner's `limits` are not empty (the manager then charges it, and
    /// the charge applies them).
    pub fn with_owner_limits(self, limits: Option<&OwnerLimits>) -> Verification {
        match self {
            Verification::Accepted(accepted)
                if !accepted.metered && limits.is_some_and(|l| !l.is_empty()) =>
            {
                let incarnation = accepted.incarnation;
                Verification::Accepted(accepted.charged_to(incarnation))
            }
            other => other,
        }
    }

    /// The answer for `key` (`None`: not stored) to `token` at `now`, as a
    /// store that loaded the key gives it.
    pub fn of(
        key: Option<&ApiKey>,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Verification {
        let Some(key) = key else {
            return Verification::UnknownKey;
        };
        match key.authenticate(token, now) {
            Ok(authenticated) => Verification::Accepted(authenticated),
            Err(error) => Verification::Refused {
                error,
                incarnation: key.revision().incarnation(),
            },
        }
    }
}

/// A store of API keys.
///
/// Its methods are `async`. A backend whose storage is synchronous and
/// fast (memory) implements them with bodies that never wait, and its
/// futures complete at their first poll; one that blocks (SQLite) does its
/// work on a thread of its own and waits on a channel, so that any executor
/// can drive it; one that speaks to a server (PostgreSQL) may need a
/// runtime, and says so in its docs. A synchronous program drives any of
/// them with a `block_on` (see [`KeyManager`](crate::KeyManager)).
///
/// # The contract
///
/// | method | resolves to | errors |
/// |---|---|---|
/// | `get(id)` | the key, or `None` | `Self::Error` |
/// | `insert(key, events)` | `()` | [`StoreError::AlreadyExists`], `Backend` |
/// | `update(key, expected, events)` | `()` | [`StoreError::NotFound`], [`StoreError::Conflict`], `Backend` |
/// | `delete(id, expected, events)` | `()` | [`StoreError::NotFound`], [`StoreError::Conflict`], `Backend` |
/// | `list(after, limit)` | up to `limit` keys | `Self::Error` |
/// | `list_owned(owner, after, limit)` (provided) | up to `limit` keys of `owner` | `Self::Error` |
/// | `verify(id, token, now)` | a [`Verification`] | `Self::Error` |
/// | `charge(id, incarnation, cost, now)` | the [`Allowance`], or the [`Refusal`] | [`StoreError::NotFound`], `Backend` |
/// | `meter(id, incarnation)` | the [`StoredMeter`], or `None` | `Self::Error` |
/// | `owner_limits(owner)` | the [`OwnerLimits`], or `None` | `Self::Error` |
/// | `set_owner_limits(owner, limits, expected, events)` | `()` | [`StoreError::Conflict`], `Backend` |
/// | `owner_meter(owner)` | the owner's [`StoredMeter`], or `None` | `Self::Error` |
/// | `refund_owner(owner, amount, period)` | `()` | `Self::Error` |
/// | `add_usage(rows)` | `()` | `Self::Error` |
/// | `usage(id, incarnation, hours)` | the [`UsageRow`]s, by hour | `Self::Error` |
/// | `prune_usage(before)` | how many rows were dropped | `Self::Error` |
/// | `claim_outbox(limit, now, hold)` | up to `limit` due [`Entry`]s | `Self::Error` |
/// | `update_outbox(entries)` | `()` | `Self::Error` |
/// | `outbox(state, after, limit)` | up to `limit` [`Entry`]s | `Self::Error` |
/// | `outbox_of(subject, before, limit)` | up to `limit` [`Entry`]s, newest first | `Self::Error` |
/// | `outbox_counts()` | the [`OutboxCounts`] | `Self::Error` |
/// | `prune_outbox(before)` | how many entries were dropped | `Self::Error` |
///
/// - `get(id)` returns the key last written under `id` (by `insert` or a
///   successful `update`), equal to it, or `None` if there is none. Never a
///   stale copy once a write has returned `Ok`.
/// - `insert(key)` stores a key under `key.id()` only if no key has that id;
///   otherwise [`StoreError::AlreadyExists`] and the stored key is untouched.
/// - `update(key, expected)` replaces the key with id `key.id()` only if its
///   stored [`Revision`] (incarnation *and* version) is `expected` and
///   `key.revision().incarnation()` is `expected.incarnation()`, atomically
///   (a compare-and-swap). A missing key is [`StoreError::NotFound`];
///   anything else is [`StoreError::Conflict`] with the revision found, and
///   the stored key is untouched. Of any number of concurrent updates from
///   the same revision, exactly one succeeds. Comparing versions alone is
///   not enough: versions restart at 1 when an id is deleted and created
///   again, and a stale copy would overwrite the new key.
/// - `delete(id, expected)`: the same compare-and-swap on the stored
///   revision, removing the key.
/// - **The outbox.** Each write (`insert`, `update`, `delete`,
///   `set_owner_limits`) stores its `events` as pending [`Entry`]s, in
///   order, in the same atomic step as the write (the same lock, the same
///   transaction): a write refused or failed leaves no entry, one that
///   succeeded leaves one per event. Entry ids are unique in the store and
///   grow with each write of one key or owner (its *subject*,
///   [`Entry::subject`]). [`MemoryOutbox`](crate::outbox::MemoryOutbox) is the whole outbox contract
///   for a store in memory.
/// - `claim_outbox(limit, now, hold)` returns, in id order, at most `limit`
///   pending entries due at `now` (`next_attempt_at <= now`), and sets
///   their `next_attempt_at` to `now + hold`, atomically, so that
///   concurrent claims never return the same entry before the hold ends.
///   It skips every entry whose subject has an earlier pending entry not
///   due (held or backing off), so that a subject's entries are delivered
///   in order. `update_outbox(entries)` stores each entry's delivery state
///   (state, attempts, `next_attempt_at`, `last_error`, `delivered_at`) by
///   id, skipping ids no longer kept. `outbox(state, after, limit)` lists
///   entries in `state` with ids after `after`, in order;
///   `outbox_of(subject, before, limit)` lists the entries of one subject
///   with ids before `before`, newest first, in any state; `outbox_counts`
///   counts pending and parked entries; `prune_outbox(before)` drops the
///   entries delivered before `before`.
/// - A backend that keeps the id or the revision outside the record (in
///   columns) refuses, as a `Backend` error, a record whose id or revision
///   differs from its row's.
/// - `list(after, limit)` returns at most `limit` keys, ordered by `KeyId`
///   (byte order of the id strings, as `KeyId`'s `Ord`), all strictly
///   greater than `after` when it is given. Paging with the last id of each
///   page visits every key once. `list_owned` does the same for the keys
///   whose owner is `owner`, from an index of owners (its default scans).
/// - Usage counts: `add_usage` adds each row's counts to those of its key,
///   incarnation and hour (never replaces them; a key's write never
///   touches them); `usage` reads one incarnation's, by hour; `delete`
///   drops the id's counts with the key (a key created again starts with
///   none); `prune_usage(before)` drops every row of an hour before
///   `before`.
/// - `verify(id, token, now)` answers what
///   [`ApiKey::verify_presented`] answers for the stored key (the
///   default loads it with `get`); a store that can verify in place,
///   without copying the key, overrides it.
/// - `charge(id, incarnation, cost, now)` applies [`ApiKey::charge`] to
///   the key stored under `id` and the meter kept beside it, and stores the
///   new meter if the charge was admitted, all in one atomic step (a lock,
///   a transaction, one statement): of any number of concurrent charges,
///   each sees the meter the one before left. The key's limits are read in
///   that same step, never from a cached copy. A missing key, or one of
///   another incarnation (deleted and created again), is
///   [`StoreError::NotFound`]. A charge never changes the key, nor its
///   revision; `update` keeps the meter; `delete` deletes it, so a key
///   created again under the id starts full.
/// - `meter(id, incarnation)` is the meter kept beside that key, `None`
///   when there is none (never charged, another incarnation, no key).
/// - **Owner limits** ([`OwnerLimits`]) are kept by owner, beside the keys
///   and in no key's record, with the owner's meter.
///   `set_owner_limits(owner, limits, expected)` stores `limits` only if
///   the stored ones are at version `expected` (0: none stored), else
///   [`StoreError::Conflict`] with both versions as revisions of
///   incarnation 0. Cleared limits (empty) are stored too, so versions
///   only grow; deleting keys never touches them. `owner_limits` is the
///   last stored, `owner_meter` the owner's meter (`None` before its first
///   charge).
/// - **A charge of a key whose owner has limits** (not empty) charges both
///   meters in the same atomic step, the key's first, then the owner's
///   ([`OwnerLimits::charge`]); if either refuses, neither is stored, and
///   the refusal is the one that refused (its `subject`). The owner is the
///   key's owner in the stored record at the charge, its limits those
///   stored then. A key without limits of its own is charged to its
///   owner's alone.
/// - `verify` marks an accepted key whose owner has limits as metered
///   ([`Authenticated::charged_to`] is how a store says so), so that the
///   manager charges it.
/// - `refund_owner(owner, amount, period)`: [`OwnerLimits::refund`] on the
///   owner's meter, atomically, void as `refund` is.
/// - Every error of the backend itself is `Backend(e)`, never a panic.
///
/// Run `keyroll::conformance::run_all` (feature `conformance`) on your
/// store to check all of this.
pub trait KeyStore: Send + Sync {
    /// The backend's own error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The key stored under `id`, if any.
    fn get(&self, id: &KeyId) -> impl Future<Output = Result<Option<ApiKey>, Self::Error>> + Send;

    /// Stores a new key, and `events` in the outbox with it.
    fn insert(
        &self,
        key: &ApiKey,
        events: &[Event],
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// Replaces the stored key if its revision is `expected` (and `key` is
    /// of the same incarnation), and stores `events` in the outbox with it.
    fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// Removes the stored key if its revision is `expected`, and stores
    /// `events` in the outbox with it.
    fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// At most `limit` keys with ids strictly after `after`, ordered by id.
    fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ApiKey>, Self::Error>> + Send;

    /// At most `limit` keys of `owner` with ids strictly after `after`,
    /// ordered by id.
    ///
    /// The default pages through [`list`](Self::list) and keeps `owner`'s
    /// keys: a scan of every key, which a store should replace with a
    /// lookup in an index of owners (every store of keyroll does).
    fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ApiKey>, Self::Error>> + Send {
        async move {
            const PAGE: usize = 256;
            let mut owned = Vec::new();
            let mut cursor = after.cloned();
            while owned.len() < limit {
                let page = self.list(cursor.as_ref(), PAGE).await?;
                let Some(last) = page.last() else { break };
                cursor = Some(last.id().clone());
                let last_page = page.len() < PAGE;
                owned.extend(page.into_iter().filter(|key| key.owner() == Some(owner)));
                if last_page {
                    break;
                }
            }
            owned.truncate(limit);
            Ok(owned)
        }
    }

    /// Verifies `token` against the key stored under `id`, as
    /// [`ApiKey::verify_presented`] does, and marks a key whose owner has
    /// limits as metered. The default loads the key with `get`, and its
    /// owner's limits with `owner_limits` when the key has none of its
    /// own.
    fn verify(
        &self,
        id: &KeyId,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Verification, Self::Error>> + Send {
        async move {
            let key = self.get(id).await?;
            let verification = Verification::of(key.as_ref(), token, now);
            Ok(match (verification, key.as_ref().and_then(ApiKey::owner)) {
                (Verification::Accepted(accepted), Some(owner)) if !accepted.metered => {
                    let limits = self.owner_limits(owner).await?;
                    Verification::Accepted(accepted).with_owner_limits(limits.as_ref())
                }
                (verification, _) => verification,
            })
        }
    }

    /// Charges `cost` to the limits of key `id` of `incarnation`,
    /// atomically with the meter kept beside it.
    fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Result<Allowance, Refusal>, StoreError<Self::Error>>> + Send;

    /// Gives back `amount` credits that a charge of key `id` of
    /// `incarnation` took in `period` and nothing spent (the unspent part
    /// of a lease), atomically with the meter: [`ApiKey::refund`] under
    /// the store's own atomicity. A void refund (another period, credits
    /// set again, a key gone or of another incarnation) changes nothing,
    /// and is no error: credits are then under-spent, never over-spent.
    fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The meter kept beside key `id` of `incarnation`, if any.
    fn meter(
        &self,
        id: &KeyId,
        incarnation: u64,
    ) -> impl Future<Output = Result<Option<StoredMeter>, Self::Error>> + Send;

    /// Adds each row's counts to those kept for its key, incarnation and
    /// hour (kept in a table of their own: never in the key's record, and
    /// never a write of the key). Rows of a key that is gone are kept too,
    /// and never read: [`prune_usage`](Self::prune_usage) drops them in
    /// time. A batch is one transaction (or statement) where the backend
    /// has them.
    fn add_usage(&self, rows: &[UsageRow]) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The counts of key `id` of `incarnation` for the hours `hours`
    /// (whole hours since the epoch), ordered by hour; hours without any
    /// are left out.
    fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> impl Future<Output = Result<Vec<UsageRow>, Self::Error>> + Send;

    /// Drops the counts of the hours before `before`; how many rows went.
    fn prune_usage(&self, before: i64) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// The limits `owner`'s keys share, as last stored (empty once
    /// cleared); `None` if never set.
    fn owner_limits(
        &self,
        owner: &OwnerId,
    ) -> impl Future<Output = Result<Option<OwnerLimits>, Self::Error>> + Send;

    /// Stores `limits` as `owner`'s if the stored ones are at version
    /// `expected` (0: none stored). `limits` is a stamped setting of
    /// version `expected + 1`
    /// ([`KeyManager::set_owner_limits`](crate::KeyManager::set_owner_limits)
    /// makes it), and stores `events` in the outbox with them.
    fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// The meter kept beside `owner`'s limits, if it was ever charged.
    fn owner_meter(
        &self,
        owner: &OwnerId,
    ) -> impl Future<Output = Result<Option<StoredMeter>, Self::Error>> + Send;

    /// Gives back `amount` credits that a charge took from `owner`'s
    /// credits in `period`, atomically with the owner's meter
    /// ([`OwnerLimits::refund`]); void as [`refund`](Self::refund) is.
    fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Claims at most `limit` pending outbox entries due at `now`, in
    /// order, holding each until `now + hold` (see the contract above).
    fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: Duration,
    ) -> impl Future<Output = Result<Vec<Entry>, Self::Error>> + Send;

    /// Stores the delivery state of each of `entries`, by id.
    fn update_outbox(
        &self,
        entries: &[Entry],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// At most `limit` outbox entries in `state` with ids after `after`, in
    /// order.
    fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, Self::Error>> + Send;

    /// At most `limit` outbox entries of `subject` ([`Entry::subject`]: a
    /// key's id, or `owner:` and an owner) with ids before `before`,
    /// newest first, in any state: a key's recent events, delivered or
    /// not, until they are pruned.
    fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, Self::Error>> + Send;

    /// How many outbox entries are pending and parked.
    fn outbox_counts(&self) -> impl Future<Output = Result<OutboxCounts, Self::Error>> + Send;

    /// Drops the outbox entries delivered before `before`; how many went.
    fn prune_outbox(
        &self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// The instant a marker was set, if it is: a named fact about the
    /// whole store that outlives restarts and replicas, such as
    /// [`BOOTSTRAP_RETIRED`] (the admin bootstrap token is over). Names are
    /// at most 64 bytes.
    fn marker(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, Self::Error>> + Send;

    /// Sets marker `name` at `at`, or clears it (`None`). Setting a marker
    /// that is already set keeps the first instant.
    fn set_marker(
        &self,
        name: &str,
        at: Option<OffsetDateTime>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The marker set once an active key holds the admin scope: from then on
/// the admin API's bootstrap token never acts, until an operator clears it
/// (`keyctl restore-bootstrap`, audited).
pub const BOOTSTRAP_RETIRED: &str = "bootstrap-retired";

/// Implements the trait for a pointer type by forwarding to its target.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<S: KeyStore + ?Sized> KeyStore for $ptr {
            type Error = S::Error;
            fn get(&self, id: &KeyId) -> impl Future<Output = Result<Option<ApiKey>, S::Error>> + Send {
                (**self).get(id)
            }
            fn insert(&self, key: &ApiKey, events: &[Event]) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).insert(key, events)
            }
            fn update(
                &self,
                key: &ApiKey,
                expected: Revision,
                events: &[Event],
            ) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).update(key, expected, events)
            }
            fn delete(
                &self,
                id: &KeyId,
                expected: Revision,
                events: &[Event],
            ) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).delete(id, expected, events)
            }
            fn list(
                &self,
                after: Option<&KeyId>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<ApiKey>, S::Error>> + Send {
                (**self).list(after, limit)
            }
            fn list_owned(
                &self,
                owner: &OwnerId,
                after: Option<&KeyId>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<ApiKey>, S::Error>> + Send {
                (**self).list_owned(owner, after, limit)
            }
            fn verify(
                &self,
                id: &KeyId,
                token: &PresentedToken<'_>,
                now: OffsetDateTime,
            ) -> impl Future<Output = Result<Verification, S::Error>> + Send {
                (**self).verify(id, token, now)
            }
            fn charge(
                &self,
                id: &KeyId,
                incarnation: u64,
                cost: u32,
                now: OffsetDateTime,
            ) -> impl Future<Output = Result<Result<Allowance, Refusal>, StoreError<S::Error>>> + Send {
                (**self).charge(id, incarnation, cost, now)
            }
            fn refund(
                &self,
                id: &KeyId,
                incarnation: u64,
                amount: u64,
                period: CreditsPeriod,
            ) -> impl Future<Output = Result<(), S::Error>> + Send {
                (**self).refund(id, incarnation, amount, period)
            }
            fn meter(
                &self,
                id: &KeyId,
                incarnation: u64,
            ) -> impl Future<Output = Result<Option<StoredMeter>, S::Error>> + Send {
                (**self).meter(id, incarnation)
            }
            fn add_usage(&self, rows: &[UsageRow]) -> impl Future<Output = Result<(), S::Error>> + Send {
                (**self).add_usage(rows)
            }
            fn usage(
                &self,
                id: &KeyId,
                incarnation: u64,
                hours: Range<i64>,
            ) -> impl Future<Output = Result<Vec<UsageRow>, S::Error>> + Send {
                (**self).usage(id, incarnation, hours)
            }
            fn prune_usage(&self, before: i64) -> impl Future<Output = Result<u64, S::Error>> + Send {
                (**self).prune_usage(before)
            }
            fn owner_limits(&self, owner: &OwnerId) -> impl Future<Output = Result<Option<OwnerLimits>, S::Error>> + Send {
                (**self).owner_limits(owner)
            }
            fn set_owner_limits(
                &self,
                owner: &OwnerId,
                limits: &OwnerLimits,
                expected: u64,
                events: &[Event],
            ) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).set_owner_limits(owner, limits, expected, events)
            }
            fn owner_meter(&self, owner: &OwnerId) -> impl Future<Output = Result<Option<StoredMeter>, S::Error>> + Send {
                (**self).owner_meter(owner)
            }
            fn refund_owner(
                &self,
                owner: &OwnerId,
                amount: u64,
                period: CreditsPeriod,
            ) -> impl Future<Output = Result<(), S::Error>> + Send {
                (**self).refund_owner(owner, amount, period)
            }
            fn claim_outbox(
                &self,
                limit: usize,
                now: OffsetDateTime,
                hold: Duration,
            ) -> impl Future<Output = Result<Vec<Entry>, S::Error>> + Send {
                (**self).claim_outbox(limit, now, hold)
            }
            fn update_outbox(&self, entries: &[Entry]) -> impl Future<Output = Result<(), S::Error>> + Send {
                (**self).update_outbox(entries)
            }
            fn outbox(
                &self,
                state: EntryState,
                after: Option<EntryId>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<Entry>, S::Error>> + Send {
                (**self).outbox(state, after, limit)
            }
            fn outbox_of(
                &self,
                subject: &str,
                before: Option<EntryId>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<Entry>, S::Error>> + Send {
                (**self).outbox_of(subject, before, limit)
            }
            fn outbox_counts(&self) -> impl Future<Output = Result<OutboxCounts, S::Error>> + Send {
                (**self).outbox_counts()
            }
            fn prune_outbox(&self, before: OffsetDateTime) -> impl Future<Output = Result<u64, S::Error>> + Send {
                (**self).prune_outbox(before)
            }
            fn marker(&self, name: &str) -> impl Future<Output = Result<Option<OffsetDateTime>, S::Error>> + Send {
                (**self).marker(name)
            }
            fn set_marker(
                &self,
                name: &str,
                at: Option<OffsetDateTime>,
            ) -> impl Future<Output = Result<(), S::Error>> + Send {
                (**self).set_marker(name, at)
            }
        }
    )*};
}

forward!(&S, Box<S>, Arc<S>);
