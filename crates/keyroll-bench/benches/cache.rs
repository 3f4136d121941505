//! Authentication at scale: 100,000 keys, a random key per request,
//! through the manager.
//!
//! - `cache/memory_authenticate`: `InMemoryStore`.
//! - `cache/pg_cached_authenticate`: `CachedStore<PgStore>`, every key
//!   cached (warm).
//! - `cache/pg_authenticate`: `PgStore` alone, one round trip per request
//!   (for the record).
//!
//! The PostgreSQL benches run when `KEYROLL_PG_URL` is set (the keys are
//! written once, to the table `keyroll_bench_cache`, and reused).
//!
//! `KEYROLL_PG_URL=postgres://... cargo bench -p keyroll-bench --bench cache`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keyroll::store::{CachedStore, InMemoryStore, KeyStore};
use keyroll::{ApiKey, KeyId, KeyManager, Token};
use keyroll_postgres::PgStore;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use time::OffsetDateTime;

const KEYS: usize = 100_000;
const TABLE: &str = "keyroll_bench_cache";

/// The same keys every run (seeded), so the table can be reused.
fn keys() -> Vec<(ApiKey, Token)> {
    let mut rng = StdRng::seed_from_u64(15);
    (0..KEYS)
        .map(|i| {
            let id = KeyId::new(format!("bench-{i:06}")).expect("valid id");
            let (key, token, _) =
                ApiKey::issue(id, OffsetDateTime::UNIX_EPOCH, &mut rng).expect("valid key");
            (key, token)
        })
        .collect()
}

/// The bench table holding exactly `keys`, written if it does not.
async fn postgres(url: &str, keys: &[(ApiKey, Token)]) -> PgStore {
    let store = PgStore::connect(url)
        .await
        .expect("a valid URL")
        .in_table(TABLE)
        .expect("a plain name");
    store.migrate().await.expect("migrate");
    let client = store.pool().get().await.expect("a connection");
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .expect("count")
        .get(0);
    let first = store.get(keys[0].0.id()).await.expect("get");
    if count as usize != keys.len() || first.as_ref() != Some(&keys[0].0) {
        eprintln!("writing {} keys to {TABLE}", keys.len());
        client
            .execute(&format!("TRUNCATE {TABLE}"), &[])
            .await
            .expect("truncate");
        let store = Arc::new(store);
        let keys: Arc<Vec<ApiKey>> = Arc::new(keys.iter().map(|(k, _)| k.clone()).collect());
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (store, keys) = (store.clone(), keys.clone());
            writers.spawn(async move {
                for key in keys.iter().skip(w).step_by(8) {
                    store.insert(key, &[]).await.expect("insert");
                }
            });
        }
        writers.join_all().await;
        return Arc::into_inner(store).expect("writers done");
    }
    store
}

fn bench_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let keys = keys();
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut rng = StdRng::seed_from_u64(1);
    let mut group = c.benchmark_group("cache");

    let memory = KeyManager::new(InMemoryStore::new());
    runtime.block_on(async {
        for (key, _) in &keys {
            memory.store().insert(key, &[]).await.expect("fresh id");
        }
    });
    group.bench_function("memory_authenticate", |b| {
        b.to_async(&runtime).iter(|| {
            let token = &keys[rng.random_range(0..KEYS)].1;
            memory.authenticate(black_box(token.expose_secret()), now)
        })
    });
    drop(memory);

    let Some(url) = std::env::var("KEYROLL_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "cache/pg_cached_authenticate, cache/pg_authenticate: skipped, KEYROLL_PG_URL is not set"
        );
        return;
    };
    // Loopback: the TLS handshake is not what is measured.
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = runtime.block_on(postgres(&format!("{url}{sep}sslmode=disable"), &keys));
    let cached = KeyManager::new(CachedStore::new(store, KEYS, Duration::from_secs(3600)));
    runtime.block_on(async {
        for (_, token) in &keys {
            cached
                .authenticate(token.expose_secret(), now)
                .await
                .expect("valid");
        }
    });
    group.bench_function("pg_cached_authenticate", |b| {
        b.to_async(&runtime).iter(|| {
            let token = &keys[rng.random_range(0..KEYS)].1;
            cached.authenticate(black_box(token.expose_secret()), now)
        })
    });

    let direct = KeyManager::new(cached.store().inner());
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("pg_authenticate", |b| {
        b.to_async(&runtime).iter(|| {
            let token = &keys[rng.random_range(0..KEYS)].1;
            direct.authenticate(black_box(token.expose_secret()), now)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench_cache
}
criterion_main!(benches);
