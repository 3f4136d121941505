//! `CachedStore`: what it serves from memory, for how long, and what makes
//! it read the store again.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::t0;
use keyroll::store::{
    Action, CachedStore, Call, InMemoryStore, Intercept, KeyStore, StoreError, Verification,
};
use keyroll::{ApiKey, AuthError, KeyId, KeyManager, VerifyError, conformance};
use pollster::block_on;

const LONG: Duration = Duration::from_secs(3600);

/// An `InMemoryStore` with its reads counted.
type Counted = Intercept<InMemoryStore>;

fn counted() -> Counted {
    Intercept::new(InMemoryStore::new())
}

/// How many reads reached the store.
trait Gets {
    fn gets(&self) -> u64;
}

impl Gets for Counted {
    fn gets(&self) -> u64 {
        self.count(Call::Get)
    }
}

fn key(id: &str) -> (ApiKey, keyroll::Token) {
    let (key, token, _) = ApiKey::issue(KeyId::new(id).unwrap(), t0(), &mut rand::rng()).unwrap();
    (key, token)
}

/// The store's verification of `token` (well-formed) against key `id`.
fn verified<S: KeyStore>(store: &S, id: &KeyId, token: &str) -> Verification
where
    S::Error: std::fmt::Debug,
{
    let token = keyroll::PresentedToken::parse(token).unwrap();
    block_on(store.verify(id, &token, t0())).unwrap()
}

fn accepted(v: Verification) -> bool {
    matches!(v, Verification::Accepted(_))
}

#[test]
fn the_suite_passes_on_a_cache_in_front_of_memory() {
    let suite = |capacity, negative| {
        block_on(conformance::run_all(|| async move {
            CachedStore::new(InMemoryStore::new(), capacity, LONG).with_negative_caching(negative)
        }))
    };
    suite(1000, LONG);
    // Tiny: every shard evicts all the time.
    suite(16, LONG);
    suite(1000, Duration::ZERO);
    suite(0, LONG);
}

#[test]
fn reads_are_served_from_memory_until_max_staleness() {
    let staleness = Duration::from_millis(200);
    let cache = CachedStore::new(counted(), 100, staleness);
    let (key, token) = key("acme");
    block_on(cache.inner().insert(&key, &[])).unwrap();
    for _ in 0..100 {
        assert!(accepted(verified(&cache, key.id(), token.expose_secret())));
    }
    assert_eq!(cache.inner().gets(), 1);
    std::thread::sleep(staleness + Duration::from_millis(50));
    assert!(accepted(verified(&cache, key.id(), token.expose_secret())));
    assert_eq!(cache.inner().gets(), 2, "read again once stale");
}

#[test]
fn another_writer_is_seen_after_an_invalidation() {
    let cache = CachedStore::new(counted(), 100, LONG);
    let (mut key, token) = key("acme");
    block_on(cache.insert(&key, &[])).unwrap();
    assert!(accepted(verified(&cache, key.id(), token.expose_secret())));
    // Another replica revokes the token, behind this cache's back.
    let loaded = key.revision();
    key.revoke_token(token.expose_secret(), t0()).unwrap();
    block_on(cache.inner().update(&key, loaded, &[])).unwrap();
    assert!(
        accepted(verified(&cache, key.id(), token.expose_secret())),
        "served from memory"
    );
    cache.invalidate(key.id());
    assert_eq!(
        verified(&cache, key.id(), token.expose_secret()),
        Verification::Refused {
            error: VerifyError::Mismatch,
            incarnation: key.revision().incarnation(),
        }
    );
    cache.invalidate_all();
    assert!(cache.is_empty());
}

#[test]
fn writes_through_the_cache_are_read_back_at_once() {
    let cache = CachedStore::new(counted(), 100, LONG);
    let (mut key, token) = key("acme");
    block_on(cache.insert(&key, &[])).unwrap();
    let loaded = key.revision();
    key.revoke_token(token.expose_secret(), t0()).unwrap();
    block_on(cache.update(&key, loaded, &[])).unwrap();
    assert_eq!(
        verified(&cache, key.id(), token.expose_secret()),
        Verification::Refused {
            error: VerifyError::Mismatch,
            incarnation: key.revision().incarnation(),
        },
        "the update is served"
    );
    assert_eq!(cache.inner().gets(), 0, "from memory");
    block_on(cache.delete(key.id(), key.revision(), &[])).unwrap();
    assert_eq!(
        verified(&cache, key.id(), token.expose_secret()),
        Verification::UnknownKey
    );
    assert_eq!(cache.inner().gets(), 1, "only the read after the delete");
}

#[test]
fn transitions_decide_on_the_stored_key_and_refresh_the_entry() {
    let manager = KeyManager::new(CachedStore::new(counted(), 100, LONG));
    let id = KeyId::new("acme").unwrap();
    let (token, _) = block_on(manager.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
    // Another replica deactivates the key: this cache still has it active.
    let inner = manager.store().inner();
    let mut stored = block_on(inner.get(&id)).unwrap().unwrap();
    let loaded = stored.revision();
    stored.deactivate(t0()).unwrap();
    block_on(inner.update(&stored, loaded, &[])).unwrap();
    assert!(
        block_on(manager.authenticate(token.expose_secret(), t0())).is_ok(),
        "stale"
    );
    // `activate` loads the stored key (inactive), not the cached one.
    block_on(manager.apply(&id, keyroll::Change::Activate, t0())).unwrap();
    assert!(block_on(manager.authenticate(token.expose_secret(), t0())).is_ok());
    block_on(manager.apply(&id, keyroll::Change::Deactivate, t0())).unwrap();
    assert!(matches!(
        block_on(manager.authenticate(token.expose_secret(), t0())),
        Err(AuthError::Verify(VerifyError::KeyInactive))
    ));
}

#[test]
fn a_refused_write_drops_the_entry() {
    let cache = CachedStore::new(counted(), 100, LONG);
    let (mut key, token) = key("acme");
    block_on(cache.insert(&key, &[])).unwrap();
    let stale = key.clone();
    let loaded = key.revision();
    key.revoke_token(token.expose_secret(), t0()).unwrap();
    block_on(cache.inner().update(&key, loaded, &[])).unwrap(); // behind the cache's back
    assert!(matches!(
        block_on(cache.update(&stale, loaded, &[])),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        verified(&cache, key.id(), token.expose_secret()),
        Verification::Refused {
            error: VerifyError::Mismatch,
            incarnation: key.revision().incarnation(),
        },
        "the next read went to the store"
    );
}

#[test]
fn a_read_racing_an_invalidation_does_not_keep_what_it_read() {
    // A store whose next read, once armed, says it started and waits for a go.
    type Hold = Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>;
    let hold: Arc<Hold> = Arc::default();
    let armed = hold.clone();
    let store = counted().on(Call::Get, move |_| {
        if let Some((started, go)) = armed.lock().unwrap().take() {
            started.send(()).unwrap();
            go.recv().unwrap();
        }
        Action::Forward
    });
    let cache = Arc::new(CachedStore::new(store, 100, LONG));
    let (mut key, token) = key("acme");
    block_on(cache.inner().insert(&key, &[])).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    *hold.lock().unwrap() = Some((started_tx, go_rx));
    let reader = {
        let cache = cache.clone();
        let id = key.id().clone();
        std::thread::spawn(move || block_on(cache.get(&id)).unwrap())
    };
    started.recv().unwrap(); // the reader has begun its read, not yet kept it
    let loaded = key.revision();
    key.revoke_token(token.expose_secret(), t0()).unwrap();
    block_on(cache.inner().update(&key, loaded, &[])).unwrap();
    cache.invalidate(key.id()); // the notification of that write
    go.send(()).unwrap();
    reader.join().unwrap().unwrap();
    // What the racing read found is not kept: the next one reads the store.
    let reads = cache.inner().gets();
    assert_eq!(
        verified(&cache, key.id(), token.expose_secret()),
        Verification::Refused {
            error: VerifyError::Mismatch,
            incarnation: key.revision().incarnation(),
        }
    );
    assert_eq!(cache.inner().gets(), reads + 1, "read again, not kept");
}

/// Unknown ids are answered from memory by default, under the staleness
/// bound of known ones: a probe of an unknown id costs no more store reads
/// than one of a known id. Asked for, they are not remembered.
#[test]
fn unknown_ids_are_remembered_unless_told_not_to() {
    let junk = KeyId::new("junk").unwrap();
    // A well-formed token naming an id no store holds.
    let junk_token = key("junk").1.expose_secret().to_owned();
    let default = CachedStore::new(counted(), 100, LONG);
    let (known, token) = key("known");
    block_on(default.insert(&known, &[])).unwrap();
    default.invalidate(known.id());
    for _ in 0..10 {
        assert_eq!(
            verified(&default, &junk, &junk_token),
            Verification::UnknownKey
        );
        assert!(accepted(verified(
            &default,
            known.id(),
            token.expose_secret()
        )));
    }
    assert_eq!(default.inner().gets(), 2, "one read of each id");
    // A key created elsewhere is seen once an invalidation announces it.
    let (late, late_token) = key("junk");
    block_on(default.inner().insert(&late, &[])).unwrap();
    default.invalidate(&junk);
    assert!(accepted(verified(
        &default,
        &junk,
        late_token.expose_secret()
    )));

    let plain = CachedStore::new(counted(), 100, LONG).with_negative_caching(Duration::ZERO);
    for _ in 0..10 {
        assert_eq!(
            verified(&plain, &junk, &junk_token),
            Verification::UnknownKey
        );
    }
    assert_eq!(plain.inner().gets(), 10);

    let negative =
        CachedStore::new(counted(), 100, LONG).with_negative_caching(Duration::from_secs(1));
    let manager = KeyManager::new(negative);
    for _ in 0..10 {
        assert!(matches!(
            verified(&manager.store(), &junk, &junk_token),
            Verification::UnknownKey
        ));
    }
    assert_eq!(manager.store().inner().gets(), 1);
    // A key created through the cache is seen at once.
    let (token, _) = block_on(manager.create_key(junk.clone(), t0(), &mut rand::rng())).unwrap();
    assert!(block_on(manager.authenticate(token.expose_secret(), t0())).is_ok());
}

#[test]
fn when_full_keys_in_use_stay_and_keys_read_once_go() {
    // 16 shards of 4 entries.
    let cache = CachedStore::new(counted(), 64, LONG);
    let (hot, hot_token) = key("hot");
    block_on(cache.inner().insert(&hot, &[])).unwrap();
    for i in 0..2000 {
        let (cold, _) = key(&format!("cold-{i}"));
        block_on(cache.inner().insert(&cold, &[])).unwrap();
        block_on(cache.get(cold.id())).unwrap();
        assert!(accepted(verified(
            &cache,
            hot.id(),
            hot_token.expose_secret()
        )));
        assert!(cache.len() <= 64);
    }
    // 2000 cold reads, and the hot key read once from the store.
    assert_eq!(cache.inner().gets(), 2001);
}

#[test]
fn a_cache_sized_for_every_key_holds_every_key() {
    let cache = CachedStore::new(counted(), 1000, LONG);
    let keys: Vec<_> = (0..1000).map(|i| key(&format!("k-{i}"))).collect();
    for (key, _) in &keys {
        block_on(cache.inner().insert(key, &[])).unwrap();
    }
    for _ in 0..3 {
        for (key, token) in &keys {
            assert!(accepted(verified(&cache, key.id(), token.expose_secret())));
        }
    }
    assert_eq!(cache.len(), 1000);
    assert_eq!(
        cache.inner().gets(),
        1000,
        "each key read once, however the ids hash"
    );
    // One more key than the capacity: something makes room, never more.
    let (extra, _) = key("extra");
    block_on(cache.inner().insert(&extra, &[])).unwrap();
    block_on(cache.get(extra.id())).unwrap();
    assert_eq!(cache.len(), 1000);
    cache.invalidate_all();
    assert!(cache.is_empty());
}

/// A flood of distinct junk ids costs one store read each, and never
/// evicts a key: unknown ids are remembered apart from the keys, under a
/// bound of their own.
#[test]
fn a_flood_of_junk_ids_evicts_no_key() {
    let cache = CachedStore::new(counted(), 64, LONG);
    let mut keys = Vec::new();
    for n in 0..32 {
        let (key, token) = key(&format!("real-{n}"));
        block_on(cache.insert(&key, &[])).unwrap();
        keys.push((key, token));
    }
    let junk_token = |n: usize| {
        let (key, token) = key(&format!("junk-{n}"));
        (key.id().clone(), token.expose_secret().to_owned())
    };
    let junk: Vec<_> = (0..2_000).map(junk_token).collect();
    for (id, token) in &junk {
        assert_eq!(verified(&cache, id, token), Verification::UnknownKey);
    }
    assert_eq!(cache.inner().gets(), 2_000, "one read per distinct junk id");
    for (key, token) in &keys {
        assert!(accepted(verified(&cache, key.id(), token.expose_secret())));
    }
    assert_eq!(cache.inner().gets(), 2_000, "every key still in memory");
    // At most a quarter of the capacity is spent on unknown ids (16 shards
    // of one each): the rest of the flood was not remembered.
    assert!(cache.len() <= 32 + 16, "{} entries", cache.len());
    let remembered = junk
        .iter()
        .filter(|(id, token)| {
            let before = cache.inner().gets();
            verified(&cache, id, token);
            cache.inner().gets() == before
        })
        .count();
    assert!((1..=16).contains(&remembered), "{remembered} remembered");
}
