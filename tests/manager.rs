//! The managers: transitions over a store, retries on conflict, tokens
//! handed out only after their write, and authentication.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use common::t0;
use keyroll::store::{
    Action, Call, InMemoryStore, Intercept, InterceptError, KeyStore, StoreError,
};
use keyroll::{
    ApiKey, AuthError, Change, Event, KeyId, KeyManager, KeyStatus, ManagerError, NewKey,
    OldTokenDeletion, RenewalState, TokenMatch, TransitionError, VerifyError,
};
use pollster::block_on;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn id() -> KeyId {
    KeyId::new("acme-orders").unwrap()
}

#[test]
fn the_whole_story_through_the_manager() {
    let manager = KeyManager::new(InMemoryStore::new());
    let mut rng = rand::rng();
    let (first, event) =
        block_on(manager.create_key(NewKey::new(id()).label("orders"), t0(), &mut rng)).unwrap();
    assert!(matches!(event, Event::KeyIssued { version: 1, .. }));
    assert_eq!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(first.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched)
        .unwrap(),
        TokenMatch::Current
    );

    let (second, event) = block_on(manager.renew(&id(), t0(), &mut rng)).unwrap();
    assert_eq!(event.version(), 2);
    assert_eq!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(first.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched)
        .unwrap(),
        TokenMatch::Old
    );
    assert_eq!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(second.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched)
        .unwrap(),
        TokenMatch::Current
    );

    block_on(manager.finalize(&id(), OldTokenDeletion::Later, t0())).unwrap();
    assert!(matches!(
        block_on(manager.finalize(&id(), OldTokenDeletion::Now, t0())),
        Err(ManagerError::Transition(TransitionError::AlreadyFinalized))
    ));
    block_on(manager.delete_old(&id(), t0())).unwrap();
    assert!(matches!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(first.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));

    let (third, _) = block_on(manager.renew(&id(), t0(), &mut rng)).unwrap();
    block_on(manager.undo_renewal(&id(), t0())).unwrap();
    assert!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(third.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched)
        .is_err()
    );

    block_on(manager.apply(&id(), keyroll::Change::Deactivate, t0())).unwrap();
    assert!(matches!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(second.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::KeyInactive))
    ));
    block_on(manager.apply(&id(), keyroll::Change::Activate, t0())).unwrap();

    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(key.version(), 8);
    let event = block_on(manager.delete_key(&id(), t0())).unwrap();
    assert!(matches!(event, Event::KeyDeleted { version: 9, .. }));
    assert!(block_on(manager.get(&id())).unwrap().is_none());
    assert!(matches!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(second.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched),
        Err(AuthError::UnknownKey)
    ));
    assert!(matches!(
        block_on(manager.renew(&id(), t0(), &mut rng)),
        Err(ManagerError::NotFound)
    ));
    assert!(matches!(
        block_on(manager.delete_key(&id(), t0())),
        Err(ManagerError::NotFound)
    ));
}

#[test]
fn create_key_with_a_taken_id_is_already_exists() {
    let manager = KeyManager::new(InMemoryStore::new());
    block_on(manager.create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())).unwrap();
    let before = block_on(manager.get(&id())).unwrap();
    assert!(matches!(
        block_on(manager.create_key(NewKey::new(id()).label("b"), t0(), &mut rand::rng())),
        Err(ManagerError::AlreadyExists)
    ));
    assert_eq!(block_on(manager.get(&id())).unwrap(), before);
}

#[test]
fn a_refused_transition_writes_nothing() {
    let manager = KeyManager::new(InMemoryStore::new());
    block_on(manager.create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())).unwrap();
    let before = block_on(manager.get(&id())).unwrap();
    for result in [
        block_on(manager.finalize(&id(), OldTokenDeletion::Now, t0())),
        block_on(manager.delete_old(&id(), t0())),
        block_on(manager.undo_renewal(&id(), t0())),
        block_on(manager.apply(&id(), keyroll::Change::Activate, t0())),
    ] {
        assert!(matches!(result, Err(ManagerError::Transition(_))));
    }
    assert_eq!(block_on(manager.get(&id())).unwrap(), before);
}

/// What `contested` does to updates.
#[derive(Default)]
struct Contest {
    /// How many of the next updates another writer comes before.
    interfere: AtomicU32,
    /// Whether updates fail outright.
    fail_updates: AtomicBool,
}

/// A store in which another writer changes the key just before each of
/// the first `interfere` updates (it toggles the key's status twice), and
/// updates can fail outright.
fn contested() -> (Intercept<Arc<InMemoryStore>>, Arc<Contest>) {
    let (inner, contest) = (Arc::new(InMemoryStore::new()), Arc::new(Contest::default()));
    let (other, rules) = (inner.clone(), contest.clone());
    let store = Intercept::new(inner).on(Call::Update, move |id| {
        if rules.fail_updates.load(Ordering::SeqCst) {
            return Action::Fail;
        }
        let ahead = rules
            .interfere
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if let (Ok(_), Some(id)) = (ahead, id) {
            let mut key = block_on(other.get(id)).unwrap().unwrap();
            for change in [Change::Deactivate, Change::Activate] {
                let loaded = key.revision();
                key.apply(change, t0()).unwrap();
                block_on(other.update(&key, loaded, &[])).unwrap();
            }
        }
        Action::Forward
    });
    (store, contest)
}

#[test]
fn conflicts_are_retried_on_a_fresh_copy() {
    let (store, contest) = contested();
    let manager = KeyManager::new(store);
    block_on(manager.create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())).unwrap();
    contest.interfere.store(3, Ordering::SeqCst);
    let (token, event) = block_on(manager.renew(&id(), t0(), &mut rand::rng())).unwrap();
    // Three interferences of two writes each, then the renewal.
    assert_eq!(event.version(), 1 + 6 + 1);
    assert_eq!(manager.store().count(Call::Update), 4);
    assert_eq!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(token.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched)
        .unwrap(),
        TokenMatch::Current
    );
}

#[test]
fn endless_conflicts_give_up_and_hand_out_no_token() {
    let (store, contest) = contested();
    let manager = KeyManager::new(store).with_max_retries(2);
    block_on(manager.create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())).unwrap();
    contest.interfere.store(100, Ordering::SeqCst);
    let result = block_on(manager.renew(&id(), t0(), &mut rand::rng()));
    assert!(matches!(result, Err(ManagerError::Conflict)));
    assert_eq!(manager.store().count(Call::Update), 3, "1 try + 2 retries");
    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(key.state(), RenewalState::Single, "no renewal was stored");
}

#[test]
fn a_failed_write_hands_out_nothing_and_changes_nothing() {
    let (store, contest) = contested();
    contest.fail_updates.store(true, Ordering::SeqCst);
    let manager = KeyManager::new(store);
    block_on(manager.create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())).unwrap();
    let before = block_on(manager.get(&id())).unwrap();
    let result = block_on(manager.renew(&id(), t0(), &mut rand::rng()));
    assert!(matches!(
        result,
        Err(ManagerError::Store(InterceptError::Injected(Call::Update)))
    ));
    let error = result.unwrap_err();
    assert_eq!(error.to_string(), "store error: injected failure of Update");
    // The backend's error is the source, for error reporters that walk it.
    let source = std::error::Error::source(&error).expect("a source");
    assert_eq!(source.to_string(), "injected failure of Update");
    assert_eq!(block_on(manager.get(&id())).unwrap(), before);
}

/// The lost update of keyroll 0.1, as reported: a copy loaded before a
/// delete and re-create of its id is written back over the new key, and the
/// deleted key's token authenticates again. Revisions refuse that write.
#[test]
fn a_copy_loaded_before_delete_and_recreate_never_comes_back() {
    let manager = KeyManager::new(InMemoryStore::new());
    let mut rng = rand::rng();
    let (t_old, _) = block_on(manager.create_key(id(), t0(), &mut rng)).unwrap();
    let mut stale = block_on(manager.get(&id())).unwrap().unwrap();
    let loaded = stale.revision();
    assert!(stale.record_use(TokenMatch::Current, t0()));
    block_on(manager.delete_key(&id(), t0())).unwrap();
    let (t_new, _) = block_on(manager.create_key(id(), t0(), &mut rng)).unwrap();
    let recreated = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(recreated.version(), loaded.version(), "versions restart");

    assert_eq!(
        block_on(manager.store().update(&stale, loaded, &[])),
        Err(StoreError::Conflict {
            expected: loaded,
            found: recreated.revision()
        })
    );
    assert!(matches!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(t_old.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));
    assert_eq!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(t_new.expose_secret()).with_id(&id()),
            t0()
        ))
        .map(|a| a.matched)
        .unwrap(),
        TokenMatch::Current
    );
}

#[test]
fn racing_threads_lose_no_update() {
    let manager = Arc::new(KeyManager::new(InMemoryStore::new()));
    block_on(manager.create_key(NewKey::new(id()).label("a"), t0(), &mut rand::rng())).unwrap();
    let successes = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let manager = &manager;
            let successes = &successes;
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread);
                for i in 0..200 {
                    let ok = match (thread + i) % 4 {
                        0 => block_on(manager.renew(&id(), t0(), &mut rng)).is_ok(),
                        1 => block_on(manager.undo_renewal(&id(), t0())).is_ok(),
                        2 => block_on(manager.apply(&id(), keyroll::Change::Deactivate, t0()))
                            .is_ok(),
                        _ => {
                            block_on(manager.apply(&id(), keyroll::Change::Activate, t0())).is_ok()
                        }
                    };
                    successes.fetch_add(u64::from(ok), Ordering::SeqCst);
                }
            });
        }
    });
    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(key.version(), 1 + successes.load(Ordering::SeqCst));
}

#[test]
fn the_manager_is_send_sync_and_cheap_to_clone() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<KeyManager<Arc<InMemoryStore>>>();
}

#[tokio::test]
async fn under_tokio_its_futures_are_send() {
    let manager = Arc::new(KeyManager::new(InMemoryStore::new()));
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
            .authenticate(
                keyroll::Credentials::bearer(first.expose_secret()).with_id(&id()),
                t0()
            )
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
            .authenticate(
                keyroll::Credentials::bearer(first.expose_secret()).with_id(&id()),
                t0()
            )
            .await
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));
    assert_eq!(
        manager
            .authenticate(
                keyroll::Credentials::bearer(second.expose_secret()).with_id(&id()),
                t0()
            )
            .await
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );
    manager
        .apply(&id(), keyroll::Change::Deactivate, t0())
        .await
        .unwrap();
    let key = manager.get(&id()).await.unwrap().unwrap();
    assert_eq!((key.version(), key.status()), (4, KeyStatus::Inactive));
    assert_eq!(manager.list(None, 10).await.unwrap(), vec![key]);
    manager.delete_key(&id(), t0()).await.unwrap();
    assert!(manager.get(&id()).await.unwrap().is_none());
}

/// A token whose framing is sound but whose secret or checksum is not is
/// `Malformed`, whether or not its key is stored, and notes no use.
#[tokio::test]
async fn a_broken_checksum_is_malformed_whether_or_not_the_key_is_stored() {
    let manager = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
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
        for key in [id(), unknown_id.clone()] {
            let answer = manager
                .authenticate(keyroll::Credentials::bearer(presented).with_id(&key), t0())
                .await;
            assert!(malformed(&answer), "{key}");
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

/// Usage counts are kept for the retention, then housekeeping drops them.
#[test]
fn usage_counts_are_kept_for_the_retention_then_pruned() {
    let manager = KeyManager::new(InMemoryStore::new())
        .with_usage_recording(true)
        .with_usage_retention(time::Duration::days(2));
    let (token, _) =
        block_on(manager.create_key(id(), t0(), &mut StdRng::seed_from_u64(3))).unwrap();
    for day in 0..4 {
        let at = t0() + time::Duration::days(day);
        block_on(manager.authenticate(token.expose_secret(), at)).unwrap();
        block_on(manager.flush_usage(at)).unwrap();
    }
    let all = |now| block_on(manager.usage(&id(), t0(), now)).unwrap();
    let end = t0() + time::Duration::days(5);
    assert_eq!(all(end).len(), 4);
    // Housekeeping on day 4 keeps days 2 and 3 (the last 2 days).
    block_on(manager.housekeep_all(t0() + time::Duration::days(4))).unwrap();
    let kept: Vec<i64> = all(end).iter().map(|r| r.hour).collect();
    let hour = |day: i64| keyroll::store::UsageRow::hour_of(t0() + time::Duration::days(day));
    assert_eq!(kept, [hour(2), hour(3)]);
}

/// A busy key never looks unused: its last use survives the deletion of
/// the token that made it, and each token keeps its own.
#[test]
fn a_keys_last_use_survives_the_deletion_of_the_token_that_made_it() {
    let manager = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    let mut rng = rand::rng();
    let (old, _) = block_on(manager.create_key(id(), t0(), &mut rng)).unwrap();
    let (new, _) = block_on(manager.renew(&id(), t0(), &mut rng)).unwrap();
    let used = t0() + time::Duration::minutes(5);
    for _ in 0..60 {
        block_on(manager.authenticate(old.expose_secret(), used)).unwrap();
    }
    block_on(manager.flush_usage(used)).unwrap();
    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(key.old_token().unwrap().last_used_at(), Some(used));
    assert_eq!(key.current_token().last_used_at(), None);
    assert_eq!(key.last_used_at(), Some(used));

    block_on(manager.delete_old(&id(), used)).unwrap();
    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(key.last_used_at(), Some(used), "the key's last use is kept");
    assert_eq!(
        key.current_token().last_used_at(),
        None,
        "the new token's own"
    );
    // And through the record every store writes.
    let json = serde_json::to_string(&key).unwrap();
    let back: ApiKey = serde_json::from_str(&json).unwrap();
    assert_eq!(back.last_used_at(), Some(used));

    let later = used + time::Duration::minutes(5);
    block_on(manager.authenticate(new.expose_secret(), later)).unwrap();
    block_on(manager.flush_usage(later)).unwrap();
    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(key.last_used_at(), Some(later));
    assert_eq!(key.current_token().last_used_at(), Some(later));
}

/// `apply_all` makes several changes in one write: all of them, each
/// with its event and version, or none.
#[test]
fn apply_all_is_all_or_none() {
    use keyroll::{Change, Scopes};
    let manager = KeyManager::new(InMemoryStore::new());
    block_on(manager.create_key(id(), t0(), &mut rand::rng())).unwrap();
    let events = block_on(manager.apply_all(
        &id(),
        vec![
            Change::Label("orders".into()),
            Change::Scopes(Scopes::new(["orders:read"]).unwrap()),
            Change::Deactivate,
        ],
        t0(),
    ))
    .unwrap();
    let versions: Vec<u64> = events.iter().map(Event::version).collect();
    assert_eq!(versions, [2, 3, 4]);
    let key = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(
        (key.label(), key.version(), key.status()),
        ("orders", 4, KeyStatus::Inactive)
    );
    // The last change is refused (already inactive): none is made.
    let refused = block_on(manager.apply_all(
        &id(),
        vec![Change::Label("changed".into()), Change::Deactivate],
        t0(),
    ));
    assert!(matches!(
        refused,
        Err(ManagerError::Transition(TransitionError::AlreadyInactive))
    ));
    let after = block_on(manager.get(&id())).unwrap().unwrap();
    assert_eq!(after, key);
}

/// A key with networks: a request from outside them, or that tells no
/// address, is refused once its token matched, counted as refused and
/// charged nothing; one from inside is admitted. A change of the networks
/// applies at the next request.
#[test]
fn networks_refuse_requests_from_elsewhere_and_count_them_refused() {
    let manager = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    let new = NewKey::new(id())
        .credits(keyroll::meter::Credits::new(1))
        .with(Change::Networks(Some("10.0.0.0/8".parse().unwrap())))
        .unwrap();
    let (token, issued) =
        block_on(manager.create_key(new, t0(), &mut StdRng::seed_from_u64(7))).unwrap();
    assert!(matches!(&issued, Event::KeyIssued { settings, .. } if settings.len() == 1));
    let bearer = || keyroll::Credentials::bearer(token.expose_secret());
    let outside: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let inside: std::net::IpAddr = "::ffff:10.0.0.9".parse().unwrap();
    for credentials in [bearer().from_ip(outside), bearer()] {
        let refused = block_on(manager.authenticate(credentials, t0())).unwrap_err();
        assert!(matches!(
            refused,
            AuthError::Verify(VerifyError::NetworkNotAllowed)
        ));
        assert_eq!(
            refused.to_string(),
            "the request's address is not in the key's networks"
        );
    }
    let who = block_on(manager.authenticate(bearer().from_ip(inside), t0())).unwrap();
    assert_eq!(who.allowance.credits_remaining(), Some(0));
    block_on(manager.flush_usage(t0())).unwrap();
    let rows = block_on(manager.usage(&id(), t0(), t0() + time::Duration::HOUR)).unwrap();
    assert_eq!((rows[0].accepted, rows[0].refused), (1, 2));
    // Removed: the address no longer matters.
    block_on(manager.apply(&id(), Change::Networks(None), t0())).unwrap();
    let spent = block_on(manager.authenticate(bearer(), t0())).unwrap_err();
    assert!(matches!(spent, AuthError::UsageExceeded { .. }), "{spent}");
}
