//! [`Intercept`]: a store that forwards every call to another, with hooks
//! that count, fail or delay the calls a test chooses (feature
//! `conformance`).

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

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

/// One method of [`KeyStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// [`KeyStore::get`].
    Get,
    /// [`KeyStore::insert`].
    Insert,
    /// [`KeyStore::update`].
    Update,
    /// [`KeyStore::delete`].
    Delete,
    /// [`KeyStore::list`].
    List,
    /// [`KeyStore::list_owned`].
    ListOwned,
    /// [`KeyStore::verify`].
    Verify,
    /// [`KeyStore::charge`].
    Charge,
    /// [`KeyStore::refund`].
    Refund,
    /// [`KeyStore::meter`].
    Meter,
    /// [`KeyStore::add_usage`].
    AddUsage,
    /// [`KeyStore::usage`].
    Usage,
    /// [`KeyStore::prune_usage`].
    PruneUsage,
    /// [`KeyStore::marker`].
    Marker,
    /// [`KeyStore::set_marker`].
    SetMarker,
    /// [`KeyStore::owner_limits`].
    OwnerLimits,
    /// [`KeyStore::set_owner_limits`].
    SetOwnerLimits,
    /// [`KeyStore::owner_meter`].
    OwnerMeter,
    /// [`KeyStore::refund_owner`].
    RefundOwner,
    /// [`KeyStore::claim_outbox`].
    ClaimOutbox,
    /// [`KeyStore::update_outbox`].
    UpdateOutbox,
    /// [`KeyStore::outbox`].
    Outbox,
    /// [`KeyStore::outbox_of`].
    OutboxOf,
    /// [`KeyStore::outbox_counts`].
    OutboxCounts,
    /// [`KeyStore::prune_outbox`].
    PruneOutbox,
}

impl Call {
    /// Every method, in the trait's order.
    pub const ALL: [Call; 25] = [
        Call::Get,
        Call::Insert,
        Call::Update,
        Call::Delete,
        Call::List,
        Call::ListOwned,
        Call::Verify,
        Call::Charge,
        Call::Refund,
        Call::Meter,
        Call::AddUsage,
        Call::Usage,
        Call::PruneUsage,
        Call::Marker,
        Call::SetMarker,
        Call::OwnerLimits,
        Call::SetOwnerLimits,
        Call::OwnerMeter,
        Call::RefundOwner,
        Call::ClaimOutbox,
        Call::UpdateOutbox,
        Call::Outbox,
        Call::OutboxOf,
        Call::OutboxCounts,
        Call::PruneOutbox,
    ];
}

/// What a hook makes of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Forward it.
    Forward,
    /// Fail it with [`InterceptError::Injected`], forwarding nothing.
    Fail,
    /// Yield to the executor once, then forward it: as a store doing I/O,
    /// whose answer comes later (under any executor).
    Yield,
    /// Forward it, then fail it with [`InterceptError::Injected`]: a write
    /// made whose acknowledgement was lost.
    LoseAnswer,
    /// Refuse an `update` or `delete` as if another writer had come first
    /// ([`StoreError::Conflict`], found one version on); fail any other
    /// call.
    Conflict,
}

/// An [`Intercept`]'s error: the one a hook injected, or the inner
/// store's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterceptError<E> {
    /// A hook failed the call.
    #[error("injected failure of {0:?}")]
    Injected(Call),
    /// The inner store's error.
    #[error(transparent)]
    Inner(E),
}

/// A hook: given the id of the key the call names (`None` for a call that
/// names none: `list`, `add_usage`, markers, owners' calls, ...), what to
/// do.
type Hook = Box<dyn Fn(Option<&KeyId>) -> Action + Send + Sync>;

/// A [`KeyStore`] that forwards every call to `inner`, counting each kind,
/// after the hook set for it (if any) decides to forward, fail, delay it,
/// or lose its answer. A hook may also block, to hold a call while a test does something
/// else. For tests of what uses a store: a failing database, a slow one,
/// how many reads a request costs.
///
/// # Example
///
/// ```
/// use keyroll::store::{Action, Call, InMemoryStore, Intercept};
/// use keyroll::{KeyId, KeyManager};
/// use time::OffsetDateTime;
///
/// # pollster::block_on(async {
/// let store = Intercept::new(InMemoryStore::new()).on(Call::Update, |_| Action::Fail);
/// let keys = KeyManager::new(store);
/// let (id, now) = (KeyId::new("acme")?, OffsetDateTime::now_utc());
/// let (token, _) = keys.create_key(id.clone(), now, &mut rand::rng()).await?;
/// assert!(keys.renew(&id, now, &mut rand::rng()).await.is_err()); // the write failed
/// assert!(keys.authenticate(token.expose_secret(), now).await.is_ok());
/// assert_eq!(keys.store().count(Call::Update), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Intercept<S> {
    inner: S,
    hooks: Vec<(Call, Hook)>,
    counts: [AtomicU64; Call::ALL.len()],
}

impl<S> std::fmt::Debug for Intercept<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hooked: Vec<Call> = self.hooks.iter().map(|(call, _)| *call).collect();
        f.debug_struct("Intercept")
            .field("hooked", &hooked)
            .finish_non_exhaustive()
    }
}

impl<S> Intercept<S> {
    /// `inner`, every call forwarded and counted.
    pub fn new(inner: S) -> Self {
        Intercept {
            inner,
            hooks: Vec::new(),
            counts: Default::default(),
        }
    }

    /// Runs `hook` before each `call`, with the id of the key it names, to
    /// forward, fail or delay it (the last hook set for a call decides).
    pub fn on(
        mut self,
        call: Call,
        hook: impl Fn(Option<&KeyId>) -> Action + Send + Sync + 'static,
    ) -> Self {
        self.hooks.push((call, Box::new(hook)));
        self
    }

    /// How many `call`s were made, failed ones included.
    pub fn count(&self, call: Call) -> u64 {
        self.counts[call as usize].load(Ordering::SeqCst)
    }

    /// The store behind.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counts `call` (naming key `id`), then does what its hook says:
    /// forwards `forward` (or not), and answers what it answered (or not).
    async fn run<T, E>(
        &self,
        call: Call,
        id: Option<&KeyId>,
        forward: impl Future<Output = Result<T, E>>,
    ) -> Result<T, InterceptError<E>> {
        let action = self.before(call, id).await;
        if matches!(action, Action::Fail | Action::Conflict) {
            return Err(InterceptError::Injected(call));
        }
        let answer = forward.await.map_err(InterceptError::Inner)?;
        match action {
            Action::LoseAnswer => Err(InterceptError::Injected(call)),
            _ => Ok(answer),
        }
    }

    /// [`run`](Self::run) for a write, which answers a [`StoreError`];
    /// `expected` is the revision an `update` or `delete` expects.
    async fn write<T, E>(
        &self,
        call: Call,
        id: Option<&KeyId>,
        expected: Option<Revision>,
        forward: impl Future<Output = Result<T, StoreError<E>>>,
    ) -> Result<T, StoreError<InterceptError<E>>> {
        let injected = StoreError::Backend(InterceptError::Injected(call));
        match (self.before(call, id).await, expected) {
            (Action::Conflict, Some(expected)) => {
                let found = Revision::new(expected.incarnation(), expected.version() + 1);
                Err(StoreError::Conflict { expected, found })
            }
            (Action::Fail | Action::Conflict, _) => Err(injected),
            (Action::LoseAnswer, _) => forward.await.map_err(store).and(Err(injected)),
            _ => forward.await.map_err(store),
        }
    }

    /// Counts `call` and does what its hook says before it is forwarded
    /// (a yield, here); the action to take.
    async fn before(&self, call: Call, id: Option<&KeyId>) -> Action {
        self.counts[call as usize].fetch_add(1, Ordering::SeqCst);
        let hook = self.hooks.iter().rev().find(|(hooked, _)| *hooked == call);
        let action = hook.map_or(Action::Forward, |(_, hook)| hook(id));
        if action == Action::Yield {
            let mut yielded = false;
            std::future::poll_fn(|cx| {
                if std::mem::replace(&mut yielded, true) {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await;
        }
        action
    }
}

/// A store error of `inner`, or the injected one.
fn store<E>(e: StoreError<E>) -> StoreError<InterceptError<E>> {
    e.map_backend(InterceptError::Inner)
}

impl<S: KeyStore> KeyStore for Intercept<S> {
    type Error = InterceptError<S::Error>;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Self::Error> {
        self.run(Call::Get, Some(id), self.inner.get(id)).await
    }

    async fn insert(&self, key: &ApiKey, events: &[Event]) -> Result<(), StoreError<Self::Error>> {
        let insert = self.inner.insert(key, events);
        self.write(Call::Insert, Some(key.id()), None, insert).await
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<Self::Error>> {
        let update = self.inner.update(key, expected, events);
        self.write(Call::Update, Some(key.id()), Some(expected), update)
            .await
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<Self::Error>> {
        let delete = self.inner.delete(id, expected, events);
        self.write(Call::Delete, Some(id), Some(expected), delete)
            .await
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Self::Error> {
        self.run(Call::List, None, self.inner.list(after, limit))
            .await
    }

    async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, Self::Error> {
        self.run(
            Call::ListOwned,
            None,
            self.inner.list_owned(owner, after, limit),
        )
        .await
    }

    async fn verify(
        &self,
        id: &KeyId,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Verification, Self::Error> {
        self.run(Call::Verify, Some(id), self.inner.verify(id, token, now))
            .await
    }

    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<Self::Error>> {
        let charged = self.inner.charge(id, incarnation, cost, now);
        self.write(Call::Charge, Some(id), None, charged).await
    }

    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), Self::Error> {
        let refunded = self.inner.refund(id, incarnation, amount, period);
        self.run(Call::Refund, Some(id), refunded).await
    }

    async fn meter(
        &self,
        id: &KeyId,
        incarnation: u64,
    ) -> Result<Option<StoredMeter>, Self::Error> {
        self.run(Call::Meter, Some(id), self.inner.meter(id, incarnation))
            .await
    }

    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), Self::Error> {
        self.run(Call::AddUsage, None, self.inner.add_usage(rows))
            .await
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, Self::Error> {
        self.run(
            Call::Usage,
            Some(id),
            self.inner.usage(id, incarnation, hours),
        )
        .await
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, Self::Error> {
        self.run(Call::PruneUsage, None, self.inner.prune_usage(before))
            .await
    }

    async fn marker(&self, name: &str) -> Result<Option<OffsetDateTime>, Self::Error> {
        self.run(Call::Marker, None, self.inner.marker(name)).await
    }

    async fn set_marker(&self, name: &str, at: Option<OffsetDateTime>) -> Result<(), Self::Error> {
        self.run(Call::SetMarker, None, self.inner.set_marker(name, at))
            .await
    }

    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, Self::Error> {
        self.run(Call::OwnerLimits, None, self.inner.owner_limits(owner))
            .await
    }

    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<Self::Error>> {
        let set = self.inner.set_owner_limits(owner, limits, expected, events);
        self.write(Call::SetOwnerLimits, None, None, set).await
    }

    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, Self::Error> {
        self.run(Call::OwnerMeter, None, self.inner.owner_meter(owner))
            .await
    }

    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), Self::Error> {
        let refunded = self.inner.refund_owner(owner, amount, period);
        self.run(Call::RefundOwner, None, refunded).await
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: Duration,
    ) -> Result<Vec<Entry>, Self::Error> {
        let claimed = self.inner.claim_outbox(limit, now, hold);
        self.run(Call::ClaimOutbox, None, claimed).await
    }

    async fn update_outbox(&self, entries: &[Entry]) -> Result<(), Self::Error> {
        let updated = self.inner.update_outbox(entries);
        self.run(Call::UpdateOutbox, None, updated).await
    }

    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, Self::Error> {
        let listed = self.inner.outbox(state, after, limit);
        self.run(Call::Outbox, None, listed).await
    }

    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, Self::Error> {
        let listed = self.inner.outbox_of(subject, before, limit);
        self.run(Call::OutboxOf, None, listed).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, Self::Error> {
        self.run(Call::OutboxCounts, None, self.inner.outbox_counts())
            .await
    }

    async fn prune_outbox(&self, before: OffsetDateTime) -> Result<u64, Self::Error> {
        self.run(Call::PruneOutbox, None, self.inner.prune_outbox(before))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemoryStore;

    /// Every call is forwarded and counted: the conformance suite passes
    /// through it.
    #[test]
    fn an_intercept_without_hooks_is_its_inner_store() {
        pollster::block_on(crate::conformance::run_all(|| async {
            Intercept::new(InMemoryStore::new())
        }));
    }

    #[test]
    fn hooks_fail_or_yield_the_calls_they_name() {
        let store = Intercept::new(InMemoryStore::new())
            .on(Call::Get, |_| Action::Fail)
            .on(Call::List, |_| Action::Yield);
        let id = KeyId::new("a").unwrap();
        let got = pollster::block_on(store.get(&id));
        assert!(matches!(got, Err(InterceptError::Injected(Call::Get))));
        assert_eq!(pollster::block_on(store.list(None, 10)).unwrap(), []);
        assert_eq!((store.count(Call::Get), store.count(Call::List)), (1, 1));
        assert_eq!(store.count(Call::Insert), 0);
    }
}
