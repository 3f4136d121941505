//! Helpers shared by the integration tests.
#![allow(dead_code)]

use keyroll::{ApiKey, KeyId, NewKey, Policy, RenewalState, Token};
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::{Duration, OffsetDateTime};

/// A fixed instant, so that tests do not depend on the clock.
pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap() // 2026-01-01T00:00:00Z
}

pub fn rng() -> StdRng {
    StdRng::seed_from_u64(0x006b_6579_726f_6c6c)
}

pub fn issue(policy: Policy) -> (ApiKey, Token) {
    let new = NewKey::new(KeyId::new("acme-orders").unwrap())
        .label("orders")
        .policy(policy);
    let (key, token, _) = ApiKey::issue(new, t0(), &mut rng()).unwrap();
    (key, token)
}

/// `token` with one character of its secret changed: well framed, its
/// checksum broken.
pub fn with_a_secret_character_changed(token: &str) -> String {
    let at = token.len() - 20;
    let swap = if &token[at..at + 1] == "A" { "B" } else { "A" };
    format!("{}{swap}{}", &token[..at], &token[at + 1..])
}

/// A key that is renewing, with its old and new tokens.
pub fn renewing() -> (ApiKey, Token, Token) {
    let (mut key, old) = issue(Policy::default());
    let (new, _) = key
        .renew(t0() + Duration::days(1), &mut StdRng::seed_from_u64(9))
        .unwrap();
    (key, old, new)
}

/// Every invariant visible through the public API.
pub fn assert_invariants(key: &ApiKey) {
    assert!(key.version() >= 1);
    match key.state() {
        RenewalState::Single => assert!(key.old_token().is_none()),
        RenewalState::Renewing { .. } => {
            let old = key.old_token().expect("renewing without an old token");
            assert_ne!(old.id(), key.current_token().id());
            assert!(key.version() >= 2);
        }
        other => panic!("a state this test does not know: {other:?}"),
    }
    let period = key.policy().renewal_period;
    for token in [Some(key.current_token()), key.old_token()]
        .into_iter()
        .flatten()
    {
        assert_eq!(token.due_at(), token.created_at().saturating_add(period));
    }
}
