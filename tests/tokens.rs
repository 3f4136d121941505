//! The token format, verification, freshness and expiry.

mod common;

use std::collections::HashSet;

use common::{issue, renewing, t0};
use keyroll::{
    ApiKey, Freshness, KeyId, NewKey, OldTokenDeletion, Policy, RenewalEnforcement, TokenFormat,
    TokenMatch, VerifyError,
};
use pollster::block_on;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::SeedableRng;
use time::Duration;

const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC-32/ISO-HDLC, bit by bit, written here independently of the crate.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base62_6(mut n: u32) -> String {
    let mut digits = vec![b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = BASE62.as_bytes()[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(digits).unwrap()
}

#[test]
fn crc_reference_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

/// `{prefix}_{key_id}_{secret}{checksum}`, CRC-32 over everything before
/// the checksum.
fn token_of(prefix: &str, id: &str, secret: &str) -> String {
    let signed = format!("{prefix}_{id}_{secret}");
    format!("{signed}{}", base62_6(crc32(signed.as_bytes())))
}

/// The 40 secret characters of a token.
fn secret_of(token: &str) -> &str {
    &token[token.len() - 46..token.len() - 6]
}

#[test]
fn tokens_have_the_documented_format_and_checksum() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for prefix in ["kr", "acme", "z9"] {
        let policy = Policy {
            token_format: TokenFormat::new(prefix).unwrap(),
            ..Policy::default()
        };
        for id in ["k", "acme_orders", "a.b-c_d", &"x_".repeat(32)] {
            let key_id = KeyId::new(id).unwrap();
            for _ in 0..50 {
                let new = NewKey::new(key_id.clone()).policy(policy);
                let (_, token, _) = ApiKey::issue(new, t0(), &mut rng).unwrap();
                let text = token.expose_secret();
                let rest = text
                    .strip_prefix(&format!("{prefix}_{id}_"))
                    .expect("prefix, key id and underscores");
                assert_eq!(rest.len(), 46);
                assert!(rest.chars().all(|c| BASE62.contains(c)), "{text}");
                let (signed, checksum) = text.split_at(text.len() - 6);
                assert_eq!(checksum, base62_6(crc32(signed.as_bytes())), "{text}");
                assert_eq!(text, token_of(prefix, id, secret_of(text)));
                assert_eq!(policy.token_format.check(text), Ok(()));
                assert_eq!(KeyId::from_token(text), Ok(key_id.clone()));
                assert!(text.len() <= 128);
            }
        }
    }
}

#[test]
fn key_ids_come_out_of_tokens_without_hashing() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..500 {
        let id = KeyId::generate(&mut rng);
        let (_, token, _) = ApiKey::issue(id.clone(), t0(), &mut rng).unwrap();
        assert_eq!(KeyId::from_token(token.expose_secret()), Ok(id));
    }
    // The longest id, and ids made of the separator and the other symbols.
    for id in [
        "x".repeat(64),
        "_".into(),
        "__".into(),
        "-".into(),
        ".".into(),
        "a_".into(),
        "_a".into(),
    ] {
        let token = token_of("kr", &id, &"A".repeat(40));
        assert_eq!(KeyId::from_token(&token).unwrap().as_str(), id);
    }
}

#[test]
fn tokens_of_every_wrong_shape_are_malformed() {
    let (key, token) = issue(Policy::default());
    let good = token.expose_secret();
    let secret = secret_of(good);
    let mut off_by_one = good.to_owned();
    let last = off_by_one.pop().unwrap();
    off_by_one.push(if last == 'z' { 'y' } else { 'z' });
    let mut swapped: Vec<char> = good.chars().collect();
    let n = swapped.len();
    swapped.swap(n - 10, n - 12);
    let swapped: String = swapped.into_iter().collect();
    let cases = [
        String::new(),
        "x".repeat(10 * 1024),
        "kr".into(),
        "kr_".into(),
        "kr_acme-orders_".into(),
        format!("kr_acme-orders_{secret}"), // no checksum
        off_by_one,                         // checksum off by one character
        good.replacen("acme-orders_", "acme-orders", 1), // `_` missing
        token_of("kr", "bad id", secret),   // invalid id character
        token_of("kr", &"x".repeat(65), secret), // id too long
        token_of("kr", "", secret),         // empty id
        token_of("kr", "ünï", secret),      // non-ASCII
        good.replacen("kr_", "ünï_", 1),
        format!("{good}\n"),
        format!(" {good}"),
        good.to_uppercase(),
    ];
    for case in cases {
        assert_eq!(
            KeyId::from_token(&case),
            Err(VerifyError::Malformed),
            "{case:?}"
        );
        assert_eq!(
            key.verify(&case, t0()),
            Err(VerifyError::Malformed),
            "{case:?}"
        );
    }
    // Swapped characters keep the shape: the checksum catches them.
    if swapped != good {
        assert_eq!(KeyId::from_token(&swapped), Err(VerifyError::Malformed));
    }
    // Longer than the longest token: refused before anything else.
    let long = token_of("abcdefghijklmnop", &"x".repeat(64), secret);
    assert_eq!(long.len(), 128);
    assert!(KeyId::from_token(&long).is_ok());
    assert_eq!(
        KeyId::from_token(&format!("{long}0")),
        Err(VerifyError::Malformed)
    );
}

#[test]
fn a_token_naming_another_key_is_a_mismatch_even_with_a_valid_checksum() {
    let (key, token) = issue(Policy::default());
    let (other, _, _) =
        ApiKey::issue(KeyId::new("other").unwrap(), t0(), &mut rand::rng()).unwrap();
    // The same secret, relabelled to name `other`, checksum recomputed.
    let relabelled = token_of("kr", "other", secret_of(token.expose_secret()));
    assert_eq!(KeyId::from_token(&relabelled).unwrap(), *other.id());
    assert_eq!(other.verify(&relabelled, t0()), Err(VerifyError::Mismatch));
    assert_eq!(key.verify(&relabelled, t0()), Err(VerifyError::Mismatch));
}

/// `token` in the framing of keyroll 0.1: `kr_{secret}{checksum}`, no key id.
fn framed_as_0_1(token: &keyroll::Token) -> String {
    let signed = format!("kr_{}", secret_of(token.expose_secret()));
    format!("{signed}{}", base62_6(crc32(signed.as_bytes())))
}

/// `key` as keyroll 0.1 stored it (schema 1): its tokens are then known
/// to be 0.1's.
fn as_written_by_0_1(key: &ApiKey) -> ApiKey {
    let mut record = serde_json::to_value(key).unwrap();
    record["schema"] = serde_json::json!(1);
    record.as_object_mut().unwrap().remove("incarnation");
    serde_json::from_value(record).unwrap()
}

/// Tokens handed out by keyroll 0.1 (`kr_{secret}{checksum}`, no key id)
/// keep verifying against their key, whose record says 0.1 issued them;
/// they name no key, so only the two-credential form can use them.
#[test]
fn tokens_of_keyroll_0_1_still_verify_against_their_key() {
    let (key, old, new) = renewing();
    let key = as_written_by_0_1(&key);
    for (token, matched) in [(&old, TokenMatch::Old), (&new, TokenMatch::Current)] {
        let v1 = framed_as_0_1(token);
        assert_eq!(key.verify(&v1, t0()), Ok(matched));
        assert_eq!(KeyId::from_token(&v1), Err(VerifyError::Malformed));
        assert_eq!(
            TokenFormat::default().check(&v1),
            Err(VerifyError::Malformed)
        );
    }
    let (other, _, _) =
        ApiKey::issue(KeyId::new("other").unwrap(), t0(), &mut rand::rng()).unwrap();
    assert_eq!(
        other.verify(&framed_as_0_1(&new), t0()),
        Err(VerifyError::Mismatch)
    );
}

/// The framing of keyroll 0.1 is accepted only for a token that 0.1
/// issued: never for a key issued since, nor for a token renewed since on
/// a key of 0.1, whatever its secret.
#[test]
fn the_framing_of_keyroll_0_1_is_refused_for_tokens_issued_since() {
    let (key, old, new) = renewing();
    assert!(!key.current_token().legacy_framing());
    for token in [&old, &new] {
        assert_eq!(
            key.verify(&framed_as_0_1(token), t0()),
            Err(VerifyError::Mismatch)
        );
        assert!(key.verify(token.expose_secret(), t0()).is_ok());
    }

    // A key of 0.1, renewed now: its 0.1 token keeps that framing, the new
    // one does not get it.
    let (single, first) = issue(Policy::default());
    let mut key = as_written_by_0_1(&single);
    let (second, _) = key.renew(t0(), &mut rand::rng()).unwrap();
    assert_eq!(
        key.verify(&framed_as_0_1(&first), t0()),
        Ok(TokenMatch::Old)
    );
    assert_eq!(
        key.verify(&framed_as_0_1(&second), t0()),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        key.verify(second.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    // Undone, the 0.1 token is current again, with its framing.
    key.undo_renewal(t0()).unwrap();
    assert_eq!(
        key.verify(&framed_as_0_1(&first), t0()),
        Ok(TokenMatch::Current)
    );
    let reloaded: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
    assert_eq!(reloaded, key);
}

/// A token in the framing of 0.1 names no key: it is revoked by key id
/// plus token; the token alone finds no key.
#[test]
fn tokens_of_keyroll_0_1_are_revoked_by_key_id_and_token() {
    let (single, first) = issue(Policy::default());
    let store = keyroll::store::InMemoryStore::new();
    block_on(keyroll::store::KeyStore::insert(
        &store,
        &as_written_by_0_1(&single),
        &[],
    ))
    .unwrap();
    let manager = keyroll::KeyManager::new(store);
    let v1 = framed_as_0_1(&first);
    assert!(block_on(manager.revoke_token(&v1, t0())).unwrap().is_none());
    let id = single.id();
    assert!(
        block_on(manager.authenticate(keyroll::Credentials::bearer(&v1).with_id(id), t0())).is_ok()
    );
    let revoked =
        block_on(manager.revoke_token(keyroll::Credentials::bearer(&v1).with_id(id), t0()))
            .unwrap();
    assert!(matches!(revoked, Some(keyroll::Event::TokenRevoked { .. })));
    assert!(
        block_on(manager.authenticate(keyroll::Credentials::bearer(&v1).with_id(id), t0()))
            .is_err()
    );
    assert!(block_on(manager.authenticate(first.expose_secret(), t0())).is_err());
    // Nothing more to revoke; another key's id revokes nothing.
    assert!(
        block_on(manager.revoke_token(keyroll::Credentials::bearer(&v1).with_id(id), t0()))
            .unwrap()
            .is_none()
    );
    let other = KeyId::new("other").unwrap();
    assert!(
        block_on(manager.revoke_token(keyroll::Credentials::bearer(&v1).with_id(&other), t0()))
            .unwrap()
            .is_none()
    );
}

#[test]
fn ten_thousand_tokens_from_one_seeded_rng_are_distinct() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (mut key, first, _) = ApiKey::issue(KeyId::new("k").unwrap(), t0(), &mut rng).unwrap();
    let mut secrets = HashSet::from([first.expose_secret().to_owned()]);
    let mut ids = HashSet::from([first.id()]);
    for _ in 1..10_000 {
        let (token, _) = key.renew(t0(), &mut rng).unwrap();
        key.delete_old(t0()).unwrap();
        assert!(secrets.insert(token.expose_secret().to_owned()));
        assert!(ids.insert(token.id()));
    }
}

#[test]
fn secret_characters_are_uniform_enough() {
    // 40 * 2000 = 80,000 characters over 62 symbols: about 1290 each.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut counts = [0u32; 62];
    let (mut key, _, _) = ApiKey::issue(KeyId::new("k").unwrap(), t0(), &mut rng).unwrap();
    for _ in 0..2000 {
        let (token, _) = key.renew(t0(), &mut rng).unwrap();
        key.delete_old(t0()).unwrap();
        for c in secret_of(token.expose_secret()).chars() {
            counts[BASE62.find(c).unwrap()] += 1;
        }
    }
    // Chi-square with 61 degrees of freedom: p = 1e-6 is about 130.
    let expected = 80_000.0 / 62.0;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 130.0, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn any_single_character_change_is_refused() {
    let (key, old, new) = renewing();
    for token in [&old, &new] {
        let text = token.expose_secret();
        for i in 0..text.len() {
            for replacement in ['0', 'a', 'Z', '_', '-', 'é'] {
                let mut chars: Vec<char> = text.chars().collect();
                if chars[i] == replacement {
                    continue;
                }
                chars[i] = replacement;
                let tampered: String = chars.into_iter().collect();
                let result = key.verify(&tampered, t0());
                assert!(
                    matches!(result, Err(VerifyError::Malformed | VerifyError::Mismatch)),
                    "position {i} -> {replacement:?}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn malformed_inputs_are_malformed() {
    let (key, token) = issue(Policy::default());
    let good = token.expose_secret();
    let cases = [
        String::new(),
        "kr_".into(),
        good[..good.len() - 1].into(),
        format!("{good}0"),
        good.replacen("kr_", "xx_", 1),
        good.replacen("kr_", "kr-", 1),
        good.replacen("kr_", "KR_", 1),
        format!(" {}", &good[1..]),
        good.to_uppercase(),
    ];
    for case in cases {
        assert_eq!(
            key.verify(&case, t0()),
            Err(VerifyError::Malformed),
            "{case:?}"
        );
    }
}

#[test]
fn a_well_formed_token_of_another_key_is_a_mismatch() {
    let (key, _) = issue(Policy::default());
    let (other, other_token, _) =
        ApiKey::issue(KeyId::new("other").unwrap(), t0(), &mut rand::rng()).unwrap();
    assert_eq!(
        other.verify(other_token.expose_secret(), t0()),
        Ok(TokenMatch::Current)
    );
    assert_eq!(
        key.verify(other_token.expose_secret(), t0()),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn a_token_of_another_prefix_is_malformed() {
    let (key, _) = issue(Policy::default());
    let acme = Policy {
        token_format: TokenFormat::new("acme").unwrap(),
        ..Policy::default()
    };
    let (_, token, _) = ApiKey::issue(
        NewKey::new(KeyId::new("acme-orders").unwrap()).policy(acme),
        t0(),
        &mut rand::rng(),
    )
    .unwrap();
    assert_eq!(
        key.verify(token.expose_secret(), t0()),
        Err(VerifyError::Malformed)
    );
}

#[test]
fn freshness_boundaries() {
    let (key, _) = issue(Policy::default());
    let due = t0() + Duration::days(90);
    let nano = Duration::nanoseconds(1);
    assert_eq!(key.freshness(t0()), Freshness::Fresh { due_at: due });
    assert_eq!(key.freshness(due - nano), Freshness::Fresh { due_at: due });
    assert_eq!(key.freshness(due), Freshness::Outdated { due_at: due });
    let long = due + Duration::days(90);
    assert_eq!(
        key.freshness(long - nano),
        Freshness::Outdated { due_at: due }
    );
    assert_eq!(key.freshness(long), Freshness::LongOutdated { due_at: due });
    assert_eq!(
        key.freshness(long + Duration::days(1000)),
        Freshness::LongOutdated { due_at: due }
    );
    assert!(key.freshness(due).is_outdated());
    assert_eq!(key.freshness(long).due_at(), due);
}

#[test]
fn six_months_and_renewal_restart_the_clock() {
    let (mut key, _) = issue(Policy {
        renewal_period: Policy::SIX_MONTHS,
        ..Policy::default()
    });
    assert_eq!(key.current_token().due_at(), t0() + Duration::days(180));
    let t1 = t0() + Duration::days(200);
    assert!(key.freshness(t1).is_outdated());
    key.renew(t1, &mut rand::rng()).unwrap();
    assert_eq!(
        key.freshness(t1),
        Freshness::Fresh {
            due_at: t1 + Duration::days(180)
        }
    );
    let old = key.old_token().unwrap();
    assert_eq!(
        old.due_at(),
        t0() + Duration::days(180),
        "the old token keeps its own dates"
    );
    assert_eq!(old.created_at(), t0());
}

#[test]
fn advisory_expiry_keeps_outdated_tokens_working() {
    let (key, token) = issue(Policy::default());
    let late = t0() + Duration::days(1000);
    assert!(matches!(
        key.freshness(late),
        Freshness::LongOutdated { .. }
    ));
    assert_eq!(
        key.verify(token.expose_secret(), late),
        Ok(TokenMatch::Current)
    );
}

#[test]
fn enforced_expiry_refuses_tokens_past_their_own_due_date() {
    let policy = Policy {
        enforcement: RenewalEnforcement::Enforced,
        ..Policy::default()
    };
    let (mut key, old) = issue(policy);
    let due = t0() + Duration::days(90);
    assert_eq!(
        key.verify(old.expose_secret(), due - Duration::nanoseconds(1)),
        Ok(TokenMatch::Current)
    );
    assert_eq!(
        key.verify(old.expose_secret(), due),
        Err(VerifyError::RenewalOverdue)
    );

    // Renewed at day 80: the old token expires at day 90, the new at day 170.
    let t1 = t0() + Duration::days(80);
    let (new, _) = key.renew(t1, &mut rand::rng()).unwrap();
    key.finalize(OldTokenDeletion::Later, t1).unwrap();
    assert_eq!(key.verify(old.expose_secret(), t1), Ok(TokenMatch::Old));
    assert_eq!(
        key.verify(old.expose_secret(), due),
        Err(VerifyError::RenewalOverdue)
    );
    assert_eq!(
        key.verify(new.expose_secret(), due),
        Ok(TokenMatch::Current)
    );
    assert_eq!(
        key.verify(new.expose_secret(), t1 + Duration::days(90)),
        Err(VerifyError::RenewalOverdue)
    );
    // A wrong token is a mismatch, not expired; an inactive key says so first.
    let (_, stranger, _) = ApiKey::issue(
        NewKey::new(KeyId::new("k").unwrap()).policy(policy),
        t0(),
        &mut rand::rng(),
    )
    .unwrap();
    assert_eq!(
        key.verify(stranger.expose_secret(), due),
        Err(VerifyError::Mismatch)
    );
    key.deactivate(t1).unwrap();
    assert_eq!(
        key.verify(new.expose_secret(), due + Duration::days(100)),
        Err(VerifyError::KeyInactive)
    );
}

#[test]
fn verify_never_changes_the_key() {
    let (key, old, new) = renewing();
    let before = key.clone();
    for text in [old.expose_secret(), new.expose_secret(), "kr_bad", ""] {
        let _ = key.verify(text, t0());
    }
    assert_eq!(key, before);
}

#[test]
fn format_check_is_the_same_as_verify_malformed() {
    let format = TokenFormat::default();
    let (key, token) = issue(Policy::default());
    assert_eq!(format.check(token.expose_secret()), Ok(()));
    assert_eq!(format.check("kr_abc"), Err(VerifyError::Malformed));
    assert_eq!(format.token_len(key.id()), token.expose_secret().len());
    assert_eq!(key.policy().token_format, format);
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/tokens.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_strings_never_verify_and_never_panic(s in any::<String>()) {
        let (key, _, _) = renewing();
        prop_assert!(key.verify(&s, t0()).is_err());
    }

    #[test]
    fn well_formed_random_tokens_are_mismatches(
        id in "[A-Za-z0-9._-]{1,64}",
        secret in "[0-9A-Za-z]{40}",
    ) {
        let (key, _, _) = renewing();
        for id in [id.as_str(), "acme-orders"] {
            let token = token_of("kr", id, &secret);
            prop_assert_eq!(TokenFormat::default().check(&token), Ok(()));
            let named = KeyId::from_token(&token).unwrap();
            prop_assert_eq!(named.as_str(), id);
            prop_assert_eq!(key.verify(&token, t0()), Err(VerifyError::Mismatch));
        }
    }

    /// A secret with a byte outside base62 is malformed even under a
    /// checksum that matches it (as only a forger would send): for naming
    /// the key as for verifying.
    #[test]
    fn a_foreign_byte_in_the_secret_is_malformed_under_a_valid_checksum(
        secret in "[0-9A-Za-z]{40}",
        index in 0..40usize,
        byte in prop::sample::select(b"_-.~+/= !".to_vec()),
    ) {
        let mut secret = secret.into_bytes();
        secret[index] = byte;
        let token = token_of("kr", "acme-orders", std::str::from_utf8(&secret).unwrap());
        let (key, _, _) = renewing();
        prop_assert_eq!(KeyId::from_token(&token), Err(VerifyError::Malformed));
        prop_assert_eq!(TokenFormat::default().check(&token), Err(VerifyError::Malformed));
        prop_assert_eq!(key.verify(&token, t0()), Err(VerifyError::Malformed));
    }

    #[test]
    fn byte_mutations_of_a_valid_token_are_refused(
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let (key, _, new) = renewing();
        let mut bytes = new.expose_secret().as_bytes().to_vec();
        let index = index.index(bytes.len());
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        let text = String::from_utf8_lossy(&bytes);
        let result = key.verify(&text, t0());
        prop_assert!(matches!(result, Err(VerifyError::Malformed | VerifyError::Mismatch)), "{:?}", result);
    }
}
