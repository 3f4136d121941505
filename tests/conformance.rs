//! The conformance suite: `InMemoryStore` passes it, and flawed stores fail
//! it, each naming the behaviour they break.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use keyroll::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
use keyroll::outbox::{Entry, EntryId, EntryState, MemoryOutbox, OutboxCounts};
use keyroll::store::{InMemoryStore, KeyStore, Revision, StoreError, UsageRow, Verification};
use keyroll::{ApiKey, Event, KeyId, OwnerId, OwnerLimits, PresentedToken, conformance};
use pollster::block_on;

/// Under a plain `block_on`, and under tokio: the suite needs no runtime.
#[test]
fn in_memory_store_passes_the_whole_suite() {
    block_on(conformance::run_all(|| async { InMemoryStore::new() }));
}

#[tokio::test]
async fn in_memory_store_passes_the_whole_suite_under_tokio() {
    conformance::run_all(|| async { InMemoryStore::new() }).await;
}

#[test]
fn pointer_types_pass_too() {
    block_on(conformance::run_all(|| async {
        std::sync::Arc::new(InMemoryStore::new())
    }));
    block_on(conformance::run_all(|| async {
        Box::new(InMemoryStore::new())
    }));
    let store = InMemoryStore::new();
    block_on(conformance::get_missing_returns_none(&store));
}

/// One way a store can break the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// A correct store: shows that each failure below comes from its flaw.
    None,
    InsertOverwrites,
    GetIsStale,
    UpdateIgnoresVersion,
    UpdateIsLost,
    UpdateReportsWrongVersion,
    UpdateCreatesMissing,
    DeleteIgnoresVersion,
    DeleteIsLost,
    /// Compares the version and not the incarnation, as keyroll 0.1 stores
    /// did: a stale copy overwrites a key deleted and created again.
    UpdateComparesVersionsOnly,
    DeleteComparesVersionsOnly,
    ListUnordered,
    ListIgnoresAfter,
    ListIncludesAfter,
    ListIgnoresLimit,
    RacyUpdate,
    RacyInsert,
    LosesSubsecondDates,
    /// Reads the meter, yields, then writes it: charges lose each other.
    RacyCharge,
    /// Keeps a deleted key's meter for the key created again.
    MeterOutlivesDelete,
    /// Charges whatever incarnation is stored.
    ChargeIgnoresIncarnation,
    /// Writes the meter of refused charges too.
    RefusalsSpend,
    /// `add_usage` replaces the counts it should add to.
    CountsReplaced,
    /// Keeps a deleted key's counts.
    CountsOutliveDelete,
    /// `usage` includes the range's end.
    UsageRangeClosed,
    /// `set_marker` keeps the latest instant, not the first.
    MarkerOverwritten,
    /// `set_marker(name, None)` clears nothing.
    MarkerNeverCleared,
    /// `verify` builds its own answer and leaves out the key's networks.
    VerifyForgetsNetworks,
    /// `refund` gives nothing back.
    RefundIsLost,
    /// Charges the key's meter only, never its owner's.
    OwnerNeverCharged,
    /// Writes the key's meter even when the owner's refuses.
    KeySpentWhenOwnerRefuses,
    /// `set_owner_limits` ignores the version it expects.
    OwnerLimitsIgnoreVersion,
    /// Writes a refused update's events to the outbox all the same.
    OutboxKeepsRefusedEvents,
    /// Never writes events to the outbox.
    OutboxForgetsEvents,
    /// Claims entries without holding them: two claims take one entry.
    ClaimHoldsNothing,
    /// Claims every due entry, even behind its key's held one.
    ClaimIgnoresOrder,
    /// Lists a subject's entries oldest first.
    OutboxOfOldestFirst,
    /// Lists a subject's pending entries only.
    OutboxOfPendingOnly,
}

/// A store with one deliberate flaw.
struct Flawed {
    flaw: Flaw,
    keys: Mutex<BTreeMap<KeyId, ApiKey>>,
    first_seen: Mutex<BTreeMap<KeyId, ApiKey>>,
    meters: Mutex<BTreeMap<KeyId, StoredMeter>>,
    usage: Mutex<BTreeMap<(KeyId, u64, i64), UsageRow>>,
    markers: Mutex<BTreeMap<String, time::OffsetDateTime>>,
    owners: Mutex<BTreeMap<OwnerId, (OwnerLimits, Option<StoredMeter>)>>,
    outbox: Mutex<MemoryOutbox>,
}

impl Flawed {
    fn new(flaw: Flaw) -> Self {
        Flawed {
            flaw,
            keys: Mutex::default(),
            first_seen: Mutex::default(),
            meters: Mutex::default(),
            usage: Mutex::default(),
            markers: Mutex::default(),
            owners: Mutex::default(),
            outbox: Mutex::default(),
        }
    }

    fn has(&self, flaw: Flaw) -> bool {
        self.flaw == flaw
    }

    /// Writes `events` to the outbox (unless the flaw forgets them).
    fn push(&self, events: &[Event]) {
        if !self.has(Flaw::OutboxForgetsEvents) {
            self.outbox.lock().unwrap().push(events);
        }
    }

    /// Lets other callers in between a check and an act: releases the
    /// lock and yields once to the executor, so that concurrent futures
    /// (the suite's racers) run their own check.
    async fn window(&self) {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                std::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

impl KeyStore for Flawed {
    type Error = Infallible;

    async fn verify(
        &self,
        id: &KeyId,
        token: &PresentedToken<'_>,
        now: time::OffsetDateTime,
    ) -> Result<Verification, Infallible> {
        let key = self.get(id).await?;
        let owned = key.as_ref().and_then(ApiKey::owner);
        let limits = owned.and_then(|owner| self.owners.lock().unwrap().get(owner).cloned());
        let verification = Verification::of(key.as_ref(), token, now)
            .with_owner_limits(limits.as_ref().map(|(limits, _)| limits));
        Ok(match verification {
            Verification::Accepted(mut who) if self.has(Flaw::VerifyForgetsNetworks) => {
                who.networks = None;
                Verification::Accepted(who)
            }
            other => other,
        })
    }

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Infallible> {
        let Some(current) = self.keys.lock().unwrap().get(id).cloned() else {
            return Ok(None);
        };
        Ok(Some(match self.flaw {
            Flaw::GetIsStale => {
                let mut seen = self.first_seen.lock().unwrap();
                seen.entry(id.clone()).or_insert(current).clone()
            }
            Flaw::LosesSubsecondDates => {
                // As a store keeping timestamps in whole seconds would.
                let mut json = serde_json::to_value(&current).unwrap();
                let truncated = current.created_at().replace_nanosecond(0).unwrap();
                json["created_at"] = serde_json::json!(
                    truncated
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap()
                );
                serde_json::from_value(json).unwrap()
            }
            _ => current,
        }))
    }

    async fn insert(&self, key: &ApiKey, events: &[Event]) -> Result<(), StoreError<Infallible>> {
        let exists = self.keys.lock().unwrap().contains_key(key.id());
        if self.has(Flaw::RacyInsert) {
            self.window().await;
        }
        let mut keys = self.keys.lock().unwrap();
        if exists && !self.has(Flaw::InsertOverwrites) {
            return Err(StoreError::AlreadyExists);
        }
        keys.insert(key.id().clone(), key.clone());
        self.push(events);
        Ok(())
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<Infallible>> {
        if self.has(Flaw::OutboxKeepsRefusedEvents) {
            self.push(events);
        }
        let found = self
            .keys
            .lock()
            .unwrap()
            .get(key.id())
            .map(ApiKey::revision);
        if self.has(Flaw::RacyUpdate) {
            self.window().await;
        }
        let mut keys = self.keys.lock().unwrap();
        match found {
            None if self.has(Flaw::UpdateCreatesMissing) => {}
            None => return Err(StoreError::NotFound),
            Some(_) if self.has(Flaw::UpdateIgnoresVersion) => {}
            Some(found)
                if self.has(Flaw::UpdateComparesVersionsOnly)
                    && found.version() == expected.version() => {}
            Some(found) => {
                let found = if self.has(Flaw::UpdateReportsWrongVersion) {
                    expected
                } else {
                    found
                };
                StoreError::check_revision(expected, found, Some(key.revision()))?;
            }
        }
        if !self.has(Flaw::UpdateIsLost) {
            keys.insert(key.id().clone(), key.clone());
        }
        if !self.has(Flaw::OutboxKeepsRefusedEvents) {
            self.push(events);
        }
        Ok(())
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<Infallible>> {
        let mut keys = self.keys.lock().unwrap();
        let found = keys
            .get(id)
            .map(ApiKey::revision)
            .ok_or(StoreError::NotFound)?;
        let versions_only =
            self.has(Flaw::DeleteComparesVersionsOnly) && found.version() == expected.version();
        if !self.has(Flaw::DeleteIgnoresVersion) && !versions_only {
            StoreError::check_revision(expected, found, None)?;
        }
        if !self.has(Flaw::DeleteIsLost) {
            keys.remove(id);
            if !self.has(Flaw::MeterOutlivesDelete) {
                self.meters.lock().unwrap().remove(id);
            }
            if !self.has(Flaw::CountsOutliveDelete) {
                self.usage
                    .lock()
                    .unwrap()
                    .retain(|(kept, _, _), _| kept != id);
            }
        }
        self.push(events);
        Ok(())
    }

    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: time::OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<Infallible>> {
        let key = self.keys.lock().unwrap().get(id).cloned();
        let key = key
            .filter(|k| {
                self.has(Flaw::ChargeIgnoresIncarnation)
                    || k.revision().incarnation() == incarnation
            })
            .ok_or(StoreError::NotFound)?;
        let stored = self.meters.lock().unwrap().get(id).cloned();
        if self.has(Flaw::RacyCharge) {
            self.window().await;
        }
        let mut meters = self.meters.lock().unwrap();
        let mut owners = self.owners.lock().unwrap();
        let owner = key.owner().filter(|_| !self.has(Flaw::OwnerNeverCharged));
        let owned = owner.and_then(|owner| owners.get(owner));
        let owned = owned.map(|(limits, meter)| (limits, meter.as_ref()));
        let charged = key.charge_with_owner(stored.as_ref(), owned, cost, now);
        if let (Err(_), Some(_)) = (&charged, owner)
            && self.has(Flaw::KeySpentWhenOwnerRefuses)
            && let Ok(alone) = key.charge_with_owner(stored.as_ref(), None, cost, now)
            && let Some(next) = alone.key
        {
            meters.insert(id.clone(), next);
        }
        Ok(match charged {
            Ok(charged) => {
                meters.extend(charged.key.map(|next| (id.clone(), next)));
                if let (Some(owner), Some(next)) = (owner, charged.owner) {
                    owners.entry(owner.clone()).or_default().1 = Some(next);
                }
                Ok(charged.allowance)
            }
            Err(refusal) => {
                if self.has(Flaw::RefusalsSpend) {
                    let mut spent = stored.unwrap_or_else(|| key.charge(None, 1, now).unwrap().0);
                    if let Ok((next, _)) = key.charge(Some(&spent), 1, now) {
                        spent = next;
                    }
                    meters.insert(id.clone(), spent);
                }
                Err(refusal)
            }
        })
    }

    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), Infallible> {
        let key = self.keys.lock().unwrap().get(id).cloned();
        let key = key.filter(|k| k.revision().incarnation() == incarnation);
        let mut meters = self.meters.lock().unwrap();
        if let Some(next) = key.and_then(|k| k.refund(meters.get(id), amount, period))
            && !self.has(Flaw::RefundIsLost)
        {
            meters.insert(id.clone(), next);
        }
        Ok(())
    }

    async fn meter(&self, id: &KeyId, incarnation: u64) -> Result<Option<StoredMeter>, Infallible> {
        let keys = self.keys.lock().unwrap();
        let current = keys.get(id).map(|k| k.revision().incarnation());
        let ignore =
            self.has(Flaw::ChargeIgnoresIncarnation) || self.has(Flaw::MeterOutlivesDelete);
        if current != Some(incarnation) && !ignore {
            return Ok(None);
        }
        Ok(self.meters.lock().unwrap().get(id).cloned())
    }

    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), Infallible> {
        let mut usage = self.usage.lock().unwrap();
        for row in rows {
            let key = (row.id.clone(), row.incarnation, row.hour);
            match usage.get_mut(&key) {
                Some(kept) if !self.has(Flaw::CountsReplaced) => {
                    kept.accepted += row.accepted;
                    kept.rate_limited += row.rate_limited;
                    kept.usage_exceeded += row.usage_exceeded;
                    kept.refused += row.refused;
                }
                _ => {
                    usage.insert(key, row.clone());
                }
            }
        }
        Ok(())
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, Infallible> {
        let end = hours.end + i64::from(self.has(Flaw::UsageRangeClosed));
        Ok(self
            .usage
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.id == *id && r.incarnation == incarnation)
            .filter(|r| (hours.start..end).contains(&r.hour))
            .cloned()
            .collect())
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, Infallible> {
        let mut usage = self.usage.lock().unwrap();
        let count = usage.len();
        usage.retain(|&(_, _, hour), _| hour >= before);
        Ok((count - usage.len()) as u64)
    }

    async fn marker(&self, name: &str) -> Result<Option<time::OffsetDateTime>, Infallible> {
        Ok(self.markers.lock().unwrap().get(name).copied())
    }

    async fn set_marker(
        &self,
        name: &str,
        at: Option<time::OffsetDateTime>,
    ) -> Result<(), Infallible> {
        let mut markers = self.markers.lock().unwrap();
        match at {
            Some(at) if self.has(Flaw::MarkerOverwritten) => {
                markers.insert(name.to_owned(), at);
            }
            Some(at) => {
                markers.entry(name.to_owned()).or_insert(at);
            }
            None if self.has(Flaw::MarkerNeverCleared) => {}
            None => {
                markers.remove(name);
            }
        }
        Ok(())
    }

    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, Infallible> {
        Ok(self
            .owners
            .lock()
            .unwrap()
            .get(owner)
            .map(|(l, _)| l.clone()))
    }

    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<Infallible>> {
        let mut owners = self.owners.lock().unwrap();
        let found = owners.get(owner).map_or(0, |(l, _)| l.version());
        if !self.has(Flaw::OwnerLimitsIgnoreVersion) {
            StoreError::check_version(expected, found)?;
        }
        owners.entry(owner.clone()).or_default().0 = limits.clone();
        self.push(events);
        Ok(())
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        now: time::OffsetDateTime,
        hold: time::Duration,
    ) -> Result<Vec<Entry>, Infallible> {
        let mut outbox = self.outbox.lock().unwrap();
        Ok(match self.flaw {
            Flaw::ClaimHoldsNothing => outbox.claim(limit, now, time::Duration::ZERO),
            Flaw::ClaimIgnoresOrder => {
                // Every pending entry due, whatever waits before it.
                let due: Vec<Entry> = outbox
                    .list(EntryState::Pending, None, usize::MAX)
                    .into_iter()
                    .filter(|entry| entry.next_attempt_at <= now)
                    .take(limit)
                    .map(|mut entry| {
                        entry.next_attempt_at = now + hold;
                        entry
                    })
                    .collect();
                outbox.update(&due);
                due
            }
            _ => outbox.claim(limit, now, hold),
        })
    }

    async fn update_outbox(&self, entries: &[Entry]) -> Result<(), Infallible> {
        self.outbox.lock().unwrap().update(entries);
        Ok(())
    }

    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, Infallible> {
        Ok(self.outbox.lock().unwrap().list(state, after, limit))
    }

    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, Infallible> {
        let outbox = self.outbox.lock().unwrap();
        Ok(match self.flaw {
            Flaw::OutboxOfOldestFirst => {
                let mut all = outbox.list_of(subject, before, usize::MAX);
                all.reverse();
                all.truncate(limit);
                all
            }
            Flaw::OutboxOfPendingOnly => {
                let mut all = outbox.list_of(subject, before, usize::MAX);
                all.retain(|entry| entry.state == EntryState::Pending);
                all.truncate(limit);
                all
            }
            _ => outbox.list_of(subject, before, limit),
        })
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, Infallible> {
        Ok(self.outbox.lock().unwrap().counts())
    }

    async fn prune_outbox(&self, before: time::OffsetDateTime) -> Result<u64, Infallible> {
        Ok(self.outbox.lock().unwrap().prune(before))
    }

    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, Infallible> {
        Ok(self
            .owners
            .lock()
            .unwrap()
            .get(owner)
            .and_then(|(_, m)| m.clone()))
    }

    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), Infallible> {
        if let Some((limits, meter)) = self.owners.lock().unwrap().get_mut(owner)
            && let Some(next) = limits.refund(meter.as_ref(), amount, period)
        {
            *meter = Some(next);
        }
        Ok(())
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Infallible> {
        let keys = self.keys.lock().unwrap();
        let mut out: Vec<ApiKey> = keys
            .values()
            .filter(|k| match after {
                _ if self.has(Flaw::ListIgnoresAfter) => true,
                Some(after) if self.has(Flaw::ListIncludesAfter) => k.id() >= after,
                Some(after) => k.id() > after,
                None => true,
            })
            .cloned()
            .collect();
        if self.has(Flaw::ListUnordered) {
            // Case-insensitive, as a locale collation would.
            out.sort_by_key(|k| k.id().as_str().to_lowercase());
        }
        if !self.has(Flaw::ListIgnoresLimit) {
            out.truncate(limit);
        }
        Ok(out)
    }
}

fn failure_of(flaw: Flaw) -> String {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        block_on(conformance::run_all(|| async move { Flawed::new(flaw) }))
    }));
    match outcome {
        Ok(()) => panic!("the suite accepted a store with flaw {flaw:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

#[test]
fn the_test_store_without_a_flaw_passes() {
    block_on(conformance::run_all(|| async { Flawed::new(Flaw::None) }));
}

#[test]
fn each_flaw_is_caught_and_named() {
    let cases = [
        (Flaw::InsertOverwrites, "insert_existing_is_refused"),
        (Flaw::GetIsStale, "update_persists"),
        (Flaw::UpdateIgnoresVersion, "update_checks_the_revision"),
        (Flaw::UpdateIsLost, "update_persists"),
        (
            Flaw::UpdateReportsWrongVersion,
            "update_checks_the_revision",
        ),
        (Flaw::UpdateCreatesMissing, "update_missing_is_not_found"),
        (Flaw::DeleteIgnoresVersion, "delete_checks_the_revision"),
        (
            Flaw::UpdateComparesVersionsOnly,
            "update_checks_the_revision",
        ),
        (
            Flaw::DeleteComparesVersionsOnly,
            "delete_checks_the_revision",
        ),
        (Flaw::DeleteIsLost, "delete_removes_the_key"),
        (Flaw::ListUnordered, "list_is_ordered_after_and_limited"),
        (Flaw::ListIgnoresAfter, "list_is_ordered_after_and_limited"),
        (Flaw::ListIncludesAfter, "list_is_ordered_after_and_limited"),
        (Flaw::ListIgnoresLimit, "list_is_ordered_after_and_limited"),
        (Flaw::RacyUpdate, "concurrent_updates_have_one_winner"),
        (Flaw::LosesSubsecondDates, "insert_then_get_round_trips"),
        (Flaw::RacyCharge, "concurrent_charges_are_exact"),
        (Flaw::MeterOutlivesDelete, "meters_follow_the_key"),
        (Flaw::ChargeIgnoresIncarnation, "meters_follow_the_key"),
        (Flaw::RefusalsSpend, "charges_leave_the_key_alone"),
        (Flaw::CountsReplaced, "usage_counts_add_up"),
        (Flaw::CountsOutliveDelete, "usage_counts_add_up"),
        (Flaw::UsageRangeClosed, "usage_counts_add_up"),
        (Flaw::MarkerOverwritten, "markers_are_kept"),
        (Flaw::MarkerNeverCleared, "markers_are_kept"),
        (Flaw::VerifyForgetsNetworks, "networks_are_enforced"),
        (Flaw::RefundIsLost, "refunds_stay_in_their_period"),
        (Flaw::OwnerNeverCharged, "owner_meters_are_both_or_neither"),
        (
            Flaw::KeySpentWhenOwnerRefuses,
            "owner_meters_are_both_or_neither",
        ),
        (
            Flaw::OwnerLimitsIgnoreVersion,
            "owner_meters_are_both_or_neither",
        ),
        (
            Flaw::OutboxKeepsRefusedEvents,
            "outbox_keeps_each_write_s_events",
        ),
        (
            Flaw::OutboxForgetsEvents,
            "outbox_keeps_each_write_s_events",
        ),
        (Flaw::ClaimHoldsNothing, "outbox_claims_hold_and_keep_order"),
        (Flaw::ClaimIgnoresOrder, "outbox_claims_hold_and_keep_order"),
        (
            Flaw::OutboxOfOldestFirst,
            "outbox_lists_a_subject_s_entries",
        ),
        (
            Flaw::OutboxOfPendingOnly,
            "outbox_lists_a_subject_s_entries",
        ),
    ];
    for (flaw, behaviour) in cases {
        let message = failure_of(flaw);
        assert!(
            message.contains(behaviour),
            "flaw {flaw:?} should fail {behaviour}, but the suite said: {message}"
        );
    }
}

/// The lost update of keyroll 0.1: a store comparing versions alone passes
/// every other behaviour, and the delete/re-create behaviours catch it.
#[test]
fn a_version_only_store_fails_the_recreate_behaviours() {
    let caught = |flaw, behaviour: &str| {
        catch_unwind(AssertUnwindSafe(|| {
            let store = Flawed::new(flaw);
            block_on(async {
                match behaviour {
                    "stale_update" => {
                        conformance::stale_update_after_recreate_is_refused(store).await
                    }
                    "stale_delete" => {
                        conformance::stale_delete_after_recreate_is_refused(store).await
                    }
                    "update_persists" => conformance::update_persists(store).await,
                    _ => conformance::delete_removes_the_key(store).await,
                }
            })
        }))
        .is_err()
    };
    assert!(caught(Flaw::UpdateComparesVersionsOnly, "stale_update"));
    assert!(caught(Flaw::DeleteComparesVersionsOnly, "stale_delete"));
    for flaw in [
        Flaw::UpdateComparesVersionsOnly,
        Flaw::DeleteComparesVersionsOnly,
    ] {
        assert!(!caught(flaw, "update_persists"));
        assert!(!caught(flaw, "delete_removes_the_key"));
    }
}

#[test]
fn a_racy_insert_is_caught() {
    let message = failure_of(Flaw::RacyInsert);
    assert!(
        message.contains("concurrent_inserts_have_one_winner"),
        "{message}"
    );
}
