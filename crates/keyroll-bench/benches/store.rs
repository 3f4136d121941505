//! `authenticate` (by token alone, and with the key id apart) over a million
//! keys with 3 scopes and 2 metadata entries each (handed out with every
//! authentication), next to a bare hash map doing the least work possible: one lookup,
//! one SHA-256, one constant-time compare. The manager's futures over
//! `InMemoryStore` complete at their first poll: the bench polls them once
//! (`at_once`), so that an executor's cost is not counted as keyroll's.
//!
//! Then how `InMemoryStore` scales with cores: the same authentications
//! from 2 threads at once against 1 thread, on the same store, printed as
//! a speed-up (`store/authenticate_1m_2_threads` is the time per request
//! of the pair).
//!
//! `store/authenticate_1m_counted` is `authenticate_1m` through a manager
//! with usage recording on (each use noted, each outcome counted, in
//! memory; never flushed during the bench).
//! `store/authenticate_1m_rate_limited` is `authenticate_1m` over another
//! million keys that each carry a rate limit (never reached), so that
//! every authentication also charges the key's meter: the price of a
//! limit. `store/authenticate_1m_rate_limited_counted` is both.
//! `store/authenticate_1m_owner_limited` is `authenticate_1m` over a
//! million keys without limits of their own, of 10,000 owners (100 keys
//! each) that carry the same rate limit as owner limits: every
//! authentication charges the owner's meter instead of the key's (DESIGN
//! 4.5: at most 1.3 x `authenticate_1m_rate_limited`).
//!
//! `cargo bench -p keyroll-bench --bench store`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use keyroll::meter::RateLimit;
use keyroll::store::InMemoryStore;
use keyroll::{
    Credentials, KeyId, KeyManager, Metadata, NewKey, OwnerId, OwnerLimits, Scopes, Token,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

const KEYS: usize = 1_000_000;

/// The output of `future`, which must complete at its first poll (the
/// in-memory store's do).
fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory store's futures complete at once"),
    }
}

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
    let keys = fill(&manager, None, None, &mut rng);
    // The same keys with a rate limit each: a billion a second, never
    // reached, so every authentication is admitted and charged.
    let limited = KeyManager::new(InMemoryStore::new());
    let rate = RateLimit::new(1_000_000_000, Duration::SECOND).expect("valid");
    let limited_keys = fill(&limited, Some(rate), None, &mut rng);
    // The same keys, of 10,000 owners whose limits carry the rate limit.
    let owned = KeyManager::new(InMemoryStore::new());
    let owned_keys = fill(&owned, None, Some(OWNERS), &mut rng);
    for n in 0..OWNERS {
        let owner = OwnerId::new(format!("owner-{n}")).expect("valid id");
        let limits = OwnerLimits::new().rate_limit(rate);
        at_once(owned.set_owner_limits(&owner, limits, now)).expect("set");
    }
    // The two-credential form: key id and token apart.
    group.bench_function("authenticate_1m", |b| {
        b.iter(|| {
            let (id, token) = &keys[rng.random_range(0..KEYS)];
            let credentials = Credentials::bearer(black_box(token.expose_secret())).with_id(id);
            at_once(manager.authenticate(credentials, now)).expect("authenticated")
        })
    });
    // The same keys through a manager that records usage: each
    // authentication also notes the use and counts its outcome, in memory.
    let counted = KeyManager::new(manager.store()).with_usage_recording(true);
    group.bench_function("authenticate_1m_counted", |b| {
        b.iter(|| {
            let (id, token) = &keys[rng.random_range(0..KEYS)];
            let credentials = Credentials::bearer(black_box(token.expose_secret())).with_id(id);
            at_once(counted.authenticate(credentials, now)).expect("authenticated")
        })
    });
    group.bench_function("authenticate_1m_rate_limited", |b| {
        b.iter(|| {
            let (id, token) = &limited_keys[rng.random_range(0..KEYS)];
            let credentials = Credentials::bearer(black_box(token.expose_secret())).with_id(id);
            at_once(limited.authenticate(credentials, now)).expect("authenticated")
        })
    });
    group.bench_function("authenticate_1m_owner_limited", |b| {
        b.iter(|| {
            let (id, token) = &owned_keys[rng.random_range(0..KEYS)];
            let credentials = Credentials::bearer(black_box(token.expose_secret())).with_id(id);
            at_once(owned.authenticate(credentials, now)).expect("authenticated")
        })
    });
    // Both: a rate limit charged and usage counted, on every request (the
    // request path of DESIGN 4.4: at most 1.5 x `authenticate_1m`).
    let limited_counted = KeyManager::new(limited.store()).with_usage_recording(true);
    group.bench_function("authenticate_1m_rate_limited_counted", |b| {
        b.iter(|| {
            let (id, token) = &limited_keys[rng.random_range(0..KEYS)];
            let credentials = Credentials::bearer(black_box(token.expose_secret())).with_id(id);
            at_once(limited_counted.authenticate(credentials, now)).expect("authenticated")
        })
    });
    // One string: the token names its key.
    group.bench_function("authenticate_token_1m", |b| {
        b.iter(|| {
            let (_, token) = &keys[rng.random_range(0..KEYS)];
            at_once(manager.authenticate(black_box(token.expose_secret()), now))
                .expect("authenticated")
        })
    });
    // Two threads at once, each authenticating random keys: the time per
    // request of the pair.
    group.bench_function("authenticate_1m_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            authenticate_on_threads(&manager, &keys, 2, iters);
            start.elapsed() / 2
        })
    });
    group.finish();

    // The speed-up of 2 threads over 1, each doing the same number of
    // authentications.
    const ROUNDS: u64 = 2_000_000;
    let one = {
        let start = Instant::now();
        authenticate_on_threads(&manager, &keys, 1, ROUNDS);
        start.elapsed()
    };
    let two = {
        let start = Instant::now();
        authenticate_on_threads(&manager, &keys, 2, ROUNDS);
        start.elapsed()
    };
    let speed_up = 2.0 * one.as_secs_f64() / two.as_secs_f64();
    println!(
        "store/scaling: 1 thread {:.0} ns per authentication, 2 threads {:.0} ns per pair; speed-up {speed_up:.2}x",
        one.as_nanos() as f64 / ROUNDS as f64,
        two.as_nanos() as f64 / ROUNDS as f64,
    );
}

/// Owners of the owner-limited keys.
const OWNERS: usize = 10_000;

/// A million keys in `manager`, each with 3 scopes, 2 metadata entries,
/// `rate` if given, and one of `owners` owners if given; their ids and
/// tokens.
fn fill(
    manager: &KeyManager<InMemoryStore>,
    rate: Option<RateLimit>,
    owners: Option<usize>,
    rng: &mut StdRng,
) -> Vec<(KeyId, Token)> {
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut keys = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let id = KeyId::new(format!("key-{i:07}")).expect("valid id");
        // 3 scopes and 2 metadata entries, built per key as a service would.
        let mut new = NewKey::new(id.clone())
            .label("bench")
            .scopes(Scopes::new(["orders:read", "orders:write", "billing:read"]).expect("valid"))
            .metadata(
                Metadata::new([("tenant", format!("t-{i}")), ("owner", "ops".into())])
                    .expect("valid"),
            );
        if let Some(rate) = rate {
            new = new.rate_limit(rate);
        }
        if let Some(owners) = owners {
            new = new.owner(OwnerId::new(format!("owner-{}", i % owners)).expect("valid id"));
        }
        let (token, _) = at_once(manager.create_key(new, now, rng)).expect("fresh id");
        keys.push((id, token));
    }
    keys
}

/// `threads` threads authenticating `rounds` random keys each, at once.
fn authenticate_on_threads(
    manager: &KeyManager<InMemoryStore>,
    keys: &[(KeyId, Token)],
    threads: u64,
    rounds: u64,
) {
    let now = OffsetDateTime::UNIX_EPOCH;
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread);
                for _ in 0..rounds {
                    let (_, token) = &keys[rng.random_range(0..keys.len())];
                    black_box(
                        at_once(manager.authenticate(token.expose_secret(), now))
                            .expect("authenticated"),
                    );
                }
            });
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench_store
}
criterion_main!(benches);
