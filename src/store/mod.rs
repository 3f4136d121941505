//! Storage: the [`KeyStore`] and [`AsyncKeyStore`] traits a backend implements.
//!
//! A store keeps [`ApiKey`] records by [`KeyId`] and offers optimistic
//! concurrency: every write names the [`Revision`] it expects to replace, so
//! two writers that loaded the same revision cannot both succeed, and a copy
//! loaded before the key was deleted and created again matches nothing. The
//! managers build every transition on that.
//!
//! The contract a backend keeps is in [`KeyStore`]'s docs.

mod cached;
mod dynamic;
mod memory;

pub use cached::CachedStore;
pub use dynamic::{DynKeyStore, DynStoreError};
pub use memory::InMemoryStore;

use std::future::Future;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::id::KeyId;
use crate::key::ApiKey;
use crate::revision::Revision;
use crate::verify::{Authenticated, VerifyError};

/// What a store found when it verified a token against the key stored
/// under an id ([`KeyStore::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// The token is a live token of the key, and the key accepts it.
    Accepted(Authenticated),
    /// The key refused the token.
    Refused(VerifyError),
    /// No key is stored under the id.
    UnknownKey,
}

impl Verification {
    /// The answer for `key` (`None`: not stored) to `presented` at `now`,
    /// as a store that loaded the key gives it.
    pub fn of(key: Option<&ApiKey>, presented: &str, now: OffsetDateTime) -> Verification {
        match key.map(|key| key.authenticate(presented, now)) {
            None => Verification::UnknownKey,
            Some(Ok(authenticated)) => Verification::Accepted(authenticated),
            Some(Err(refused)) => Verification::Refused(refused),
        }
    }
}

/// Why a write to a store was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError<E> {
    /// `insert` of an id that is already stored.
    #[error("a key with this id already exists")]
    AlreadyExists,
    /// `update` or `delete` of an id that is not stored.
    #[error("key not found")]
    NotFound,
    /// `update` or `delete` expected another revision: someone else changed
    /// the key (or deleted it and created another under its id) since it
    /// was loaded. Reload it and try again.
    #[error(
        "revision conflict: expected revision {expected}, found {found}; reload the key and try again"
    )]
    Conflict {
        /// The revision the caller expected.
        expected: Revision,
        /// The revision stored.
        found: Revision,
    },
    /// The backend itself failed.
    #[error("store backend error: {0}")]
    Backend(#[source] E),
}

impl<E> StoreError<E> {
    /// The same refusal with its backend error mapped by `f`: for stores
    /// that wrap other stores.
    pub fn map_backend<F>(self, f: impl FnOnce(E) -> F) -> StoreError<F> {
        match self {
            StoreError::AlreadyExists => StoreError::AlreadyExists,
            StoreError::NotFound => StoreError::NotFound,
            StoreError::Conflict { expected, found } => StoreError::Conflict { expected, found },
            StoreError::Backend(e) => StoreError::Backend(f(e)),
        }
    }
}

/// A synchronous store of API keys.
///
/// # The contract
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
/// - A backend that keeps the id or the revision outside the record (in
///   columns) refuses, as a `Backend` error, a record whose id or revision
///   differs from its row's.
/// - `list(after, limit)` returns at most `limit` keys, ordered by `KeyId`
///   (byte order of the id strings, as `KeyId`'s `Ord`), all strictly
///   greater than `after` when it is given. Paging with the last id of each
///   page visits every key once.
/// - Every error of the backend itself is `Backend(e)`, never a panic.
///
/// Run [`conformance::run_all`](crate::conformance::run_all) (feature
/// `conformance`) on your store to check all of this.
pub trait KeyStore: Send + Sync {
    /// The backend's own error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The key stored under `id`, if any.
    ///
    /// # Errors
    ///
    /// The backend's error.
    fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Self::Error>;

    /// Stores a new key.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] if its id is taken; `Backend`.
    fn insert(&self, key: &ApiKey) -> Result<(), StoreError<Self::Error>>;

    /// Replaces the stored key if its revision is `expected` (and `key` is
    /// of the same incarnation).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Conflict`], `Backend`.
    fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<Self::Error>>;

    /// Removes the stored key if its revision is `expected`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Conflict`], `Backend`.
    fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<Self::Error>>;

    /// At most `limit` keys with ids strictly after `after`, ordered by id.
    ///
    /// # Errors
    ///
    /// The backend's error.
    fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Self::Error>;

    /// Verifies `presented` against the key stored under `id`, as
    /// [`ApiKey::verify`] does. The default loads the key with `get`; a
    /// store that can verify in place, without copying the key, overrides
    /// it.
    ///
    /// # Errors
    ///
    /// The backend's error.
    fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Verification, Self::Error> {
        Ok(Verification::of(self.get(id)?.as_ref(), presented, now))
    }
}

/// An asynchronous store of API keys: [`KeyStore`]'s methods as futures,
/// with the same contract. Needs no particular runtime.
pub trait AsyncKeyStore: Send + Sync {
    /// The backend's own error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// See [`KeyStore::get`].
    fn get(&self, id: &KeyId) -> impl Future<Output = Result<Option<ApiKey>, Self::Error>> + Send;

    /// See [`KeyStore::insert`].
    fn insert(
        &self,
        key: &ApiKey,
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// See [`KeyStore::update`].
    fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// See [`KeyStore::delete`].
    fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
    ) -> impl Future<Output = Result<(), StoreError<Self::Error>>> + Send;

    /// See [`KeyStore::list`].
    fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ApiKey>, Self::Error>> + Send;

    /// See [`KeyStore::verify`].
    fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Verification, Self::Error>> + Send {
        async move {
            Ok(Verification::of(
                self.get(id).await?.as_ref(),
                presented,
                now,
            ))
        }
    }

    /// [`verify`](Self::verify)'s answer when the store has it at hand,
    /// without waiting (a store in memory, a cache holding the key), or
    /// `None`, and the caller awaits `verify`. What it answers must be what
    /// `verify` would. The managers ask it first, so that an answer from
    /// memory costs no future; the default answers `None`.
    ///
    /// The managers ask it with a token whose framing names `id` but whose
    /// secret and checksum they have not checked (`verify`, through
    /// [`ApiKey::verify`], checks them), so that a well-formed token is
    /// parsed once. A store that would read storage to answer must not: a
    /// malformed token is to cost no read. Answer `None` for it
    /// ([`KeyId::from_token`] fails), and the managers refuse it.
    ///
    /// # Errors
    ///
    /// The backend's error, as `verify` would return it.
    fn verify_now(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Option<Result<Verification, Self::Error>> {
        let _ = (id, presented, now);
        None
    }
}

impl<E> StoreError<E> {
    /// The refusal of a compare-and-swap expecting `expected` over a stored
    /// key at `found`, for a write of a key at `writing`; `None` when the
    /// write may go ahead. Backends that compare in memory use it to keep
    /// the rule in one place.
    pub fn check_revision(
        expected: Revision,
        found: Revision,
        writing: Option<Revision>,
    ) -> Result<(), StoreError<E>> {
        let same_key = writing.is_none_or(|w| w.incarnation() == expected.incarnation());
        if found == expected && same_key {
            Ok(())
        } else {
            Err(StoreError::Conflict { expected, found })
        }
    }
}

/// A sync store seen as an async one: its futures are ready at once. The
/// sync [`KeyManager`](crate::KeyManager) drives the async one over it
/// (with [`ready`]), [`CachedStore`] does the same, and the conformance
/// suite runs its behaviours on it.
#[derive(Debug, Clone)]
pub(crate) struct Ready<S>(pub(crate) S);

/// Runs a future over [`Ready`] stores to its end: every such future is
/// ready at its first poll.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => unreachable!("a sync store's futures are ready at once"),
    }
}

impl<S: KeyStore> AsyncKeyStore for Ready<S> {
    type Error = S::Error;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, S::Error> {
        self.0.get(id)
    }
    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError<S::Error>> {
        self.0.insert(key)
    }
    async fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<S::Error>> {
        self.0.update(key, expected)
    }
    async fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<S::Error>> {
        self.0.delete(id, expected)
    }
    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, S::Error> {
        self.0.list(after, limit)
    }
    async fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Verification, S::Error> {
        self.0.verify(id, presented, now)
    }
}

/// Implements both traits for a pointer type by forwarding to its target.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<S: KeyStore + ?Sized> KeyStore for $ptr {
            type Error = S::Error;
            fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, S::Error> {
                (**self).get(id)
            }
            fn insert(&self, key: &ApiKey) -> Result<(), StoreError<S::Error>> {
                (**self).insert(key)
            }
            fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<S::Error>> {
                (**self).update(key, expected)
            }
            fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<S::Error>> {
                (**self).delete(id, expected)
            }
            fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, S::Error> {
                (**self).list(after, limit)
            }
            fn verify(
                &self,
                id: &KeyId,
                presented: &str,
                now: OffsetDateTime,
            ) -> Result<Verification, S::Error> {
                (**self).verify(id, presented, now)
            }
        }

        impl<S: AsyncKeyStore + ?Sized> AsyncKeyStore for $ptr {
            type Error = S::Error;
            fn get(&self, id: &KeyId) -> impl Future<Output = Result<Option<ApiKey>, S::Error>> + Send {
                (**self).get(id)
            }
            fn insert(&self, key: &ApiKey) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).insert(key)
            }
            fn update(
                &self,
                key: &ApiKey,
                expected: Revision,
            ) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).update(key, expected)
            }
            fn delete(
                &self,
                id: &KeyId,
                expected: Revision,
            ) -> impl Future<Output = Result<(), StoreError<S::Error>>> + Send {
                (**self).delete(id, expected)
            }
            fn list(
                &self,
                after: Option<&KeyId>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<ApiKey>, S::Error>> + Send {
                (**self).list(after, limit)
            }
            fn verify(
                &self,
                id: &KeyId,
                presented: &str,
                now: OffsetDateTime,
            ) -> impl Future<Output = Result<Verification, S::Error>> + Send {
                (**self).verify(id, presented, now)
            }
            fn verify_now(
                &self,
                id: &KeyId,
                presented: &str,
                now: OffsetDateTime,
            ) -> Option<Result<Verification, S::Error>> {
                (**self).verify_now(id, presented, now)
            }
        }
    )*};
}

forward!(&S, Box<S>, Arc<S>);
