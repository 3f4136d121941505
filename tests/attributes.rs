//! Scopes, metadata and hard expiry: on the key, through renewals, in
//! records, and back from authentication.
#![cfg(feature = "serde")]

mod common;

use common::{issue, renewing, rng, t0};
use keyroll::store::{InMemoryStore, KeyStore};
use keyroll::{
    ApiKey, Event, KeyId, KeyManager, Metadata, NewKey, OldTokenDeletion, Policy,
    RenewalEnforcement, Scopes, TokenMatch, TransitionError, VerifyError,
};
use pollster::block_on;
use time::Duration;

fn scopes() -> Scopes {
    Scopes::new(["orders:read", "orders:write", "billing/invoices.read"]).unwrap()
}

fn metadata() -> Metadata {
    Metadata::new([("tenant", "acme"), ("owner", "team-7")]).unwrap()
}

fn attributed() -> NewKey {
    NewKey::new(KeyId::new("acme-orders").unwrap())
        .label("orders")
        .scopes(scopes())
        .metadata(metadata())
        .expires_at(t0() + Duration::days(365))
}

#[test]
fn a_key_is_issued_with_its_attributes_and_the_event_carries_them() {
    let (key, _, event) = ApiKey::issue(attributed(), t0(), &mut rng()).unwrap();
    assert_eq!(key.scopes(), &scopes());
    assert_eq!(key.metadata(), &metadata());
    assert_eq!(key.expires_at(), Some(t0() + Duration::days(365)));
    let Event::KeyIssued {
        scopes: s,
        metadata: m,
        expires_at,
        ..
    } = event
    else {
        panic!("{event:?}");
    };
    assert_eq!((s, m, expires_at), (scopes(), metadata(), key.expires_at()));
}

#[test]
fn only_set_calls_change_attributes_and_each_bumps_the_version() {
    let (mut key, old, _) = ApiKey::issue(attributed(), t0(), &mut rng()).unwrap();
    let before = (
        key.scopes().clone(),
        key.metadata().clone(),
        key.expires_at(),
    );
    let now = t0() + Duration::days(1);
    key.renew(now, &mut rand::rng()).unwrap();
    key.finalize(OldTokenDeletion::Later, now).unwrap();
    key.undo_renewal(now).unwrap();
    key.deactivate(now).unwrap();
    key.activate(now).unwrap();
    key.renew(now, &mut rand::rng()).unwrap();
    key.delete_old(now).unwrap();
    // Revoking a token is a transition too; it leaves them alone.
    key.revoke_token(old.expose_secret(), now).unwrap_err();
    assert_eq!(
        (
            key.scopes().clone(),
            key.metadata().clone(),
            key.expires_at()
        ),
        before
    );

    let version = key.version();
    let event = key.set_scopes(Scopes::default(), now).unwrap();
    assert!(matches!(&event, Event::ScopesChanged { scopes, .. } if scopes.is_empty()));
    // The same value again still succeeds and bumps the version.
    key.set_scopes(Scopes::default(), now).unwrap();
    let event = key.set_metadata(Metadata::default(), now).unwrap();
    assert!(matches!(event, Event::MetadataChanged { .. }));
    let event = key.set_expiry(None, now).unwrap();
    assert!(matches!(
        event,
        Event::ExpiryChanged {
            expires_at: None,
            ..
        }
    ));
    let event = key.set_label("renamed", now).unwrap();
    assert!(matches!(&event, Event::LabelChanged { label, .. } if label == "renamed"));
    assert_eq!(key.version(), version + 5);
    assert_eq!(event.version(), key.version());
    assert_eq!(key.label(), "renamed");
}

#[test]
fn bad_attributes_are_refused_and_change_nothing() {
    let (mut key, _) = issue(Policy::default());
    let before = key.clone();
    assert!(matches!(
        key.set_label("tab\there", t0()),
        Err(TransitionError::InvalidLabel(_))
    ));
    assert!(matches!(
        key.set_expiry(Some(time::macros::datetime!(-1-01-01 0:00 UTC)), t0()),
        Err(TransitionError::TimeOutOfRange {
            what: "the expiry",
            ..
        })
    ));
    assert_eq!(key, before);
    let refused = |new: NewKey| ApiKey::issue(new, t0(), &mut rng()).unwrap_err();
    let id = KeyId::new("k").unwrap();
    assert!(matches!(
        refused(NewKey::new(id.clone()).expires_at(time::macros::datetime!(0000-06-01 0:00 UTC))),
        TransitionError::TimeOutOfRange { .. }
    ));
}

#[test]
fn hard_expiry_comes_after_inactive_and_before_the_renewal_period() {
    let policy = Policy {
        enforcement: RenewalEnforcement::Enforced,
        ..Policy::default()
    };
    let expires = t0() + Duration::days(30);
    let new = NewKey::new(KeyId::new("k").unwrap())
        .policy(policy)
        .expires_at(expires);
    let (mut key, token, _) = ApiKey::issue(new, t0(), &mut rng()).unwrap();
    let t = token.expose_secret();
    assert_eq!(
        key.verify(t, expires - Duration::nanoseconds(1)),
        Ok(TokenMatch::Current)
    );
    assert_eq!(key.verify(t, expires), Err(VerifyError::KeyExpired));
    // Past both the key's expiry and the token's renewal period: the key's
    // expiry is said first.
    let late = t0() + Duration::days(200);
    assert_eq!(key.verify(t, late), Err(VerifyError::KeyExpired));
    // A wrong token is still a mismatch; an inactive key says so first.
    let (_, stranger, _) = ApiKey::issue(KeyId::new("k").unwrap(), t0(), &mut rand::rng()).unwrap();
    assert_eq!(
        key.verify(stranger.expose_secret(), late),
        Err(VerifyError::Mismatch)
    );
    key.deactivate(t0()).unwrap();
    assert_eq!(key.verify(t, late), Err(VerifyError::KeyInactive));
    key.activate(t0()).unwrap();

    // Renewals never extend it: renew is refused, before RenewalPending.
    assert_eq!(
        key.renew(expires, &mut rand::rng()).unwrap_err(),
        TransitionError::KeyExpired {
            expires_at: expires
        }
    );
    key.set_expiry(Some(late + Duration::days(1)), expires)
        .unwrap();
    assert_eq!(key.verify(t, expires), Ok(TokenMatch::Current));
    key.renew(expires, &mut rand::rng()).unwrap();
    assert_eq!(key.expires_at(), Some(late + Duration::days(1)));
    key.set_expiry(Some(expires), expires).unwrap();
    assert_eq!(
        key.renew(expires, &mut rand::rng()).unwrap_err(),
        TransitionError::KeyExpired {
            expires_at: expires
        },
        "checked before RenewalPending"
    );
    // Revocation works on an expired key.
    let (mut key, _, new) = renewing();
    key.set_expiry(Some(t0()), t0()).unwrap();
    assert_eq!(
        key.verify(new.expose_secret(), t0()),
        Err(VerifyError::KeyExpired)
    );
    key.revoke_token(new.expose_secret(), t0()).unwrap();
    assert!(key.is_expired(t0()));
}

#[test]
fn attributes_round_trip_through_records_and_schema_1_records_have_none() {
    let (key, _, _) = ApiKey::issue(attributed(), t0(), &mut rng()).unwrap();
    let json = serde_json::to_value(&key).unwrap();
    assert_eq!(
        json["scopes"],
        serde_json::json!(["billing/invoices.read", "orders:read", "orders:write"])
    );
    assert_eq!(
        json["metadata"],
        serde_json::json!({"owner": "team-7", "tenant": "acme"})
    );
    assert_eq!(json["expires_at"], "2027-01-01T00:00:00Z");
    assert_eq!(serde_json::from_value::<ApiKey>(json.clone()).unwrap(), key);

    let mut bad = json.clone();
    bad["scopes"] = serde_json::json!(["fine", "not fine"]);
    let error = serde_json::from_value::<ApiKey>(bad)
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"not fine\""), "{error}");
    let bad = serde_json::to_string(&json)
        .unwrap()
        .replace("\"owner\":\"team-7\"", "\"tenant\":\"team-7\"");
    let error = serde_json::from_str::<ApiKey>(&bad)
        .unwrap_err()
        .to_string();
    assert!(error.contains("given twice"), "{error}");

    for record in [
        include_str!("fixtures/schema-1/single.json"),
        include_str!("fixtures/schema-1/after.json"),
    ] {
        let key: ApiKey = serde_json::from_str(record).unwrap();
        assert!(key.scopes().is_empty() && key.metadata().is_empty());
        assert_eq!(key.expires_at(), None);
    }
}

#[test]
fn authentication_hands_out_the_keys_scopes_and_metadata() {
    let manager = KeyManager::new(InMemoryStore::new());
    let (token, _) = block_on(manager.create_key(attributed(), t0(), &mut rng())).unwrap();
    let who = block_on(manager.authenticate(token.expose_secret(), t0())).unwrap();
    assert_eq!(who.scopes, scopes());
    assert_eq!(who.metadata, metadata());
    assert!(who.scopes.contains("orders:read"));
    assert_eq!(who.metadata.get("tenant"), Some("acme"));
    // The same through the store's default (load, then verify) path.
    let key = block_on(manager.get(&who.key_id)).unwrap().unwrap();
    let store = InMemoryStore::new();
    block_on(store.insert(&key, &[])).unwrap();
    let presented = keyroll::PresentedToken::parse(token.expose_secret()).unwrap();
    assert_eq!(
        keyroll::store::Verification::of(Some(&key), &presented, t0()),
        block_on(store.verify(key.id(), &presented, t0())).unwrap()
    );

    let id = who.key_id;
    block_on(manager.apply(
        &id,
        keyroll::Change::Scopes(Scopes::new(["orders:read"]).unwrap()),
        t0(),
    ))
    .unwrap();
    block_on(manager.apply(&id, keyroll::Change::Metadata(Metadata::default()), t0())).unwrap();
    block_on(manager.apply(&id, keyroll::Change::Label("orders v2".into()), t0())).unwrap();
    block_on(manager.apply(
        &id,
        keyroll::Change::Expiry(Some(t0() + Duration::days(1))),
        t0(),
    ))
    .unwrap();
    let who = block_on(manager.authenticate(token.expose_secret(), t0())).unwrap();
    assert!(!who.scopes.contains("orders:write") && who.metadata.is_empty());
    assert!(matches!(
        block_on(manager.authenticate(token.expose_secret(), t0() + Duration::days(1))),
        Err(keyroll::AuthError::Verify(VerifyError::KeyExpired))
    ));
    assert!(matches!(
        block_on(manager.apply(&id, keyroll::Change::Label("bad\nlabel".into()), t0())),
        Err(keyroll::ManagerError::Transition(
            TransitionError::InvalidLabel(_)
        ))
    ));
}
