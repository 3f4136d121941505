//! Concurrency stress: many threads mixing every manager call on a handful
//! of keys, over `InMemoryStore` (the store crates race their own
//! connections and processes in their tests). Replaying the
//! successful events of each key in version order through the reference
//! model reproduces the stored key exactly: no lost and no phantom update.
#![cfg(all(feature = "proptest", feature = "serde"))]

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use common::t0;
use keyroll::store::{InMemoryStore, KeyStore};
use keyroll::testing::{Expected, Model, Op};
use keyroll::{
    Change, DeletionReason, Event, KeyId, KeyManager, KeyStatus, NewKey, OldTokenDeletion,
    RenewalState, TokenId,
};
use pollster::block_on;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use time::Duration;

const KEYS: usize = 4;
const THREADS: u64 = 8;
const CALLS: usize = 300;

/// Runs the stress on `manager`; returns every event of a successful call.
fn stress<S: KeyStore>(manager: &KeyManager<S>) -> (Vec<KeyId>, Vec<Event>) {
    let ids: Vec<KeyId> = (0..KEYS)
        .map(|i| KeyId::new(format!("stress-{i}")).unwrap())
        .collect();
    let events = Mutex::new(Vec::new());
    for id in &ids {
        let (_, event) = block_on(manager.create_key(
            NewKey::new(id.clone()).label("stress"),
            t0(),
            &mut rand::rng(),
        ))
        .unwrap();
        events.lock().unwrap().push(event);
    }
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (ids, events) = (&ids, &events);
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread);
                let now = t0();
                for _ in 0..CALLS {
                    let id = &ids[rng.random_range(0..KEYS)];
                    let deletion = match rng.random_range(0..4) {
                        0 => OldTokenDeletion::Now,
                        1 => OldTokenDeletion::Later,
                        2 => OldTokenDeletion::At(now + Duration::hours(1)),
                        _ => OldTokenDeletion::AfterNewTokenUse {
                            grace: Duration::minutes(5),
                        },
                    };
                    let event = match rng.random_range(0..9) {
                        0 | 1 => block_on(manager.renew(id, now, &mut rng)).map(|(_, e)| Some(e)),
                        2 => block_on(manager.finalize(id, deletion, now)).map(Some),
                        3 => block_on(manager.delete_old(id, now)).map(Some),
                        4 => block_on(manager.undo_renewal(id, now)).map(Some),
                        5 => block_on(manager.apply(id, Change::Activate, now)).map(Some),
                        6 => block_on(manager.apply(id, Change::Deactivate, now)).map(Some),
                        7 => block_on(manager.delete_old_if_idle(id, Duration::hours(1), now))
                            .map(Some),
                        _ => block_on(manager.housekeep(id, now)),
                    };
                    if let Ok(Some(event)) = event {
                        events.lock().unwrap().push(event);
                    }
                }
            });
        }
    });
    (ids, events.into_inner().unwrap())
}

/// The operation an event records.
fn op_of(event: &Event) -> Op {
    match event {
        Event::TokenRenewed { .. } => Op::Renew,
        Event::RenewalFinalized { deletion, .. } => Op::Finalize(*deletion),
        Event::OldTokenDeleted {
            reason: DeletionReason::FinalizedNow,
            ..
        } => Op::Finalize(OldTokenDeletion::Now),
        Event::OldTokenDeleted {
            reason: DeletionReason::Scheduled,
            ..
        } => Op::Housekeep,
        Event::OldTokenDeleted { .. } => Op::DeleteOld,
        Event::RenewalUndone { .. } => Op::Undo,
        Event::KeyActivated { .. } => Op::Apply(Change::Activate),
        Event::KeyDeactivated { .. } => Op::Apply(Change::Deactivate),
        other => panic!("unexpected event {other:?}"),
    }
}

/// Replays each key's events through the model and compares with the store.
fn check_replay<S: KeyStore>(manager: &KeyManager<S>, ids: &[KeyId], events: Vec<Event>) {
    let mut by_key: HashMap<KeyId, Vec<Event>> = HashMap::new();
    for event in events {
        by_key
            .entry(event.key_id().cloned().expect("a key's event"))
            .or_default()
            .push(event);
    }
    for id in ids {
        let mut events = by_key.remove(id).unwrap_or_default();
        events.sort_by_key(Event::version);
        let versions: Vec<u64> = events.iter().map(Event::version).collect();
        let expected: Vec<u64> = (1..=events.len() as u64).collect();
        assert_eq!(
            versions, expected,
            "{id}: versions of successful calls must be 1, 2, 3... with no gap or repeat"
        );

        let mut model = Model::new(t0());
        let mut handles: Vec<TokenId> = Vec::new();
        for event in &events {
            match event {
                Event::KeyIssued { token_id, .. } => handles.push(*token_id),
                event => {
                    if let Event::TokenRenewed { new_token_id, .. } = event {
                        handles.push(*new_token_id);
                    }
                    model.step(&op_of(event));
                    let accepted =
                        matches!(model.expected, Expected::Done | Expected::Housekept(true));
                    assert!(
                        accepted,
                        "{id}: the model refuses {event:?}: {:?}",
                        model.expected
                    );
                }
            }
        }
        let key = block_on(manager.get(id)).unwrap().unwrap();
        assert_eq!(key.version(), model.version, "{id}");
        assert_eq!(key.status() == KeyStatus::Active, model.active, "{id}");
        match key.state() {
            RenewalState::Single => assert_eq!(model.old, None, "{id}"),
            RenewalState::Renewing { decision } => assert_eq!(decision, model.decision, "{id}"),
            other => panic!("{id}: a state this test does not know: {other:?}"),
        }
        assert_eq!(key.current_token().id(), handles[model.current], "{id}");
        assert_eq!(
            key.old_token().map(|t| t.id()),
            model.old.map(|h| handles[h]),
            "{id}"
        );
    }
}

#[test]
fn stress_in_memory_store_replays_exactly() {
    let manager = KeyManager::new(InMemoryStore::new()).with_max_retries(1_000);
    let (ids, events) = stress(&manager);
    assert!(
        events.len() > 4 * KEYS,
        "the stress did something: {} events",
        events.len()
    );
    check_replay(&manager, &ids, events);
}
