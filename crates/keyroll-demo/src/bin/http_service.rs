//! An HTTP service that embeds keyroll: keyroll-axum's layer on its API,
//! and its admin router and console nested under `/admin`. Only wiring.
//!
//! ```text
//! KEYROLL_ADMIN_TOKEN=$(openssl rand -base64 32) \
//!     cargo run -p keyroll-demo --bin http_service -- \
//!     [--listen 127.0.0.1:8080] [--store memory | sqlite:PATH | postgres:URL] [--migrate]
//!     [--webhook-url https://hooks.example.com/keyroll]  (with KEYROLL_WEBHOOK_SECRET=whsec_...)
//! ```
//!
//! Then open <http://127.0.0.1:8080/admin/console>, sign in with the
//! bootstrap token, and create a key holding `keyroll:admin` (the
//! bootstrap token retires for good once an active key holds it).
//!
//! With PostgreSQL, the table is created by `keyctl migrate` or by
//! `--migrate` (as a role that may create tables); the service itself needs
//! only SELECT, INSERT, UPDATE and DELETE on it. A URL without `sslmode`
//! requires TLS; `sslmode=disable` connects in the clear.
//!
//! - `GET /v1/whoami`, with `Authorization: Bearer <token>` or the headers
//!   `X-Api-Key` (key id) and `X-Api-Token`: `{"key_id", "token":
//!   "current" | "old", "scopes", "metadata"}`; an old token of a pending
//!   renewal gets `keyroll-token-renewed: true`. Every refused credential
//!   gets the same 401; the cause goes to the log on stderr, never a token.
//!   `GET /v1/ping` is the same handler without authentication.
//! - `GET /v1/orders` needs the scope `orders:read` (else a 403 with
//!   `WWW-Authenticate: Bearer error="insufficient_scope"`).
//! - `/admin/...`: [`keyroll_axum::admin`]'s API (its document at
//!   `/admin/openapi.json`) and console, for keys holding `keyroll:admin`,
//!   or the bootstrap `KEYROLL_ADMIN_TOKEN` (at least 32 bytes) until one
//!   exists.
//! - `POST /secret-scanning/github`, with `--github-keys PATH` (the PEM
//!   public keys GitHub signs with): [`keyroll_axum::github`], GitHub's
//!   secret scanning partner endpoint.
//! - With `--grpc-listen ADDR`, the gRPC method `orders.v1.Orders/List`
//!   (scope `orders:read`) behind the same authentication: refusals are
//!   gRPC statuses (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
//!   `RESOURCE_EXHAUSTED` with `google.rpc.RetryInfo`).
//! - `GET /metrics`: keyroll's metrics (authentications and charges by
//!   outcome, store calls' latency, cache lookups, lease units) in
//!   Prometheus's text format, from
//!   `metrics-exporter-prometheus`; no credentials, so serve it where only
//!   your scraper reaches.
//!
//! Every change is written to stdout as one JSON line, `{"audit": event,
//! "actor": ..}` (a key id, `"bootstrap"` or `"github-secret-scanning"`):
//! ids and times only, never a token. A failed write is reported on
//! stderr, and never loses an answer.
//!
//! Every change's events also go to the store's outbox, in the same write,
//! and a background task delivers them: as signed Standard Webhooks to
//! `--webhook-url` (retried with backoff, parked after 16 failures: the
//! admin API's `GET /outbox` lists them, `POST /outbox/{id}/retry` and
//! `keyctl retry-delivery` retry them), else to the log. Another task
//! sweeps notices (keys expiring, renewals due, credits low or spent) and
//! housekeeps every `--sweep-every`. A crash between a change and its
//! delivery loses nothing: the next start delivers it.

use std::error::Error;
use std::sync::Arc;

use axum::http::{HeaderName, header};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use keyroll::outbox::{Dispatcher, TracingSink};
use keyroll::store::{CachedStore, DynKeyStore, InMemoryStore, Timed};
use keyroll::{Event, KeyId, KeyManager, LeasePolicy, Metadata, Scope, Scopes, TokenMatch};
use keyroll_axum::admin::Admin;
use keyroll_axum::github::{SecretScanning, SigningKeys};
use keyroll_axum::{Caller, Deliverer, Housekeeper, KeyrollLayer, RequireScope, UsageFlusher};
use keyroll_postgres::{Listener, PgStore};
use keyroll_sqlite::SqliteStore;
use keyroll_webhooks::{Signer, WebhookSecret, WebhookSink};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// `memory`, `sqlite:PATH` or `postgres:URL`.
    #[arg(long, default_value = "memory")]
    store: String,
    /// A PEM file of the public keys GitHub signs secret scanning reports
    /// with; enables `POST /secret-scanning/github`.
    #[arg(long)]
    github_keys: Option<std::path::PathBuf>,
    /// How often the uses noted in memory are written to the store.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    flush_usage_every: std::time::Duration,
    /// With PostgreSQL: how long a key is served from memory at most
    /// (changes notified by other replicas are seen in milliseconds).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_staleness: std::time::Duration,
    /// Does not note token uses (last-use times stop moving; deleting an
    /// old token "once nothing uses it" needs them). For measuring what
    /// recording costs.
    #[arg(long)]
    no_usage_recording: bool,
    /// With PostgreSQL: create or upgrade the table and its triggers
    /// first (needs a role that may create tables).
    #[arg(long)]
    migrate: bool,
    /// Charges rate limits and credits through leases living this long
    /// at most (`keyroll::LeasePolicy`; 0 s, the default, is off), the next
    /// one taken ahead on a task. Unspent leases are given back at
    /// shutdown.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    lease_max_lag: std::time::Duration,
    /// Delivers every event and notice to this URL (http or https) as a
    /// signed Standard Webhook; without it they go to the log (stderr).
    #[arg(long, requires = "webhook_secret")]
    webhook_url: Option<String>,
    /// The webhooks' secret, `whsec_` and base64: from the environment,
    /// as command lines are visible to other users.
    #[arg(long, env = "KEYROLL_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// The previous secret, while receivers move to the new one: each
    /// delivery carries both signatures.
    #[arg(long, env = "KEYROLL_WEBHOOK_PREVIOUS_SECRET", hide_env_values = true)]
    webhook_previous_secret: Option<String>,
    /// How long a webhook call may take, its answer included.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    webhook_timeout: std::time::Duration,
    /// How often the outbox is read when nothing was due.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    dispatch_every: std::time::Duration,
    /// Also serves the gRPC method `orders.v1.Orders/List` here, behind
    /// the same layer (its address is logged on stderr).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// How often notices are swept (keys expiring, renewals due, credits
    /// low) and housekeeping runs (scheduled deletions, old counts and
    /// delivered events pruned).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    sweep_every: std::time::Duration,
}

/// The webhook sink the flags configure, if any.
fn webhook_sink(cli: &Cli) -> Result<Option<WebhookSink>, Box<dyn Error>> {
    let Some(url) = &cli.webhook_url else {
        return Ok(None);
    };
    let secret = |flag: &str, text: &str| -> Result<WebhookSecret, String> {
        text.parse().map_err(|e| format!("{flag}: {e}"))
    };
    let current = secret(
        "--webhook-secret",
        cli.webhook_secret.as_deref().unwrap_or(""),
    )?;
    let signer = match &cli.webhook_previous_secret {
        Some(previous) => Signer::rotating(current, secret("--webhook-previous-secret", previous)?),
        None => Signer::new(current),
    };
    let sink = WebhookSink::new(url, signer).map_err(|e| format!("--webhook-url: {e}"))?;
    Ok(Some(sink.timeout(cli.webhook_timeout)))
}

/// The store `--store` names: in memory, SQLite (on a thread of its own)
/// or PostgreSQL, behind one type. PostgreSQL is read through a cache kept
/// in step by a listener (returned: it runs as long as it is kept).
async fn open_store(
    spec: &str,
    max_staleness: std::time::Duration,
    migrate: bool,
) -> Result<(DynKeyStore, Option<Listener>), Box<dyn Error>> {
    match spec.split_once(':') {
        // Each store's calls timed (`keyroll_store_call_seconds`); under
        // the cache, so that what it answers from memory is no store call.
        None if spec == "memory" => Ok((DynKeyStore::new(Timed::new(InMemoryStore::new())), None)),
        Some(("sqlite", path)) => {
            Ok((DynKeyStore::new(Timed::new(SqliteStore::open(path)?)), None))
        }
        Some(("postgres", url)) => {
            let store = PgStore::connect(url).await?;
            if migrate {
                store.migrate().await?;
            }
            let cache = Arc::new(CachedStore::new(Timed::new(store), 100_000, max_staleness));
            let listener = cache.inner().inner().listen(cache.clone());
            Ok((DynKeyStore::new(cache), Some(listener)))
        }
        _ => Err(format!("unknown store {spec:?}: use memory, sqlite:PATH or postgres:URL").into()),
    }
}

/// Writes one audit line on stdout, `{"audit": event, "actor": ..}`. It
/// is called once the answer is built: a failed write (stdout closed, a
/// full disk) is reported on stderr and never loses an answer, least of
/// all one that carries a new token.
fn audit(actor: &str, event: &Event) {
    use std::io::Write;
    let line = json!({ "audit": event, "actor": actor });
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        let _ = writeln!(
            std::io::stderr(),
            "{}",
            json!({ "audit_failed": e.to_string(), "line": line })
        );
    }
}

/// `whoami`'s answer (and `ping`'s, with nobody in it).
#[derive(serde::Serialize, Default)]
struct Whoami {
    key_id: Option<KeyId>,
    token: Option<TokenMatch>,
    scopes: Scopes,
    metadata: Metadata,
}

/// Who the request is: authenticated by the `Caller` extractor alone (no
/// layer on this route), which hands the renewal header and the rate-limit
/// fields to the answer.
async fn whoami(caller: Caller) -> impl axum::response::IntoResponse {
    let headers = caller.headers();
    let who = caller.0;
    let body = Json(Whoami {
        key_id: Some(who.key_id),
        token: Some(who.matched),
        scopes: who.scopes,
        metadata: who.metadata,
    });
    (headers, body)
}

/// The same shape of answer, with no authentication: the load baseline.
async fn ping() -> Json<Whoami> {
    Json(Whoami::default())
}

/// A resource guarded by the scope `orders:read`.
async fn orders(who: Caller) -> Json<serde_json::Value> {
    Json(json!({ "orders": [], "key_id": who.key_id }))
}

/// The service: its API, the admin router under `/admin`, secret
/// scanning if `scanning` is given, and keyroll's metrics in Prometheus's
/// text format at `/metrics` (no credentials: serve it where only your
/// scraper reaches).
fn router(
    keys: Arc<KeyManager<DynKeyStore>>,
    admin: Admin<DynKeyStore>,
    scanning: Option<Router>,
    metrics: PrometheusHandle,
) -> Router {
    // Bearer tokens, and the two-header form `X-Api-Key` + `X-Api-Token`.
    let auth = KeyrollLayer::new(keys).two_headers(
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("x-api-token"),
    );
    // `/v1/orders` under the layer and a scope guard; `/v1/whoami`
    // authenticated by the `Caller` extractor alone, with the same
    // settings (the layer is the router's state).
    let orders_scope = Scope::new("orders:read").expect("a valid scope");
    let api = Router::new()
        .route(
            "/v1/orders",
            get(orders).layer(RequireScope::new(orders_scope)),
        )
        .layer(auth.clone())
        .route("/v1/whoami", get(whoami))
        .route("/v1/ping", get(ping))
        .with_state(auth)
        .route(
            "/metrics",
            get(move || async move {
                let text = "text/plain; version=0.0.4; charset=utf-8";
                ([(header::CONTENT_TYPE, text)], metrics.render())
            }),
        );
    api.nest("/admin", admin.router())
        .merge(scanning.unwrap_or_default())
        .fallback(keyroll_axum::fallback)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
    // keyroll-axum's refusals and their causes, on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let bootstrap = std::env::var("KEYROLL_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or("set KEYROLL_ADMIN_TOKEN to a bootstrap token for the admin API")?;
    // keyroll's metrics (the library installs no recorder: this does).
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let (store, _listener) = open_store(&cli.store, cli.max_staleness, cli.migrate).await?;
    let max_lag = time::Duration::try_from(cli.lease_max_lag)?;
    let leases = LeasePolicy::new(max_lag).map_err(|e| format!("--lease-max-lag: {e}"))?;
    let webhooks = webhook_sink(&cli)?;
    let keys = Arc::new(
        KeyManager::new(store.clone())
            .with_outbox()
            .with_usage_recording(!cli.no_usage_recording)
            .with_leases_ahead(leases, |task| {
                tokio::spawn(task);
            }),
    );
    let admin = Admin::new(keys.clone())
        .bootstrap_token(&bootstrap)
        .map_err(|e| format!("KEYROLL_ADMIN_TOKEN: {e}"))?
        .on_event(|actor, event| audit(&actor.to_string(), event));
    let scanning = match &cli.github_keys {
        Some(path) => {
            let pem = std::fs::read_to_string(path)?;
            let signers =
                SigningKeys::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
            let scanning = SecretScanning::new(keys.clone(), signers)
                .on_event(|event| audit("github-secret-scanning", event));
            Some(scanning.router())
        }
        None => None,
    };
    let flusher = UsageFlusher::spawn(keys.clone(), cli.flush_usage_every);
    let deliverer = match webhooks {
        Some(sink) => Deliverer::spawn(Dispatcher::new(store, sink), cli.dispatch_every),
        None => Deliverer::spawn(Dispatcher::new(store, TracingSink), cli.dispatch_every),
    };
    let housekeeper = Housekeeper::spawn(keys.clone(), cli.sweep_every);
    if let Some(address) = &cli.grpc_listen {
        let listener = tokio::net::TcpListener::bind(address).await?;
        eprintln!("grpc listening on {}", listener.local_addr()?);
        keyroll_demo::orders::serve(listener, KeyrollLayer::new(keys.clone()));
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router(keys.clone(), admin, scanning, metrics))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    flusher.shutdown().await;
    housekeeper.shutdown().await;
    deliverer.shutdown().await;
    keys.release_leases().await?;
    Ok(())
}
