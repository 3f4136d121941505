//! Leaked tokens: revocation on the key and through the managers, and the
//! pattern secret scanners use to find tokens.

mod common;

use common::{issue, renewing, rng, t0, with_a_secret_character_changed};
use keyroll::store::InMemoryStore;
use keyroll::{
    ApiKey, Event, KeyId, KeyManager, NewKey, OldTokenDeletion, Policy, RenewalEnforcement,
    RenewalState, TokenFormat, TokenMatch, TransitionError, VerifyError,
};
use pollster::block_on;
use rand::{RngExt, SeedableRng};
use time::Duration;

fn revoked(event: &Event) -> (TokenMatch, keyroll::TokenId) {
    match event {
        Event::TokenRevoked {
            which, token_id, ..
        } => (*which, *token_id),
        other => panic!("expected TokenRevoked, got {other:?}"),
    }
}

#[test]
fn a_revoked_current_token_never_verifies_again() {
    let (mut key, token) = issue(Policy::default());
    let event = key.revoke_token(token.expose_secret(), t0()).unwrap();
    assert_eq!(revoked(&event), (TokenMatch::Current, token.id()));
    assert_eq!(event.version(), 2);
    assert_eq!(key.version(), 2);
    assert_eq!(key.current_token().revoked_at(), Some(t0()));
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
    // Revoking it again finds no live token, and changes nothing.
    let before = key.clone();
    assert_eq!(
        key.revoke_token(token.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(key, before);

    // Whatever follows: deactivate and activate, reload, renew and undo.
    key.deactivate(t0()).unwrap();
    key.activate(t0()).unwrap();
    let key: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
    let mut key = key;
    let (fresh, event) = key.renew(t0(), &mut rand::rng()).unwrap();
    assert!(matches!(
        event,
        Event::TokenRenewed {
            previous_revoked: true,
            ..
        }
    ));
    assert_eq!(
        key.state(),
        RenewalState::Single,
        "the revoked token is dropped"
    );
    assert!(key.old_token().is_none());
    assert_eq!(
        key.undo_renewal(t0()),
        Err(TransitionError::NoOldToken),
        "nothing to undo to"
    );
    assert_eq!(
        key.verify(fresh.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn a_revoked_old_token_is_deleted() {
    let (mut key, old, new) = renewing();
    let event = key.revoke_token(old.expose_secret(), t0()).unwrap();
    assert_eq!(revoked(&event), (TokenMatch::Old, old.id()));
    assert_eq!(key.state(), RenewalState::Single);
    assert_eq!(
        key.verify(old.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        key.verify(new.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert_eq!(key.undo_renewal(t0()), Err(TransitionError::NoOldToken));
}

#[test]
fn revoking_the_new_token_of_a_renewal_then_undoing_keeps_it_dead() {
    let (mut key, old, new) = renewing();
    key.revoke_token(new.expose_secret(), t0()).unwrap();
    assert_eq!(key.verify(old.expose_secret(), t0()), Ok(TokenMatch::Old));
    // A renewal is pending: it must be settled first, as usual.
    assert_eq!(
        key.renew(t0(), &mut rand::rng()).unwrap_err(),
        TransitionError::RenewalPending
    );
    key.undo_renewal(t0()).unwrap();
    assert_eq!(
        key.verify(old.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert_eq!(
        key.verify(new.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn revocation_ignores_status_and_expiry_but_not_scheduled_deletion() {
    let policy = Policy {
        enforcement: RenewalEnforcement::Enforced,
        ..Policy::default()
    };
    let (mut key, token) = issue(policy);
    key.deactivate(t0()).unwrap();
    let long_after = t0() + Duration::days(1000);
    assert_eq!(
        key.verify(token.expose_secret(), long_after),
        Err(VerifyError::KeyInactive)
    );
    key.revoke_token(token.expose_secret(), long_after).unwrap();
    key.activate(long_after).unwrap();
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );

    // An old token past its scheduled deletion is no longer live.
    let (mut key, old, _) = renewing();
    let at = t0() + Duration::days(2);
    key.finalize(OldTokenDeletion::At(at), t0()).unwrap();
    assert_eq!(
        key.revoke_token(old.expose_secret(), at),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn revocation_refuses_anything_but_a_live_token_of_the_key() {
    let (mut key, _) = issue(Policy::default());
    let before = key.clone();
    let (_, stranger, _) = ApiKey::issue(KeyId::new("other").unwrap(), t0(), &mut rng()).unwrap();
    assert_eq!(
        key.revoke_token("kr_nope", t0()),
        Err(VerifyError::Malformed)
    );
    assert_eq!(
        key.revoke_token(stranger.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(key, before);
    // The clock is clamped, never refused.
    let (mut key, token) = issue(Policy::default());
    let event = key
        .revoke_token(
            token.expose_secret(),
            time::macros::datetime!(-9000-01-01 0:00 UTC),
        )
        .unwrap();
    assert_eq!(event.at().year(), 1);
    serde_json::to_string(&key).unwrap();
}

#[test]
fn the_manager_revokes_what_a_scanner_reports() {
    let manager = KeyManager::new(InMemoryStore::new());
    let mut rng = rand::rng();
    let id = KeyId::new("acme_orders.v2").unwrap();
    let (leaked, _) = block_on(manager.create_key(id.clone(), t0(), &mut rng)).unwrap();
    let (_, other) =
        block_on(manager.create_key(NewKey::new(KeyId::new("other").unwrap()), t0(), &mut rng))
            .map(|(t, e)| (e, t))
            .unwrap();

    let event = block_on(manager.revoke_token(leaked.expose_secret(), t0()))
        .unwrap()
        .expect("a live token was revoked");
    assert_eq!(event.key_id(), Some(&id));
    assert!(block_on(manager.authenticate(leaked.expose_secret(), t0())).is_err());
    assert!(block_on(manager.authenticate(other.expose_secret(), t0())).is_ok());
    let version = block_on(manager.get(&id)).unwrap().unwrap().version();

    // Nothing to revoke: already revoked, malformed, of an unknown key,
    // wrong. Nothing is written.
    let wrong = with_a_secret_character_changed(other.expose_secret());
    for presented in [leaked.expose_secret(), "kr_nope", wrong.as_str()] {
        assert_eq!(
            block_on(manager.revoke_token(presented, t0())).unwrap(),
            None
        );
    }
    block_on(manager.delete_key(&KeyId::new("other").unwrap(), t0())).unwrap();
    assert_eq!(
        block_on(manager.revoke_token(other.expose_secret(), t0())).unwrap(),
        None
    );
    assert_eq!(
        block_on(manager.get(&id)).unwrap().unwrap().version(),
        version
    );
}

#[test]
fn authentication_by_token_alone_reads_no_store_for_a_malformed_token() {
    // A store that counts its calls and fails every one.
    use keyroll::store::{Action, Call, InMemoryStore, Intercept};
    let failing = Call::ALL
        .into_iter()
        .fold(Intercept::new(InMemoryStore::new()), |store, call| {
            store.on(call, |_| Action::Fail)
        });
    let manager = KeyManager::new(failing);
    let reads = || {
        Call::ALL
            .into_iter()
            .map(|call| manager.store().count(call))
            .sum::<u64>()
    };
    let (_, token, _) = ApiKey::issue(KeyId::new("k").unwrap(), t0(), &mut rng()).unwrap();
    // Framed as a token of `k`, one secret character changed.
    let broken = with_a_secret_character_changed(token.expose_secret());
    let malformed = [
        "",
        "kr_typo",
        &"x".repeat(10_000),
        "kr_k_ünïcødé",
        &token.expose_secret()[1..],
        &broken,
    ];
    for presented in malformed {
        assert!(matches!(
            block_on(manager.authenticate(presented, t0())),
            Err(keyroll::AuthError::Verify(VerifyError::Malformed))
        ));
        assert!(matches!(
            block_on(manager.authenticate(
                keyroll::Credentials::bearer(presented).with_id(&KeyId::new("k").unwrap()),
                t0()
            )),
            Err(keyroll::AuthError::Verify(VerifyError::Malformed))
        ));
        assert_eq!(
            block_on(manager.revoke_token(presented, t0())).unwrap(),
            None
        );
    }
    // A token naming another key, in the two-credential form: no read.
    assert!(matches!(
        block_on(manager.authenticate(
            keyroll::Credentials::bearer(token.expose_secret()).with_id(&KeyId::new("j").unwrap()),
            t0()
        )),
        Err(keyroll::AuthError::Verify(VerifyError::Mismatch))
    ));
    assert_eq!(reads(), 0);
    // A well-formed token does read.
    assert!(matches!(
        block_on(manager.authenticate(token.expose_secret(), t0())),
        Err(keyroll::AuthError::Store(_))
    ));
}

/// Random key ids, with `_`, `.` and `-` in them (not first).
fn random_id(rng: &mut impl rand::Rng) -> KeyId {
    const ALPHABET: &[u8] = b"abcXYZ019._-";
    let len = rng.random_range(1..=64);
    // The first a letter or digit, as every new id.
    let id: String = (0..len)
        .map(|n| {
            char::from(ALPHABET[rng.random_range(0..ALPHABET.len() - 3 * usize::from(n == 0))])
        })
        .collect();
    KeyId::new(id).unwrap()
}

#[test]
fn the_scan_pattern_finds_every_token_whole_and_nothing_else() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    for prefix in ["kr", "acme9"] {
        let format = TokenFormat::new(prefix).unwrap();
        let pattern = regex::Regex::new(&format.scan_pattern()).unwrap();
        for _ in 0..200 {
            let tokens: Vec<String> = (0..4)
                .map(|_| {
                    let new = NewKey::new(random_id(&mut rng)).policy(Policy {
                        token_format: format,
                        ..Policy::default()
                    });
                    let (_, token, _) = ApiKey::issue(new, t0(), &mut rng).unwrap();
                    token.expose_secret().to_owned()
                })
                .collect();
            let [a, b, c, d] = &tokens[..] else {
                unreachable!()
            };
            let text = format!(
                "let token = \"{a}\";\n\
                 {{\"api_key\": \"{b}\", \"n\": 1}}\n\
                 curl https://api.example.com/v1?token={c}&page=2\n\
                 Authorization: Bearer {d}\n\
                 not tokens: zz{a} {b}x _{c} {d}_ {prefix}_short_abc"
            );
            let found: Vec<&str> = pattern.find_iter(&text).map(|m| m.as_str()).collect();
            assert_eq!(found, [a, b, c, d], "in:\n{text}");
            for token in found {
                assert_eq!(format.check(token), Ok(()));
                assert!(KeyId::from_token(token).is_ok());
            }
        }
    }
}
