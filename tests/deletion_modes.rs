//! Scheduled and after-use deletion of the old token, usage tracking,
//! idle-guarded deletion and housekeeping.

mod common;

use std::sync::{Arc, Mutex};

use common::{issue, renewing, t0};
use keyroll::store::{Action, Call, InMemoryStore, Intercept, KeyStore};
use keyroll::{
    ApiKey, Decision, DeletionReason, Event, KeyId, KeyManager, OldTokenDeletion, Policy,
    RenewalState, TokenMatch, TransitionError, VerifyError,
};
use pollster::block_on;
use time::Duration;

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

#[test]
fn scheduled_deletion_before_at_and_after_the_instant() {
    let (mut key, old, new) = renewing();
    let at = t0() + Duration::days(10);
    let event = key.finalize(OldTokenDeletion::At(at), t0()).unwrap();
    assert!(
        matches!(event, Event::RenewalFinalized { deletion: OldTokenDeletion::At(t), .. } if t == at)
    );
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::Scheduled { at }
        }
    );

    let just_before = at - Duration::nanoseconds(1);
    assert_eq!(
        key.verify(old.expose_secret(), just_before),
        Ok(TokenMatch::Old)
    );
    assert_eq!(
        key.verify(old.expose_secret(), at),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        key.verify(old.expose_secret(), at + minutes(5)),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        key.verify(new.expose_secret(), at + minutes(5)),
        Ok(TokenMatch::Current)
    );

    // Without housekeep the key still holds the old token, which stays dead.
    assert!(key.old_token().is_some());
    let before = key.clone();
    assert_eq!(key.housekeep(just_before), None);
    assert_eq!(key, before, "housekeep with nothing due changes nothing");

    let event = key.housekeep(at + minutes(5)).unwrap();
    assert!(matches!(
        &event,
        Event::OldTokenDeleted { reason: DeletionReason::Scheduled, token_id, .. } if *token_id == old.id()
    ));
    assert_eq!(event.version(), before.version() + 1);
    assert_eq!(key.state(), RenewalState::Single);
    assert_eq!(key.housekeep(at + minutes(10)), None);
}

#[test]
fn finalize_at_an_instant_already_past_deletes_now() {
    for at in [t0(), t0() - minutes(1)] {
        let (mut key, old, _) = renewing();
        let event = key.finalize(OldTokenDeletion::At(at), t0()).unwrap();
        assert!(matches!(
            event,
            Event::OldTokenDeleted {
                reason: DeletionReason::FinalizedNow,
                ..
            }
        ));
        assert_eq!(key.state(), RenewalState::Single);
        assert_eq!(
            key.verify(old.expose_secret(), t0()),
            Err(VerifyError::Mismatch)
        );
    }
}

#[test]
fn after_use_with_no_use_keeps_the_old_token() {
    let (mut key, old, _) = renewing();
    let grace = Duration::hours(1);
    key.finalize(OldTokenDeletion::AfterNewTokenUse { grace }, t0())
        .unwrap();
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::AfterNewTokenUse { grace }
        }
    );
    let much_later = t0() + Duration::days(365);
    assert_eq!(
        key.verify(old.expose_secret(), much_later),
        Ok(TokenMatch::Old)
    );
    assert_eq!(key.housekeep(much_later), None);
}

#[test]
fn after_use_with_only_the_old_token_used_keeps_it() {
    let (mut key, old, _) = renewing();
    key.finalize(
        OldTokenDeletion::AfterNewTokenUse { grace: minutes(30) },
        t0(),
    )
    .unwrap();
    for i in 0..5 {
        let now = t0() + Duration::hours(i);
        let matched = key.verify(old.expose_secret(), now).unwrap();
        key.record_use(matched, now);
    }
    assert!(matches!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::AfterNewTokenUse { .. }
        }
    ));
    assert_eq!(
        key.old_token().unwrap().last_used_at(),
        Some(t0() + Duration::hours(4))
    );
    assert_eq!(
        key.verify(old.expose_secret(), t0() + Duration::days(9)),
        Ok(TokenMatch::Old)
    );
}

#[test]
fn after_use_the_first_use_of_the_new_token_starts_the_grace() {
    let (mut key, old, new) = renewing();
    let grace = minutes(30);
    key.finalize(OldTokenDeletion::AfterNewTokenUse { grace }, t0())
        .unwrap();
    let used = t0() + Duration::hours(2);
    let version = key.version();
    assert_eq!(
        key.verify(new.expose_secret(), used),
        Ok(TokenMatch::Current)
    );
    assert!(key.record_use(TokenMatch::Current, used));
    assert_eq!(key.version(), version + 1);
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::Scheduled { at: used + grace }
        }
    );
    assert_eq!(key.current_token().last_used_at(), Some(used));
    assert_eq!(
        key.verify(old.expose_secret(), used + grace - minutes(1)),
        Ok(TokenMatch::Old)
    );
    assert_eq!(
        key.verify(old.expose_secret(), used + grace),
        Err(VerifyError::Mismatch)
    );
    // A later use of the new token does not move the schedule.
    key.record_use(TokenMatch::Current, used + minutes(10));
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::Scheduled { at: used + grace }
        }
    );
    assert!(key.housekeep(used + grace).is_some());
}

#[test]
fn usage_is_recorded_at_the_policy_resolution() {
    let (mut key, token) = issue(Policy::default());
    assert_eq!(key.current_token().last_used_at(), None);
    assert!(
        key.record_use(TokenMatch::Current, t0()),
        "a first use is recorded"
    );
    assert_eq!(key.version(), 2);
    let before = key.clone();
    assert!(!key.record_use(TokenMatch::Current, t0() + Duration::seconds(59)));
    assert_eq!(key, before, "a use within the resolution changes nothing");
    assert!(key.record_use(TokenMatch::Current, t0() + Duration::seconds(60)));
    assert_eq!(
        key.current_token().last_used_at(),
        Some(t0() + Duration::seconds(60))
    );
    assert_eq!(key.version(), 3);
    // No old token: nothing to record.
    assert!(!key.record_use(TokenMatch::Old, t0() + Duration::hours(1)));
    assert_eq!(key.version(), 3);
    let _ = token;

    let fine = Policy {
        usage_resolution: Duration::ZERO,
        ..Policy::default()
    };
    let (mut key, _) = issue(fine);
    assert!(key.record_use(TokenMatch::Current, t0()));
    assert!(key.record_use(TokenMatch::Current, t0()));
}

#[test]
fn idle_guarded_deletion() {
    let (mut key, _, _) = renewing();
    // Never used: idle.
    let mut unused = key.clone();
    assert!(unused.delete_old_if_idle(Duration::days(7), t0()).is_ok());

    key.record_use(TokenMatch::Old, t0());
    let before = key.clone();
    let err = key
        .delete_old_if_idle(Duration::days(7), t0() + Duration::days(6))
        .unwrap_err();
    assert_eq!(err, TransitionError::OldTokenInUse { last_used_at: t0() });
    assert!(err.to_string().contains("delete_old"), "{err}");
    assert_eq!(key, before);
    let event = key
        .delete_old_if_idle(Duration::days(7), t0() + Duration::days(7))
        .unwrap();
    assert!(matches!(
        event,
        Event::OldTokenDeleted {
            reason: DeletionReason::Manual,
            ..
        }
    ));
    assert_eq!(
        key.delete_old_if_idle(Duration::ZERO, t0()),
        Err(TransitionError::NoOldToken)
    );
}

#[test]
fn undo_works_in_every_mode_while_the_old_token_exists() {
    let modes = [
        OldTokenDeletion::Later,
        OldTokenDeletion::At(t0() + Duration::days(1)),
        OldTokenDeletion::AfterNewTokenUse { grace: minutes(5) },
    ];
    for mode in modes {
        let (mut key, old, new) = renewing();
        key.finalize(mode, t0()).unwrap();
        assert_eq!(
            key.finalize(OldTokenDeletion::Later, t0()),
            Err(TransitionError::AlreadyFinalized),
            "{mode:?}"
        );
        key.undo_renewal(t0()).unwrap();
        assert_eq!(
            key.verify(old.expose_secret(), t0()),
            Ok(TokenMatch::Current),
            "{mode:?}"
        );
        assert_eq!(
            key.verify(new.expose_secret(), t0()),
            Err(VerifyError::Mismatch),
            "{mode:?}"
        );
    }
}

#[test]
fn undo_after_the_scheduled_instant_is_refused() {
    let (mut key, _, _) = renewing();
    let at = t0() + Duration::days(1);
    key.finalize(OldTokenDeletion::At(at), t0()).unwrap();
    let before = key.clone();
    assert_eq!(key.undo_renewal(at), Err(TransitionError::NoOldToken));
    assert_eq!(key, before);
    // Before the instant, the pending renewal blocks a new one.
    assert_eq!(
        key.renew(at - Duration::seconds(1), &mut rand::rng())
            .unwrap_err(),
        TransitionError::RenewalPending
    );
}

/// A renewal that only a due scheduled deletion blocks applies the
/// deletion first, in the same transition: one version, one event naming
/// the token deleted as scheduled.
#[test]
fn renewing_past_a_due_scheduled_deletion_housekeeps_first() {
    let (mut key, old, new) = renewing();
    let at = t0() + Duration::days(1);
    key.finalize(OldTokenDeletion::At(at), t0()).unwrap();
    let old_id = key.old_token().unwrap().id();
    let version = key.version();
    let (newest, event) = key.renew(at, &mut rand::rng()).unwrap();
    assert_eq!(key.version(), version + 1);
    assert!(matches!(
        event,
        Event::TokenRenewed { deleted_as_scheduled: Some(id), .. } if id == old_id
    ));
    assert_eq!(
        key.verify(old.expose_secret(), at),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(key.verify(new.expose_secret(), at), Ok(TokenMatch::Old));
    assert_eq!(
        key.verify(newest.expose_secret(), at),
        Ok(TokenMatch::Current)
    );
}

#[cfg(feature = "serde")]
#[test]
fn every_new_state_round_trips() {
    let modes = [
        OldTokenDeletion::At(t0() + Duration::days(1)),
        OldTokenDeletion::AfterNewTokenUse {
            grace: Duration::new(3600, 5),
        },
    ];
    for mode in modes {
        let (mut key, _, _) = renewing();
        let event = key.finalize(mode, t0()).unwrap();
        key.record_use(TokenMatch::Old, t0());
        for _ in 0..2 {
            let json = serde_json::to_string(&key).unwrap();
            let back: ApiKey = serde_json::from_str(&json).unwrap();
            assert_eq!(back, key, "{json}");
            key.record_use(TokenMatch::Current, t0() + minutes(1));
        }
        let back: Event = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(back, event);
    }
}

#[cfg(feature = "serde")]
#[test]
fn records_written_before_usage_tracking_still_load() {
    // A record as the first release wrote it: no usage_resolution, no last_used_at.
    let json = r#"{"schema":1,"id":"acme-orders","label":"orders","status":"active","version":2,
        "created_at":"2026-01-01T00:00:00Z",
        "policy":{"token_prefix":"kr","renewal_period":{"secs":7776000},"expiry":"advisory"},
        "current_token":{"id":"6a7ca4ea7f482d63c0aa2a86ad3102e2","created_at":"2026-01-02T00:00:00Z",
            "due_at":"2026-04-02T00:00:00Z","hash":"42012e0842c9c8fcff1dcc8783dc33216f837adfd52d0cc2fee36a9a228a4a9a"},
        "renewal":{"old_token":{"id":"c9d24861ff401be356c1f78f33941c88","created_at":"2026-01-01T00:00:00Z",
            "due_at":"2026-04-01T00:00:00Z","hash":"52012e0842c9c8fcff1dcc8783dc33216f837adfd52d0cc2fee36a9a228a4a9a"},
            "decision":"undecided"}}"#;
    let key: ApiKey = serde_json::from_str(json).unwrap();
    assert_eq!(key.policy().usage_resolution, Duration::seconds(60));
    assert_eq!(key.current_token().last_used_at(), None);
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::Undecided
        }
    );
}

#[test]
fn managers_record_uses_only_when_asked_and_only_when_it_changes_the_key() {
    let id = KeyId::new("k").unwrap();
    let quiet = KeyManager::new(InMemoryStore::new());
    let (token, _) = block_on(quiet.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
    block_on(quiet.authenticate(
        keyroll::Credentials::bearer(token.expose_secret()).with_id(&id),
        t0(),
    ))
    .map(|a| a.matched)
    .unwrap();
    assert_eq!(
        block_on(quiet.get(&id)).unwrap().unwrap().version(),
        1,
        "off by default"
    );

    let manager = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    let (token, _) = block_on(manager.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
    for s in 0..30 {
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(token.expose_secret()).with_id(&id),
            t0() + Duration::seconds(s),
        ))
        .map(|a| a.matched)
        .unwrap();
    }
    assert_eq!(
        block_on(manager.get(&id)).unwrap().unwrap().version(),
        1,
        "uses are noted in memory, not written on the request's path"
    );
    assert_eq!(manager.pending_usage(), 1);
    assert_eq!(
        block_on(manager.flush_usage(t0() + Duration::seconds(30))).unwrap(),
        1
    );
    assert_eq!(manager.pending_usage(), 0);
    let key = block_on(manager.get(&id)).unwrap().unwrap();
    assert_eq!(key.version(), 2, "one write per resolution");
    assert_eq!(key.current_token().last_used_at(), Some(t0()));
    assert_eq!(
        block_on(manager.flush_usage(t0() + Duration::seconds(31))).unwrap(),
        0
    );
    // A use a resolution later is written by the next flush.
    for s in [59, 60, 61] {
        block_on(manager.authenticate(token.expose_secret(), t0() + Duration::seconds(s))).unwrap();
    }
    assert_eq!(
        block_on(manager.flush_usage(t0() + Duration::seconds(62))).unwrap(),
        1
    );
    let key = block_on(manager.get(&id)).unwrap().unwrap();
    assert_eq!(key.version(), 3);
    assert_eq!(
        key.current_token().last_used_at(),
        Some(t0() + Duration::seconds(61)),
        "the last use noted"
    );
    assert!(
        block_on(manager.authenticate(keyroll::Credentials::bearer("kr_bad").with_id(&id), t0()))
            .map(|a| a.matched)
            .is_err()
    );
}

/// A store whose updates always lose the race.
fn always_conflicts() -> Intercept<InMemoryStore> {
    Intercept::new(InMemoryStore::new()).on(Call::Update, |_| Action::Conflict)
}

#[test]
fn a_lost_race_on_recording_never_fails_authentication_and_keeps_the_notes() {
    let id = KeyId::new("k").unwrap();
    let manager = KeyManager::new(always_conflicts()).with_usage_recording(true);
    let (token, _) = block_on(manager.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
    assert_eq!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(token.expose_secret()).with_id(&id),
            t0()
        ))
        .map(|a| a.matched)
        .unwrap(),
        TokenMatch::Current
    );
    let refused = block_on(manager.flush_usage(t0())).unwrap_err();
    assert!(matches!(
        refused.failed.as_slice(),
        [(failed, keyroll::ManagerError::Conflict)] if *failed == id
    ));
    assert_eq!(manager.pending_usage(), 1, "kept for the next flush");
}

/// A store in which one key's record cannot be read (a corrupt row, say):
/// reads of the key the slot names fail.
fn poisoned() -> (Intercept<InMemoryStore>, Arc<Mutex<Option<KeyId>>>) {
    let poisoned = Arc::new(Mutex::new(None::<KeyId>));
    let bad = poisoned.clone();
    let store = Intercept::new(InMemoryStore::new()).on(Call::Get, move |id| {
        match id.is_some() && bad.lock().unwrap().as_ref() == id {
            true => Action::Fail,
            false => Action::Forward,
        }
    });
    (store, poisoned)
}

/// One key whose record cannot be read holds up no other: the flush skips
/// it, writes the rest (their last use moves, an after-use deletion is
/// scheduled), keeps only that key's notes, and names it in its error.
#[test]
fn a_flush_skips_a_key_it_cannot_write_and_writes_the_others() {
    let (store, poisoned) = poisoned();
    let manager = KeyManager::new(store).with_usage_recording(true);
    let mut rng = rand::rng();
    let ids: Vec<KeyId> = ["a", "m", "z"].map(|id| KeyId::new(id).unwrap()).into();
    let mut tokens = Vec::new();
    for id in &ids {
        let (first, _) = block_on(manager.create_key(id.clone(), t0(), &mut rng)).unwrap();
        let (second, _) = block_on(manager.renew(id, t0(), &mut rng)).unwrap();
        block_on(manager.finalize(
            id,
            OldTokenDeletion::AfterNewTokenUse { grace: minutes(10) },
            t0(),
        ))
        .unwrap();
        tokens.push((first, second));
    }
    for (_, second) in &tokens {
        block_on(manager.authenticate(second.expose_secret(), t0() + minutes(1))).unwrap();
    }
    *poisoned.lock().unwrap() = Some(ids[1].clone());

    let refused = block_on(manager.flush_usage(t0() + minutes(2))).unwrap_err();
    assert_eq!(refused.written, 2);
    let failed: Vec<&KeyId> = refused.failed.iter().map(|(id, _)| id).collect();
    assert_eq!(failed, [&ids[1]]);
    assert!(refused.to_string().contains("m: "), "{refused}");
    assert_eq!(
        manager.pending_usage(),
        1,
        "only the failed key's notes kept"
    );
    for id in [&ids[0], &ids[2]] {
        let key = block_on(manager.store().inner().get(id)).unwrap().unwrap();
        assert_eq!(key.current_token().last_used_at(), Some(t0() + minutes(1)));
        assert_eq!(
            key.state(),
            RenewalState::Renewing {
                decision: Decision::Scheduled {
                    at: t0() + minutes(11)
                }
            }
        );
    }

    // Readable again: the kept notes are written, from the use's time.
    *poisoned.lock().unwrap() = None;
    assert_eq!(block_on(manager.flush_usage(t0() + minutes(3))).unwrap(), 1);
    let key = block_on(manager.store().inner().get(&ids[1]))
        .unwrap()
        .unwrap();
    assert_eq!(key.current_token().last_used_at(), Some(t0() + minutes(1)));
    assert_eq!(manager.pending_usage(), 0);
}

#[test]
fn a_use_noted_before_a_renewal_is_flushed_to_the_token_that_was_used() {
    let id = KeyId::new("k").unwrap();
    let manager = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    let (first, _) = block_on(manager.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
    block_on(manager.authenticate(first.expose_secret(), t0() + minutes(1))).unwrap();
    // The token used becomes the old one before the flush.
    block_on(manager.renew(&id, t0() + minutes(2), &mut rand::rng())).unwrap();
    block_on(manager.finalize(
        &id,
        OldTokenDeletion::AfterNewTokenUse { grace: minutes(10) },
        t0() + minutes(2),
    ))
    .unwrap();
    block_on(manager.flush_usage(t0() + minutes(3))).unwrap();
    let key = block_on(manager.get(&id)).unwrap().unwrap();
    assert_eq!(
        key.old_token().unwrap().last_used_at(),
        Some(t0() + minutes(1))
    );
    assert_eq!(key.current_token().last_used_at(), None);
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::AfterNewTokenUse { grace: minutes(10) }
        },
        "a use of the old token starts no deletion schedule"
    );
}

#[test]
fn a_crash_loses_unflushed_uses_never_a_transition() {
    let id = KeyId::new("k").unwrap();
    let store = std::sync::Arc::new(InMemoryStore::new());
    let manager = KeyManager::new(store.clone()).with_usage_recording(true);
    let (old, _) = block_on(manager.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
    let (new, _) = block_on(manager.renew(&id, t0(), &mut rand::rng())).unwrap();
    block_on(manager.finalize(
        &id,
        OldTokenDeletion::AfterNewTokenUse { grace: minutes(10) },
        t0(),
    ))
    .unwrap();
    block_on(manager.authenticate(new.expose_secret(), t0() + minutes(1))).unwrap();
    drop(manager); // the process dies before any flush

    let restarted = KeyManager::new(store).with_usage_recording(true);
    let key = block_on(restarted.get(&id)).unwrap().unwrap();
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::AfterNewTokenUse { grace: minutes(10) }
        },
        "the renewal and the decision were written"
    );
    assert_eq!(key.current_token().last_used_at(), None, "the use was lost");
    // The lost use delays the old token's deletion, never hastens it.
    assert!(
        block_on(restarted.housekeep_all(t0() + minutes(20)))
            .unwrap()
            .is_empty()
    );
    assert!(block_on(restarted.authenticate(old.expose_secret(), t0() + minutes(20))).is_ok());
    block_on(restarted.authenticate(new.expose_secret(), t0() + minutes(21))).unwrap();
    block_on(restarted.flush_usage(t0() + minutes(22))).unwrap();
    assert_eq!(
        block_on(restarted.housekeep_all(t0() + minutes(31)))
            .unwrap()
            .len(),
        1
    );
    assert!(block_on(restarted.authenticate(old.expose_secret(), t0() + minutes(31))).is_err());
}

#[test]
fn manager_after_use_story_with_housekeeping() {
    let manager = KeyManager::new(InMemoryStore::new()).with_usage_recording(true);
    let ids: Vec<KeyId> = (0..600)
        .map(|i| KeyId::new(format!("k{i:04}")).unwrap())
        .collect();
    let mut olds = Vec::new();
    let mut news = Vec::new();
    for id in &ids {
        let (old, _) = block_on(manager.create_key(id.clone(), t0(), &mut rand::rng())).unwrap();
        let (new, _) = block_on(manager.renew(id, t0(), &mut rand::rng())).unwrap();
        block_on(manager.finalize(
            id,
            OldTokenDeletion::AfterNewTokenUse { grace: minutes(10) },
            t0(),
        ))
        .unwrap();
        olds.push(old);
        news.push(new);
    }
    // Half the integrations move to the new token at minute 1.
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        assert_eq!(
            block_on(manager.authenticate(
                keyroll::Credentials::bearer(news[i].expose_secret()).with_id(id),
                t0() + minutes(1)
            ))
            .map(|a| a.matched)
            .unwrap(),
            TokenMatch::Current
        );
    }
    // Flushed a minute later: the schedules start from the uses' time.
    assert_eq!(
        block_on(manager.flush_usage(t0() + minutes(2))).unwrap(),
        300
    );
    assert!(
        block_on(manager.housekeep_all(t0() + minutes(5)))
            .unwrap()
            .is_empty()
    );
    let events = block_on(manager.housekeep_all(t0() + minutes(11))).unwrap();
    assert_eq!(events.len(), 300);
    for (i, id) in ids.iter().enumerate() {
        let key = block_on(manager.get(id)).unwrap().unwrap();
        let moved = i % 2 == 0;
        assert_eq!(key.old_token().is_none(), moved, "{id}");
        let old = block_on(manager.authenticate(
            keyroll::Credentials::bearer(olds[i].expose_secret()).with_id(id),
            t0() + minutes(12),
        ))
        .map(|a| a.matched);
        assert_eq!(old.is_ok(), !moved);
    }
    assert_eq!(
        block_on(manager.housekeep(&ids[0], t0() + minutes(20))).unwrap(),
        None
    );

    block_on(manager.authenticate(
        keyroll::Credentials::bearer(olds[1].expose_secret()).with_id(&ids[1]),
        t0() + minutes(30),
    ))
    .map(|a| a.matched)
    .unwrap();
    let refused =
        block_on(manager.delete_old_if_idle(&ids[1], Duration::hours(1), t0() + minutes(40)));
    assert!(matches!(
        refused,
        Err(keyroll::ManagerError::Transition(
            TransitionError::OldTokenInUse { .. }
        ))
    ));
    assert!(
        block_on(manager.delete_old_if_idle(&ids[1], Duration::hours(1), t0() + minutes(91)))
            .is_ok()
    );
}

#[cfg(feature = "serde")]
#[test]
fn a_key_after_after_use_housekeeping_round_trips() {
    let (mut key, _, _) = renewing();
    key.finalize(
        OldTokenDeletion::AfterNewTokenUse { grace: minutes(60) },
        t0(),
    )
    .unwrap();
    assert!(key.record_use(TokenMatch::Current, t0() + minutes(1)));
    key.housekeep(t0() + minutes(61)).unwrap();
    let json = serde_json::to_string(&key).unwrap();
    let back: ApiKey = serde_json::from_str(&json).unwrap();
    assert_eq!(back, key, "{json}");
}
