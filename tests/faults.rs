//! Fault injection: a store that, driven by a seed, fails reads, fails
//! writes before applying them, and loses acknowledgements (applies a write,
//! then reports an error). Whatever the schedule, no call panics, the stored
//! key always loads and keeps its invariants, every token a manager returned
//! verifies until a transition that may have removed it, and no removed
//! token ever comes back.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{assert_invariants, t0};
use keyroll::store::{self, Action, InMemoryStore, Intercept, InterceptError, KeyStore};
use keyroll::{
    ApiKey, KeyId, KeyManager, ManagerError, NewKey, OldTokenDeletion, RenewalState, Token,
    TokenId, TokenMatch, VerifyError,
};
use pollster::block_on;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What a fault schedule does to each call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Normal,
    FailRead,
    FailWrite,
    LoseAck,
}

/// A seeded fault schedule: reads fail, writes fail before they are
/// applied or lose their acknowledgement (applied, then reported failed).
struct Schedule {
    rng: Mutex<StdRng>,
    /// Percent chance of each fault per call.
    rate: u32,
    /// A fault forced on the next write, for the scripted tests.
    forced: Mutex<Option<Outcome>>,
}

impl Schedule {
    fn draw(&self, write: bool) -> Action {
        let forced = self.forced.lock().unwrap().take_if(|_| write);
        let roll = self.rng.lock().unwrap().random_range(0..100);
        let outcome = forced.unwrap_or(match (write, roll) {
            (_, r) if r < self.rate => Outcome::FailRead,
            (true, r) if r < 2 * self.rate => Outcome::FailWrite,
            (true, r) if r < 3 * self.rate => Outcome::LoseAck,
            _ => Outcome::Normal,
        });
        match outcome {
            Outcome::Normal => Action::Forward,
            Outcome::FailRead | Outcome::FailWrite => Action::Fail,
            Outcome::LoseAck => Action::LoseAnswer,
        }
    }
}

/// An `InMemoryStore` behind a seeded fault schedule (on keys' reads and
/// writes; a failed write of usage counts only when forced), and the
/// schedule.
type FaultyStore = Intercept<InMemoryStore>;

fn faulty(seed: u64, rate: u32) -> (FaultyStore, Arc<Schedule>) {
    let schedule = Arc::new(Schedule {
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        rate,
        forced: Mutex::new(None),
    });
    use store::Call::{Delete, Get, Insert, List, Update, Verify};
    let store = [Get, List, Verify]
        .into_iter()
        .map(|call| (call, false))
        .chain([Insert, Update, Delete].map(|call| (call, true)))
        .fold(
            Intercept::new(InMemoryStore::new()),
            |store, (call, write)| {
                let schedule = schedule.clone();
                store.on(call, move |_| schedule.draw(write))
            },
        );
    let counts = schedule.clone();
    let store = store.on(store::Call::AddUsage, move |_| {
        let forced = counts
            .forced
            .lock()
            .unwrap()
            .take_if(|f| *f == Outcome::FailWrite);
        if forced.is_some() {
            Action::Fail
        } else {
            Action::Forward
        }
    });
    (store, schedule)
}

fn id() -> KeyId {
    KeyId::new("faulty").unwrap()
}

/// The stored key, read past the faults, checked to load and keep its invariants.
fn stored(manager: &KeyManager<FaultyStore>) -> ApiKey {
    let key = block_on(manager.store().inner().get(&id()))
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
        let (store, _schedule) = faulty(seed, rate);
        let manager = KeyManager::new(store).with_max_retries(3);
        let mut rng = StdRng::seed_from_u64(seed);
        // Create the key past the faults: the schedule applies from here on.
        let (first, _) = block_on(KeyManager::new(manager.store().inner())
            .create_key(NewKey::new(id()).label("faulty"), t0(), &mut rng))
            .unwrap();
        let mut returned: Vec<Token> = vec![first];
        let mut removed: HashMap<TokenId, usize> = HashMap::new();

        for (step, call) in calls.into_iter().enumerate() {
            let before = stored(&manager);
            let result: Result<(), ManagerError<InterceptError<std::convert::Infallible>>> = match call {
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
    let (store, schedule) = faulty(0, 0);
    let manager = KeyManager::new(store);
    let (first, _) =
        block_on(manager.create_key(NewKey::new(id()).label("faulty"), t0(), &mut rand::rng()))
            .unwrap();
    *schedule.forced.lock().unwrap() = Some(Outcome::LoseAck);
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
    let (store, schedule) = faulty(0, 0);
    let manager = KeyManager::new(store);
    block_on(manager.create_key(NewKey::new(id()).label("faulty"), t0(), &mut rand::rng()))
        .unwrap();
    let before = stored(&manager);
    *schedule.forced.lock().unwrap() = Some(Outcome::FailWrite);
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
    let (store, schedule) = faulty(1, 0);
    let manager = KeyManager::new(store).with_usage_recording(true);
    let (_, _) = block_on(manager.create_key(id(), t0(), &mut StdRng::seed_from_u64(4))).unwrap();
    // Tokens naming the key that it never issued: refused, and counted.
    let (_, stranger, _) = ApiKey::issue(id(), t0(), &mut StdRng::seed_from_u64(5)).unwrap();
    for _ in 0..3 {
        assert!(block_on(manager.authenticate(stranger.expose_secret(), t0())).is_err());
    }
    *schedule.forced.lock().unwrap() = Some(Outcome::FailWrite);
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
