//! The hot path: `ApiKey::verify`, next to its hardware floor and the peer
//! crate `prefixed-api-key`, the pure charge of a rate limit and credits
//! (`meter/charge`), and the cost of a renewal.
//!
//! `cargo bench -p keyroll-bench --bench verify`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyroll::meter::{Credits, MAX_CREDITS, Meter, RateLimit};
use keyroll::{ApiKey, KeyId, NewKey};
use prefixed_api_key::{PakControllerOsSha256, PrefixedApiKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use std::hint::black_box;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

const KEY_ID: &str = "acme-orders";
/// What `verify` hashes: the 3-byte domain tag, the length byte of the id,
/// the id and the secret packed in 30 bytes.
const HASHED_LEN: usize = 3 + 1 + KEY_ID.len() + 30;

fn bench_verify(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let now = OffsetDateTime::UNIX_EPOCH;
    let (mut key, old, _) = ApiKey::issue(
        NewKey::new(KeyId::new(KEY_ID).unwrap()).label("bench"),
        now,
        &mut rng,
    )
    .unwrap();
    let (current, _) = key.renew(now, &mut rng).unwrap();
    // A well-formed wrong token: it names this key (so it is parsed and
    // hashed like the right one), with a secret the key never issued.
    let (_, stranger, _) = ApiKey::issue(KeyId::new(KEY_ID).unwrap(), now, &mut rng).unwrap();
    let mut malformed = current.expose_secret().to_owned();
    malformed.pop();
    malformed.push(if current.expose_secret().ends_with('0') {
        '1'
    } else {
        '0'
    });

    let mut group = c.benchmark_group("verify");
    let input = [7u8; HASHED_LEN];
    let stored = [[1u8; 32], [2u8; 32]];
    group.bench_function("floor", |b| {
        b.iter(|| {
            let hash: [u8; 32] = Sha256::digest(black_box(&input)).into();
            black_box(hash.ct_eq(&stored[0]) | hash.ct_eq(&stored[1]))
        })
    });
    // The same floor with the comparison keyroll uses: subtle over 64-bit
    // words instead of bytes. Not a target; shown for transparency.
    let word = |h: &[u8; 32], i: usize| u64::from_ne_bytes(h[i * 8..i * 8 + 8].try_into().unwrap());
    group.bench_function("floor_wordwise", |b| {
        b.iter(|| {
            let hash: [u8; 32] = Sha256::digest(black_box(&input)).into();
            let eq = |stored: &[u8; 32]| {
                (0..4).fold(subtle::Choice::from(1), |acc, i| {
                    acc & word(&hash, i).ct_eq(&word(stored, i))
                })
            };
            black_box(eq(&stored[0]) | eq(&stored[1]))
        })
    });
    group.bench_function("current", |b| {
        b.iter(|| key.verify(black_box(current.expose_secret()), now))
    });
    group.bench_function("old", |b| {
        b.iter(|| key.verify(black_box(old.expose_secret()), now))
    });
    group.bench_function("mismatch", |b| {
        b.iter(|| key.verify(black_box(stranger.expose_secret()), now))
    });
    group.bench_function("malformed", |b| {
        b.iter(|| key.verify(black_box(&malformed), now))
    });
    group.finish();

    // The pure charge of a key with a rate limit and credits, each
    // admitted (a billion a second; credits that never run out): what a
    // store runs under its lock or in its transaction.
    let mut group = c.benchmark_group("meter");
    let rate = RateLimit::new(1_000_000_000, time::Duration::SECOND).unwrap();
    let credits = Credits::new(MAX_CREDITS);
    let mut meter = Meter::new(Some(&credits), now);
    let mut at = now;
    group.bench_function("charge", |b| {
        b.iter(|| {
            at += time::Duration::MICROSECOND;
            meter.charge(Some(&rate), Some(&credits), black_box(1), at)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("peer");
    let pak = PakControllerOsSha256::configure()
        .seam_defaults()
        .prefix("kr".to_owned())
        .finalize()
        .expect("a complete prefixed-api-key configuration");
    let (pak_key, pak_hash) = pak.generate_key_and_hash();
    let pak_text = pak_key.to_string();
    group.bench_function("pak_parse_check", |b| {
        b.iter(|| {
            let parsed = PrefixedApiKey::from_string(black_box(&pak_text)).expect("a valid key");
            pak.check_hash(&parsed, &pak_hash)
        })
    });
    group.bench_function("pak_generate", |b| b.iter(|| pak.generate_key_and_hash()));
    group.finish();

    let mut group = c.benchmark_group("renew");
    let (single, _, _) = ApiKey::issue(
        NewKey::new(KeyId::new(KEY_ID).unwrap()).label("bench"),
        now,
        &mut rng,
    )
    .unwrap();
    let mut thread_rng = rand::rng();
    group.bench_function("keyroll", |b| {
        b.iter_batched(
            || single.clone(),
            |mut key| key.renew(now, &mut thread_rng).map(|(token, _)| token),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("issue", |b| {
        b.iter(|| {
            ApiKey::issue(
                NewKey::new(KeyId::new(KEY_ID).unwrap()).label("bench"),
                now,
                &mut thread_rng,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
