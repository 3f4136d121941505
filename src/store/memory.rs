//! [`InMemoryStore`]: a store in a hash map, for tests and single-process services.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use time::OffsetDateTime;

use super::{AsyncKeyStore, KeyStore, StoreError};
use crate::id::KeyId;
use crate::key::ApiKey;
use crate::verify::{TokenMatch, VerifyError};

/// Keys in memory, safe to share between threads.
///
/// Reads (`get`, `verify`) take a shared lock, so they never wait for each
/// other; `verify` checks the token in place without copying the key. Writes
/// take the lock exclusively for the time of a map operation. Implements
/// both [`KeyStore`] and [`AsyncKeyStore`] (its futures are ready at once).
///
/// # Example
///
/// ```
/// use keyroll::{InMemoryStore, KeyManager, KeyId, Policy};
/// use time::OffsetDateTime;
///
/// let manager = KeyManager::new(InMemoryStore::default());
/// let now = OffsetDateTime::now_utc();
/// let id = KeyId::new("acme")?;
/// let (token, _event) = manager.create_key(id.clone(), "acme", Policy::default(), now, &mut rand::rng())?;
/// assert!(manager.authenticate(&id, token.expose_secret(), now).is_ok());
/// assert_eq!(manager.store().len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct InMemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<KeyId, ApiKey>,
    /// The same ids, in order, for `list`.
    order: BTreeSet<KeyId>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of keys stored.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while the lock was held cannot leave the maps half-written
    // (every write is one map operation after the checks), so a poisoned
    // lock is still consistent and is used as it is.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored key `id`, checked against `expected_version`.
    fn check_version<'a>(
        inner: &'a mut Inner,
        id: &KeyId,
        expected_version: u64,
    ) -> Result<&'a mut ApiKey, StoreError<Infallible>> {
        let stored = inner.keys.get_mut(id).ok_or(StoreError::NotFound)?;
        if stored.version() != expected_version {
            return Err(StoreError::Conflict {
                expected: expected_version,
                found: stored.version(),
            });
        }
        Ok(stored)
    }
}

impl KeyStore for InMemoryStore {
    type Error = Infallible;

    fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Infallible> {
        Ok(self.read().keys.get(id).cloned())
    }

    fn insert(&self, key: &ApiKey) -> Result<(), StoreError<Infallible>> {
        let mut inner = self.write();
        if inner.keys.contains_key(key.id()) {
            return Err(StoreError::AlreadyExists);
        }
        inner.order.insert(key.id().clone());
        inner.keys.insert(key.id().clone(), key.clone());
        Ok(())
    }

    fn update(&self, key: &ApiKey, expected_version: u64) -> Result<(), StoreError<Infallible>> {
        let mut inner = self.write();
        *Self::check_version(&mut inner, key.id(), expected_version)? = key.clone();
        Ok(())
    }

    fn delete(&self, id: &KeyId, expected_version: u64) -> Result<(), StoreError<Infallible>> {
        let mut inner = self.write();
        Self::check_version(&mut inner, id, expected_version)?;
        inner.keys.remove(id);
        inner.order.remove(id);
        Ok(())
    }

    fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Infallible> {
        let inner = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .order
            .range((start, Bound::Unbounded))
            .take(limit)
            .filter_map(|id| inner.keys.get(id).cloned())
            .collect())
    }

    fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Result<TokenMatch, VerifyError>>, Infallible> {
        Ok(self
            .read()
            .keys
            .get(id)
            .map(|key| key.verify(presented, now)))
    }
}

impl AsyncKeyStore for InMemoryStore {
    type Error = Infallible;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Infallible> {
        KeyStore::get(self, id)
    }

    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError<Infallible>> {
        KeyStore::insert(self, key)
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected_version: u64,
    ) -> Result<(), StoreError<Infallible>> {
        KeyStore::update(self, key, expected_version)
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected_version: u64,
    ) -> Result<(), StoreError<Infallible>> {
        KeyStore::delete(self, id, expected_version)
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Infallible> {
        KeyStore::list(self, after, limit)
    }

    async fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Result<TokenMatch, VerifyError>>, Infallible> {
        KeyStore::verify(self, id, presented, now)
    }
}
