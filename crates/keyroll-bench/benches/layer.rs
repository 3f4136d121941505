//! keyroll-axum's cost per request, in process (no sockets): an axum
//! router with `GET /v1/ping` (no authentication) and `GET /v1/whoami`
//! (behind `KeyrollLayer`, usage recording on, `InMemoryStore`), both
//! answering the same JSON shape and both sent the same bearer token, as
//! `http_service` does. The difference of the two is what authenticating a
//! request costs a server.
//!
//! - `layer/ping`, `layer/whoami`: one thread.
//! - `layer/caller_whoami`: `whoami` without the layer, authenticated by the
//!   `Caller` extractor alone (as `http_service`'s `/v1/whoami` is).
//! - `layer/extension_whoami`: `whoami` behind axum's `Extension` layer
//!   handing it a fixed identity: what any layer giving a handler an
//!   identity costs, so `whoami - extension_whoami` is the cost of
//!   authenticating.
//! - `layer/ping_2_threads`, `layer/whoami_2_threads`: two threads sending
//!   at once (time per request), which shows what the threads share.
//!
//! `cargo bench -p keyroll-bench --bench layer`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request};
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, Metadata, Scopes, TokenMatch};
use keyroll_axum::{Caller, KeyrollLayer};
use time::OffsetDateTime;
use tower::ServiceExt;

/// `whoami`'s answer, and `ping`'s with nobody in it.
#[derive(serde::Serialize, Default)]
struct Whoami {
    key_id: Option<KeyId>,
    token: Option<TokenMatch>,
    scopes: Scopes,
    metadata: Metadata,
}

async fn whoami(Caller(who): Caller) -> axum::Json<Whoami> {
    axum::Json(Whoami {
        key_id: Some(who.key_id),
        token: Some(who.matched),
        scopes: who.scopes,
        metadata: who.metadata,
    })
}

async fn ping() -> axum::Json<Whoami> {
    axum::Json(Whoami::default())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

/// The router and a bearer header for it.
fn app(rt: &tokio::runtime::Runtime) -> (Router, String) {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_usage_recording(true));
    let now = OffsetDateTime::now_utc();
    let (token, _) = rt
        .block_on(keys.create_key(
            KeyId::new("bench-key").expect("valid id"),
            now,
            &mut rand::rng(),
        ))
        .expect("created");
    let fixed = rt
        .block_on(keys.authenticate(token.expose_secret(), now))
        .expect("authenticated");
    let keyroll = KeyrollLayer::new(keys);
    let router = Router::new()
        .route("/v1/whoami", get(whoami))
        .layer(keyroll.clone())
        .route("/v1/ping", get(ping))
        .route("/own/whoami", get(whoami))
        .route("/fixed/whoami", get(whoami).layer(axum::Extension(fixed)))
        // As `axum::serve` does: handlers (and the layers around them)
        // become services once, not on every request.
        .with_state(keyroll);
    (router, format!("Bearer {}", token.expose_secret()))
}

/// `value` in bytes shared by the requests of one thread, as a server's
/// parser hands out header values of one connection (slices of its read
/// buffer, cloned by reference count).
fn shared(value: &str) -> HeaderValue {
    let bytes = Bytes::copy_from_slice(value.as_bytes());
    HeaderValue::from_maybe_shared(bytes.clone()).expect("a header value")
}

/// One request through `router`; panics unless it is answered 200.
async fn send(router: &Router, path: &'static str, bearer: &HeaderValue) {
    let request = Request::get(path)
        .header("authorization", bearer.clone())
        .body(Body::empty())
        .expect("a request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await;
    std::hint::black_box(body.expect("a body"));
}

fn bench_layer(c: &mut Criterion) {
    let rt = runtime();
    let (router, bearer) = app(&rt);
    let mut group = c.benchmark_group("layer");
    for (name, path) in [
        ("ping", "/v1/ping"),
        ("whoami", "/v1/whoami"),
        ("caller_whoami", "/own/whoami"),
        ("extension_whoami", "/fixed/whoami"),
    ] {
        group.bench_function(name, |b| {
            let bearer = shared(&bearer);
            b.to_async(&rt).iter(|| send(&router, path, &bearer))
        });
    }
    for (name, path) in [
        ("ping_2_threads", "/v1/ping"),
        ("whoami_2_threads", "/v1/whoami"),
        ("caller_whoami_2_threads", "/own/whoami"),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..2 {
                        scope.spawn(|| {
                            let bearer = shared(&bearer);
                            runtime().block_on(async {
                                for _ in 0..iters {
                                    send(&router, path, &bearer).await;
                                }
                            })
                        });
                    }
                });
                // Two requests per iteration, one per thread: the time
                // per request of the pair.
                start.elapsed() / 2
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4));
    targets = bench_layer
}
criterion_main!(benches);
