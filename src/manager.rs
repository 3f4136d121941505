//! [`KeyManager`] and [`AsyncKeyManager`]: transitions over a store, with
//! optimistic concurrency.
//!
//! Each mutating call loads the key, applies the transition to the copy, and
//! writes it back with `update(key, revision_it_loaded)`. If another writer got
//! there first (`Conflict`), it loads again and retries, up to
//! [`max_retries`](KeyManager::with_max_retries) times. A [`Token`] is returned
//! only once the write that holds its hash has succeeded; a failed write
//! hands out nothing.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::attributes::{Metadata, Scopes};
use crate::event::Event;
use crate::id::KeyId;
use crate::key::{ApiKey, OldTokenDeletion, TransitionError};
use crate::new_key::NewKey;
use crate::store::{AsyncKeyStore, KeyStore, Ready, StoreError, Verification, ready};
use crate::token::{self, Token};
use crate::usage::{self, Noted, UsageLog};
use crate::verify::{Authenticated, VerifyError};

/// The default number of retries after a version conflict.
pub const DEFAULT_MAX_RETRIES: u32 = 8;

/// Why a manager call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError<E> {
    /// No key has this id.
    #[error("key not found")]
    NotFound,
    /// `create_key` with an id already taken.
    #[error("a key with this id already exists; choose another id")]
    AlreadyExists,
    /// The transition was refused in the key's state; nothing was written.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Every retry met a concurrent change to the key; nothing was written.
    #[error("the key kept changing under concurrent updates; try again")]
    Conflict,
    /// The store failed. A write may or may not have been applied: reload
    /// the key to see.
    #[error("store error: {0}")]
    Store(#[source] E),
}

/// Why [`KeyManager::authenticate`] refused a request.
///
/// The variants keep the causes apart for logs. A service should answer
/// every refusal of a credential the same way (an unknown key, a malformed,
/// wrong or revoked token, an inactive key), so that answers do not tell
/// which key ids exist, and answer `Store` with a generic "unavailable".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError<E> {
    /// No key has the id the request named.
    #[error("unknown key")]
    UnknownKey,
    /// The key refused the token.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[source] E),
}

/// Why [`flush_usage`](AsyncKeyManager::flush_usage) could not write the
/// uses of some keys. The others were written; the notes of these are kept
/// for the next flush.
#[derive(Debug)]
#[non_exhaustive]
pub struct FlushError<E> {
    /// How many keys were written.
    pub written: usize,
    /// Each key whose uses were not written, and why.
    pub failed: Vec<(KeyId, ManagerError<E>)>,
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

/// How many keys `housekeep_all` loads per page.
const HOUSEKEEPING_PAGE: usize = 256;

impl<E> From<StoreError<E>> for ManagerError<E> {
    fn from(e: StoreError<E>) -> Self {
        match e {
            StoreError::AlreadyExists => ManagerError::AlreadyExists,
            StoreError::NotFound => ManagerError::NotFound,
            StoreError::Conflict { .. } => ManagerError::Conflict,
            StoreError::Backend(e) => ManagerError::Store(e),
        }
    }
}

/// Whether a write went through (`false`: a conflict, retry).
fn written<E>(result: Result<(), StoreError<E>>) -> Result<bool, ManagerError<E>> {
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Maps the store's answer to `verify` to an authentication result.
fn auth_result<E>(verified: Result<Verification, E>) -> Result<Authenticated, AuthError<E>> {
    match verified.map_err(AuthError::Store)? {
        Verification::Accepted(authenticated) => Ok(authenticated),
        Verification::Refused(refused) => Err(AuthError::Verify(refused)),
        Verification::UnknownKey => Err(AuthError::UnknownKey),
    }
}

/// Refuses, before any store read, a token that is not well-formed or that
/// names a key other than `id` (a token of keyroll 0.1 names none).
fn check_names(id: &KeyId, presented: &str) -> Result<(), VerifyError> {
    match token::named_key(presented)? {
        Some(named) if named != id.as_str() => Err(VerifyError::Mismatch),
        _ => Ok(()),
    }
}

/// A transition that changes the loaded key and writes it back.
fn updating<T>(
    mut transition: impl FnMut(&mut ApiKey) -> Result<T, TransitionError>,
) -> impl FnMut(ApiKey) -> Result<(Write, T), TransitionError> {
    move |mut key| transition(&mut key).map(|out| (Write::Update(key), out))
}

/// Manages keys over a synchronous [`KeyStore`]. `Send + Sync` when its store
/// is; wrap it in an `Arc` (or give it an `Arc` store and clone it) to share.
///
/// # Example
///
/// ```
/// use keyroll::{InMemoryStore, KeyId, KeyManager, NewKey, OldTokenDeletion, TokenMatch};
/// use time::OffsetDateTime;
///
/// let manager = KeyManager::new(InMemoryStore::new());
/// let mut rng = rand::rng();
/// let now = OffsetDateTime::now_utc();
/// let id = KeyId::new("acme-orders")?;
///
/// let (first, _) = manager.create_key(NewKey::new(id.clone()).label("orders"), now, &mut rng)?;
/// let (second, _) = manager.renew(&id, now, &mut rng)?;
///
/// // The token alone names its key (`Authorization: Bearer <token>`).
/// let who = manager.authenticate(first.expose_secret(), now)?;
/// assert_eq!((who.key_id.as_str(), who.matched), ("acme-orders", TokenMatch::Old));
/// manager.finalize(&id, OldTokenDeletion::Now, now)?;
/// assert!(manager.authenticate(first.expose_secret(), now).is_err());
///
/// // The two-credential form: the id given must be the one the token names.
/// assert_eq!(manager.authenticate_key(&id, second.expose_secret(), now)?.matched, TokenMatch::Current);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct KeyManager<S> {
    /// The one implementation, over the store seen as an async one whose
    /// futures are ready at once.
    inner: AsyncKeyManager<Ready<S>>,
}

/// Manages keys over an [`AsyncKeyStore`]: [`KeyManager`]'s methods as
/// `async fn`, with the same behaviour (`KeyManager` is this manager over
/// its sync store, whose futures are ready at once: one implementation;
/// only its authentication calls the sync store's `verify` directly).
///
/// Its futures are `Send` when the arguments are: to call `renew` or
/// `create_key` from a spawned task, pass `&mut keyroll::os_rng()` (see
/// [`os_rng`](crate::os_rng)) rather than `&mut rand::rng()`, which is
/// thread-local.
#[derive(Debug, Clone)]
pub struct AsyncKeyManager<S> {
    store: S,
    max_retries: u32,
    /// Uses noted by `authenticate`, when recording is on; shared by
    /// clones of the manager.
    usage: Option<Arc<UsageLog>>,
}

impl<S: AsyncKeyStore> AsyncKeyManager<S> {
    /// A manager over `store`, retrying conflicts up to
    /// [`DEFAULT_MAX_RETRIES`] times.
    pub fn new(store: S) -> Self {
        Self {
            store,
            max_retries: DEFAULT_MAX_RETRIES,
            usage: None,
        }
    }

    /// Makes [`authenticate`](Self::authenticate) and
    /// [`authenticate_key`](Self::authenticate_key) note each use (off by
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
    pub fn with_usage_recording(mut self, record_uses: bool) -> Self {
        self.usage = record_uses.then(Arc::default);
        self
    }

    /// Writes the uses noted since the last flush: for each key with
    /// notes, one compare-and-swap (retried on conflict like a
    /// transition) applying [`ApiKey::record_use`] to the first and the
    /// last use of each of its tokens, skipped when that changes nothing
    /// (a token's use is written at most once per `usage_resolution`). The
    /// first use of a new token under [`Decision::AfterNewTokenUse`]
    /// schedules the old token's deletion from *that use's* time, not the
    /// flush's. Noted times later than `now` are taken as `now`; uses of
    /// tokens a key no longer has, and of deleted keys, are dropped.
    /// Returns how many keys were written.
    ///
    /// A key that cannot be written (its record does not load, the store
    /// fails on it, it keeps changing) holds up no other: it is skipped,
    /// its notes are kept for the next flush, and the flush goes on.
    ///
    /// [`Decision::AfterNewTokenUse`]: crate::Decision::AfterNewTokenUse
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
        for (id, notes) in usage.take_all() {
            match self.record_noted(&id, &notes, now).await {
                Ok(changed) => written += usize::from(changed),
                Err(e) => {
                    usage.put_back(&id, notes);
                    failed.push((id, e));
                }
            }
        }
        if failed.is_empty() {
            Ok(written)
        } else {
            Err(FlushError { written, failed })
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

    /// Sets how many times a transition is retried after a version
    /// conflict before it fails with [`ManagerError::Conflict`].
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
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
        AsyncKeyStore::insert(&self.store, &key).await?;
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

    /// [`ApiKey::activate`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn activate(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.activate(now))).await
    }

    /// [`ApiKey::deactivate`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn deactivate(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.deactivate(now)))
            .await
    }

    /// [`ApiKey::set_label`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew); the transition error
    /// [`TransitionError::InvalidLabel`].
    pub async fn set_label(
        &self,
        id: &KeyId,
        label: &str,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.set_label(label, now)))
            .await
    }

    /// [`ApiKey::set_scopes`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn set_scopes(
        &self,
        id: &KeyId,
        scopes: Scopes,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.set_scopes(scopes.clone(), now)))
            .await
    }

    /// [`ApiKey::set_metadata`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn set_metadata(
        &self,
        id: &KeyId,
        metadata: Metadata,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.set_metadata(metadata.clone(), now)))
            .await
    }

    /// [`ApiKey::set_expiry`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn set_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        self.transition(id, updating(|key| key.set_expiry(expires_at, now)))
            .await
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

    /// [`ApiKey::delete_old_if_idle`] on the stored key.
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
        // This manager's own unflushed uses count.
        self.flush_key(id, now).await?;
        self.transition(id, updating(|key| key.delete_old_if_idle(min_idle, now)))
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
    /// events of the deletions it applied. Run it periodically.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`], or [`ManagerError::Conflict`] if a key
    /// kept changing; keys done before the error stay done.
    pub async fn housekeep_all(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<Event>, ManagerError<S::Error>> {
        let mut events = Vec::new();
        let mut after: Option<KeyId> = None;
        loop {
            let page = AsyncKeyStore::list(&self.store, after.as_ref(), HOUSEKEEPING_PAGE)
                .await
                .map_err(ManagerError::Store)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id().clone());
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
        Ok(events)
    }

    /// The stored key, if any.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, ManagerError<S::Error>> {
        AsyncKeyStore::get(&self.store, id)
            .await
            .map_err(ManagerError::Store)
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
        AsyncKeyStore::list(&self.store, after, limit)
            .await
            .map_err(ManagerError::Store)
    }

    /// Authenticates a request by its token alone (a one-string bearer
    /// token names its key). A token that is not well-formed
    /// ([`KeyId::from_token`] fails) is refused without any store read.
    /// Writes nothing, unless [usage recording](Self::with_usage_recording)
    /// is on.
    ///
    /// When the store answers from memory, the token is parsed once, by
    /// the key's `verify`; otherwise twice (here, for its key id, before
    /// the store read), which costs tens of nanoseconds against the read.
    ///
    /// # Errors
    ///
    /// [`AuthError::Verify`] with `Malformed`, or the key's refusal;
    /// [`AuthError::UnknownKey`]; [`AuthError::Store`].
    pub async fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        if let Some(answered) = self.authenticate_now(presented, now) {
            return answered;
        }
        let id = KeyId::from_token(presented)?;
        self.authenticate_waiting(&id, presented, now).await
    }

    /// [`authenticate`](Self::authenticate)'s answer if it needs no
    /// waiting: the token is malformed, or the store answers from memory
    /// ([`AsyncKeyStore::verify_now`]: `InMemoryStore`, a `CachedStore`
    /// holding the key). `None` otherwise, with nothing done: await
    /// `authenticate`. For callers that can go on at once without a future
    /// (a tower layer calling its inner service).
    ///
    /// # Errors
    ///
    /// As [`authenticate`](Self::authenticate).
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{AsyncKeyManager, InMemoryStore, KeyId};
    /// use time::OffsetDateTime;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let keys = AsyncKeyManager::new(InMemoryStore::new());
    /// let now = OffsetDateTime::now_utc();
    /// let (token, _) = keys.create_key(KeyId::new("acme")?, now, &mut rand::rng()).await?;
    /// let who = match keys.authenticate_now(token.expose_secret(), now) {
    ///     Some(answered) => answered?,
    ///     None => keys.authenticate(token.expose_secret(), now).await?,
    /// };
    /// assert_eq!(who.key_id.as_str(), "acme");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn authenticate_now(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Option<Result<Authenticated, AuthError<S::Error>>> {
        // The key the token's framing names: a store answering from
        // memory checks the whole token (as `verify` does), so it is
        // parsed once.
        let id = match token::framed_key(presented) {
            Ok(Some(id)) => KeyId::named(id),
            _ => return Some(Err(VerifyError::Malformed.into())),
        };
        let verified = self.store.verify_now(&id, presented, now)?;
        Some(self.checked(verified, presented, now))
    }

    /// [`authenticate_key`](Self::authenticate_key)'s answer if it needs no
    /// waiting, as [`authenticate_now`](Self::authenticate_now) is
    /// `authenticate`'s.
    ///
    /// # Errors
    ///
    /// As [`authenticate_key`](Self::authenticate_key).
    pub fn authenticate_key_now(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Option<Result<Authenticated, AuthError<S::Error>>> {
        let framed = token::framed_key(presented);
        if !matches!(framed, Ok(None)) && framed != Ok(Some(id.as_str())) {
            // Refused by its framing (or naming another key): the whole
            // check tells which.
            let refused = check_names(id, presented).err();
            return Some(Err(refused.unwrap_or(VerifyError::Mismatch).into()));
        }
        let verified = self.store.verify_now(id, presented, now)?;
        Some(self.checked(verified, presented, now))
    }

    /// Authenticates a request that names its key and token apart (the
    /// product's two-credential form, e.g. headers `X-Api-Key` and
    /// `X-Api-Token`). A token that is not well-formed, or that names
    /// another key, is refused without any store read. Tokens issued by
    /// keyroll 0.1, which name no key, are accepted here.
    ///
    /// # Errors
    ///
    /// [`AuthError::Verify`] (`Mismatch` for a token naming another
    /// key), [`AuthError::UnknownKey`], [`AuthError::Store`].
    pub async fn authenticate_key(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        if let Some(answered) = self.authenticate_key_now(id, presented, now) {
            return answered;
        }
        check_names(id, presented)?;
        self.authenticate_waiting(id, presented, now).await
    }

    /// [`ApiKey::revoke_token`] on the key the token names: the answer
    /// to a leaked token (for instance one reported by a secret
    /// scanner). `None`, with nothing written, for anything that is not
    /// a live token of a stored key: malformed, of an unknown key,
    /// wrong, already revoked or deleted.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub async fn revoke_token(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        match KeyId::from_token(presented) {
            Ok(id) => self.revoke_token_of(&id, presented, now).await,
            Err(_) => Ok(None),
        }
    }

    /// [`ApiKey::revoke_token`] on key `id`: the two-credential form of
    /// [`revoke_token`](Self::revoke_token), which also revokes a token in
    /// the framing of keyroll 0.1 (which names no key). `None`, with
    /// nothing written, for anything that is not a live token of that key.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub async fn revoke_token_of(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        if check_names(id, presented).is_err() {
            return Ok(None);
        }
        let revoked = self
            .transition(id, |mut key| {
                Ok(match key.revoke_token(presented, now) {
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

    /// Awaits the store's verification of `presented` (checked whole)
    /// against the key stored under `id`, noting the use if asked to.
    async fn authenticate_waiting(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let verified = AsyncKeyStore::verify(&self.store, id, presented, now).await;
        self.noted(verified, now)
    }

    /// `verify_now`'s answer to a token only framed: anything but an
    /// acceptance is `Malformed` for a malformed token (the store of an
    /// unknown id cannot tell), the store's answer otherwise.
    fn checked(
        &self,
        verified: Result<Verification, S::Error>,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let accepted = matches!(verified, Ok(Verification::Accepted(_)));
        if !accepted && token::named_key(presented).is_err() {
            return Err(VerifyError::Malformed.into());
        }
        self.noted(verified, now)
    }

    /// The store's answer as an authentication, its use noted if asked to.
    fn noted(
        &self,
        verified: Result<Verification, S::Error>,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let authenticated = auth_result(verified)?;
        if let Some(usage) = &self.usage {
            usage.note(&authenticated.key_id, authenticated.token_id, now);
        }
        Ok(authenticated)
    }

    /// Loads, applies `apply`, writes back with the loaded revision, and
    /// retries on conflict.
    async fn transition<T>(
        &self,
        id: &KeyId,
        mut apply: impl FnMut(ApiKey) -> Result<(Write, T), TransitionError>,
    ) -> Result<T, ManagerError<S::Error>> {
        for _ in 0..=self.max_retries {
            let key = AsyncKeyStore::get(&self.store, id)
                .await
                .map_err(ManagerError::Store)?
                .ok_or(ManagerError::NotFound)?;
            let loaded = key.revision();
            let (next, out) = apply(key)?;
            let result = match &next {
                Write::Update(key) => AsyncKeyStore::update(&self.store, key, loaded).await,
                Write::Delete => AsyncKeyStore::delete(&self.store, id, loaded).await,
                Write::Nothing => Ok(()),
            };
            if written(result)? {
                return Ok(out);
            }
        }
        Err(ManagerError::Conflict)
    }
}

impl<S: KeyStore> KeyManager<S> {
    /// A manager over `store`, retrying conflicts up to
    /// [`DEFAULT_MAX_RETRIES`] times.
    pub fn new(store: S) -> Self {
        KeyManager {
            inner: AsyncKeyManager::new(Ready(store)),
        }
    }

    /// Makes [`authenticate`](Self::authenticate) record each use: see
    /// [`AsyncKeyManager::with_usage_recording`].
    pub fn with_usage_recording(self, record_uses: bool) -> Self {
        KeyManager {
            inner: self.inner.with_usage_recording(record_uses),
        }
    }

    /// Sets how many times a transition is retried after a version
    /// conflict before it fails with [`ManagerError::Conflict`].
    pub fn with_max_retries(self, max_retries: u32) -> Self {
        KeyManager {
            inner: self.inner.with_max_retries(max_retries),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store().0
    }

    /// Issues a new key ([`ApiKey::issue`]) and stores it; returns its
    /// first token, shown once.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Transition`] for input `issue` refuses;
    /// [`ManagerError::AlreadyExists`] if the id is taken;
    /// [`ManagerError::Store`].
    pub fn create_key<R: rand_core::CryptoRng + ?Sized>(
        &self,
        new: impl Into<NewKey>,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), ManagerError<S::Error>> {
        ready(self.inner.create_key(new, now, rng))
    }

    /// [`ApiKey::renew`] on the stored key. The new token is returned only
    /// once it is stored.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Transition`],
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub fn renew<R: rand_core::CryptoRng + ?Sized>(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), ManagerError<S::Error>> {
        ready(self.inner.renew(id, now, rng))
    }

    /// [`ApiKey::finalize`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn finalize(
        &self,
        id: &KeyId,
        deletion: OldTokenDeletion,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.finalize(id, deletion, now))
    }

    /// [`ApiKey::delete_old`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn delete_old(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.delete_old(id, now))
    }

    /// [`ApiKey::undo_renewal`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn undo_renewal(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.undo_renewal(id, now))
    }

    /// [`ApiKey::activate`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn activate(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.activate(id, now))
    }

    /// [`ApiKey::deactivate`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn deactivate(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.deactivate(id, now))
    }

    /// [`ApiKey::set_label`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew); the transition error
    /// [`TransitionError::InvalidLabel`].
    pub fn set_label(
        &self,
        id: &KeyId,
        label: &str,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.set_label(id, label, now))
    }

    /// [`ApiKey::set_scopes`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn set_scopes(
        &self,
        id: &KeyId,
        scopes: Scopes,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.set_scopes(id, scopes, now))
    }

    /// [`ApiKey::set_metadata`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn set_metadata(
        &self,
        id: &KeyId,
        metadata: Metadata,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.set_metadata(id, metadata, now))
    }

    /// [`ApiKey::set_expiry`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub fn set_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.set_expiry(id, expires_at, now))
    }

    /// Deletes the key, irreversibly, and returns its `KeyDeleted` event.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`],
    /// [`ManagerError::Store`].
    pub fn delete_key(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.delete_key(id, now))
    }

    /// [`ApiKey::delete_old_if_idle`] on the stored key.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew); the transition error
    /// [`TransitionError::OldTokenInUse`] when the old token was used
    /// less than `min_idle` ago.
    pub fn delete_old_if_idle(
        &self,
        id: &KeyId,
        min_idle: time::Duration,
        now: OffsetDateTime,
    ) -> Result<Event, ManagerError<S::Error>> {
        ready(self.inner.delete_old_if_idle(id, min_idle, now))
    }

    /// [`ApiKey::housekeep`] on the stored key: applies a scheduled
    /// deletion of its old token that is due. Writes only when one is.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`],
    /// [`ManagerError::Store`].
    pub fn housekeep(
        &self,
        id: &KeyId,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        ready(self.inner.housekeep(id, now))
    }

    /// Housekeeps every stored key, paging through `list`, and returns the
    /// events of the deletions it applied. Run it periodically.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`], or [`ManagerError::Conflict`] if a key
    /// kept changing; keys done before the error stay done.
    pub fn housekeep_all(&self, now: OffsetDateTime) -> Result<Vec<Event>, ManagerError<S::Error>> {
        ready(self.inner.housekeep_all(now))
    }

    /// Writes the uses noted by `authenticate`: see
    /// [`AsyncKeyManager::flush_usage`].
    ///
    /// # Errors
    ///
    /// [`FlushError`], naming the keys that could not be written (their
    /// notes are kept for the next flush; every other key was written).
    pub fn flush_usage(&self, now: OffsetDateTime) -> Result<usize, FlushError<S::Error>> {
        ready(self.inner.flush_usage(now))
    }

    /// How many keys have uses noted and not yet flushed.
    pub fn pending_usage(&self) -> usize {
        self.inner.pending_usage()
    }

    /// The stored key, if any.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, ManagerError<S::Error>> {
        ready(self.inner.get(id))
    }

    /// At most `limit` keys with ids after `after`, in id order: one page
    /// of [`KeyStore::list`].
    ///
    /// # Errors
    ///
    /// [`ManagerError::Store`].
    pub fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, ManagerError<S::Error>> {
        ready(self.inner.list(after, limit))
    }

    /// Authenticates a request by its token alone (a one-string bearer
    /// token names its key). A token that is not well-formed
    /// ([`KeyId::from_token`] fails) is refused without any store read.
    /// Writes nothing, unless [usage recording](Self::with_usage_recording)
    /// is on.
    ///
    /// The token is parsed twice (here, for its key id, and by the
    /// key's `verify`); that costs tens of nanoseconds against a store
    /// read.
    ///
    /// # Errors
    ///
    /// [`AuthError::Verify`] with `Malformed`, or the key's refusal;
    /// [`AuthError::UnknownKey`]; [`AuthError::Store`].
    pub fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let id = KeyId::from_token(presented)?;
        self.verified(&id, presented, now)
    }

    /// Authenticates a request that names its key and token apart (the
    /// product's two-credential form, e.g. headers `X-Api-Key` and
    /// `X-Api-Token`). A token that is not well-formed, or that names
    /// another key, is refused without any store read. Tokens issued by
    /// keyroll 0.1, which name no key, are accepted here.
    ///
    /// # Errors
    ///
    /// [`AuthError::Verify`] (`Mismatch` for a token naming another
    /// key), [`AuthError::UnknownKey`], [`AuthError::Store`].
    pub fn authenticate_key(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        check_names(id, presented)?;
        self.verified(id, presented, now)
    }

    /// The store's verification of `presented` (checked whole) against
    /// the key stored under `id`, the use noted if asked to.
    fn verified(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, AuthError<S::Error>> {
        let verified = KeyStore::verify(&self.inner.store.0, id, presented, now);
        self.inner.noted(verified, now)
    }

    /// [`ApiKey::revoke_token`] on the key the token names: the answer
    /// to a leaked token (for instance one reported by a secret
    /// scanner). `None`, with nothing written, for anything that is not
    /// a live token of a stored key: malformed, of an unknown key,
    /// wrong, already revoked or deleted.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub fn revoke_token(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        ready(self.inner.revoke_token(presented, now))
    }

    /// [`ApiKey::revoke_token`] on key `id`: see
    /// [`AsyncKeyManager::revoke_token_of`].
    ///
    /// # Errors
    ///
    /// [`ManagerError::Conflict`], [`ManagerError::Store`].
    pub fn revoke_token_of(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Event>, ManagerError<S::Error>> {
        ready(self.inner.revoke_token_of(id, presented, now))
    }
}
