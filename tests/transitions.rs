//! Every row of the transition table, every error, and versions.

mod common;

use common::{issue, renewing, rng, t0};
use keyroll::{
    ApiKey, Decision, DeletionReason, Event, KeyStatus, NewKey, OldTokenDeletion, Policy,
    RenewalState, TokenMatch, TransitionError, VerifyError,
};
use time::Duration;

/// Runs a refused transition and checks the key is exactly as before.
fn refused(
    key: &mut ApiKey,
    call: impl FnOnce(&mut ApiKey) -> Result<Event, TransitionError>,
) -> TransitionError {
    let before = key.clone();
    let err = call(key).expect_err("transition should be refused");
    assert_eq!(*key, before, "a refused transition changed the key");
    err
}

fn undecided() -> RenewalState {
    RenewalState::Renewing {
        decision: Decision::Undecided,
    }
}

#[test]
fn issue_starts_active_single_at_version_1() {
    let (key, token, event) = ApiKey::issue(
        NewKey::new(keyroll::KeyId::new("k").unwrap()).label("label"),
        t0(),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(key.status(), KeyStatus::Active);
    assert_eq!(key.state(), RenewalState::Single);
    assert_eq!(key.version(), 1);
    assert_eq!(key.label(), "label");
    assert_eq!(key.created_at(), t0());
    assert_eq!(key.current_token().id(), token.id());
    assert_eq!(key.current_token().created_at(), t0());
    assert_eq!(key.current_token().due_at(), t0() + Policy::THREE_MONTHS);
    assert!(key.old_token().is_none());
    assert!(matches!(&event, Event::KeyIssued { token_id, .. } if *token_id == token.id()));
    assert_eq!(
        (event.key_id(), event.at(), event.version()),
        (Some(key.id()), t0(), 1)
    );
}

#[test]
fn single_renew_gives_renewing_undecided_with_both_tokens() {
    let (mut key, first) = issue(Policy::default());
    let t1 = t0() + Duration::days(30);
    let (second, event) = key.renew(t1, &mut rand::rng()).unwrap();
    assert_eq!(key.state(), undecided());
    assert_eq!(key.version(), 2);
    assert_eq!(key.current_token().id(), second.id());
    assert_eq!(key.old_token().unwrap().id(), first.id());
    assert_ne!(first.expose_secret(), second.expose_secret());
    assert_eq!(
        key.verify(second.expose_secret(), t1),
        Ok(TokenMatch::Current)
    );
    assert_eq!(key.verify(first.expose_secret(), t1), Ok(TokenMatch::Old));
    assert!(matches!(
        &event,
        Event::TokenRenewed { new_token_id, old_token_id, .. }
            if *new_token_id == second.id() && *old_token_id == first.id()
    ));
    assert_eq!((event.at(), event.version()), (t1, 2));
}

#[test]
fn renewing_renew_is_refused_with_renewal_pending() {
    let (mut key, _, _) = renewing();
    let before = key.clone();
    let err = key.renew(t0(), &mut rng()).unwrap_err();
    assert_eq!(err, TransitionError::RenewalPending);
    assert_eq!(key, before);
    key.finalize(OldTokenDeletion::Later, t0()).unwrap();
    let before = key.clone();
    assert_eq!(
        key.renew(t0(), &mut rng()).unwrap_err(),
        TransitionError::RenewalPending
    );
    assert_eq!(key, before);
}

#[test]
fn finalize_now_deletes_the_old_token() {
    let (mut key, old, new) = renewing();
    let event = key.finalize(OldTokenDeletion::Now, t0()).unwrap();
    assert_eq!(key.state(), RenewalState::Single);
    assert!(key.old_token().is_none());
    assert_eq!(key.version(), 3);
    assert_eq!(
        key.verify(old.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        key.verify(new.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert!(matches!(
        &event,
        Event::OldTokenDeleted { token_id, reason: DeletionReason::FinalizedNow, .. } if *token_id == old.id()
    ));
    assert_eq!(event.version(), 3);
}

#[test]
fn finalize_later_keeps_both_tokens() {
    let (mut key, old, new) = renewing();
    let event = key.finalize(OldTokenDeletion::Later, t0()).unwrap();
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::Later
        }
    );
    assert_eq!(key.version(), 3);
    assert_eq!(key.verify(old.expose_secret(), t0()), Ok(TokenMatch::Old));
    assert_eq!(
        key.verify(new.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert!(matches!(
        event,
        Event::RenewalFinalized {
            deletion: OldTokenDeletion::Later,
            version: 3,
            ..
        }
    ));
}

#[test]
fn finalize_twice_is_already_finalized() {
    let (mut key, _, _) = renewing();
    key.finalize(OldTokenDeletion::Later, t0()).unwrap();
    for mode in [OldTokenDeletion::Now, OldTokenDeletion::Later] {
        assert_eq!(
            refused(&mut key, |k| k.finalize(mode, t0())),
            TransitionError::AlreadyFinalized
        );
    }
}

#[test]
fn finalize_without_renewal_is_no_renewal_pending() {
    let (mut key, _) = issue(Policy::default());
    for mode in [OldTokenDeletion::Now, OldTokenDeletion::Later] {
        assert_eq!(
            refused(&mut key, |k| k.finalize(mode, t0())),
            TransitionError::NoRenewalPending
        );
    }
    // Also after a renewal ended with Now.
    let (mut key, _, _) = renewing();
    key.finalize(OldTokenDeletion::Now, t0()).unwrap();
    assert_eq!(
        refused(&mut key, |k| k.finalize(OldTokenDeletion::Later, t0())),
        TransitionError::NoRenewalPending
    );
}

#[test]
fn delete_old_works_undecided_and_later() {
    for later in [false, true] {
        let (mut key, old, new) = renewing();
        if later {
            key.finalize(OldTokenDeletion::Later, t0()).unwrap();
        }
        let version = key.version();
        let event = key.delete_old(t0()).unwrap();
        assert_eq!(key.state(), RenewalState::Single);
        assert_eq!(key.version(), version + 1);
        assert_eq!(
            key.verify(old.expose_secret(), t0()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            key.verify(new.expose_secret(), t0()),
            Ok(TokenMatch::Current)
        );
        assert!(matches!(
            &event,
            Event::OldTokenDeleted { token_id, reason: DeletionReason::Manual, .. } if *token_id == old.id()
        ));
    }
}

#[test]
fn delete_old_in_single_is_no_old_token() {
    let (mut key, _) = issue(Policy::default());
    assert_eq!(
        refused(&mut key, |k| k.delete_old(t0())),
        TransitionError::NoOldToken
    );
}

#[test]
fn undo_restores_the_old_token_and_discards_the_new() {
    for later in [false, true] {
        let (mut key, old, new) = renewing();
        let old_info = key.old_token().unwrap().clone();
        if later {
            key.finalize(OldTokenDeletion::Later, t0()).unwrap();
        }
        let version = key.version();
        let event = key.undo_renewal(t0()).unwrap();
        assert_eq!(key.state(), RenewalState::Single);
        assert_eq!(key.version(), version + 1);
        assert_eq!(
            key.current_token(),
            &old_info,
            "the old token keeps its own dates"
        );
        assert_eq!(
            key.verify(old.expose_secret(), t0()),
            Ok(TokenMatch::Current)
        );
        assert_eq!(
            key.verify(new.expose_secret(), t0()),
            Err(VerifyError::Mismatch)
        );
        assert!(matches!(
            &event,
            Event::RenewalUndone { discarded_token_id, restored_token_id, .. }
                if *discarded_token_id == new.id() && *restored_token_id == old.id()
        ));
    }
}

#[test]
fn undo_without_old_token_is_no_old_token_and_says_the_way_out() {
    let (mut key, _) = issue(Policy::default());
    let err = refused(&mut key, |k| k.undo_renewal(t0()));
    assert_eq!(err, TransitionError::NoOldToken);
    let message = err.to_string();
    assert!(
        message.contains("renew again") && message.contains("delete the key"),
        "{message}"
    );

    let (mut key, _, _) = renewing();
    key.delete_old(t0()).unwrap();
    assert_eq!(
        refused(&mut key, |k| k.undo_renewal(t0())),
        TransitionError::NoOldToken
    );
}

#[test]
fn deactivate_and_activate() {
    let (mut key, token) = issue(Policy::default());
    let event = key.deactivate(t0()).unwrap();
    assert_eq!(key.status(), KeyStatus::Inactive);
    assert!(matches!(event, Event::KeyDeactivated { version: 2, .. }));
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Err(VerifyError::KeyInactive)
    );
    assert_eq!(
        refused(&mut key, |k| k.deactivate(t0())),
        TransitionError::AlreadyInactive
    );

    let event = key.activate(t0()).unwrap();
    assert_eq!(key.status(), KeyStatus::Active);
    assert!(matches!(event, Event::KeyActivated { version: 3, .. }));
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert_eq!(
        refused(&mut key, |k| k.activate(t0())),
        TransitionError::AlreadyActive
    );
}

#[test]
fn inactive_keys_still_transition_and_old_tokens_are_inactive_too() {
    let (mut key, old, _) = renewing();
    key.deactivate(t0()).unwrap();
    assert_eq!(
        key.verify(old.expose_secret(), t0()),
        Err(VerifyError::KeyInactive)
    );
    key.finalize(OldTokenDeletion::Later, t0()).unwrap();
    assert_eq!(
        key.state(),
        RenewalState::Renewing {
            decision: Decision::Later
        }
    );
    assert_eq!(key.status(), KeyStatus::Inactive);
}

#[test]
fn delete_consumes_the_key_and_reports_the_next_version() {
    let (key, _) = issue(Policy::default());
    let id = key.id().clone();
    let event = key.delete(t0()).unwrap();
    assert!(matches!(event, Event::KeyDeleted { version: 2, .. }));
    assert_eq!(event.key_id(), Some(&id));
}

#[test]
fn versions_count_successful_transitions_only() {
    let (mut key, _) = issue(Policy::default());
    let mut expected = 1;
    let mut r = rng();
    for step in 0..40u32 {
        let now = t0() + Duration::hours(i64::from(step));
        let before = key.version();
        let result = match step % 7 {
            0 => key.renew(now, &mut r).map(|(_, e)| e),
            1 => key.finalize(OldTokenDeletion::Later, now),
            2 => key.undo_renewal(now),
            3 => key.delete_old(now),
            4 => key.deactivate(now),
            5 => key.activate(now),
            _ => key.finalize(OldTokenDeletion::Now, now),
        };
        match result {
            Ok(event) => {
                expected += 1;
                assert_eq!(event.version(), key.version());
                assert_eq!(event.at(), now);
            }
            Err(_) => assert_eq!(key.version(), before),
        }
        assert_eq!(key.version(), expected);
    }
    assert!(expected > 10, "the sequence exercised successes");
}

#[test]
fn error_messages_are_short_lower_case_and_name_the_call() {
    let all = [
        (TransitionError::RenewalPending, "renew"),
        (TransitionError::NoRenewalPending, "finalize"),
        (TransitionError::AlreadyFinalized, "finalize"),
        (TransitionError::NoOldToken, "old token"),
        (TransitionError::AlreadyActive, "activate"),
        (TransitionError::AlreadyInactive, "deactivate"),
    ];
    for (err, call) in all {
        let message = err.to_string();
        assert!(message.starts_with(char::is_lowercase), "{message}");
        assert!(message.contains(call), "{message} should name {call}");
    }
    for err in [
        VerifyError::Malformed,
        VerifyError::Mismatch,
        VerifyError::KeyInactive,
        VerifyError::RenewalOverdue,
    ] {
        assert!(err.to_string().starts_with(char::is_lowercase));
    }
}
