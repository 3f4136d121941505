//! [`DynKeyStore`]: any [`KeyStore`] behind one type, for a store
//! chosen at run time.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

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

/// A boxed future, as the object-safe half of [`DynKeyStore`] returns them.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any [`KeyStore`] behind one type: for a service that picks its store
/// at start (`--store memory | sqlite:PATH | postgres:URL`) and still wants
/// one `KeyManager<DynKeyStore>`. Each call costs one boxed future; the
/// backend's error comes back as a [`DynStoreError`] whose `source` is the
/// original. Cheap to clone.
///
/// # Example
///
/// ```
/// use keyroll::store::{DynKeyStore, InMemoryStore};
/// use keyroll::{KeyId, KeyManager};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = DynKeyStore::new(InMemoryStore::new()); // or any other KeyStore
/// let manager = KeyManager::new(store);
/// let now = time::OffsetDateTime::now_utc();
/// let (token, _) = manager.create_key(KeyId::new("acme")?, now, &mut rand::rng()).await?;
/// assert!(manager.authenticate(token.expose_secret(), now).await.is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DynKeyStore(Arc<dyn ObjectStore>);

impl DynKeyStore {
    /// `store`, behind the common type.
    pub fn new<S: KeyStore + 'static>(store: S) -> DynKeyStore {
        DynKeyStore(Arc::new(store))
    }
}

impl fmt::Debug for DynKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DynKeyStore(..)")
    }
}

/// The error of the store behind a [`DynKeyStore`]: its message, and the
/// original as `source()`.
#[derive(Debug)]
pub struct DynStoreError(Box<dyn Error + Send + Sync>);

impl DynStoreError {
    fn new<E: Error + Send + Sync + 'static>(e: E) -> DynStoreError {
        DynStoreError(Box::new(e))
    }

    /// The original error, to downcast to the backend's type.
    pub fn into_inner(self) -> Box<dyn Error + Send + Sync> {
        self.0
    }
}

impl fmt::Display for DynStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for DynStoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// [`KeyStore`] with boxed futures and one error type: what a trait
/// object can be.
trait ObjectStore: Send + Sync {
    fn get<'a>(&'a self, id: &'a KeyId) -> Boxed<'a, Result<Option<ApiKey>, DynStoreError>>;
    fn insert<'a>(
        &'a self,
        key: &'a ApiKey,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>>;
    fn update<'a>(
        &'a self,
        key: &'a ApiKey,
        expected: Revision,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>>;
    fn delete<'a>(
        &'a self,
        id: &'a KeyId,
        expected: Revision,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>>;
    fn list<'a>(
        &'a self,
        after: Option<&'a KeyId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<ApiKey>, DynStoreError>>;
    fn list_owned<'a>(
        &'a self,
        owner: &'a OwnerId,
        after: Option<&'a KeyId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<ApiKey>, DynStoreError>>;
    fn add_usage<'a>(&'a self, rows: &'a [UsageRow]) -> Boxed<'a, Result<(), DynStoreError>>;
    fn usage<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Boxed<'a, Result<Vec<UsageRow>, DynStoreError>>;
    fn prune_usage(&self, before: i64) -> Boxed<'_, Result<u64, DynStoreError>>;
    fn marker<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Option<OffsetDateTime>, DynStoreError>>;
    fn set_marker<'a>(
        &'a self,
        name: &'a str,
        at: Option<OffsetDateTime>,
    ) -> Boxed<'a, Result<(), DynStoreError>>;
    fn verify<'a>(
        &'a self,
        id: &'a KeyId,
        token: &'a PresentedToken<'a>,
        now: OffsetDateTime,
    ) -> Boxed<'a, Result<Verification, DynStoreError>>;
    fn charge<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Boxed<'a, Result<Result<Allowance, Refusal>, StoreError<DynStoreError>>>;
    fn refund<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Boxed<'a, Result<(), DynStoreError>>;
    fn meter<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
    ) -> Boxed<'a, Result<Option<StoredMeter>, DynStoreError>>;
    fn owner_limits<'a>(
        &'a self,
        owner: &'a OwnerId,
    ) -> Boxed<'a, Result<Option<OwnerLimits>, DynStoreError>>;
    fn set_owner_limits<'a>(
        &'a self,
        owner: &'a OwnerId,
        limits: &'a OwnerLimits,
        expected: u64,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>>;
    fn owner_meter<'a>(
        &'a self,
        owner: &'a OwnerId,
    ) -> Boxed<'a, Result<Option<StoredMeter>, DynStoreError>>;
    fn claim_outbox<'a>(
        &'a self,
        limit: usize,
        now: OffsetDateTime,
        hold: Duration,
    ) -> Boxed<'a, Result<Vec<Entry>, DynStoreError>>;
    fn update_outbox<'a>(&'a self, entries: &'a [Entry]) -> Boxed<'a, Result<(), DynStoreError>>;
    fn outbox<'a>(
        &'a self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<Entry>, DynStoreError>>;
    fn outbox_of<'a>(
        &'a self,
        subject: &'a str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<Entry>, DynStoreError>>;
    fn outbox_counts(&self) -> Boxed<'_, Result<OutboxCounts, DynStoreError>>;
    fn prune_outbox(&self, before: OffsetDateTime) -> Boxed<'_, Result<u64, DynStoreError>>;
    fn refund_owner<'a>(
        &'a self,
        owner: &'a OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Boxed<'a, Result<(), DynStoreError>>;
}

impl<S: KeyStore> ObjectStore for S {
    fn get<'a>(&'a self, id: &'a KeyId) -> Boxed<'a, Result<Option<ApiKey>, DynStoreError>> {
        Box::pin(async move { KeyStore::get(self, id).await.map_err(DynStoreError::new) })
    }
    fn insert<'a>(
        &'a self,
        key: &'a ApiKey,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>> {
        Box::pin(async move {
            KeyStore::insert(self, key, events)
                .await
                .map_err(|e| e.map_backend(DynStoreError::new))
        })
    }
    fn update<'a>(
        &'a self,
        key: &'a ApiKey,
        expected: Revision,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>> {
        Box::pin(async move {
            KeyStore::update(self, key, expected, events)
                .await
                .map_err(|e| e.map_backend(DynStoreError::new))
        })
    }
    fn delete<'a>(
        &'a self,
        id: &'a KeyId,
        expected: Revision,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>> {
        Box::pin(async move {
            KeyStore::delete(self, id, expected, events)
                .await
                .map_err(|e| e.map_backend(DynStoreError::new))
        })
    }
    fn list<'a>(
        &'a self,
        after: Option<&'a KeyId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<ApiKey>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::list(self, after, limit)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn list_owned<'a>(
        &'a self,
        owner: &'a OwnerId,
        after: Option<&'a KeyId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<ApiKey>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::list_owned(self, owner, after, limit)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn add_usage<'a>(&'a self, rows: &'a [UsageRow]) -> Boxed<'a, Result<(), DynStoreError>> {
        Box::pin(async move {
            KeyStore::add_usage(self, rows)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn usage<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Boxed<'a, Result<Vec<UsageRow>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::usage(self, id, incarnation, hours)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn prune_usage(&self, before: i64) -> Boxed<'_, Result<u64, DynStoreError>> {
        Box::pin(async move {
            KeyStore::prune_usage(self, before)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn marker<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Option<OffsetDateTime>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::marker(self, name)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn set_marker<'a>(
        &'a self,
        name: &'a str,
        at: Option<OffsetDateTime>,
    ) -> Boxed<'a, Result<(), DynStoreError>> {
        Box::pin(async move {
            KeyStore::set_marker(self, name, at)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn verify<'a>(
        &'a self,
        id: &'a KeyId,
        token: &'a PresentedToken<'a>,
        now: OffsetDateTime,
    ) -> Boxed<'a, Result<Verification, DynStoreError>> {
        Box::pin(async move {
            KeyStore::verify(self, id, token, now)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn charge<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Boxed<'a, Result<Result<Allowance, Refusal>, StoreError<DynStoreError>>> {
        Box::pin(async move {
            KeyStore::charge(self, id, incarnation, cost, now)
                .await
                .map_err(|e| e.map_backend(DynStoreError::new))
        })
    }
    fn refund<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Boxed<'a, Result<(), DynStoreError>> {
        Box::pin(async move {
            KeyStore::refund(self, id, incarnation, amount, period)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn meter<'a>(
        &'a self,
        id: &'a KeyId,
        incarnation: u64,
    ) -> Boxed<'a, Result<Option<StoredMeter>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::meter(self, id, incarnation)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn owner_limits<'a>(
        &'a self,
        owner: &'a OwnerId,
    ) -> Boxed<'a, Result<Option<OwnerLimits>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::owner_limits(self, owner)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn set_owner_limits<'a>(
        &'a self,
        owner: &'a OwnerId,
        limits: &'a OwnerLimits,
        expected: u64,
        events: &'a [Event],
    ) -> Boxed<'a, Result<(), StoreError<DynStoreError>>> {
        Box::pin(async move {
            KeyStore::set_owner_limits(self, owner, limits, expected, events)
                .await
                .map_err(|e| e.map_backend(DynStoreError::new))
        })
    }
    fn owner_meter<'a>(
        &'a self,
        owner: &'a OwnerId,
    ) -> Boxed<'a, Result<Option<StoredMeter>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::owner_meter(self, owner)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn claim_outbox<'a>(
        &'a self,
        limit: usize,
        now: OffsetDateTime,
        hold: Duration,
    ) -> Boxed<'a, Result<Vec<Entry>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::claim_outbox(self, limit, now, hold)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn update_outbox<'a>(&'a self, entries: &'a [Entry]) -> Boxed<'a, Result<(), DynStoreError>> {
        Box::pin(async move {
            KeyStore::update_outbox(self, entries)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn outbox<'a>(
        &'a self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<Entry>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::outbox(self, state, after, limit)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn outbox_of<'a>(
        &'a self,
        subject: &'a str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Boxed<'a, Result<Vec<Entry>, DynStoreError>> {
        Box::pin(async move {
            KeyStore::outbox_of(self, subject, before, limit)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn outbox_counts(&self) -> Boxed<'_, Result<OutboxCounts, DynStoreError>> {
        Box::pin(async move {
            KeyStore::outbox_counts(self)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn prune_outbox(&self, before: OffsetDateTime) -> Boxed<'_, Result<u64, DynStoreError>> {
        Box::pin(async move {
            KeyStore::prune_outbox(self, before)
                .await
                .map_err(DynStoreError::new)
        })
    }
    fn refund_owner<'a>(
        &'a self,
        owner: &'a OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Boxed<'a, Result<(), DynStoreError>> {
        Box::pin(async move {
            KeyStore::refund_owner(self, owner, amount, period)
                .await
                .map_err(DynStoreError::new)
        })
    }
}

impl KeyStore for DynKeyStore {
    type Error = DynStoreError;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, DynStoreError> {
        self.0.get(id).await
    }
    async fn insert(
        &self,
        key: &ApiKey,
        events: &[Event],
    ) -> Result<(), StoreError<DynStoreError>> {
        self.0.insert(key, events).await
    }
    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<DynStoreError>> {
        self.0.update(key, expected, events).await
    }
    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<DynStoreError>> {
        self.0.delete(id, expected, events).await
    }
    async fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, DynStoreError> {
        self.0.list(after, limit).await
    }
    async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, DynStoreError> {
        self.0.list_owned(owner, after, limit).await
    }
    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), DynStoreError> {
        self.0.add_usage(rows).await
    }
    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, DynStoreError> {
        self.0.usage(id, incarnation, hours).await
    }
    async fn prune_usage(&self, before: i64) -> Result<u64, DynStoreError> {
        self.0.prune_usage(before).await
    }
    async fn marker(&self, name: &str) -> Result<Option<OffsetDateTime>, DynStoreError> {
        self.0.marker(name).await
    }
    async fn set_marker(
        &self,
        name: &str,
        at: Option<OffsetDateTime>,
    ) -> Result<(), DynStoreError> {
        self.0.set_marker(name, at).await
    }
    async fn verify(
        &self,
        id: &KeyId,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Verification, DynStoreError> {
        self.0.verify(id, token, now).await
    }
    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<DynStoreError>> {
        self.0.charge(id, incarnation, cost, now).await
    }
    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), DynStoreError> {
        self.0.refund(id, incarnation, amount, period).await
    }
    async fn meter(
        &self,
        id: &KeyId,
        incarnation: u64,
    ) -> Result<Option<StoredMeter>, DynStoreError> {
        self.0.meter(id, incarnation).await
    }
    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, DynStoreError> {
        self.0.owner_limits(owner).await
    }
    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<DynStoreError>> {
        self.0
            .set_owner_limits(owner, limits, expected, events)
            .await
    }
    async fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: Duration,
    ) -> Result<Vec<Entry>, DynStoreError> {
        self.0.claim_outbox(limit, now, hold).await
    }
    async fn update_outbox(&self, entries: &[Entry]) -> Result<(), DynStoreError> {
        self.0.update_outbox(entries).await
    }
    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, DynStoreError> {
        self.0.outbox(state, after, limit).await
    }
    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, DynStoreError> {
        self.0.outbox_of(subject, before, limit).await
    }
    async fn outbox_counts(&self) -> Result<OutboxCounts, DynStoreError> {
        self.0.outbox_counts().await
    }
    async fn prune_outbox(&self, before: OffsetDateTime) -> Result<u64, DynStoreError> {
        self.0.prune_outbox(before).await
    }
    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, DynStoreError> {
        self.0.owner_meter(owner).await
    }
    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), DynStoreError> {
        self.0.refund_owner(owner, amount, period).await
    }
}
