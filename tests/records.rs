//! Serialized records: round trips, validation on load, no secret anywhere.
#![cfg(feature = "serde")]

mod common;

use common::{assert_invariants, issue, renewing, rng, t0};
use keyroll::{
    ApiKey, Event, KeyId, NewKey, OldTokenDeletion, Policy, RenewalEnforcement, TokenFormat,
    TokenId, TokenMatch,
};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use time::Duration;

/// Keys in every state, with the tokens that should verify on each.
fn keys_in_every_state() -> Vec<(ApiKey, Vec<keyroll::Token>)> {
    let mut out = Vec::new();
    let (key, token) = issue(Policy::default());
    out.push((key, vec![token]));
    let (key, old, new) = renewing();
    out.push((key, vec![old, new]));
    let (mut key, old, new) = renewing();
    key.finalize(OldTokenDeletion::Later, t0()).unwrap();
    key.deactivate(t0()).unwrap();
    out.push((key, vec![old, new]));
    let policy = Policy {
        token_format: TokenFormat::new("acme").unwrap(),
        renewal_period: Duration::new(12_345, 678_901),
        enforcement: RenewalEnforcement::Enforced,
        usage_resolution: Duration::seconds(5),
    };
    let (key, token, _) = ApiKey::issue(
        NewKey::new(KeyId::new("acme").unwrap())
            .label("ünïcode \"label\"")
            .policy(policy),
        t0(),
        &mut rng(),
    )
    .unwrap();
    out.push((key, vec![token]));
    out
}

#[test]
fn records_round_trip_and_tokens_still_verify() {
    for (key, tokens) in keys_in_every_state() {
        let json = serde_json::to_string(&key).unwrap();
        let back: ApiKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        for token in &tokens {
            assert_eq!(
                back.verify(token.expose_secret(), t0()),
                key.verify(token.expose_secret(), t0())
            );
        }
    }
}

#[test]
fn the_record_has_a_schema_and_readable_fields() {
    let (key, _, _) = renewing();
    let value = serde_json::to_value(&key).unwrap();
    assert_eq!(value["schema"], 4);
    assert_eq!(value["id"], "acme-orders");
    assert_eq!(value["incarnation"], key.revision().incarnation());
    assert!(key.revision().incarnation() < 1 << 63);
    assert_eq!(value["status"], "active");
    assert_eq!(value["version"], 2);
    assert_eq!(
        value["policy"],
        json!({"token_prefix": "kr", "renewal_period": {"secs": 7_776_000}, "enforcement": "advisory", "usage_resolution": {"secs": 60}})
    );
    assert_eq!(value["renewal"]["decision"], "undecided");
    assert_eq!(value["current_token"]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(value["created_at"], "2026-01-01T00:00:00Z");
}

#[test]
fn no_secret_in_any_debug_or_serialized_form() {
    for (key, tokens) in keys_in_every_state() {
        let mut key = key;
        let mut texts = vec![format!("{key:?}"), serde_json::to_string(&key).unwrap()];
        for token in &tokens {
            texts.push(format!("{token:?}"));
        }
        if let Ok((token, event)) = key.renew(t0(), &mut rand::rng()) {
            texts.push(format!("{event:?}"));
            texts.push(serde_json::to_string(&event).unwrap());
            texts.push(format!("{key:?}"));
            texts.push(serde_json::to_string(&key).unwrap());
            for text in &texts {
                assert!(!text.contains(&token.expose_secret()[3..43]), "{text}");
            }
        }
        for token in &tokens {
            let secret = &token.expose_secret()[3..43];
            for text in &texts {
                assert!(!text.contains(secret), "secret found in {text}");
            }
        }
    }
}

#[test]
fn events_serialize_with_a_tag_and_round_trip() {
    let (mut key, _) = issue(Policy::default());
    let (_, renewed) = key.renew(t0(), &mut rand::rng()).unwrap();
    let finalized = key.finalize(OldTokenDeletion::Later, t0()).unwrap();
    let undone = key.undo_renewal(t0()).unwrap();
    let deleted = key.delete(t0()).unwrap();
    for event in [renewed, finalized, undone, deleted] {
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["event"], event.name());
        assert_eq!(value["key_id"], "acme-orders");
        assert_eq!(value["version"], event.version());
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn ids_and_policies_serialize_as_plain_values() {
    let id = KeyId::new("a.b-c").unwrap();
    assert_eq!(serde_json::to_value(&id).unwrap(), json!("a.b-c"));
    assert!(serde_json::from_value::<KeyId>(json!("a b")).is_err());
    let (_, token) = issue(Policy::default());
    let token_id = token.id();
    let text = serde_json::to_value(token_id).unwrap();
    assert_eq!(serde_json::from_value::<TokenId>(text).unwrap(), token_id);
    let policy = Policy {
        renewal_period: Duration::new(-5, -7),
        ..Policy::default()
    };
    let back: Policy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(back, policy);
}

fn record() -> Value {
    let (key, _, _) = renewing();
    serde_json::to_value(&key).unwrap()
}

fn refused(value: Value, needle: &str) {
    let err = serde_json::from_value::<ApiKey>(value).expect_err("record should be refused");
    assert!(
        err.to_string().contains(needle),
        "{err} should mention {needle:?}"
    );
}

#[test]
fn bad_records_are_refused_with_a_clear_error() {
    let mut v = record();
    v["schema"] = json!(5);
    refused(v, "schema 5");

    let mut v = record();
    v.as_object_mut().unwrap().remove("incarnation");
    refused(v, "incarnation");

    let mut v = record();
    v["incarnation"] = json!(1u64 << 63);
    refused(v, "incarnation");

    let mut v = record();
    v["renewal"]["old_token"]["hash"] = v["current_token"]["hash"].clone();
    refused(v, "same hash");

    let mut v = record();
    v["version"] = json!(0);
    refused(v, "version 0");

    let mut v = record();
    v["version"] = json!(1); // renewing needs at least 2
    refused(v, "version 1");

    let mut v = record();
    v["renewal"]["old_token"]["id"] = v["current_token"]["id"].clone();
    refused(v, "same id");

    let mut v = record();
    v["current_token"]["hash"] = json!("ABCD");
    refused(v, "hash");

    let mut v = record();
    let upper = v["current_token"]["hash"].as_str().unwrap().to_uppercase();
    v["current_token"]["hash"] = json!(upper);
    refused(v, "hash");

    let mut v = record();
    v["current_token"]["due_at"] = v["current_token"]["created_at"].clone();
    refused(v, "due date");

    let mut v = record();
    v["policy"]["renewal_period"]["secs"] = json!(1);
    refused(v, "due date");

    let mut v = record();
    v["id"] = json!("bad id");
    refused(v, "invalid key id");

    let mut v = record();
    v["policy"]["token_prefix"] = json!("BAD");
    refused(v, "prefix");

    let mut v = record();
    v["surprise"] = json!(true);
    refused(v, "surprise");

    // A renewal decided in the same transition (`renew_with`) is at version
    // 2; an inactive one needs one more.
    let mut v = record();
    v["renewal"]["decision"] = json!("later");
    v["version"] = json!(2);
    serde_json::from_value::<ApiKey>(v.clone()).unwrap();
    v["status"] = json!("inactive");
    refused(v, "version 2");

    let mut v = record();
    v["policy"]["renewal_period"]["nanos"] = json!(2_000_000_000);
    refused(v, "nanos");
}

#[test]
fn ten_thousand_byte_mutations_never_build_an_impossible_key() {
    let (key, old, new) = renewing();
    let original = serde_json::to_vec(&key).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let mut loaded = 0;
    for _ in 0..10_000 {
        let mut bytes = original.clone();
        for _ in 0..rng.random_range(1..=4) {
            let i = rng.random_range(0..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[i] = rng.random(),
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(
                    i,
                    *b"0123456789abcdef\"{}:,"
                        .get(rng.random_range(0..21))
                        .unwrap(),
                ),
            }
        }
        let Ok(mutated) = serde_json::from_slice::<ApiKey>(&bytes) else {
            continue;
        };
        loaded += 1;
        assert_invariants(&mutated);
        // Whatever it became, it serializes and loads to itself again.
        let again: ApiKey = serde_json::from_slice(&serde_json::to_vec(&mutated).unwrap()).unwrap();
        assert_eq!(again, mutated);
        // No mutation makes a token verify in another token's place.
        for (token, role) in [(&old, TokenMatch::Old), (&new, TokenMatch::Current)] {
            if let Ok(m) = mutated.verify(token.expose_secret(), t0()) {
                assert_eq!(m, role);
            }
        }
    }
    assert!(
        loaded > 0,
        "some mutations (in labels, dates) should still load"
    );
}

/// Records written by keyroll 0.1 (schema 1, no incarnation), kept as they
/// were written.
const SCHEMA_1: [&str; 5] = [
    include_str!("fixtures/schema-1/single.json"),
    include_str!("fixtures/schema-1/renewing.json"),
    include_str!("fixtures/schema-1/later.json"),
    include_str!("fixtures/schema-1/sched.json"),
    include_str!("fixtures/schema-1/after.json"),
];

#[test]
fn schema_1_records_load_with_a_stable_derived_incarnation() {
    let mut incarnations = Vec::new();
    for record in SCHEMA_1 {
        assert!(record.contains("\"schema\":1"), "{record}");
        let key: ApiKey = serde_json::from_str(record).unwrap();
        assert_invariants(&key);
        // Every load of one record, by any replica, agrees.
        let again: ApiKey = serde_json::from_str(record).unwrap();
        assert_eq!(again.revision(), key.revision());
        assert!(key.revision().incarnation() < 1 << 63);
        incarnations.push(key.revision().incarnation());
        // Written back as schema 4, with that incarnation, and its tokens
        // marked as keyroll 0.1's.
        let written = serde_json::to_value(&key).unwrap();
        assert_eq!(written["schema"], 4);
        assert!(key.current_token().legacy_framing());
        assert!(key.old_token().is_none_or(|old| old.legacy_framing()));
        assert_eq!(written["current_token"]["legacy_framing"], true);
        assert_eq!(written["incarnation"], key.revision().incarnation());
        assert_eq!(serde_json::from_value::<ApiKey>(written).unwrap(), key);
    }
    incarnations.sort_unstable();
    incarnations.dedup();
    assert_eq!(
        incarnations.len(),
        SCHEMA_1.len(),
        "keys of other ids differ"
    );
}

/// Records written by keyroll 0.2 (schema 2), kept as they were written
/// (`tests/fixtures/schema-2/tokens.txt` holds the tokens it handed out).
const SCHEMA_2: [(&str, &str); 4] = [
    (
        "attributes",
        include_str!("fixtures/schema-2/attributes.json"),
    ),
    (
        "scheduled",
        include_str!("fixtures/schema-2/scheduled.json"),
    ),
    ("revoked", include_str!("fixtures/schema-2/revoked.json")),
    ("from-0.1", include_str!("fixtures/schema-2/from-0.1.json")),
];

fn fixture_token(name: &str) -> &'static str {
    include_str!("fixtures/schema-2/tokens.txt")
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap()
}

#[test]
fn schema_2_records_load_and_their_tokens_verify() {
    let mut loaded = std::collections::HashMap::new();
    for (name, record) in SCHEMA_2 {
        assert!(record.contains("\"schema\":2"), "{name}");
        let key: ApiKey = serde_json::from_str(record).unwrap();
        assert_invariants(&key);
        let written = serde_json::to_value(&key).unwrap();
        assert_eq!(written["schema"], 4);
        assert_eq!(serde_json::from_value::<ApiKey>(written).unwrap(), key);
        loaded.insert(name, key);
    }
    let t0 = time::OffsetDateTime::from_unix_timestamp(1_764_000_000).unwrap();
    let key = &loaded["attributes"];
    assert!(key.scopes().contains("orders:write"));
    assert_eq!(key.metadata().get("owner"), Some("acme"));
    assert_eq!(key.expires_at(), Some(t0 + time::Duration::days(365)));
    assert_eq!(
        key.verify(fixture_token("attributes"), t0),
        Ok(keyroll::TokenMatch::Current)
    );
    let key = &loaded["scheduled"];
    let day_85 = t0 + time::Duration::days(85);
    assert_eq!(
        key.verify(fixture_token("sched-old"), day_85),
        Ok(keyroll::TokenMatch::Old)
    );
    assert_eq!(
        key.verify(fixture_token("sched-current"), day_85),
        Ok(keyroll::TokenMatch::Current)
    );
    assert_eq!(
        key.old_token().unwrap().last_used_at(),
        Some(t0 + time::Duration::days(81))
    );
    assert!(loaded["revoked"].current_token().revoked_at().is_some());
    // 0.2 marked no token; its keys' tokens are not 0.1's, but those of a
    // key it loaded from a schema-1 record (its derived incarnation tells)
    // may be.
    for name in ["attributes", "scheduled", "revoked"] {
        assert!(!loaded[name].current_token().legacy_framing(), "{name}");
    }
    let from_0_1 = &loaded["from-0.1"];
    assert!(from_0_1.current_token().legacy_framing());
    assert!(from_0_1.old_token().unwrap().legacy_framing());
    let schema_1: ApiKey = serde_json::from_str(SCHEMA_1[2]).unwrap();
    assert_eq!(*from_0_1, schema_1);
}

mod fuzz_mirror {
    //! The `key_json` fuzz target's property, on its seed records and
    //! arbitrary bytes: loading never panics, and what loads keeps its
    //! invariants and serializes back to itself.
    use super::common::assert_invariants;
    use keyroll::ApiKey;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;

    const SEEDS: [&str; 5] = [
        include_str!("../fuzz/seeds/key_json/single.json"),
        include_str!("../fuzz/seeds/key_json/renewing.json"),
        include_str!("../fuzz/seeds/key_json/later.json"),
        include_str!("../fuzz/seeds/key_json/sched.json"),
        include_str!("../fuzz/seeds/key_json/after.json"),
    ];

    fn check(bytes: &[u8]) {
        if let Ok(key) = serde_json::from_slice::<ApiKey>(bytes) {
            assert_invariants(&key);
            let again: ApiKey =
                serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
            assert_eq!(again, key);
        }
    }

    #[test]
    fn the_seed_records_load() {
        for seed in SEEDS {
            let key: ApiKey = serde_json::from_str(seed).unwrap();
            assert_invariants(&key);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2048,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/records.txt"))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes);
        }

        #[test]
        fn mutated_seed_records_never_build_an_impossible_key(
            seed in 0usize..SEEDS.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = SEEDS[seed].as_bytes().to_vec();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            check(&bytes);
        }
    }
}

/// Ids that start with `.`, `_` or `-` (`.` and `..` above all, which a
/// browser collapses in a URL) are refused for new keys and owners, but a
/// record that a version before 0.4 wrote with one still loads.
#[test]
fn records_with_ids_new_keys_may_not_have_still_load() {
    for id in [".", "..", "_legacy", "-x"] {
        let mut value = record();
        value["id"] = json!(id);
        value["owner"] = json!(id);
        let key: ApiKey = serde_json::from_value(value).unwrap();
        assert_eq!(key.id().as_str(), id);
        assert_eq!(key.owner().map(|o| o.as_str()), Some(id));
        assert!(!key.id().is_valid_for_new_keys());
        let back: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
        assert_eq!(back, key);

        let refused = ApiKey::issue(KeyId::existing(id).unwrap(), t0(), &mut rng()).unwrap_err();
        assert!(
            matches!(refused, keyroll::TransitionError::InvalidId(_)),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .contains("must start with an ASCII letter or digit")
        );
        let mut fresh = issue(Policy::default()).0;
        let before = fresh.clone();
        let owner = keyroll::OwnerId::existing(id).unwrap();
        assert!(fresh.set_owner(Some(owner), t0()).is_err());
        assert_eq!(fresh, before, "a refused owner changes nothing");
    }
}

/// A record of keyroll 0.3 (schema 3) has no key-level last use: the key
/// takes it from its tokens.
#[test]
fn a_schema_3_record_takes_its_last_use_from_its_tokens() {
    let (mut key, _, _) = renewing();
    let used = t0() + Duration::minutes(5);
    assert!(key.record_use(TokenMatch::Old, used));
    let mut value = serde_json::to_value(&key).unwrap();
    assert_eq!(value["schema"], 4);
    value["schema"] = json!(3);
    value.as_object_mut().unwrap().remove("last_used_at");
    let loaded: ApiKey = serde_json::from_value(value).unwrap();
    assert_eq!(loaded.last_used_at(), Some(used));
    assert_eq!(loaded, key);
}
