//! The hot path: `ApiKey::verify`, next to its hardware floor.
//!
//! `cargo bench --bench verify`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyroll::{ApiKey, KeyId, Policy};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use std::hint::black_box;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

const KEY_ID: &str = "acme-orders";
/// What `verify` hashes: the 16-byte domain tag, the id's length byte, the
/// id and the 40-character secret.
const HASHED_LEN: usize = 16 + 1 + KEY_ID.len() + 40;

fn bench_verify(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let now = OffsetDateTime::UNIX_EPOCH;
    let (mut key, old, _) = ApiKey::issue(
        KeyId::new(KEY_ID).unwrap(),
        "bench",
        Policy::default(),
        now,
        &mut rng,
    );
    let (current, _) = key.renew(now, &mut rng).unwrap();
    let (_, stranger, _) = ApiKey::issue(
        KeyId::new("x").unwrap(),
        "",
        Policy::default(),
        now,
        &mut rng,
    );
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

    let mut group = c.benchmark_group("renew");
    let (single, _, _) = ApiKey::issue(
        KeyId::new(KEY_ID).unwrap(),
        "bench",
        Policy::default(),
        now,
        &mut rng,
    );
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
                KeyId::new(KEY_ID).unwrap(),
                "bench",
                Policy::default(),
                now,
                &mut thread_rng,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
