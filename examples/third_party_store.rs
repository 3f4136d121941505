//! A complete third-party store built from keyroll's backend kit
//! (`keyroll::record`): key rows, meters, owner limits, usage counts, markers
//! and the outbox in maps behind one lock, standing in for your database's
//! tables. It passes the
//! conformance suite: `cargo run --example third_party_store --features conformance`.
use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::sync::{Mutex, MutexGuard, PoisonError};

use keyroll::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
use keyroll::outbox::{Entry, EntryId, EntryState, MemoryOutbox, OutboxCounts};
use keyroll::record::{KeyRow, RecordError};
use keyroll::store::{KeyStore, Revision, StoreError, UsageRow};
use keyroll::{ApiKey, Event, KeyId, OwnerId, OwnerLimits};
use time::{Duration, OffsetDateTime};
type Answer<T> = Result<T, RecordError>;
type Write = Result<(), StoreError<RecordError>>;
type Charged = Result<Result<Allowance, Refusal>, StoreError<RecordError>>;

/// Key rows by id; meters and usage counts by id and incarnation; owner
/// limits with their meters by owner; markers; the outbox, written under
/// the same lock as the write whose events it keeps.
#[derive(Default)]
pub struct MapStore(Mutex<Tables>);
#[derive(Default)]
struct Tables {
    keys: BTreeMap<KeyId, KeyRow>,
    meters: BTreeMap<(KeyId, u64), StoredMeter>,
    usage: BTreeMap<(KeyId, u64, i64), UsageRow>,
    markers: BTreeMap<String, OffsetDateTime>,
    owners: BTreeMap<OwnerId, (OwnerLimits, Option<StoredMeter>)>,
    outbox: MemoryOutbox,
}

impl MapStore {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
impl Tables {
    /// Key `id`, if it is of incarnation `inc` (when one is given).
    fn key(&self, id: &KeyId, inc: Option<u64>) -> Answer<Option<ApiKey>> {
        let row = self.keys.get(id).map(|row| row.decode(id.as_str()));
        let same = |k: &ApiKey| inc.is_none_or(|i| k.revision().incarnation() == i);
        Ok(row.transpose()?.filter(same))
    }
    /// Refuses a write expecting another revision than the stored one.
    fn check(&self, id: &KeyId, expected: Revision, writing: Option<Revision>) -> Write {
        let row = self.keys.get(id).ok_or(StoreError::NotFound)?;
        let found = KeyRow::revision(row.incarnation, row.version);
        StoreError::check_revision(expected, found, writing)
    }
}

impl KeyStore for MapStore {
    type Error = RecordError;

    async fn get(&self, id: &KeyId) -> Answer<Option<ApiKey>> {
        self.tables().key(id, None)
    }
    async fn insert(&self, key: &ApiKey, events: &[Event]) -> Write {
        let row = KeyRow::of(key).map_err(StoreError::Backend)?;
        let mut tables = self.tables();
        if tables.keys.contains_key(key.id()) {
            return Err(StoreError::AlreadyExists);
        }
        tables.keys.insert(key.id().clone(), row);
        tables.outbox.push(events);
        Ok(())
    }
    async fn update(&self, key: &ApiKey, expected: Revision, events: &[Event]) -> Write {
        let row = KeyRow::of(key).map_err(StoreError::Backend)?;
        let mut tables = self.tables();
        tables.check(key.id(), expected, Some(key.revision()))?;
        tables.keys.insert(key.id().clone(), row);
        tables.outbox.push(events);
        Ok(())
    }
    async fn delete(&self, id: &KeyId, expected: Revision, events: &[Event]) -> Write {
        let mut tables = self.tables();
        tables.check(id, expected, None)?;
        tables.keys.remove(id);
        tables.meters.retain(|(kept, _), _| kept != id);
        tables.usage.retain(|(kept, _, _), _| kept != id);
        tables.outbox.push(events);
        Ok(())
    }
    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Answer<Vec<ApiKey>> {
        let tables = self.tables();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let rows = tables.keys.range::<KeyId, _>((from, Bound::Unbounded));
        rows.take(limit)
            .map(|(id, row)| row.decode(id.as_str()))
            .collect()
    }
    async fn charge(&self, id: &KeyId, inc: u64, cost: u32, now: OffsetDateTime) -> Charged {
        let mut tables = self.tables();
        let key = tables.key(id, Some(inc)).map_err(StoreError::Backend)?;
        let key = key.ok_or(StoreError::NotFound)?;
        // The kit's one arithmetic entry, under this store's lock: the
        // key's meter and its owner's, both or neither.
        let meter = (id.clone(), inc);
        let owned = key.owner().and_then(|owner| tables.owners.get(owner));
        let owned = owned.map(|(limits, meter)| (limits, meter.as_ref()));
        let charged = match key.charge_with_owner(tables.meters.get(&meter), owned, cost, now) {
            Ok(charged) => charged,
            Err(refusal) => return Ok(Err(refusal)),
        };
        tables.meters.extend(charged.key.map(|next| (meter, next)));
        if let (Some(owner), Some(next)) = (key.owner(), charged.owner) {
            tables.owners.entry(owner.clone()).or_default().1 = Some(next);
        }
        Ok(Ok(charged.allowance))
    }
    async fn refund(&self, id: &KeyId, inc: u64, amount: u64, period: CreditsPeriod) -> Answer<()> {
        let mut tables = self.tables();
        let meter = (id.clone(), inc);
        let key = tables.key(id, Some(inc))?;
        let next = key.and_then(|k| k.refund(tables.meters.get(&meter), amount, period));
        tables.meters.extend(next.map(|next| (meter, next)));
        Ok(())
    }
    async fn meter(&self, id: &KeyId, incarnation: u64) -> Answer<Option<StoredMeter>> {
        let tables = self.tables();
        Ok(tables.meters.get(&(id.clone(), incarnation)).cloned())
    }
    async fn owner_limits(&self, owner: &OwnerId) -> Answer<Option<OwnerLimits>> {
        Ok(self
            .tables()
            .owners
            .get(owner)
            .map(|(limits, _)| limits.clone()))
    }
    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Write {
        let tables = &mut *self.tables();
        let found = tables
            .owners
            .get(owner)
            .map_or(0, |(kept, _)| kept.version());
        StoreError::check_version(expected, found)?;
        tables.owners.entry(owner.clone()).or_default().0 = limits.clone();
        tables.outbox.push(events);
        Ok(())
    }
    async fn owner_meter(&self, owner: &OwnerId) -> Answer<Option<StoredMeter>> {
        Ok(self
            .tables()
            .owners
            .get(owner)
            .and_then(|(_, meter)| meter.clone()))
    }
    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Answer<()> {
        if let Some((limits, meter)) = self.tables().owners.get_mut(owner)
            && let Some(next) = limits.refund(meter.as_ref(), amount, period)
        {
            *meter = Some(next);
        }
        Ok(())
    }
    async fn add_usage(&self, rows: &[UsageRow]) -> Answer<()> {
        let usage = &mut self.tables().usage;
        for row in rows {
            let hour = usage.entry((row.id.clone(), row.incarnation, row.hour));
            hour.and_modify(|kept| kept.merge(row))
                .or_insert_with(|| row.clone());
        }
        Ok(())
    }
    async fn usage(&self, id: &KeyId, inc: u64, hours: Range<i64>) -> Answer<Vec<UsageRow>> {
        let range = (id.clone(), inc, hours.start)..(id.clone(), inc, hours.end);
        let usage = &self.tables().usage;
        Ok(usage.range(range).map(|(_, row)| row.clone()).collect())
    }
    async fn prune_usage(&self, before: i64) -> Answer<u64> {
        let usage = &mut self.tables().usage;
        let count = usage.len();
        usage.retain(|&(_, _, hour), _| hour >= before);
        Ok((count - usage.len()) as u64)
    }
    async fn claim_outbox(
        &self,
        n: usize,
        now: OffsetDateTime,
        hold: Duration,
    ) -> Answer<Vec<Entry>> {
        Ok(self.tables().outbox.claim(n, now, hold))
    }
    async fn update_outbox(&self, entries: &[Entry]) -> Answer<()> {
        self.tables().outbox.update(entries);
        Ok(())
    }
    async fn outbox(&self, s: EntryState, after: Option<EntryId>, n: usize) -> Answer<Vec<Entry>> {
        Ok(self.tables().outbox.list(s, after, n))
    }
    async fn outbox_of(&self, of: &str, before: Option<EntryId>, n: usize) -> Answer<Vec<Entry>> {
        Ok(self.tables().outbox.list_of(of, before, n))
    }
    async fn outbox_counts(&self) -> Answer<OutboxCounts> {
        Ok(self.tables().outbox.counts())
    }
    async fn prune_outbox(&self, before: OffsetDateTime) -> Answer<u64> {
        Ok(self.tables().outbox.prune(before))
    }
    async fn marker(&self, name: &str) -> Answer<Option<OffsetDateTime>> {
        Ok(self.tables().markers.get(name).copied())
    }
    async fn set_marker(&self, name: &str, at: Option<OffsetDateTime>) -> Answer<()> {
        let markers = &mut self.tables().markers;
        match at {
            Some(at) => _ = markers.entry(name.to_owned()).or_insert(at),
            None => _ = markers.remove(name),
        }
        Ok(())
    }
}

pub fn main() {
    let suite = keyroll::conformance::run_all(|| async { MapStore::default() });
    pollster::block_on(suite);
    println!("MapStore passes keyroll's conformance suite");
}
