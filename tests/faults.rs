//! Fault injection: a store that, driven by a seed, fails reads, fails
//! writes before applying them, and loses acknowledgements (applies a write,
//! then reports an error). Whatever the schedule, no call panics, the stored
//! key always loads and keeps its invariants, every token a manager returned
//! verifies until a transition that may have removed it, and no removed
//! token ever comes back.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use common::{assert_invariants, t0};
use keyroll::store::{InMemoryStore, KeyStore, Revision, StoreError};
use keyroll::{
    ApiKey, KeyId, KeyManager, ManagerError, NewKey, OldTokenDeletion, RenewalState, Token,
    TokenId, TokenMatch, VerifyError,
};
use pollster::block_on;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Debug, thiserror::Error)]
#[error("injected fault: {0}")]
struct Fault(&'static str);

/// What a fault schedule does to each call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Normal,
    FailRead,
    FailWrite,
    LoseAck,
}

/// An `InMemoryStore` behind a seeded fault schedule.
struct FaultyStore {
    inner: InMemoryStore,
    schedule: Mutex<StdRng>,
    /// Percent chance of each fault per call.
    rate: u32,
    /// A fault forced on the next write, for the scripted test.
    forced: Mutex<Option<Outcome>>,
}

impl FaultyStore {
    fn new(seed: u64, rate: u32) -> Self {
        FaultyStore {
            inner: InMemoryStore::new(),
            schedule: Mutex::new(StdRng::seed_from_u64(seed)),
            rate,
            forced: Mutex::new(None),
        }
    }

    fn draw(&self, write: bool) -> Outcome {
        if write && let Some(forced) = self.forced.lock().unwrap().take() {
            return forced;
        }
        let roll = self.schedule.lock().unwrap().random_range(0..100);
        match (write, roll) {
            (_, r) if r < self.rate => Outcome::FailRead,
            (true, r) if r < 2 * self.rate => Outcome::FailWrite,
            (true, r) if r < 3 * self.rate => Outcome::LoseAck,
            _ => Outcome::Normal,
        }
    }

    /// Runs a write under the schedule (`apply` does nothing until awaited).
    async fn write(
        &self,
        apply: impl Future<Output = Result<(), StoreError<std::convert::Infallible>>>,
    ) -> Result<(), StoreError<Fault>> {
        match self.draw(true) {
            Outcome::FailRead | Outcome::FailWrite => {
                Err(StoreError::Backend(Fault("write refused")))
            }
            Outcome::LoseAck => {
                let _ = apply.await;
                Err(StoreError::Backend(Fault("acknowledgement lost")))
            }
            Outcome::Normal => apply.await.map_err(|e| e.map_backend(|e| match e {})),
        }
    }
}

impl KeyStore for FaultyStore {
    type Error = Fault;
    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, Fault> {
        match self.draw(false) {
            Outcome::Normal => Ok(self.inner.get(id).await.unwrap()),
            _ => Err(Fault("read failed")),
        }
    }
    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError<Fault>> {
        self.write(self.inner.insert(key)).await
    }
    async fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<Fault>> {
        self.write(self.inner.update(key, expected)).await
    }
    async fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<Fault>> {
        self.write(self.inner.delete(id, expected)).await
    }
    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, Fault> {
        match self.draw(false) {
            Outcome::Normal => Ok(self.inner.list(after, limit).await.unwrap()),
            _ => Err(Fault("read failed")),
        }
    }
    common::forward_meters!(inner);
    common::forward_markers!(inner);

    /// Refused when a failed write is forced.
    async fn add_usage(&self, rows: &[keyroll::store::UsageRow]) -> Result<(), Self::Error> {
        if *self.forced.lock().unwrap() == Some(Outcome::FailWrite) {
            self.forced.lock().unwrap().take();
            return Err(Fault("counts refused"));
        }
        self.inner
            .add_usage(rows)
            .await
            .map_err(|never| match never {})
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: std::ops::Range<i64>,
    ) -> Result<Vec<keyroll::store::UsageRow>, Self::Error> {
        self.inner
            .usage(id, incarnation, hours)
            .await
            .map_err(|never| match never {})
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, Self::Error> {
        self.inner
            .prune_usage(before)
            .await
            .map_err(|never| match never {})
    }
}

fn id() -> KeyId {
    KeyId::new("faulty").unwrap()
}

/// The stored key, read past the faults, checked to load and keep its invariants.
fn stored(manager: &KeyManager<FaultyStore>) -> ApiKey {
    let key = block_on(manager.store().inner.get(&id()))
        .unwrap()
        .expect("the key exists");
    let loaded: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
    assert_eq!(loaded, key);
    assert_invariants(&key);
    key
}

/// What a token verifies as against the stored key.
fn role(key: &ApiKey, token: &Token) -> Result<TokenMatch, VerifyError> {
    key.verify(token.expose_secret(), t0())
}

/// Which of the key's tokens this is, whatever the key's status.
fn held(key: &ApiKey, token: &Token) -> Option<TokenMatch> {
    if key.current_token().id() == token.id() {
        Some(TokenMatch::Current)
    } else if key.old_token().map(|t| t.id()) == Some(token.id()) {
        Some(TokenMatch::Old)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Renew,
    FinalizeLater,
    FinalizeNow,
    DeleteOld,
    Undo,
    Activate,
    Deactivate,
    Authenticate,
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        3 => Just(Call::Renew),
        1 => Just(Call::FinalizeLater),
        1 => Just(Call::FinalizeNow),
        1 => Just(Call::DeleteOld),
        2 => Just(Call::Undo),
        1 => Just(Call::Activate),
        1 => Just(Call::Deactivate),
        2 => Just(Call::Authenticate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/faults.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_token_is_lost_or_resurrected_under_any_fault_schedule(
        seed in any::<u64>(),
        rate in 0u32..20,
        calls in proptest::collection::vec(call(), 1..64),
    ) {
        let manager = KeyManager::new(FaultyStore::new(seed, rate)).with_max_retries(3);
        let mut rng = StdRng::seed_from_u64(seed);
        // Create the key past the faults: the schedule applies from here on.
        let (first, _) = block_on(KeyManager::new(&manager.store().inner)
            .create_key(NewKey::new(id()).label("faulty"), t0(), &mut rng))
            .unwrap();
        let mut returned: Vec<Token> = vec![first];
        let mut removed: HashMap<TokenId, usize> = HashMap::new();

        for (step, call) in calls.into_iter().enumerate() {
            let before = stored(&manager);
            let result: Result<(), ManagerError<Fault>> = match call {
                Call::Renew => block_on(manager.renew(&id(), t0(), &mut rng)).map(|(token, _)| returned.push(token)),
                Call::FinalizeLater => block_on(manager.finalize(&id(), OldTokenDeletion::Later, t0())).map(drop),
                Call::FinalizeNow => block_on(manager.finalize(&id(), OldTokenDeletion::Now, t0())).map(drop),
                Call::DeleteOld => block_on(manager.delete_old(&id(), t0())).map(drop),
                Call::Undo => block_on(manager.undo_renewal(&id(), t0())).map(drop),
                Call::Activate => block_on(manager.apply(&id(), keyroll::Change::Activate, t0())).map(drop),
                Call::Deactivate => block_on(manager.apply(&id(), keyroll::Change::Deactivate, t0())).map(drop),
                Call::Authenticate => {
                    for token in &returned {
                        match block_on(manager.authenticate(keyroll::Credentials::bearer(token.expose_secret()).with_id(&id()), t0())).map(|a| a.matched) {
                            Err(keyroll::AuthError::Store(_)) => {}
                            seen => prop_assert_eq!(seen.ok(), role(&before, token).ok()),
                        }
                    }
                    Ok(())
                }
            };
            let after = stored(&manager);
            if let (Call::Renew, Ok(())) = (call, &result) {
                let handed_out = returned.last().expect("renew returned a token");
                prop_assert_eq!(held(&after, handed_out), Some(TokenMatch::Current), "a returned token is not stored");
            }
            // A refused or failed-before-applying call changed nothing; only a
            // success or a store error (a lost acknowledgement) may have.
            if matches!(result, Err(ManagerError::Transition(_) | ManagerError::Conflict)) {
                prop_assert_eq!(&after, &before);
            }
            for token in &returned {
                let (was, is) = (held(&before, token), held(&after, token));
                if was.is_some() && is.is_none() {
                    // Only a call that deletes or discards a token may remove it.
                    prop_assert!(
                        matches!(call, Call::FinalizeNow | Call::DeleteOld | Call::Undo),
                        "{:?} removed a token", call
                    );
                    removed.insert(token.id(), step);
                }
                let verified = role(&after, token);
                match is {
                    Some(_) if removed.contains_key(&token.id()) => prop_assert!(false, "a removed token came back"),
                    None => prop_assert_eq!(verified, Err(VerifyError::Mismatch)),
                    Some(_) if after.status() == keyroll::KeyStatus::Inactive => {
                        prop_assert_eq!(verified, Err(VerifyError::KeyInactive))
                    }
                    Some(matched) => prop_assert_eq!(verified, Ok(matched)),
                }
            }
            // Versions never go back, and move only with a write.
            prop_assert!(after.version() >= before.version());
        }
    }
}

#[test]
fn a_lost_ack_on_renew_leaves_the_old_token_valid_and_undo_recovers() {
    let manager = KeyManager::new(FaultyStore::new(0, 0));
    let (first, _) =
        block_on(manager.create_key(NewKey::new(id()).label("faulty"), t0(), &mut rand::rng()))
            .unwrap();
    *manager.store().forced.lock().unwrap() = Some(Outcome::LoseAck);
    let result = block_on(manager.renew(&id(), t0(), &mut rand::rng()));
    assert!(
        matches!(result, Err(ManagerError::Store(_))),
        "no token is handed out"
    );
    let key = stored(&manager);
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: keyroll::Decision::Undecided
        }
    );
    assert_eq!(
        role(&key, &first),
        Ok(TokenMatch::Old),
        "the old token still works"
    );
    // A retry of the renewal is refused; undo recovers.
    assert!(matches!(
        block_on(manager.renew(&id(), t0(), &mut rand::rng())),
        Err(ManagerError::Transition(_))
    ));
    block_on(manager.undo_renewal(&id(), t0())).unwrap();
    let key = stored(&manager);
    assert_eq!(key.state(), RenewalState::Single);
    assert_eq!(role(&key, &first), Ok(TokenMatch::Current));
    let (second, _) = block_on(manager.renew(&id(), t0(), &mut rand::rng())).unwrap();
    assert_eq!(role(&stored(&manager), &second), Ok(TokenMatch::Current));
}

#[test]
fn a_failed_write_before_applying_changes_nothing() {
    let manager = KeyManager::new(FaultyStore::new(0, 0));
    block_on(manager.create_key(NewKey::new(id()).label("faulty"), t0(), &mut rand::rng()))
        .unwrap();
    let before = stored(&manager);
    *manager.store().forced.lock().unwrap() = Some(Outcome::FailWrite);
    assert!(matches!(
        block_on(manager.apply(&id(), keyroll::Change::Deactivate, t0())),
        Err(ManagerError::Store(_))
    ));
    assert_eq!(stored(&manager), before);
}

/// Usage counts a flush could not write are kept, and the next flush
/// writes them: none lost, none counted twice.
#[test]
fn counts_a_flush_could_not_write_are_written_by_the_next() {
    let manager = KeyManager::new(FaultyStore::new(1, 0)).with_usage_recording(true);
    let (_, _) = block_on(manager.create_key(id(), t0(), &mut StdRng::seed_from_u64(4))).unwrap();
    // Tokens naming the key that it never issued: refused, and counted.
    let (_, stranger, _) = ApiKey::issue(id(), t0(), &mut StdRng::seed_from_u64(5)).unwrap();
    for _ in 0..3 {
        assert!(block_on(manager.authenticate(stranger.expose_secret(), t0())).is_err());
    }
    *manager.store().forced.lock().unwrap() = Some(Outcome::FailWrite);
    let failed = block_on(manager.flush_usage(t0())).unwrap_err();
    assert!(failed.counts.is_some(), "{failed}");
    assert!(
        failed.to_string().contains("usage counts were not written"),
        "{failed}"
    );
    assert!(block_on(manager.authenticate(stranger.expose_secret(), t0())).is_err());
    block_on(manager.flush_usage(t0())).unwrap();
    block_on(manager.flush_usage(t0())).unwrap();
    let hours = block_on(manager.usage(&id(), t0(), t0() + time::Duration::HOUR)).unwrap();
    assert_eq!(hours.len(), 1);
    assert_eq!((hours[0].refused, hours[0].accepted), (4, 0));
}
