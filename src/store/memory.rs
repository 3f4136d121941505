//! [`InMemoryStore`]: keys in memory, compact and cheap to verify against.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use time::OffsetDateTime;

use super::{AsyncKeyStore, KeyStore, StoreError, Verification};
use crate::attributes::{Metadata, Scopes};
use crate::id::KeyId;
use crate::id::TokenId;
use crate::key::{ApiKey, Decision, KeyStatus, Renewal, TokenInfo};
use crate::policy::{Expiry, Policy};
use crate::revision::Revision;
use crate::token::TokenHash;
use crate::verify::{KeyView, TokenView};

/// Keys in memory, safe to share between threads.
///
/// Reads (`get`, `verify`, `list`) take a shared lock, so they never wait
/// for each other; `verify` checks the token in place without copying the
/// key. Writes take the lock exclusively for the time of one table
/// operation. Implements both [`KeyStore`] and [`AsyncKeyStore`] (its futures
/// are ready at once).
///
/// Keys are kept compactly (a policy or a set of scopes shared by many keys
/// is stored once, and never freed while the store lives), so a million keys
/// take about 270 MB (see `BENCHMARKS.md`). `list` sorts the
/// ids once after keys were added or removed, then pages by binary search.
/// It holds at most `u32::MAX` keys; inserting more panics.
///
/// # Example
///
/// ```
/// use keyroll::{InMemoryStore, KeyManager, KeyId};
/// use time::OffsetDateTime;
///
/// let manager = KeyManager::new(InMemoryStore::default());
/// let now = OffsetDateTime::now_utc();
/// let id = KeyId::new("acme")?;
/// let (token, _event) = manager.create_key(id.clone(), now, &mut rand::rng())?;
/// assert_eq!(manager.authenticate(token.expose_secret(), now)?.key_id, id);
/// assert_eq!(manager.store().len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct InMemoryStore {
    inner: RwLock<Inner>,
    /// Slot numbers in id order, or `None` after an insert or delete.
    order: Mutex<Option<Vec<u32>>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The keys, densely packed.
    slots: Vec<Slot>,
    /// Slot numbers, hashed by the id of the key in the slot.
    index: HashTable<u32>,
    /// foldhash, seeded per store: several times faster than SipHash on
    /// short ids. Only the store's own inserts add ids (a request's id is
    /// looked up, never added), so no one outside can pile up colliding
    /// ids, which is what SipHash would guard against.
    hasher: foldhash::fast::RandomState,
    /// Every distinct policy, stored once.
    policies: Interned<Policy>,
    /// Every distinct set of scopes, stored once: keys holding equal sets
    /// share one (services have few permission sets and many keys).
    scope_sets: Interned<Scopes>,
}

/// Distinct values, each stored once and named by a number.
#[derive(Debug)]
struct Interned<T> {
    values: Vec<T>,
    numbers: HashMap<T, u32>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            values: Vec::new(),
            numbers: HashMap::new(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Interned<T> {
    /// The number of `value`, stored if it is new.
    fn number(&mut self, value: &T) -> u32 {
        if let Some(&n) = self.numbers.get(value) {
            return n;
        }
        let n = self.values.len() as u32;
        self.values.push(value.clone());
        self.numbers.insert(value.clone(), n);
        n
    }
}

impl<T> std::ops::Index<u32> for Interned<T> {
    type Output = T;

    fn index(&self, n: u32) -> &T {
        &self.values[n as usize]
    }
}

/// An [`ApiKey`], compactly: its policy and scopes replaced by numbers,
/// its tokens without their due dates (always creation + renewal period),
/// and what most keys lack (a revoked token, an expiry) in a box that is
/// not there when it would be empty. What `verify` hands out (scopes,
/// metadata) is in the slot itself: no box to follow per request.
#[derive(Debug)]
struct Slot {
    id: KeyId,
    label: Box<str>,
    incarnation: u64,
    version: u64,
    created_at: OffsetDateTime,
    policy: u32,
    scopes: u32,
    status: KeyStatus,
    metadata: Metadata,
    current: SlotToken,
    renewal: Option<Box<(SlotToken, Decision)>>,
    rare: Option<Box<Rare>>,
}

/// A [`TokenInfo`] without its due date, and without `revoked_at` (only a
/// current token can be revoked: that is in [`Rare`]).
#[derive(Debug)]
struct SlotToken {
    id: TokenId,
    created_at: OffsetDateTime,
    hash: TokenHash,
    last_used_at: Option<OffsetDateTime>,
    legacy: bool,
}

/// What most keys do not have.
#[derive(Debug)]
struct Rare {
    current_revoked_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
}

impl SlotToken {
    fn pack(token: &TokenInfo) -> SlotToken {
        SlotToken {
            id: token.id,
            created_at: token.created_at,
            hash: token.hash,
            last_used_at: token.last_used_at,
            legacy: token.legacy,
        }
    }

    fn unpack(&self, policy: &Policy, revoked_at: Option<OffsetDateTime>) -> TokenInfo {
        TokenInfo {
            id: self.id,
            created_at: self.created_at,
            due_at: self.due_at(policy),
            hash: self.hash,
            last_used_at: self.last_used_at,
            revoked_at,
            legacy: self.legacy,
        }
    }

    /// The due date a key's tokens always have (checked on load).
    fn due_at(&self, policy: &Policy) -> OffsetDateTime {
        self.created_at.saturating_add(policy.renewal_period)
    }

    /// The due date is only read under [`Expiry::Enforced`]; it is not
    /// computed on `verify`'s path otherwise.
    fn view(&self, policy: &Policy, revoked: bool) -> TokenView<'_> {
        TokenView {
            id: &self.id,
            hash: &self.hash,
            due_at: match policy.expiry {
                Expiry::Enforced => self.due_at(policy),
                Expiry::Advisory => self.created_at,
            },
            revoked,
            legacy: self.legacy,
        }
    }
}

/// What a slot without a [`Rare`] box has: nothing.
static EMPTY: Rare = Rare {
    current_revoked_at: None,
    expires_at: None,
};

impl Inner {
    fn hash(&self, id: &KeyId) -> u64 {
        self.hasher.hash_one(id)
    }

    fn find(&self, id: &KeyId) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(self.hash(id), |&n| slots[n as usize].id == *id)
            .map(|&n| n as usize)
    }

    fn pack(&mut self, key: &ApiKey) -> Slot {
        let policy = self.policies.number(&key.policy);
        let scopes = self.scope_sets.number(&key.scopes);
        let rare = Rare {
            current_revoked_at: key.current.revoked_at,
            expires_at: key.expires_at,
        };
        let empty = rare.current_revoked_at.is_none() && rare.expires_at.is_none();
        Slot {
            id: key.id.clone(),
            label: key.label.clone(),
            incarnation: key.incarnation,
            version: key.version,
            created_at: key.created_at,
            policy,
            scopes,
            status: key.status,
            metadata: key.metadata.clone(),
            current: SlotToken::pack(&key.current),
            renewal: key
                .renewal
                .as_ref()
                .map(|r| Box::new((SlotToken::pack(&r.old), r.decision))),
            rare: (!empty).then(|| Box::new(rare)),
        }
    }

    fn unpack(&self, slot: &Slot) -> ApiKey {
        let policy = self.policies[slot.policy];
        let rare = slot.rare.as_deref().unwrap_or(&EMPTY);
        ApiKey {
            id: slot.id.clone(),
            label: slot.label.clone(),
            status: slot.status,
            incarnation: slot.incarnation,
            version: slot.version,
            created_at: slot.created_at,
            policy,
            scopes: self.scope_sets[slot.scopes].clone(),
            metadata: slot.metadata.clone(),
            expires_at: rare.expires_at,
            current: slot.current.unpack(&policy, rare.current_revoked_at),
            renewal: slot.renewal.as_deref().map(|(old, decision)| {
                Box::new(Renewal {
                    old: old.unpack(&policy, None),
                    decision: *decision,
                })
            }),
        }
    }

    fn view<'a>(&'a self, slot: &'a Slot) -> KeyView<'a> {
        let policy = &self.policies[slot.policy];
        let rare = slot.rare.as_deref().unwrap_or(&EMPTY);
        KeyView {
            id: &slot.id,
            policy,
            status: slot.status,
            expires_at: rare.expires_at,
            scopes: &self.scope_sets[slot.scopes],
            metadata: &slot.metadata,
            current: slot.current.view(policy, rare.current_revoked_at.is_some()),
            old: slot
                .renewal
                .as_deref()
                .map(|(old, decision)| (old.view(policy, false), *decision)),
        }
    }

    /// The slot of key `id`, checked against `expected` for a write of a key
    /// at `writing` (none for a delete).
    fn check_revision(
        &self,
        id: &KeyId,
        expected: Revision,
        writing: Option<Revision>,
    ) -> Result<usize, StoreError<Infallible>> {
        let n = self.find(id).ok_or(StoreError::NotFound)?;
        let slot = &self.slots[n];
        let found = Revision::new(slot.incarnation, slot.version);
        StoreError::check_revision(expected, found, writing).map(|()| n)
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of keys stored.
    pub fn len(&self) -> usize {
        self.read().slots.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while a lock was held cannot leave the tables half-written
    // (each write checks first, then changes them in steps that cannot
    // fail), so a poisoned lock is still consistent and is used as it is.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the cached id order. Called with the write lock still held, so
    /// that no `list` can pair the changed slots with the old order.
    fn forget_order(&self) {
        *self.order.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl KeyStore for InMemoryStore {
    type Error = Infallible;

    fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Infallible> {
        let inner = self.read();
        Ok(inner.find(id).map(|n| inner.unpack(&inner.slots[n])))
    }

    fn insert(&self, key: &ApiKey) -> Result<(), StoreError<Infallible>> {
        let mut inner = self.write();
        if inner.find(key.id()).is_some() {
            return Err(StoreError::AlreadyExists);
        }
        let n = u32::try_from(inner.slots.len())
            .unwrap_or_else(|_| panic!("InMemoryStore holds at most {} keys", u32::MAX));
        let slot = inner.pack(key);
        let hash = inner.hash(key.id());
        let Inner {
            slots,
            index,
            hasher,
            ..
        } = &mut *inner;
        slots.push(slot);
        index.insert_unique(hash, n, |&m| hasher.hash_one(&slots[m as usize].id));
        self.forget_order();
        drop(inner);
        Ok(())
    }

    fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<Infallible>> {
        let mut inner = self.write();
        let n = inner.check_revision(key.id(), expected, Some(key.revision()))?;
        inner.slots[n] = inner.pack(key);
        Ok(())
    }

    fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<Infallible>> {
        let mut inner = self.write();
        let n = inner.check_revision(id, expected, None)?;
        let Inner {
            slots,
            index,
            hasher,
            ..
        } = &mut *inner;
        // Remove the slot number of `id`, move the last slot into its place
        // and renumber it.
        let hash = hasher.hash_one(id);
        if let Ok(entry) = index.find_entry(hash, |&m| m as usize == n) {
            entry.remove();
        }
        let last = slots.len() - 1;
        if n != last {
            let moved = hasher.hash_one(&slots[last].id);
            if let Some(number) = index.find_mut(moved, |&m| m as usize == last) {
                *number = n as u32;
            }
        }
        slots.swap_remove(n);
        self.forget_order();
        drop(inner);
        Ok(())
    }

    fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Infallible> {
        let inner = self.read();
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let order = order.get_or_insert_with(|| {
            let mut order: Vec<u32> = (0..inner.slots.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| {
                inner.slots[a as usize].id.cmp(&inner.slots[b as usize].id)
            });
            order
        });
        let start = after.map_or(0, |after| {
            order.partition_point(|&n| inner.slots[n as usize].id <= *after)
        });
        Ok(order[start..]
            .iter()
            .take(limit)
            .map(|&n| inner.unpack(&inner.slots[n as usize]))
            .collect())
    }

    fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Verification, Infallible> {
        let inner = self.read();
        Ok(match inner.find(id) {
            None => Verification::UnknownKey,
            Some(n) => match inner.view(&inner.slots[n]).authenticate(presented, now) {
                Ok(authenticated) => Verification::Accepted(authenticated),
                Err(refused) => Verification::Refused(refused),
            },
        })
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

    async fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<Infallible>> {
        KeyStore::update(self, key, expected)
    }

    async fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<Infallible>> {
        KeyStore::delete(self, id, expected)
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Infallible> {
        KeyStore::list(self, after, limit)
    }

    async fn verify(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Verification, Infallible> {
        KeyStore::verify(self, id, presented, now)
    }

    fn verify_now(
        &self,
        id: &KeyId,
        presented: &str,
        now: OffsetDateTime,
    ) -> Option<Result<Verification, Infallible>> {
        Some(KeyStore::verify(self, id, presented, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `list` racing inserts and deletes never pairs a changed table with
    /// an id order computed before the change (0.1 could index out of
    /// bounds here: `delete` forgot the order after releasing its lock).
    #[test]
    fn list_racing_deletes_never_sees_a_stale_order() {
        let store = InMemoryStore::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let keys: Vec<ApiKey> = (0..64)
            .map(|i| {
                let id = KeyId::new(format!("k{i:02}")).unwrap();
                ApiKey::issue(id, OffsetDateTime::UNIX_EPOCH, &mut rng)
                    .unwrap()
                    .0
            })
            .collect();
        for round in 0..200 {
            for key in &keys {
                KeyStore::insert(&store, key).unwrap();
            }
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for key in keys.iter().rev() {
                        KeyStore::delete(&store, key.id(), key.revision()).unwrap();
                    }
                });
                scope.spawn(|| {
                    while !store.is_empty() {
                        let listed = KeyStore::list(&store, None, 100).unwrap();
                        assert!(
                            listed.windows(2).all(|w| w[0].id() < w[1].id()),
                            "round {round}"
                        );
                    }
                });
            });
        }
    }

    #[test]
    fn deleting_renumbers_the_moved_slot() {
        let store = InMemoryStore::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ids: Vec<KeyId> = (0..50)
            .map(|i| KeyId::new(format!("k{i:02}")).unwrap())
            .collect();
        for id in &ids {
            let key = ApiKey::issue(id.clone(), OffsetDateTime::UNIX_EPOCH, &mut rng)
                .unwrap()
                .0;
            KeyStore::insert(&store, &key).unwrap();
        }
        for id in ids.iter().step_by(3) {
            let revision = KeyStore::get(&store, id).unwrap().unwrap().revision();
            KeyStore::delete(&store, id, revision).unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            let found = KeyStore::get(&store, id).unwrap();
            assert_eq!(
                found.map(|k| k.id().clone()),
                (i % 3 != 0).then(|| id.clone()),
                "{id}"
            );
        }
        let listed: Vec<KeyId> = KeyStore::list(&store, None, 100)
            .unwrap()
            .iter()
            .map(|k| k.id().clone())
            .collect();
        let expected: Vec<KeyId> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(listed, expected);
    }
}
