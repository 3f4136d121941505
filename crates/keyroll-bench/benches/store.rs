//! `authenticate` (by token alone, and with the key id apart) over a million
//! keys with 3 scopes and 2 metadata entries each (handed out with every
//! authentication), next to a bare hash map doing the least work possible: one lookup,
//! one SHA-256, one constant-time compare.
//!
//! `cargo bench -p keyroll-bench --bench store`

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keyroll::{InMemoryStore, KeyId, KeyManager, Metadata, NewKey, Scopes, Token};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

const KEYS: usize = 1_000_000;

fn bench_store(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let now = OffsetDateTime::UNIX_EPOCH;

    // The floor: id -> stored hash.
    let floor: HashMap<String, [u8; 32]> = (0..KEYS)
        .map(|i| {
            let id = format!("key-{i:07}");
            let hash: [u8; 32] = Sha256::digest(id.as_bytes()).into();
            (id, hash)
        })
        .collect();
    let floor_ids: Vec<String> = floor.keys().cloned().collect();
    let secret = [b'x'; 68];

    let mut group = c.benchmark_group("store");
    group.bench_function("floor_1m", |b| {
        b.iter(|| {
            let id = &floor_ids[rng.random_range(0..KEYS)];
            let stored = floor.get(black_box(id.as_str())).expect("present");
            let hash: [u8; 32] = Sha256::digest(black_box(&secret)).into();
            black_box(hash.ct_eq(stored))
        })
    });

    let manager = KeyManager::new(InMemoryStore::new());
    let mut keys: Vec<(KeyId, Token)> = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let id = KeyId::new(format!("key-{i:07}")).expect("valid id");
        // 3 scopes and 2 metadata entries, built per key as a service would.
        let new = NewKey::new(id.clone())
            .label("bench")
            .scopes(Scopes::new(["orders:read", "orders:write", "billing:read"]).expect("valid"))
            .metadata(
                Metadata::new([("tenant", format!("t-{i}")), ("owner", "ops".into())])
                    .expect("valid"),
            );
        let (token, _) = manager.create_key(new, now, &mut rng).expect("fresh id");
        keys.push((id, token));
    }
    // The two-credential form: key id and token apart.
    group.bench_function("authenticate_1m", |b| {
        b.iter(|| {
            let (id, token) = &keys[rng.random_range(0..KEYS)];
            manager.authenticate_key(black_box(id), black_box(token.expose_secret()), now)
        })
    });
    // One string: the token names its key.
    group.bench_function("authenticate_token_1m", |b| {
        b.iter(|| {
            let (_, token) = &keys[rng.random_range(0..KEYS)];
            manager.authenticate(black_box(token.expose_secret()), now)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench_store
}
criterion_main!(benches);
