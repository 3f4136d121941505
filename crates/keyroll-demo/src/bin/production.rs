//! A production service in under 100 lines: PostgreSQL behind a cache
//! kept in step by a listener, priced routes, the admin API and console,
//! usage flushing, housekeeping and notices, signed webhooks, metrics and
//! a graceful shutdown. Configured by the environment:
//!
//! ```text
//! DATABASE_URL=postgres://keyroll@db/keys    # migrated once by `keyctl migrate`
//! KEYROLL_ADMIN_TOKEN=$(openssl rand -base64 32)
//! KEYROLL_WEBHOOK_URL=https://hooks.example.com/keyroll KEYROLL_WEBHOOK_SECRET=whsec_...
//! LISTEN=0.0.0.0:8080 cargo run -p keyroll-demo --bin production
//! ```
use std::{error::Error, sync::Arc, time::Duration};

use axum::http::Method;
use axum::{Router, routing::get};
use keyroll::KeyManager;
use keyroll::outbox::Dispatcher;
use keyroll::store::CachedStore;
use keyroll_axum::admin::Admin;
use keyroll_axum::{ApiError, Caller, Deliverer, Housekeeper, Json, KeyrollLayer, UsageFlusher};
use keyroll_postgres::PgStore;
use keyroll_webhooks::{Signer, WebhookSink};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

async fn list_orders(caller: Caller) -> Json<Value> {
    Json(json!({ "orders": [], "key": caller.key_id }))
}

async fn place_order(caller: Caller, Json(order): Json<Value>) -> Result<Json<Value>, ApiError> {
    caller.require_scope("orders:write")?;
    Ok(Json(json!({ "placed": order, "key": caller.key_id })))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let metrics = PrometheusBuilder::new().install_recorder()?;
    // Keys read from memory for at most 30 s; other replicas' changes
    // arrive in milliseconds through the listener.
    let store = PgStore::connect(&env("DATABASE_URL")?).await?;
    let cache = Arc::new(CachedStore::new(store, 100_000, Duration::from_secs(30)));
    let _listener = cache.inner().listen(cache.clone());
    let keys = Arc::new(
        KeyManager::new(cache.clone())
            .with_outbox()
            .with_usage_recording(true)
            .with_largest_cost(10),
    );
    let admin = Admin::new(keys.clone()).bootstrap_token(&env("KEYROLL_ADMIN_TOKEN")?)?;
    let signer = Signer::new(env("KEYROLL_WEBHOOK_SECRET")?.parse()?);
    let webhooks = WebhookSink::new(&env("KEYROLL_WEBHOOK_URL")?, signer)?;

    let flusher = UsageFlusher::spawn(keys.clone(), Duration::from_secs(5));
    let housekeeper = Housekeeper::spawn(keys.clone(), Duration::from_secs(60));
    let deliverer = Deliverer::spawn(Dispatcher::new(cache, webhooks), Duration::from_secs(1));

    // Listing orders costs 1 of a key's limits, placing one 10.
    let keyroll = KeyrollLayer::new(keys.clone());
    let priced = keyroll.clone().method_cost(Method::POST, 10);
    let app = Router::new()
        .route(
            "/v1/orders",
            get(list_orders).post(place_order).layer(priced),
        )
        .with_state(keyroll)
        .nest("/admin", admin.router())
        .route("/metrics", get(move || async move { metrics.render() }))
        .fallback(keyroll_axum::fallback);
    let listener = tokio::net::TcpListener::bind(env("LISTEN")?).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // Last flush, sweep and delivery; unspent leases (if any) given back.
    flusher.shutdown().await;
    housekeeper.shutdown().await;
    deliverer.shutdown().await;
    keys.release_leases().await?;
    Ok(())
}
