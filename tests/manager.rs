//! The managers: transitions over a store, retries on conflict, tokens
//! handed out only after their write, and authentication.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::t0;
use keyroll::{
    ApiKey, AsyncKeyManager, AuthError, CachedStore, Event, InMemoryStore, KeyId, KeyManager,
    KeyState, KeyStatus, KeyStore, ManagerError, NewKey, OldTokenDeletion, Revision, StoreError,
    TokenMatch, TransitionError, VerifyError,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn id() -> KeyId {
    KeyId::new("acme-orders").unwrap()
}

#[test]
fn the_whole_story_through_the_manager() {
    let manager = KeyManager::new(InMemoryStore::new());
    let mut rng = rand::rng();
    let (first, event) = manager
        .create_key(NewKey::new(id()).label("orders"), t0(), &mut rng)
        .unwrap();
    assert!(matches!(event, Event::KeyIssued { version: 1, .. }));
    assert_eq!(
        manager
            .authenticate_key(&id(), first.expose_secret(), t0())
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );

    let (second, event) = manager.renew(&id(), t0(), &mut rng).unwrap();
    assert_eq!(event.version(), 2);
    assert_eq!(
        manager
            .authenticate_key(&id(), first.expose_secret(), t0())
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Old
    );
    assert_eq!(
        manager
            .authenticate_key(&id(), second.expose_secret(), t0())
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );

    manager
        .finalize(&id(), OldTokenDeletion::Later, t0())
        .unwrap();
    assert!(matches!(
        manager.finalize(&id(), OldTokenDeletion::Now, t0()),
        Err(ManagerError::Transition(TransitionError::AlreadyFinalized))
    ));
    manager.delete_old(&id(), t0()).unwrap();
    assert!(matches!(
        manager
            .authenticate_key(&id(), first.expose_secret(), t0())
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));

    let (third, _) = manager.renew(&id(), t0(), &mut rng).unwrap();
    manager.undo_renewal(&id(), t0()).unwrap();
    assert!(
        manager
            .authenticate_key(&id(), third.expose_secret(), t0())
            .map(|a| a.matched)
            .is_err()
    );

    manager.deactivate(&id(), t0()).unwrap();
    assert!(matches!(
        manager
            .authenticate_key(&id(), second.expose_secret(), t0())
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::KeyInactive))
    ));
    manager.activate(&id(), t0()).unwrap();

    let key = manager.get(&id()).unwrap().unwrap();
    assert_eq!(key.version(), 8);
    let event = manager.delete_key(&id(), t0()).unwrap();
    assert!(matches!(event, Event::KeyDeleted { version: 9, .. }));
    assert!(manager.get(&id()).unwrap().is_none());
    assert!(matches!(
        manager
            .authenticate_key(&id(), second.expose_secret(), t0())
            .map(|a| a.matched),
        Err(AuthError::UnknownKey)
    ));
    assert!(matches!(
        manager.renew(&id(), t0(), &mut rng),
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        manager.delete_key(&id(), t0()),
        Err(ManagerError::NotFound)
    ));
}

#[test]
fn create_key_with_a_taken_id_is_already_exists() {
    let manager = KeyManager::new(InMemoryStore::new());
    manager
        .create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())
        .unwrap();
    let before = manager.get(&id()).unwrap();
    assert!(matches!(
        manager.create_key(NewKey::new(id()).label("b"), t0(), &mut rand::rng()),
        Err(ManagerError::AlreadyExists)
    ));
    assert_eq!(manager.get(&id()).unwrap(), before);
}

#[test]
fn a_refused_transition_writes_nothing() {
    let manager = KeyManager::new(InMemoryStore::new());
    manager
        .create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())
        .unwrap();
    let before = manager.get(&id()).unwrap();
    for result in [
        manager.finalize(&id(), OldTokenDeletion::Now, t0()),
        manager.delete_old(&id(), t0()),
        manager.undo_renewal(&id(), t0()),
        manager.activate(&id(), t0()),
    ] {
        assert!(matches!(result, Err(ManagerError::Transition(_))));
    }
    assert_eq!(manager.get(&id()).unwrap(), before);
}

/// A store that lets another writer change the key just before each of the
/// first `interfere` updates, and can fail updates outright.
#[derive(Default)]
struct Contested {
    inner: InMemoryStore,
    interfere: AtomicU32,
    fail_updates: bool,
    updates: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("disk on fire")]
struct DiskOnFire;

impl KeyStore for Contested {
    type Error = DiskOnFire;
    fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, DiskOnFire> {
        Ok(KeyStore::get(&self.inner, id).unwrap())
    }
    fn insert(&self, key: &ApiKey) -> Result<(), StoreError<DiskOnFire>> {
        KeyStore::insert(&self.inner, key).map_err(|_| StoreError::AlreadyExists)
    }
    fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<DiskOnFire>> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        if self.fail_updates {
            return Err(StoreError::Backend(DiskOnFire));
        }
        if self.interfere.load(Ordering::SeqCst) > 0 {
            self.interfere.fetch_sub(1, Ordering::SeqCst);
            // Another replica toggles the key's status twice in between.
            let mut other = KeyStore::get(&self.inner, key.id()).unwrap().unwrap();
            let loaded = other.revision();
            other.deactivate(t0()).unwrap();
            KeyStore::update(&self.inner, &other, loaded).unwrap();
            let loaded = other.revision();
            other.activate(t0()).unwrap();
            KeyStore::update(&self.inner, &other, loaded).unwrap();
        }
        KeyStore::update(&self.inner, key, expected).map_err(|e| match e {
            StoreError::Conflict { expected, found } => StoreError::Conflict { expected, found },
            _ => StoreError::NotFound,
        })
    }
    fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<DiskOnFire>> {
        KeyStore::delete(&self.inner, id, expected).map_err(|_| StoreError::NotFound)
    }
    fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, DiskOnFire> {
        Ok(KeyStore::list(&self.inner, after, limit).unwrap())
    }
}

#[test]
fn conflicts_are_retried_on_a_fresh_copy() {
    let manager = KeyManager::new(Contested::default());
    manager
        .create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())
        .unwrap();
    manager.store().interfere.store(3, Ordering::SeqCst);
    let (token, event) = manager.renew(&id(), t0(), &mut rand::rng()).unwrap();
    // Three interferences of two writes each, then the renewal.
    assert_eq!(event.version(), 1 + 6 + 1);
    assert_eq!(manager.store().updates.load(Ordering::SeqCst), 4);
    assert_eq!(
        manager
            .authenticate_key(&id(), token.expose_secret(), t0())
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );
}

#[test]
fn endless_conflicts_give_up_and_hand_out_no_token() {
    let manager = KeyManager::new(Contested::default()).with_max_retries(2);
    manager
        .create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())
        .unwrap();
    manager.store().interfere.store(100, Ordering::SeqCst);
    let result = manager.renew(&id(), t0(), &mut rand::rng());
    assert!(matches!(result, Err(ManagerError::Conflict)));
    assert_eq!(
        manager.store().updates.load(Ordering::SeqCst),
        3,
        "1 try + 2 retries"
    );
    let key = manager.get(&id()).unwrap().unwrap();
    assert_eq!(key.state(), KeyState::Single, "no renewal was stored");
}

#[test]
fn a_failed_write_hands_out_nothing_and_changes_nothing() {
    let manager = KeyManager::new(Contested {
        fail_updates: true,
        ..Contested::default()
    });
    manager
        .create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())
        .unwrap();
    let before = manager.get(&id()).unwrap();
    let result = manager.renew(&id(), t0(), &mut rand::rng());
    assert!(matches!(result, Err(ManagerError::Store(DiskOnFire))));
    let error = result.unwrap_err();
    assert_eq!(error.to_string(), "store error: disk on fire");
    // The backend's error is the source, for error reporters that walk it.
    let source = std::error::Error::source(&error).expect("a source");
    assert_eq!(source.to_string(), "disk on fire");
    assert_eq!(manager.get(&id()).unwrap(), before);
}

/// The lost update of keyroll 0.1, as reported: a copy loaded before a
/// delete and re-create of its id is written back over the new key, and the
/// deleted key's token authenticates again. Revisions refuse that write.
#[test]
fn a_copy_loaded_before_delete_and_recreate_never_comes_back() {
    let manager = KeyManager::new(InMemoryStore::new());
    let mut rng = rand::rng();
    let (t_old, _) = manager.create_key(id(), t0(), &mut rng).unwrap();
    let mut stale = manager.get(&id()).unwrap().unwrap();
    let loaded = stale.revision();
    assert!(stale.record_use(TokenMatch::Current, t0()));
    manager.delete_key(&id(), t0()).unwrap();
    let (t_new, _) = manager.create_key(id(), t0(), &mut rng).unwrap();
    let recreated = manager.get(&id()).unwrap().unwrap();
    assert_eq!(recreated.version(), loaded.version(), "versions restart");

    assert_eq!(
        manager.store().update(&stale, loaded),
        Err(StoreError::Conflict {
            expected: loaded,
            found: recreated.revision()
        })
    );
    assert!(matches!(
        manager
            .authenticate_key(&id(), t_old.expose_secret(), t0())
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));
    assert_eq!(
        manager
            .authenticate_key(&id(), t_new.expose_secret(), t0())
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );
}

#[test]
fn racing_threads_lose_no_update() {
    let manager = Arc::new(KeyManager::new(InMemoryStore::new()));
    manager
        .create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())
        .unwrap();
    let successes = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let manager = &manager;
            let successes = &successes;
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread);
                for i in 0..200 {
                    let ok = match (thread + i) % 4 {
                        0 => manager.renew(&id(), t0(), &mut rng).is_ok(),
                        1 => manager.undo_renewal(&id(), t0()).is_ok(),
                        2 => manager.deactivate(&id(), t0()).is_ok(),
                        _ => manager.activate(&id(), t0()).is_ok(),
                    };
                    successes.fetch_add(u64::from(ok), Ordering::SeqCst);
                }
            });
        }
    });
    let key = manager.get(&id()).unwrap().unwrap();
    assert_eq!(key.version(), 1 + successes.load(Ordering::SeqCst));
}

#[test]
fn managers_are_send_sync_and_cheap_to_clone() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<KeyManager<Arc<InMemoryStore>>>();
    send_sync::<AsyncKeyManager<Arc<InMemoryStore>>>();
}

#[tokio::test]
async fn the_async_manager_behaves_the_same_and_its_futures_are_send() {
    let manager = Arc::new(AsyncKeyManager::new(InMemoryStore::new()));
    let task = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::from_rng(&mut rand::rng());
            let (first, _) = manager
                .create_key(NewKey::new(id()).label("a"), t0(), &mut rng)
                .await
                .unwrap();
            let (second, _) = manager.renew(&id(), t0(), &mut rng).await.unwrap();
            (first, second)
        })
    };
    let (first, second) = task.await.unwrap();
    assert_eq!(
        manager
            .authenticate_key(&id(), first.expose_secret(), t0())
            .await
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Old
    );
    manager
        .finalize(&id(), OldTokenDeletion::Now, t0())
        .await
        .unwrap();
    assert!(matches!(
        manager
            .authenticate_key(&id(), first.expose_secret(), t0())
            .await
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));
    assert_eq!(
        manager
            .authenticate_key(&id(), second.expose_secret(), t0())
            .await
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );
    manager.deactivate(&id(), t0()).await.unwrap();
    let key = manager.get(&id()).await.unwrap().unwrap();
    assert_eq!((key.version(), key.status()), (4, KeyStatus::Inactive));
    assert_eq!(manager.list(None, 10).await.unwrap(), vec![key]);
    manager.delete_key(&id(), t0()).await.unwrap();
    assert!(manager.get(&id()).await.unwrap().is_none());
}

/// `authenticate_now` answers what `authenticate` answers whenever the
/// store has the key in memory (noting the use), and nothing, with nothing
/// noted, when the store would have to be waited for.
#[tokio::test]
async fn authenticate_now_answers_from_memory_and_leaves_the_rest_to_authenticate() {
    let cache = Arc::new(CachedStore::new(
        InMemoryStore::new(),
        100,
        Duration::from_secs(60),
    ));
    let manager = AsyncKeyManager::new(cache.clone()).with_usage_recording(true);
    let mut rng = StdRng::seed_from_u64(7);
    let (old, _) = manager.create_key(id(), t0(), &mut rng).await.unwrap();
    let (new, _) = manager.renew(&id(), t0(), &mut rng).await.unwrap();

    // Written through the cache, so held: answered now, as `authenticate` does.
    for (token, matched) in [(&old, TokenMatch::Old), (&new, TokenMatch::Current)] {
        let now = manager.authenticate_now(token.expose_secret(), t0());
        let later = manager.authenticate(token.expose_secret(), t0()).await;
        assert_eq!(now.unwrap().unwrap(), later.unwrap());
        let now = manager.authenticate_key_now(&id(), token.expose_secret(), t0());
        assert_eq!(now.unwrap().unwrap().matched, matched);
    }
    assert!(matches!(
        manager.authenticate_now("kr_typo", t0()),
        Some(Err(AuthError::Verify(VerifyError::Malformed)))
    ));
    let other = KeyId::new("someone-else").unwrap();
    assert!(matches!(
        manager.authenticate_key_now(&other, new.expose_secret(), t0()),
        Some(Err(AuthError::Verify(VerifyError::Mismatch)))
    ));
    manager.flush_usage(t0()).await.unwrap();
    assert_eq!(manager.pending_usage(), 0);

    // Not held: no answer now and no use noted; `authenticate` reads the
    // key, and from then on it is answered now again.
    cache.invalidate_all();
    assert!(
        manager
            .authenticate_now(new.expose_secret(), t0())
            .is_none()
    );
    assert!(
        manager
            .authenticate_key_now(&id(), new.expose_secret(), t0())
            .is_none()
    );
    assert_eq!(manager.pending_usage(), 0);
    manager
        .authenticate(new.expose_secret(), t0())
        .await
        .unwrap();
    assert_eq!(manager.pending_usage(), 1);
    assert!(matches!(
        manager.authenticate_now(new.expose_secret(), t0()),
        Some(Ok(_))
    ));
}

/// The token's framing names the key the store is asked about; a token
/// whose framing is sound but whose secret or checksum is not is still
/// `Malformed`, whether or not its key is stored, from memory or not, and
/// notes no use.
#[tokio::test]
async fn a_broken_checksum_is_malformed_whether_or_not_the_key_is_stored() {
    let manager = AsyncKeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    let mut rng = StdRng::seed_from_u64(11);
    let (token, _) = manager.create_key(id(), t0(), &mut rng).await.unwrap();
    let text = token.expose_secret();
    // One secret character changed: the checksum no longer matches.
    let broken = common::with_a_secret_character_changed(text);
    // The same token naming a key that is not stored.
    let unknown = text.replacen("acme-orders", "nobody", 1);
    let unknown_id = KeyId::new("nobody").unwrap();
    let malformed = |answer: &Result<_, AuthError<_>>| {
        matches!(answer, Err(AuthError::Verify(VerifyError::Malformed)))
    };
    for presented in [broken.as_str(), unknown.as_str()] {
        assert!(malformed(&manager.authenticate(presented, t0()).await));
        assert!(malformed(
            &manager.authenticate_now(presented, t0()).unwrap()
        ));
        for key in [id(), unknown_id.clone()] {
            let answer = manager.authenticate_key(&key, presented, t0()).await;
            assert!(malformed(&answer), "{key}");
            let answer = manager.authenticate_key_now(&key, presented, t0());
            assert!(malformed(&answer.unwrap()), "{key}");
        }
    }
    assert_eq!(manager.pending_usage(), 0);
    // A well-formed token of a key that is not stored is an unknown key.
    let (_, stranger, _) = ApiKey::issue(unknown_id, t0(), &mut rng).unwrap();
    assert!(matches!(
        manager.authenticate(stranger.expose_secret(), t0()).await,
        Err(AuthError::UnknownKey)
    ));
}
