//! The admin API over a million keys (`InMemoryStore`), as the console
//! calls it: one page of 50 key summaries, one key with its allowance,
//! and the keys expiring within 14 days, which reads every key (the
//! console asks for it at sign-in and on Refresh only). Each request is
//! authenticated with an admin key, as in a service.
//!
//! `cargo bench -p keyroll-bench --bench admin`

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, criterion_group, criterion_main};
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, NewKey, OwnerId, Scopes};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

const KEYS: usize = 1_000_000;

fn bench_admin(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut rng = StdRng::seed_from_u64(7);
    let now = OffsetDateTime::now_utc();
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let admin = NewKey::new(KeyId::new("admin").expect("valid"))
        .scopes(Scopes::new(["keyroll:admin"]).expect("valid"));
    let (token, _) = runtime
        .block_on(keys.create_key(admin, now, &mut rng))
        .expect("created");
    let bearer = format!("Bearer {}", token.expose_secret());
    runtime.block_on(async {
        for i in 0..KEYS {
            // One key in a thousand expires within the window.
            let mut new = NewKey::new(KeyId::new(format!("key-{i:07}")).expect("valid"))
                .label("bench")
                .owner(OwnerId::new(format!("owner-{}", i % 1000)).expect("valid"))
                .scopes(Scopes::new(["orders:read", "orders:write"]).expect("valid"));
            if i % 1000 == 0 {
                new = new.expires_at(now + Duration::days(7));
            }
            keys.create_key(new, now, &mut rng).await.expect("fresh id");
        }
    });
    let app = keyroll_axum::admin::router(keys);
    let get = |uri: String| {
        let app = app.clone();
        let request = Request::get(uri)
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .expect("a request");
        async move {
            let response = app.oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
            axum::body::to_bytes(response.into_body(), 1 << 24)
                .await
                .expect("a body")
        }
    };

    let mut group = c.benchmark_group("admin");
    group.bench_function("list_page_1m", |b| {
        b.to_async(&runtime).iter(|| {
            let after = format!("key-{:07}", rng.random_range(0..KEYS));
            get(format!("/keys?limit=50&after={after}"))
        })
    });
    group.bench_function("list_owned_page_1m", |b| {
        b.to_async(&runtime).iter(|| {
            let owner = format!("owner-{}", rng.random_range(0..1000));
            get(format!("/keys?limit=50&owner={owner}"))
        })
    });
    group.bench_function("get_key_1m", |b| {
        b.to_async(&runtime).iter(|| {
            let id = format!("key-{:07}", rng.random_range(0..KEYS));
            get(format!("/keys/{id}"))
        })
    });
    group.sample_size(10);
    group.bench_function("expiring_14d_1m", |b| {
        b.to_async(&runtime)
            .iter(|| get("/expiring?within=14d".to_owned()))
    });
    group.finish();
}

criterion_group!(benches, bench_admin);
criterion_main!(benches);
