//! [`Timed`]: any store, each call's latency told to the `metrics` facade.

use std::ops::Range;
use std::time::Instant;

use time::OffsetDateTime;

use super::{KeyStore, StoreError, Verification};
use crate::counts::UsageRow;
use crate::entry::{Entry, EntryId, EntryState, OutboxCounts};
use crate::event::Event;
use crate::id::{KeyId, OwnerId};
use crate::key::ApiKey;
use crate::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
use crate::owner::OwnerLimits;
use crate::revision::Revision;
use crate::token::PresentedToken;

/// A [`KeyStore`] that forwards every call to the store it wraps and
/// records how long each took in the histogram
/// `keyroll_store_call_seconds`, labelled `operation` (the method's name:
/// `get`, `verify`, `charge`, ...). Wrap the store you want measured (the
/// database, under a cache: then `verify` answered from memory is not a
/// store call). Two readings of the monotonic clock a call: opt in, as
/// nothing else of keyroll reads it on a request's path.
///
/// # Example
///
/// ```
/// use keyroll::store::{InMemoryStore, Timed};
/// use keyroll::{KeyId, KeyManager};
/// use time::OffsetDateTime;
///
/// # pollster::block_on(async {
/// let keys = KeyManager::new(Timed::new(InMemoryStore::new()));
/// let now = OffsetDateTime::now_utc();
/// let (token, _) = keys.create_key(KeyId::new("acme")?, now, &mut rand::rng()).await?;
/// keys.authenticate(token.expose_secret(), now).await?; // `verify`, timed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Timed<S>(S);

impl<S> Timed<S> {
    /// `inner`, its calls timed.
    pub fn new(inner: S) -> Timed<S> {
        Timed(inner)
    }

    /// The store behind.
    pub fn inner(&self) -> &S {
        &self.0
    }
}

/// `call`'s answer, its latency recorded under `operation` (a literal, so
/// that the metric's key is built once).
macro_rules! timed {
    ($operation:literal, $call:expr) => {{
        let start = Instant::now();
        let answer = $call.await;
        metrics::histogram!("keyroll_store_call_seconds", "operation" => $operation)
            .record(start.elapsed().as_secs_f64());
        answer
    }};
}

impl<S: KeyStore> KeyStore for Timed<S> {
    type Error = S::Error;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, S::Error> {
        timed!("get", self.0.get(id))
    }

    async fn insert(&self, key: &ApiKey, events: &[Event]) -> Result<(), StoreError<S::Error>> {
        timed!("insert", self.0.insert(key, events))
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<S::Error>> {
        timed!("update", self.0.update(key, expected, events))
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<S::Error>> {
        timed!("delete", self.0.delete(id, expected, events))
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, S::Error> {
        timed!("list", self.0.list(after, limit))
    }

    async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, S::Error> {
        timed!("list_owned", self.0.list_owned(owner, after, limit))
    }

    async fn verify(
        &self,
        id: &KeyId,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Verification, S::Error> {
        timed!("verify", self.0.verify(id, token, now))
    }

    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<S::Error>> {
        timed!("charge", self.0.charge(id, incarnation, cost, now))
    }

    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), S::Error> {
        timed!("refund", self.0.refund(id, incarnation, amount, period))
    }

    async fn meter(&self, id: &KeyId, incarnation: u64) -> Result<Option<StoredMeter>, S::Error> {
        timed!("meter", self.0.meter(id, incarnation))
    }

    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), S::Error> {
        timed!("add_usage", self.0.add_usage(rows))
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, S::Error> {
        timed!("usage", self.0.usage(id, incarnation, hours))
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, S::Error> {
        timed!("prune_usage", self.0.prune_usage(before))
    }

    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, S::Error> {
        timed!("owner_limits", self.0.owner_limits(owner))
    }

    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<S::Error>> {
        timed!(
            "set_owner_limits",
            self.0.set_owner_limits(owner, limits, expected, events)
        )
    }

    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, S::Error> {
        timed!("owner_meter", self.0.owner_meter(owner))
    }

    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), S::Error> {
        timed!("refund_owner", self.0.refund_owner(owner, amount, period))
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: time::Duration,
    ) -> Result<Vec<Entry>, S::Error> {
        timed!("claim_outbox", self.0.claim_outbox(limit, now, hold))
    }

    async fn update_outbox(&self, entries: &[Entry]) -> Result<(), S::Error> {
        timed!("update_outbox", self.0.update_outbox(entries))
    }

    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, S::Error> {
        timed!("outbox", self.0.outbox(state, after, limit))
    }

    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, S::Error> {
        timed!("outbox_of", self.0.outbox_of(subject, before, limit))
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, S::Error> {
        timed!("outbox_counts", self.0.outbox_counts())
    }

    async fn prune_outbox(&self, before: OffsetDateTime) -> Result<u64, S::Error> {
        timed!("prune_outbox", self.0.prune_outbox(before))
    }

    async fn marker(&self, name: &str) -> Result<Option<OffsetDateTime>, S::Error> {
        timed!("marker", self.0.marker(name))
    }

    async fn set_marker(&self, name: &str, at: Option<OffsetDateTime>) -> Result<(), S::Error> {
        timed!("set_marker", self.0.set_marker(name, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemoryStore;

    /// Every call is forwarded: the conformance suite passes through it.
    #[cfg(feature = "conformance")]
    #[test]
    fn a_timed_store_is_its_inner_store() {
        pollster::block_on(crate::conformance::run_all(|| async {
            Timed::new(InMemoryStore::new())
        }));
    }

    /// Each call is recorded under its operation, and only there.
    #[test]
    fn each_call_is_timed_under_its_name() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let store = Timed::new(InMemoryStore::new());
            let id = KeyId::new("acme").unwrap();
            for _ in 0..3 {
                let _ = pollster::block_on(store.get(&id));
            }
            let _ = pollster::block_on(store.list(None, 10));
        });
        let mut seen = Vec::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let operation = key.key().labels().find(|l| l.key() == "operation");
            let samples = match value {
                DebugValue::Histogram(samples) => samples.len(),
                other => panic!("{other:?}"),
            };
            seen.push((operation.unwrap().value().to_owned(), samples));
        }
        seen.sort();
        assert_eq!(seen, [("get".to_owned(), 3), ("list".to_owned(), 1)]);
    }
}
