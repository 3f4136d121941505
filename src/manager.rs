//! [`KeyManager`]: transitions over a store, with optimistic concurrency,
//! and authentication.
//!
//! Each mutating call loads the key, applies the transition to the copy, and
//! writes it back with `update(key, revision_it_loaded)`. If another writer got
//! there first (`Conflict`), it loads again and retries, up to
//! [`max_retries`](KeyManager::with_max_retries) times. A [`Token`] is returned
//! only once the write that holds its hash has succeeded; a failed write
//! hands out nothing.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use time::{Duration, OffsetDateTime};

use crate::change::Change;
use crate::counts::{Outcome, UsageRow};
use crate::entry::{EntryId, EntryState};
use crate::errors::{AuthError, ManagerError, StoreError, TransitionError, VerifyError};
use crate::event::Event;
use crate::expiring::Expiring;
use crate::id::{KeyId, OwnerId};
use crate::key::ApiKey;
use crate::key::Authenticated;
use crate::lease::{Ahead, Flight, HeldLease, LeasePolicy, Leases};
use crate::meter::{Allowance, MAX_CREDITS, RateLimit, Refusal};
use crate::new_key::NewKey;
use crate::notice::NoticePolicy;
use crate::owner::OwnerLimits;
use crate::state::OldTokenDeletion;
use crate::store::{KeyStore, Verification};
use crate::telemetry;
use crate::token::{PresentedToken, Token};
use crate::usage::{self, Noted, UsageLog};

/// What a request presents to [`KeyManager::authenticate`] (and what
/// [`KeyManager::revoke_token`] revokes): a token, and the options of the
/// call.
///
/// - `Credentials::bearer(token)`: the token alone (it names its key), as
///   sent in `Authorization: Bearer <token>`. A `&str` converts to it.
/// - `.with_id(&id)`: the product's two-credential form (VTEX's `appKey`
///   and `appToken`, two headers). The token must name that key; a token
///   of keyroll 0.1, which names none, is accepted in this form only.
/// - `.cost(n)`: what the request costs a key with a rate limit or credits
///   (1 by default).
///
/// # Example
///
/// ```
/// use keyroll::{Credentials, KeyId};
///
/// let id = KeyId::new("acme")?;
/// let bearer = Credentials::bearer("kr_acme_...");
/// let two_headers = Credentials::bearer("kr_acme_...").with_id(&id);
/// # let _ = (bearer, two_headers);
/// # Ok::<(), keyroll::error::InvalidKeyId>(())
/// ```
#[derive(Clone, Copy)]
#[must_use]
pub struct Credentials<'a> {
    token: &'a str,
    id: Option<&'a KeyId>,
    cost: u32,
    ip: Option<IpAddr>,
}

impl<'a> Credentials<'a> {
    /// A token presented alone: it names its key.
    pub fn bearer(token: &'a str) -> Credentials<'a> {
        Credentials {
            token,
            id: None,
            cost: 1,
            ip: None,
        }
    }

    /// The address the request came from: a key with networks
    /// ([`ApiKey::networks`]) refuses a request from outside them, or
    /// without an address, with [`VerifyError::NetworkNotAllowed`]. Behind
    /// a proxy, the client's address, as the proxy tells it, only if the
    /// proxy is trusted to (keyroll-axum reads it only as configured).
    #[allow(clippy::wrong_self_convention)] // DESIGN's name: `bearer(t).from_ip(addr)`
    pub fn from_ip(self, ip: impl Into<IpAddr>) -> Credentials<'a> {
        Credentials {
            ip: Some(ip.into()),
            ..self
        }
    }

    /// What the request costs a key with a rate limit or credits: `cost`
    /// of the burst and of the credits (1 by default). A cost of 0 or above
    /// the key's burst is refused, [`AuthError::CostOutOfRange`].
    pub fn cost(self, cost: u32) -> Credentials<'a> {
        Credentials { cost, ..self }
    }

    /// The key id presented beside the token (the two-credential form): the
    /// token must name this key, or name none (keyroll 0.1's framing).
    pub fn with_id(self, id: &'a KeyId) -> Credentials<'a> {
        Credentials {
            id: Some(id),
            ..self
        }
    }
}

impl<'a> From<&'a str> for Credentials<'a> {
    fn from(token: &'a str) -> Credentials<'a> {
        Credentials::bearer(token)
    }
}

impl<'a> From<&'a String> for Credentials<'a> {
    fn from(token: &'a String) -> Credentials<'a> {
        Credentials::bearer(token)
    }
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &"<redacted>")
            .field("id", &self.id)
            .field("cost", &self.cost)
            .field("ip", &self.ip)
            .finish()
    }
}

/// A presented token parsed, and the key it is to be checked against.
struct Resolved<'a> {
    token: PresentedToken<'a>,
    id: KeyId,
    cost: u32,
}

impl<'a> Credentials<'a> {
    /// Parses the token and names its key, before any store read: a
    /// malformed token, or one naming another key than the id given, is
    /// refused here.
    fn resolve(self) -> Result<Resolved<'a>, VerifyError> {
        let token = PresentedToken::parse(self.token)?;
        let id = match (self.id, token.key_id()) {
            (Some(given), Some(named)) if *given != named => return Err(VerifyError::Mismatch),
            (Some(given), _) => given.clone(),
            (None, Some(named)) => named,
            // The framing of keyroll 0.1 names no key: only the
            // two-credential form can use it.
            (None, None) => return Err(VerifyError::Malformed),
        };
        Ok(Resolved {
            token,
            id,
            cost: self.cost,
        })
    }
}

/// Why [`flush_usage`](KeyManager::flush_usage) could not write the uses
/// of some keys. The others were written; the notes of these are kept for
/// the next flush.
#[derive(Debug)]
#[non_exhaustive]
pub struct FlushError<E> {
    /// How many keys were written.
    pub written: usize,
    /// Each key whose uses were not written, and why.
    pub failed: Vec<(KeyId, ManagerError<E>)>,
    /// Why some usage counts were not written (they are kept for the next
    /// flush), if so.
    pub counts: Option<ManagerError<E>>,
}

impl<E: std::fmt::Display> std::fmt::Display for FlushError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the uses of {} key(s) were not written and are kept for the next flush",
            self.failed.len()
        )?;
        let mut separator = ": ";
        for (id, e) in &self.failed {
            write!(f, "{separator}{id}: {e}")?;
            separator = "; ";
        }
        if let Some(e) = &self.counts {
            write!(f, "; usage counts were not written and are kept: {e}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error> std::error::Error for FlushError<E> {}

/// What a transition writes back.
#[allow(clippy::large_enum_variant)] // lives on the stack for one write
enum Write {
    /// The changed key, with a compare-and-swap on the loaded version.
    Update(ApiKey),
    /// A deletion of the key, with the same check.
    Delete,
    /// Nothing: the transition found nothing to do.
    Nothing,
}

/// How many keys a walk over every key (`housekeep_all`, `sweep_notices`,
/// `expiring`) loads a page.
const KEY_PAGE: usize = 256;

/// How many usage rows a flush writes in one store call.
const USAGE_BATCH: usize = 1_000;

/// Whether a write went through (`false`: a conflict, retry).
fn written<E>(result: Result<(), StoreError<E>>) -> Result<bool, ManagerError<E>> {
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What a transition returns, and the events in it.
trait Emits {
    fn emitted(&self) -> &[Event];
}

impl Emits for Event {
    fn emitted(&self) -> &[Event] {
        std::slice::from_ref(self)
    }
}

impl Emits for (Token, Event) {
    fn emitted(&self) -> &[Event] {
        std::slice::from_ref(&self.1)
    }
}

impl Emits for Vec<Event> {
    fn emitted(&self) -> &[Event] {
        self
    }
}

impl Emits for Option<Event> {
    fn emitted(&self) -> &[Event] {
        self.as_slice()
    }
}

impl Emits for bool {
    fn emitted(&self) -> &[Event] {
        &[]
    }
}

/// A transition that changes the loaded key and writes it back.
fn updating<T>(
    mut transition: impl FnMut(&mut ApiKey) -> Result<T, TransitionError>,
) -> impl FnMut(ApiKey) -> Result<(Write, T), TransitionError> {
    move |mut key| transition(&mut key).map(|out| (Write::Update(key), out))
}

/// Manages keys over a [`KeyStore`]: every transition of [`ApiKey`] on
/// the stored key, and authentication.
///
/// Its calls are `async`. A service awaits them; a synchronous program
/// drives them with any `block_on` (`pollster::block_on`,
/// `futures::executor::block_on`, a tokio runtime's): the in-memory store's
/// futures complete at once, SQLite's wait on its own thread. Its futures
/// are `Send` when the arguments are: to call `renew` or `create_key` from
/// a spawned task, pass `&mut keyroll::os_rng()` (see [`os_rng`](crate::os_rng))
/// rather than `&mut rand::rng()`, which is thread-local.
///
/// `Send + Sync` when its store is; wrap it in an `Arc` to share it.
///
/// # Example
///
/// ```
/// use keyroll::store::InMemoryStore;
/// use keyroll::{Credentials, KeyId, KeyManager, NewKey, OldTokenDeletion, TokenMatch};
/// use time::OffsetDateTime;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// pollster::block_on(async {
///     let manager = KeyManager::new(InMemoryStore::new());
///     let mut rng = keyroll::os_rng();
///     let now = OffsetDateTime::now_utc();
///     let id = KeyId::new("acme-orders")?;
///
///     let new = NewKey::new(id.clone()).label("orders");
///     let (first, _) = manager.create_key(new, now, &mut rng).await?;
///     let (second, _) = manager.renew(&id, now, &mut rng).await?;
///
///     // The token alone names its key (`Authorization: Bearer <token>`).
///     let who = manager.authenticate(first.expose_secret(), now).await?;
///     assert_eq!((who.key_id.as_str(), who.matched), ("acme-orders", TokenMatch::Old));
///     manager.finalize(&id, OldTokenDeletion::Now, now).await?;
///     assert!(manager.authenticate(first.expose_secret(), now).await.is_err());
///
///     // The two-credential form: the id given must be the one the token names.
///     let both = Credentials::bearer(second.expose_secret()).with_id(&id);
///     assert_eq!(manager.authenticate(both, now).await?.matched, TokenMatch::Current);
///     Ok(())
/// })
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KeyManager<S> {
    store: S,
    max_retries: u32,
    /// Uses noted and outcomes counted by `authenticate`, when recording
    /// is on; shared by clones of the manager.
    usage: Option<Arc<UsageLog>>,
    /// How long usage counts are kept.
    usage_retention: Duration,
    /// The largest cost a route of the service charges, if declared: no
    /// key is given a burst below it.
    largest_cost: Option<u32>,
    /// The leases of keys with limits, when leasing is on; shared by
    /// clones of the manager.
    leases: Option<Arc<Leases>>,
    /// Whether writes hand the store their events for its outbox.
    outbox: bool,
    /// How long delivered outbox entries are kept.
    outbox_retention: Duration,
    /// When notices are sent.
    notices: NoticePolicy,
}

impl<S: KeyStore> KeyManager<S> {
    /// The default number of retries after a revision conflict.
    pub const DEFAULT_MAX_RETRIES: u32 = 8;

    /// How long usage counts are kept by default: 90 days.
    pub const DEFAULT_USAGE_RETENTION: Duration = Duration::days(90);

    /// How long delivered outbox entries are kept by default: 7 days.
    pub const DEFAULT_OUTBOX_RETENTION: Duration = Duration::days(7);

    /// A manager over `store`, retrying conflicts up to
    /// [`DEFAULT_MAX_RETRIES`](Self::DEFAULT_MAX_RETRIES) times.
    pub fn new(store: S) -> Self {
        Self {
            store,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            usage: None,
            usage_retention: Self::DEFAULT_USAGE_RETENTION,
            largest_cost: None,
            leases: None,
            outbox: false,
            outbox_retention: Self::DEFAULT_OUTBOX_RETENTION,
            notices: NoticePolicy::default(),
        }
    }

    /// Sets how many times a transition is retried after a revision
    /// conflict before it fails with [`ManagerError::Conflict`].
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Makes [`authenticate`](Self::authenticate) note each use (off by
    /// default), in memory: no store call and no copy of the key on the
    /// request's path (a token's first use exactly, its last to within a
    /// second; on a busy key, a shared lock only).
    /// [`flush_usage`](Self::flush_usage) writes the notes with
    /// [`ApiKey::record_use`]; call it periodically (every few seconds, well
    /// under the policies' `usage_resolution`; `keyroll-axum` has a task for
    /// it). Clones of the manager share the notes.
    ///
    /// What a crash loses: the uses noted since the last flush, i.e. at
    /// most one flush interval of `last_used_at` times, and the start of an
    /// after-use deletion schedule whose first use was not flushed (the old
    /// token then stays valid until a later use is flushed: the deletion
    /// comes later, never earlier). Never a transition: those are written
    /// before the call that makes them returns.
    ///
    /// It also counts the outcome of each authentication of a stored key,
    /// by key and UTC hour ([`Outcome`]: accepted, rate limited, usage
    /// exceeded, refused by the key), in memory, and the flush adds the
    /// counts to the store's ([`KeyStore::add_usage`], in batches). After a
    /// flush they are exact; a crash loses at most the counts of the
    /// interval since the last flush. [`usage`](Self::usage) reads them.
    pub fn with_usage_recording(mut self, record_uses: bool) -> Self {
        self.usage = record_uses.then(Arc::default);
        self
    }

    /// Keeps usage counts for `retention` (by default
    /// [`DEFAULT_USAGE_RETENTION`](Self::DEFAULT_USAGE_RETENTION)):
    /// [`housekeep_all`](Self::housekeep_all) drops older hours.
    pub fn with_usage_retention(mut self, retention: Duration) -> Self {
        self.usage_retention = retention;
        self
    }

    /// Hands every write's events to the store, which keeps them in its
    /// outbox in the same atomic step as the write (see
    /// [`outbox`](crate::outbox)); a [`Dispatcher`](crate::outbox::Dispatcher)
    /// delivers them. Off by default: an outbox that no dispatcher drains
    /// only grows. Turn it on in every replica that writes to the store.
    pub fn with_outbox(mut self) -> Self {
        self.outbox = true;
        self
    }

    /// Keeps delivered outbox entries for `retention` (by default
    /// [`DEFAULT_OUTBOX_RETENTION`](Self::DEFAULT_OUTBOX_RETENTION)):
    /// [`housekeep_all`](Self::housekeep_all) drops older ones.
    pub fn with_outbox_retention(mut self, retention: Duration) -> Self {
        self.outbox_retention = retention;
        self
    }

    /// Sends notices ([`sweep_notices`](Self::sweep_notices)) as `policy`
    /// says (by default [`NoticePolicy::default`]).
    pub fn with_notices(mut self, policy: NoticePolicy) -> Self {
        self.notices = policy;
        self
    }

    /// The events a write hands the store: `events`, when the outbox is
    /// on.
    fn outboxed<'e>(&self, events: &'e [Event]) -> &'e [Event] {
        if self.outbox { events } else { &[] }
    }

    /// Declares the largest cost any route of the service charges
    /// ([`Credentials::cost`]): from then on a rate limit whose burst is
    /// below it is refused when a key is created or its limit set
    /// ([`TransitionError::BurstBelowCost`](crate::TransitionError::BurstBelowCost)),
    /// instead of every such request failing with
    /// [`AuthError::CostOutOfRange`](crate::AuthError::CostOutOfRange).
    pub fn with_largest_cost(mut self, cost: u32) -> Self {
        self.largest_cost = Some(cost);
        self
    }

    /// Charges keys with limits through leases ([`LeasePolicy`]): a slice
    /// of a key's allowance taken from the store in one charge, then spent
    /// in memory. Credits stay exact and rate limits keep the bound
    /// [`LeasePolicy`] states. A `max_lag` of 0 leaves leasing off: every
    /// charge is then one store call. Give unspent leases back with
    /// [`release_leases`](Self::release_leases) before the process ends.
    pub fn with_leases(mut self, policy: LeasePolicy) -> Self {
        self.leases =
            (policy.max_lag() > Duration::ZERO).then(|| Arc::new(Leases::new(policy, None)));
        self
    }

    /// [`with_leases`](Self::with_leases), with the next lease of a hot key
    /// taken ahead, in the background: once a lease is half spent, `spawn`
    /// runs the store call for the next one (on tokio, `|task| {
    /// tokio::spawn(task); }`), so that a hot key's requests do not wait on
    /// the store. The bounds are the same: a lease taken ahead lives
    /// `max_lag` from when its call was sent, spent or not, and
    /// [`release_leases`](Self::release_leases) gives it back too. A lease
    /// ahead that fails is dropped: the request that finds the current one
    /// spent takes the next itself.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use keyroll::{KeyManager, LeasePolicy};
    /// use keyroll::store::InMemoryStore;
    /// use time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policy = LeasePolicy::new(Duration::milliseconds(50))?;
    /// let keys = KeyManager::new(Arc::new(InMemoryStore::new()))
    ///     .with_leases_ahead(policy, |task| {
    ///         tokio::spawn(task);
    ///     });
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_leases_ahead<F>(mut self, policy: LeasePolicy, spawn: F) -> Self
    where
        S: Clone + 'static,
        F: Fn(Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync + 'static,
    {
        if policy.max_lag() <= Duration::ZERO {
            return self.with_leases(policy);
        }
        let store = self.store.clone();
        self.leases = Some(Arc::new_cyclic(|leases: &Weak<Leases>| {
            let leases = leases.clone();
            let ahead: Ahead = Box::new(move |id, incarnation, taking, now| {
                let Some(leases) = leases.upgrade() else {
                    return;
                };
                // In flight from now, even if the task never runs.
                let flight = Flight::new(leases, (id, incarnation), taking);
                let store = store.clone();
                spawn(Box::pin(async move {
                    // No request waits for it: a failure leaves the next
                    // lease to the request that finds this one spent.
                    let _ = Leases::take(&store, flight, 0, now).await;
                }));
            });
            Leases::new(policy, Some(ahead))
        }));
        self
    }

    /// Gives every lease's unspent credits back to the store
    /// ([`KeyStore::refund`]) and forgets the leases; the next request of
    /// a key takes a new one. Leases whose store call is in flight are
    /// given back as they land, and the release waits for them. Call it at
    /// shutdown: a replica that ends without it strands what
    /// [`leases`](Self::leases) reported until the next refill.
    ///
    /// # Errors
    ///
    /// The store's first error; every lease is given back or tried.
    pub async fn release_leases(&self) -> Result<(), S::Error> {
        let Some(leases) = &self.leases else {
            return Ok(());
        };
        let drained = leases.drain();
        let mut first = Ok(());
        for (held, periods) in drained {
            let refunded = periods
                .refund(&self.store, &held.key_id, held.incarnation, held.units)
                .await;
            first = first.and(refunded);
        }
        // Each lands within one store call: yield to the tasks taking them.
        while leases.in_flight_released() > 0 {
            yield_now().await;
        }
        first
    }

    /// What this replica holds: each key's lease with units not spent
    /// yet, in key order (empty when leasing is off).
    pub fn leases(&self) -> Vec<HeldLease> {
        self.leases.as_ref().map_or_else(Vec::new, |l| l.held())
    }

    /// `Ok` unless `rate`'s burst is below the declared largest cost.
    fn check_burst(&self, rate: Option<&RateLimit>) -> Result<(), TransitionError> {
        match (rate, self.largest_cost) {
            (Some(rate), Some(cost)) if rate.burst() < cost => {
                Err(TransitionError::BurstBelowCost {
                    burst: rate.burst(),
                    cost,
                })
            }
            _ => Ok(()),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Issues a new key ([`ApiKey::issue`]) and stores it; returns its
    /// first token, shown once.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Transition`] for input `issue` refuses;
    /// [`ManagerError::AlreadyExists`] if the id is taken;
    /// [`ManagerError::Store`].
    pub async fn create_key<R: rand_core::CryptoRng + ?Sized>(
        &self,
        new: impl Into<NewKey>,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), ManagerError<S::Error>> {
        let (key, token, event) = ApiKey::issue(new, now, rng)?;
        self.check_burst(key.rate_limit())?;
        let events = std::slice::from_ref(&event);
        self.store.insert(&key, self.outboxed(events)).await?;
        Ok((token, event))
    }

    /// [`ApiKey::renew`] on the stored key. The new token is returned only
    /// once it is stored.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Transition`],
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub async fn renew<R: rand_core::CryptoRng + ?Sized>(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.renew(now, &mut *rng)))
            .await
    }

    /// [`ApiKey::renew_with`] on the stored key: renews and decides what
    /// becomes of the old token in one write. The new token is returned
    /// only once it is stored.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn renew_with<R: rand_core::CryptoRng + ?Sized>(
        &self,
        id: &KeyId,
        deletion: OldTokenDeletion,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.renew_with(deletion, now, &mut *rng)))
            .await
    }

    /// [`ApiKey::finalize`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn finalize(
        &self,
        id: &KeyId,
        deletion: OldTokenDeletion,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.finalize(deletion, now)))
            .await
    }

    /// [`ApiKey::delete_old`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn delete_old(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.delete_old(now)))
            .await
    }

    /// [`ApiKey::delete_old_if_idle`] on the stored key, after writing the
    /// uses this manager noted of it.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew); the transition error
    /// [`TransitionError::OldTokenInUse`] when the old token was used
    /// less than `min_idle` ago.
    pub async fn delete_old_if_idle(
        &self,
        id: &KeyId,
        min_idle: time::Duration,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.flush_key(id, now).await?;
        self.transition(id, updating(|key| key.delete_old_if_idle(min_idle, now)))
            .await
    }

    /// [`ApiKey::undo_renewal`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn undo_renewal(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.undo_renewal(now)))
            .await
    }

    /// [`ApiKey::apply`] on the stored key: one change, one write, one
    /// event. The one door for a key's settings and status.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew); the transition errors of
    /// [`ApiKey::apply`], and
    /// [`TransitionError::BurstBelowCost`](crate::TransitionError::BurstBelowCost)
    /// for a rate limit below the declared largest cost
    /// ([`with_largest_cost`](Self::with_largest_cost)).
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::store::InMemoryStore;
    /// use keyroll::{Change, KeyId, KeyManager};
    /// use time::OffsetDateTime;
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new());
    /// let (id, now) = (KeyId::new("acme")?, OffsetDateTime::now_utc());
    /// keys.create_key(id.clone(), now, &mut rand::rng()).await?;
    /// keys.apply(&id, Change::Deactivate, now).await?;
    /// // Several changes in one write: all or none.
    /// let events = keys
    ///     .apply_all(&id, vec![Change::Label("orders".into()), Change::Activate], now)
    ///     .await?;
    /// assert_eq!(events.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn apply(
        &self,
        id: &KeyId,
        change: Change,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.check_burst(change.rate_limit())?;
        self.transition(id, updating(|key| key.apply(change.clone(), now)))
            .await
    }

    /// Makes several changes of one key in one write, in order: all of
    /// them, or (if one is refused) none. Each bumps the version and
    /// returns its event, as one [`apply`](Self::apply) would.
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply), for the first change refused; the key is
    /// then unchanged.
    pub async fn apply_all(
        &self,
        id: &KeyId,
        changes: Vec<Change>,
        now: OffsetDateTime,
    ) -> Result<Vec<Event>, ManagerError<S::Error>> {
        for change in &changes {
            self.check_burst(change.rate_limit())?;
        }
        self.transition(
            id,
            updating(|key| key.apply_all(changes.iter().cloned(), now)),
        )
        .await
    }

    /// What the key's rate limit and credits allow at `now`, without
    /// charging (empty for a key without limits), with the owner's part
    /// ([`Allowance::owner`]) when its owner has limits.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Store`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::meter::Credits;
    /// use keyroll::store::InMemoryStore;
    /// use keyroll::{KeyId, KeyManager, NewKey};
    /// use time::OffsetDateTime;
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new());
    /// let now = OffsetDateTime::now_utc();
    /// let new = NewKey::new(KeyId::new("acme")?).credits(Credits::new(10));
    /// let (token, _) = keys.create_key(new, now, &mut rand::rng()).await?;
    /// let who = keys.authenticate(token.expose_secret(), now).await?;
    /// assert_eq!(who.allowance.credits_remaining(), Some(9));
    /// let id = KeyId::new("acme")?;
    /// assert_eq!(keys.allowance(&id, now).await?.credits_remaining(), Some(9));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn allowance(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Allowance, ManagerError<S::Error>> {
        let key = self.get(id).await?.ok_or(ManagerError::NotFound)?;
        let allowance = match key.is_metered() {
            true => {
                let incarnation = key.revision().incarnation();
                let stored = self.store.meter(id, incarnation).await;
                key.allowance(stored.map_err(ManagerError::Store)?.as_ref(), now)
            }
            false => Allowance::default(),
        };
        Ok(match key.owner() {
            Some(owner) => match self.owner_allowance(owner, now).await? {
                Some(owned) => allowance.with_owner(owner, owned),
                None => allowance,
            },
            None => allowance,
        })
    }

    /// Sets the limits `owner`'s keys share ([`OwnerLimits`]; an empty one
    /// clears them) and returns the `OwnerLimitsChanged` event. A request
    /// of any of its keys is then admitted only if the key's own limits
    /// and these both admit it, and is charged to both (or neither). The
    /// same credits set again keep their balance; other credits start it
    /// over. The limits live beside the keys: deleting the owner's keys
    /// leaves them.
    ///
    /// # Errors
    ///
    /// [`TransitionError::InvalidCredits`] for credits above
    /// [`MAX_CREDITS`], [`TransitionError::BurstBelowCost`] for a rate
    /// limit below the declared largest cost, [`ManagerError::Conflict`]
    /// when other writers kept changing them, [`ManagerError::Store`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::meter::{Credits, Subject};
    /// use keyroll::store::InMemoryStore;
    /// use keyroll::{AuthError, Change, KeyId, KeyManager, OwnerId, OwnerLimits};
    /// use time::OffsetDateTime;
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new());
    /// let (owner, now) = (OwnerId::new("acme")?, OffsetDateTime::now_utc());
    /// let mut tokens = Vec::new();
    /// for id in ["prod", "ci"] {
    ///     let id = KeyId::new(id)?;
    ///     let (token, _) = keys.create_key(id.clone(), now, &mut rand::rng()).await?;
    ///     keys.apply(&id, Change::Owner(Some(owner.clone())), now).await?;
    ///     tokens.push(token);
    /// }
    /// keys.set_owner_limits(&owner, OwnerLimits::new().credits(Credits::new(3)), now).await?;
    /// for token in [&tokens[0], &tokens[1], &tokens[0]] {
    ///     keys.authenticate(token.expose_secret(), now).await?;
    /// }
    /// // Three requests spent the three credits both keys share.
    /// let refused = keys.authenticate(tokens[1].expose_secret(), now).await;
    /// assert!(matches!(refused, Err(AuthError::UsageExceeded { subject: Subject::Owner, .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: OwnerLimits,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        if let Some(credits) = limits.credits_as_set()
            && credits.remaining() > MAX_CREDITS
        {
            let remaining = credits.remaining();
            return Err(TransitionError::InvalidCredits { remaining }.into());
        }
        self.check_burst(limits.rate())?;
        for _ in 0..self.max_retries {
            let before = self.owner_limits(owner).await?;
            let expected = before.as_ref().map_or(0, OwnerLimits::version);
            let stamped = limits.clone().stamped(before.as_ref(), now);
            let event = Event::OwnerLimitsChanged {
                owner: owner.clone(),
                at: now,
                version: stamped.version(),
                rate_limit: stamped.rate().copied(),
                credits: stamped.credits_as_set().copied(),
            };
            let events = std::slice::from_ref(&event);
            let stored =
                self.store
                    .set_owner_limits(owner, &stamped, expected, self.outboxed(events));
            match stored.await {
                Ok(()) => return Ok(event),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ManagerError::Conflict)
    }

    /// The limits `owner`'s keys share, as last set (empty once cleared);
    /// `None` if never set.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub async fn owner_limits(
        &self,
        owner: &OwnerId,
    ) -> Result<Option<OwnerLimits>, ManagerError<S::Error>> {
        self.store
            .owner_limits(owner)
            .await
            .map_err(ManagerError::Store)
    }

    /// What the limits `owner`'s keys share allow now, without charging;
    /// `None` when it has none.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub async fn owner_allowance(
        &self,
        owner: &OwnerId,
        now: OffsetDateTime,
    ) -> Result<Option<Allowance>, ManagerError<S::Error>> {
        let Some(limits) = self.owner_limits(owner).await?.filter(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let stored = self.store.owner_meter(owner).await;
        Ok(Some(limits.allowance(
            stored.map_err(ManagerError::Store)?.as_ref(),
            now,
        )))
    }

    /// Deletes the key, irreversibly, and returns its `KeyDeleted` event.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`],
    /// [`ManagerError::Store`].
    pub async fn delete_key(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, |key| Ok((Write::Delete, key.delete(now)?)))
            .await
    }

    /// [`ApiKey::housekeep`] on the stored key: applies a scheduled
    /// deletion of its old token that is due. Writes only when one is.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`],
    /// [`ManagerError::Store`].
    pub async fn housekeep(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        self.transition(id, |mut key| {
            Ok(match key.housekeep(now) {
                Some(event) => (Write::Update(key), Some(event)),
                None => (Write::Nothing, None),
            })
        })
        .await
    }

    /// Housekeeps every stored key, paging through `list`, and returns the
    /// events of the deletions it applied; then drops the usage counts older
    /// than the [retention](Self::with_usage_retention), and the outbox
    /// entries delivered before the
    /// [outbox retention](Self::with_outbox_retention). Run it periodically.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`], or [`ManagerError::Conflict`] if a key
    /// kept changing; keys done before the error stay done.
    pub async fn housekeep_all(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<Event>, ManagerError<S::Error>> {
        let (mut events, mut after) = (Vec::new(), None);
        while let Some(page) = self.next_page(&mut after).await? {
            for mut key in page {
                if key.housekeep(now).is_none() {
                    continue;
                }
                match self.housekeep(key.id(), now).await {
                    Ok(event) => events.extend(event),
                    Err(ManagerError::NotFound) => {} // deleted meanwhile
                    Err(e) => return Err(e),
                }
            }
        }
        let before = UsageRow::hour_of(now.saturating_sub(self.usage_retention));
        self.store
            .prune_usage(before)
            .await
            .map_err(ManagerError::Store)?;
        self.store
            .prune_outbox(now.saturating_sub(self.outbox_retention))
            .await
            .map_err(ManagerError::Store)?;
        Ok(events)
    }

    /// Sends the notices due at `now` ([`NoticePolicy`], set with
    /// [`with_notices`](Self::with_notices)): pages through every key,
    /// and for each with a notice due claims it in the key's record by a
    /// compare-and-swap, with the notice in the outbox (when it is on) in
    /// the same write. However many replicas sweep at once, each notice
    /// is claimed once: a replica that loses the race loads the key again
    /// and finds it claimed. Returns the notices this sweep claimed. Run
    /// it periodically (hourly, say).
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`], or [`ManagerError::Conflict`] if a key
    /// kept changing; keys done before the error stay done.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{Event, KeyId, KeyManager, NewKey};
    /// use keyroll::store::InMemoryStore;
    /// use time::{Duration, OffsetDateTime};
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new()).with_outbox();
    /// let now = OffsetDateTime::now_utc();
    /// let expiring = NewKey::new(KeyId::new("acme")?).expires_at(now + Duration::days(20));
    /// keys.create_key(expiring, now, &mut rand::rng()).await?;
    /// let notices = keys.sweep_notices(now).await?;
    /// assert!(matches!(notices[..], [Event::KeyExpiring { within, .. }] if within == Duration::days(30)));
    /// // Claimed: the next sweep, here or on any replica, sends nothing.
    /// assert!(keys.sweep_notices(now).await?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn sweep_notices(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<Event>, ManagerError<S::Error>> {
        let (mut notices, mut after) = (Vec::new(), None);
        while let Some(page) = self.next_page(&mut after).await? {
            for mut key in page {
                let meter = match key.credits() {
                    Some(_) => self
                        .store
                        .meter(key.id(), key.revision().incarnation())
                        .await
                        .map_err(ManagerError::Store)?,
                    None => None,
                };
                // The listed copy tells whether any is due; the claim is
                // the write of the key loaded again.
                if key
                    .claim_notices(&self.notices, meter.as_ref(), now)
                    .is_empty()
                {
                    continue;
                }
                let claimed = self
                    .transition(key.id(), |mut key| {
                        let events = key.claim_notices(&self.notices, meter.as_ref(), now);
                        Ok(match events.is_empty() {
                            true => (Write::Nothing, events),
                            false => (Write::Update(key), events),
                        })
                    })
                    .await;
                match claimed {
                    Ok(events) => notices.extend(events),
                    Err(ManagerError::NotFound) => {} // deleted meanwhile
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(notices)
    }

    /// Puts the parked outbox entry `id` back to pending, due at `now`,
    /// with no failed attempts: a [`Dispatcher`](crate::outbox::Dispatcher)
    /// delivers it again. Whether it was parked.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub async fn retry_parked(
        &self,
        id: EntryId,
        now: OffsetDateTime,
    ) -> Result<bool, ManagerError<S::Error>> {
        let after = id.get().checked_sub(1).map(EntryId::new);
        let found = self
            .store
            .outbox(EntryState::Parked, after, 1)
            .await
            .map_err(ManagerError::Store)?;
        let Some(mut entry) = found.into_iter().find(|entry| entry.id == id) else {
            return Ok(false);
        };
        entry.state = EntryState::Pending;
        entry.attempts = 0;
        entry.next_attempt_at = now;
        self.store
            .update_outbox(&[entry])
            .await
            .map_err(ManagerError::Store)?;
        Ok(true)
    }

    /// The stored key, if any.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, ManagerError<S::Error>> {
        self.store.get(id).await.map_err(ManagerError::Store)
    }

    /// At most `limit` keys with ids after `after`, in id order: one page
    /// of [`KeyStore::list`].
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub async fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, ManagerError<S::Error>> {
        self.store
            .list(after, limit)
            .await
            .map_err(ManagerError::Store)
    }

    /// At most `limit` keys of `owner` with ids after `after`, in id order:
    /// one page of [`KeyStore::list_owned`], which every store of keyroll
    /// answers from an index of owners.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::store::InMemoryStore;
    /// use keyroll::{KeyId, KeyManager, NewKey, OwnerId};
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new());
    /// let (now, mut rng) = (time::OffsetDateTime::now_utc(), rand::rng());
    /// let acme = OwnerId::new("acme")?;
    /// for id in ["b", "a", "c"] {
    ///     let new = NewKey::new(KeyId::new(id)?).owner(acme.clone());
    ///     keys.create_key(new, now, &mut rng).await?;
    /// }
    /// keys.create_key(KeyId::new("other")?, now, &mut rng).await?;
    /// let first = keys.list_owned(&acme, None, 2).await?;
    /// let ids: Vec<&str> = first.iter().map(|k| k.id().as_str()).collect();
    /// assert_eq!(ids, ["a", "b"]);
    /// let rest = keys.list_owned(&acme, Some(first[1].id()), 2).await?;
    /// assert_eq!(rest.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, ManagerError<S::Error>> {
        self.store
            .list_owned(owner, after, limit)
            .await
            .map_err(ManagerError::Store)
    }

    /// The usage counts of key `id` for the UTC hours from the one holding
    /// `from` up to the one holding `to` (excluded), hour by hour: the
    /// hours with any count, as the store keeps them after the last flush
    /// (counts not flushed yet are not in it).
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Store`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::store::InMemoryStore;
    /// use keyroll::{KeyId, KeyManager, Outcome};
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    /// let (now, id) = (time::OffsetDateTime::now_utc(), KeyId::new("acme")?);
    /// let (token, _) = keys.create_key(id.clone(), now, &mut rand::rng()).await?;
    /// keys.authenticate(token.expose_secret(), now).await?;
    /// keys.authenticate(token.expose_secret(), now).await?;
    /// // Malformed: refused before any key is read, and so not counted.
    /// assert!(keys.authenticate("kr_acme_wrongwrongwrongwrongwrongwrongwrongwrong0000000", now).await.is_err());
    /// keys.flush_usage(now).await?;
    /// let hours = keys.usage(&id, now - time::Duration::DAY, now + time::Duration::HOUR).await?;
    /// assert_eq!(hours.len(), 1);
    /// assert_eq!(hours[0].count(Outcome::Accepted), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn usage(
        &self,
        id: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<UsageRow>, ManagerError<S::Error>> {
        let key = self.get(id).await?.ok_or(ManagerError::NotFound)?;
        let hours = UsageRow::hour_of(from)..UsageRow::hour_of(to);
        self.store
            .usage(id, key.revision().incarnation(), hours)
            .await
            .map_err(ManagerError::Store)
    }

    /// The keys that expire, or whose current token falls due for renewal,
    /// within `within` of `now`, soonest first (an overdue token first of
    /// all; an expired key is not listed). It reads every key, a page at a
    /// time: run it from a daily job or an admin page, not per request.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::store::InMemoryStore;
    /// use keyroll::{ExpiringReason, KeyId, KeyManager, NewKey};
    /// use time::Duration;
    ///
    /// # pollster::block_on(async {
    /// let keys = KeyManager::new(InMemoryStore::new());
    /// let (now, mut rng) = (time::OffsetDateTime::now_utc(), rand::rng());
    /// let soon = NewKey::new(KeyId::new("soon")?).expires_at(now + Duration::days(3));
    /// keys.create_key(soon, now, &mut rng).await?;
    /// keys.create_key(KeyId::new("later")?, now, &mut rng).await?; // due in 90 days
    /// let expiring = keys.expiring(Duration::days(14), now).await?;
    /// assert_eq!(expiring.len(), 1);
    /// assert_eq!(expiring[0].key.id().as_str(), "soon");
    /// assert_eq!(expiring[0].reason, ExpiringReason::KeyExpires);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn expiring(
        &self,
        within: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<Expiring>, ManagerError<S::Error>> {
        let (mut expiring, mut after) = (Vec::new(), None);
        while let Some(page) = self.next_page(&mut after).await? {
            expiring.extend(page.iter().filter_map(|key| Expiring::of(key, within, now)));
        }
        expiring.sort_by(|a, b| (a.at, a.key.id()).cmp(&(b.at, b.key.id())));
        Ok(expiring)
    }

    /// Authenticates a request: a bearer token (a `&str`, or
    /// [`Credentials::bearer`]), or the two-credential form
    /// ([`Credentials::with_id`]). The token is parsed once; one that is
    /// not well-formed, or that names another key than the id given, is
    /// refused without any store read. Writes nothing, unless
    /// [usage recording](Self::with_usage_recording) is on.
    ///
    /// A key with a rate limit or credits (as the record it was verified
    /// with says) is then charged the credentials' [cost](Credentials::cost)
    /// ([`KeyStore::charge`]): one more store call, for those keys only. A
    /// refused authentication charges nothing. On a [cached](crate::store::CachedStore)
    /// replica, a limit newly added to a key applies once the cache sees
    /// the change (its staleness bound; with notifications, milliseconds).
    ///
    /// # Errors
    ///
    /// [`AuthError::Verify`] with `Malformed`, `Mismatch` (a token naming
    /// another key), or the key's refusal; [`AuthError::UnknownKey`];
    /// [`AuthError::UsageExceeded`], then [`AuthError::RateLimited`];
    /// [`AuthError::CostOutOfRange`]; [`AuthError::Store`].
    pub async fn authenticate<'a>(
        &self,
        credentials: impl Into<Credentials<'a>>,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let answer = self.authenticate_counted(credentials.into(), now).await;
        telemetry::authentication(&answer);
        answer
    }

    /// [`authenticate`](Self::authenticate), usage counted, before its
    /// answer is told to the metrics.
    async fn authenticate_counted(
        &self,
        credentials: Credentials<'_>,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let Resolved { token, id, cost } = credentials.resolve()?;
        let verified = self.store.verify(&id, &token, now).await;
        let count = |incarnation, outcome| {
            if let Some(usage) = &self.usage {
                usage.record(&id, incarnation, outcome, None, now);
            }
        };
        let mut authenticated = match verified.map_err(AuthError::Store)? {
            Verification::Accepted(authenticated) => authenticated,
            Verification::Refused { error, incarnation } => {
                count(incarnation, Outcome::Refused);
                return Err(AuthError::Verify(error));
            }
            Verification::UnknownKey => return Err(AuthError::UnknownKey),
        };
        let incarnation = authenticated.incarnation;
        // Only a holder of a valid token learns of its key's networks; a
        // request from elsewhere is charged nothing.
        if let Some(networks) = &authenticated.networks
            && !credentials.ip.is_some_and(|ip| networks.contains(ip))
        {
            count(incarnation, Outcome::Refused);
            return Err(AuthError::Verify(VerifyError::NetworkNotAllowed));
        }
        if authenticated.metered {
            let charged = match &self.leases {
                Some(leases) => {
                    leases
                        .charge(&self.store, &id, incarnation, cost, now)
                        .await
                }
                None => self.store.charge(&id, incarnation, cost, now).await,
            };
            telemetry::charge(match &charged {
                Ok(answer) => Some(answer.as_ref().err()),
                Err(_) => None,
            });
            authenticated.allowance = match charged {
                Ok(Ok(allowance)) => allowance,
                Ok(Err(refusal)) => {
                    match refusal {
                        Refusal::RateLimited { .. } => count(incarnation, Outcome::RateLimited),
                        Refusal::UsageExceeded { .. } => count(incarnation, Outcome::UsageExceeded),
                        // A route's mistake, not the key's use.
                        _ => {}
                    }
                    return Err(AuthError::refused(refusal));
                }
                Err(StoreError::Backend(e)) => return Err(AuthError::Store(e)),
                // `NotFound`: deleted since it was verified (a token checked
                // against the old key never charges a new one). Anything
                // else breaks the store's contract, and refuses too.
                Err(_) => return Err(AuthError::UnknownKey),
            };
        }
        if let Some(usage) = &self.usage {
            let token = Some(authenticated.token_id);
            usage.record(&id, incarnation, Outcome::Accepted, token, now);
        }
        Ok(authenticated)
    }

    /// [`ApiKey::revoke_token`] on the key the credentials name: the
    /// answer to a leaked token (for instance one reported by a secret
    /// scanner). A token in the framing of keyroll 0.1 names no key: give
    /// its key id ([`Credentials::with_id`]). `None`, with nothing written,
    /// for anything that is not a live token of a stored key: malformed,
    /// of an unknown key, wrong, already revoked or deleted.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub async fn revoke_token<'a>(
        &self,
        credentials: impl Into<Credentials<'a>>,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        let credentials = credentials.into();
        let Ok(Resolved { id, .. }) = credentials.resolve() else {
            return Ok(None);
        };
        let revoked = self
            .transition(&id, |mut key| {
                Ok(match key.revoke_token(credentials.token, now) {
                    Ok(event) => (Write::Update(key), Some(event)),
                    Err(_) => (Write::Nothing, None),
                })
            })
            .await;
        match revoked {
            Err(ManagerError::NotFound) => Ok(None),
            other => other,
        }
    }

    /// Writes the uses noted since the last flush: for each key with
    /// notes, one compare-and-swap (retried on conflict like a
    /// transition) applying [`ApiKey::record_use`] to the first and the
    /// last use of each of its tokens, skipped when that changes nothing
    /// (a token's use is written at most once per `usage_resolution`). The
    /// first use of a new token under
    /// [`Decision::AfterNewTokenUse`](crate::Decision::AfterNewTokenUse)
    /// schedules the old token's deletion from *that use's* time, not the
    /// flush's. Noted times later than `now` are taken as `now`; uses of
    /// tokens a key no longer has, and of deleted keys, are dropped.
    /// Returns how many keys were written.
    ///
    /// A key that cannot be written (its record does not load, the store
    /// fails on it, it keeps changing) holds up no other: it is skipped,
    /// its notes are kept for the next flush, and the flush goes on.
    ///
    /// # Errors
    ///
    /// [`FlushError`], naming each key that could not be written and why,
    /// once every other key has been written.
    pub async fn flush_usage(&self, now: OffsetDateTime) -> Result<usize, FlushError<S::Error>> {
        let Some(usage) = &self.usage else {
            return Ok(0);
        };
        let mut written = 0;
        let mut failed = Vec::new();
        let (notes, counts) = usage.take_all();
        for (id, notes) in notes {
            match self.record_noted(&id, &notes, now).await {
                Ok(changed) => written += usize::from(changed),
                Err(e) => {
                    usage.put_back(&id, notes);
                    failed.push((id, e));
                }
            }
        }
        // The counts, in batches; a batch that fails is kept whole for the
        // next flush, and the others are still written.
        let mut unwritten = None;
        for batch in counts.chunks(USAGE_BATCH) {
            if let Err(e) = self.store.add_usage(batch).await {
                usage.put_back_counts(batch);
                unwritten = Some(ManagerError::Store(e));
            }
        }
        if failed.is_empty() && unwritten.is_none() {
            Ok(written)
        } else {
            Err(FlushError {
                written,
                failed,
                counts: unwritten,
            })
        }
    }

    /// How many keys have uses noted and not yet flushed.
    pub fn pending_usage(&self) -> usize {
        self.usage.as_ref().map_or(0, |usage| usage.keys())
    }

    /// Writes the noted uses of key `id`: see `flush_usage`.
    async fn flush_key(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<(), ManagerError<S::Error>> {
        let Some(usage) = &self.usage else {
            return Ok(());
        };
        let notes = usage.take(id);
        if notes.is_empty() {
            return Ok(());
        }
        match self.record_noted(id, &notes, now).await {
            Ok(_) => Ok(()),
            Err(e) => {
                usage.put_back(id, notes);
                Err(e)
            }
        }
    }

    /// Applies `notes` to the stored key `id`; whether it was written.
    async fn record_noted(
        &self,
        id: &KeyId,
        notes: &[Noted],
        now: OffsetDateTime,
    ) -> Result<bool, ManagerError<S::Error>> {
        let recorded = self
            .transition(id, |mut key| {
                Ok(if usage::apply(&mut key, notes, now) {
                    (Write::Update(key), true)
                } else {
                    (Write::Nothing, false)
                })
            })
            .await;
        match recorded {
            Err(ManagerError::NotFound) => Ok(false),
            other => other,
        }
    }

    /// The page of stored keys after `after` (`KEY_PAGE` of them
    /// at most, in id order), moving `after` past it; `None` at the end.
    async fn next_page(
        &self,
        after: &mut Option<KeyId>,
    ) -> Result<Option<Vec<ApiKey>>, ManagerError<S::Error>> {
        let page = self
            .store
            .list(after.as_ref(), KEY_PAGE)
            .await
            .map_err(ManagerError::Store)?;
        *after = page.last().map(|key| key.id().clone());
        Ok((!page.is_empty()).then_some(page))
    }

    /// Loads, applies `apply`, writes back with the loaded revision, and
    /// retries on conflict.
    async fn transition<T: Emits>(
        &self,
        id: &KeyId,
        mut apply: impl FnMut(ApiKey) -> Result<(Write, T), TransitionError>,
    ) -> Result<T, ManagerError<S::Error>> {
        for _ in 0..=self.max_retries {
            let key = self
                .store
                .get(id)
                .await
                .map_err(ManagerError::Store)?
                .ok_or(ManagerError::NotFound)?;
            let loaded = key.revision();
            let (next, out) = apply(key)?;
            let events = self.outboxed(out.emitted());
            let result = match &next {
                Write::Update(key) => self.store.update(key, loaded, events).await,
                Write::Delete => self.store.delete(id, loaded, events).await,
                Write::Nothing => Ok(()),
            };
            if written(result)? {
                return Ok(out);
            }
        }
        Err(ManagerError::Conflict)
    }
}

/// Returns `Pending` once, waking at once: lets the executor run other
/// tasks before the caller looks again.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}
