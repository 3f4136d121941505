//! An HTTP service that embeds keyroll: an authentication middleware and an
//! admin API, over axum.
//!
//! ```text
//! KEYROLL_ADMIN_TOKEN=change-me cargo run -p keyroll-demo --bin http_service -- \
//!     [--listen 127.0.0.1:8080] [--store memory | sqlite:PATH | postgres:URL] [--migrate]
//! ```
//!
//! With PostgreSQL, the table is created by `keyctl migrate` or by
//! `--migrate` (as a role that may create tables); the service itself needs
//! only SELECT, INSERT, UPDATE and DELETE on it. A URL without `sslmode`
//! requires TLS; `sslmode=disable` connects in the clear, and the log says
//! so at startup.
//!
//! - `GET /v1/whoami` with `Authorization: Bearer <token>` (the token names
//!   its key), or with headers `X-Api-Key` (key id) and `X-Api-Token`,
//!   answers `{"key_id", "token": "current" | "old", "scopes": [..],
//!   "metadata": {..}}`, and to an old token of a pending renewal with the
//!   header `keyroll-token-renewed: true`. Both `/v1/whoami` and
//!   `/v1/orders` are under keyroll-axum's layer. A request that
//!   sends a bearer token and an `X-Api-Key` naming another key is refused.
//!   Every refused
//!   credential (missing, unknown key, malformed, wrong, inactive, expired)
//!   gets the same 401 and body, so that answers reveal nothing (not even
//!   whether a key id exists); the cause goes to the server's log on stderr,
//!   never a token. A store failure is a 503 with a generic body.
//!   `GET /v1/ping` is the same handler without authentication, to measure
//!   what authentication costs.
//! - `GET /v1/orders` is guarded by the scope `orders:read`: a key without
//!   it gets a 403 with `WWW-Authenticate: Bearer error="insufficient_scope",
//!   scope="orders:read"` (RFC 6750, 3.1).
//! - The admin API, for keys holding the scope `keyroll:admin` (as VTEX
//!   manages keys through a key with that permission), or the bootstrap
//!   `Authorization: Bearer $KEYROLL_ADMIN_TOKEN` (at least 32 bytes, or
//!   the service does not start), only to create the first admin key: it
//!   is refused as soon as an active key holds `keyroll:admin`:
//!   `POST /admin/keys` (`{"id"?, "label"?, "scopes"?: [..],
//!   "metadata"?: {..}, "expires_at"?: RFC 3339, "owner"?}`), `PUT
//!   /admin/keys/{id}/scopes` (`{"scopes"}`), `/metadata` (`{"metadata"}`),
//!   `/expiry` (`{"expires_at"}`, `null` removes it), `/label`
//!   (`{"label"}`), `/rate-limit` (`{"rate_limit": {"limit": 100,
//!   "period": "1m", "burst"?: 20}}`, `null` removes it), `/credits`
//!   (`{"credits": {"remaining": 1000, "refill"?: {"amount": 1000,
//!   "every": "30d"}}}`, `null` removes them) and `/owner` (`{"owner"}`,
//!   `null` removes it), `GET /admin/keys?after=&limit=&owner=` (one
//!   owner's keys with `owner`), `GET /admin/expiring?within=14d` (keys
//!   expiring or due for renewal, soonest first), `GET
//!   /admin/keys/{id}/usage?since=7d` (counts by UTC hour: accepted, rate
//!   limited, usage exceeded, refused), `GET /admin/keys/{id}` (with its
//!   `allowance`: what its limits allow now), `POST /admin/keys/{id}/renew`,
//!   `POST /admin/keys/{id}/finalize` (`{"delete_old": "now" | "later"}`),
//!   `DELETE /admin/keys/{id}/old-token`, `POST /admin/keys/{id}/undo-renewal`,
//!   `POST /admin/keys/{id}/activate`, `POST /admin/keys/{id}/deactivate`,
//!   `DELETE /admin/keys/{id}`.
//! - `POST /secret-scanning/github`, when started with `--github-keys PATH`
//!   (a PEM file of the public keys GitHub signs with): GitHub's secret
//!   scanning partner format. The raw body must be signed (headers
//!   `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`, a
//!   base64 DER ECDSA P-256 / SHA-256 signature, verified with the key the
//!   identifier names and no other); an unsigned or badly signed request,
//!   or one naming an unknown key, is a 401 and changes nothing. Each
//!   reported token that is a live token of a stored key is revoked (and
//!   audited); the answer labels each `true_positive` or `false_positive`.
//!   A report sent again within 10 minutes (the SHA-256 of the last 10,000
//!   bodies is kept) gets the same answer and is not acted on again.
//!
//! Every event is written to stdout as one JSON line, `{"audit": {...},
//! "actor": ..}`, the actor being the key id that made the call,
//! `"bootstrap"` or `"github-secret-scanning"`: ids and times only, never a
//! token. Answers that carry a token have `Cache-Control: no-store`, and
//! are built from what the store call returned before the audit line is
//! written, so a token already stored is never lost to a later failure: a
//! failed audit write (stdout closed) is reported on stderr, and the
//! answer still goes out.
//! Renewing a key whose old token's scheduled deletion is due applies that
//! deletion in the same transition (the `token_renewed` event says so).

use std::error::Error;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use clap::Parser;
use keyroll::meter::{Allowance, Credits, RateLimit, Refill};
use keyroll::store::{CachedStore, DynKeyStore, InMemoryStore};
use keyroll::{
    ApiKey, AuthError, Event, KeyId, KeyManager, ManagerError, Metadata, NewKey, OldTokenDeletion,
    OwnerId, RenewalState, Scope, Scopes, Token, TokenInfo, TokenMatch,
};
use keyroll_axum::{ApiError, Caller, KeyrollLayer, KeyrollState, RequireScope, UsageFlusher};
use keyroll_postgres::{Listener, PgStore};
use keyroll_sqlite::SqliteStore;
use p256::ecdsa::VerifyingKey;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

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
    /// first (needs a role that may create tables; without it the
    /// service needs only SELECT, INSERT, UPDATE and DELETE).
    #[arg(long)]
    migrate: bool,
}

// ---------------------------------------------------------------- the store

/// The store `--store` names: in memory, SQLite (on a thread of its own)
/// or PostgreSQL, behind one type. PostgreSQL is read through a cache kept
/// in step by a listener (returned: it runs as long as it is kept).
async fn open_store(
    spec: &str,
    max_staleness: std::time::Duration,
    migrate: bool,
) -> Result<(DynKeyStore, Option<Listener>), Box<dyn Error>> {
    match spec.split_once(':') {
        None if spec == "memory" => Ok((DynKeyStore::new(InMemoryStore::new()), None)),
        Some(("sqlite", path)) => Ok((DynKeyStore::new(SqliteStore::open(path)?), None)),
        Some(("postgres", url)) => {
            let store = PgStore::connect(url).await?;
            if migrate {
                store.migrate().await?;
            }
            let cache = Arc::new(CachedStore::new(store, 100_000, max_staleness));
            let listener = cache.inner().listen(cache.clone());
            Ok((DynKeyStore::new(cache), Some(listener)))
        }
        _ => Err(format!("unknown store {spec:?}: use memory, sqlite:PATH or postgres:URL").into()),
    }
}

// ---------------------------------------------------------------- errors

/// A store failure: logged, and answered with a generic 503.
fn unavailable(cause: &dyn Error) -> ApiError {
    eprintln!("{}", json!({ "store_error": cause.to_string() }));
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the service is unavailable; try again later",
    )
}

/// A request body, or the 400 that names what is wrong with it.
fn json<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))
}

/// The one answer to every refused API credential, with the realm's
/// challenge. The cause is logged for operators (with the key id, never the
/// token) and not told to the caller.
fn refused(cause: &str, key_id: Option<&KeyId>) -> ApiError {
    eprintln!(
        "{}",
        json!({ "auth_refused": { "cause": cause, "key_id": key_id } })
    );
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid credentials",
    )
    .with_challenge("Bearer realm=\"keyroll\"".to_owned())
}

fn key_id(raw: &str) -> Result<KeyId, ApiError> {
    KeyId::new(raw).map_err(ApiError::bad_request)
}

/// A route that does not exist.
fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

// ---------------------------------------------------------------- state

struct App {
    keys: Arc<KeyManager<DynKeyStore>>,
    /// How the API routes authenticate: bearer tokens, and the two-header
    /// form `X-Api-Key` + `X-Api-Token`.
    auth: KeyrollLayer<DynKeyStore>,
    /// The keys secret scanning reports are signed with, if enabled.
    scanner_keys: Option<ScannerKeys>,
    /// The answers to the reports of the last minutes, for replays.
    scanned: Scanned,
    /// SHA-256 of the admin token, compared in constant time.
    admin_token_hash: [u8; 32],
}

type Shared = State<Arc<App>>;

/// What `Caller` authenticates with on a route without the layer.
impl KeyrollState for App {
    type Store = DynKeyStore;

    fn keyroll(&self) -> &KeyrollLayer<DynKeyStore> {
        &self.auth
    }
}

/// Who made an admin call: the key that authenticated it, or the
/// bootstrap token. Every audit line names it.
#[derive(Debug, Clone)]
enum Actor {
    Key(KeyId),
    Bootstrap,
    /// A signed report of GitHub's secret scanning.
    SecretScanning,
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Actor::Key(id) => id.serialize(s),
            Actor::Bootstrap => s.serialize_str("bootstrap"),
            Actor::SecretScanning => s.serialize_str("github-secret-scanning"),
        }
    }
}

/// Writes one audit line on stdout, `{"audit": event, "actor": ..}`: ids
/// and times only, never a token. Call it once the answer is built: a
/// failed write (stdout closed, a full disk) is reported on stderr and
/// never loses an answer, least of all one that carries a new token.
fn audit(actor: &Actor, event: &Event) {
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

// ---------------------------------------------------------------- API keys

/// The bearer token of a request, if any (owned: the request, whose body
/// is not `Sync`, cannot be borrowed across a store call).
fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()
        .and_then(keyroll_axum::bearer_token)
        .map(str::to_owned)
}

/// Who the request is: authenticated by the `Caller` extractor alone (no
/// layer on this route), which hands the renewal header and the rate-limit
/// fields to the answer.
async fn whoami(caller: Caller) -> impl IntoResponse {
    let hint = caller.headers();
    let who = caller.0;
    let body = Json(Whoami {
        key_id: Some(who.key_id),
        token: Some(who.matched),
        scopes: who.scopes,
        metadata: who.metadata,
    });
    (hint, body)
}

/// `whoami`'s answer (and `ping`'s, with nobody in it).
#[derive(serde::Serialize, Default)]
struct Whoami {
    key_id: Option<KeyId>,
    token: Option<TokenMatch>,
    scopes: Scopes,
    metadata: Metadata,
}

/// A resource guarded by the scope `orders:read` (`RequireScope` in the
/// router).
async fn orders(who: Caller) -> Json<serde_json::Value> {
    Json(json!({ "orders": [], "key_id": who.key_id }))
}

// ---------------------------------------------------------------- secret scanning

/// The public keys a secret scanning report may be signed with, by their
/// identifier (the hex SHA-256 of the key's DER encoding).
struct ScannerKeys(Vec<(String, VerifyingKey)>);

impl ScannerKeys {
    /// Every `PUBLIC KEY` block of a PEM file.
    fn load(path: &std::path::Path) -> Result<ScannerKeys, Box<dyn Error>> {
        let text = std::fs::read_to_string(path)?;
        let mut keys = Vec::new();
        for block in text.split_inclusive("-----END PUBLIC KEY-----") {
            let Some(start) = block.find("-----BEGIN PUBLIC KEY-----") else {
                continue;
            };
            let key = VerifyingKey::from_public_key_pem(&block[start..])
                .map_err(|e| format!("{}: not a P-256 public key: {e}", path.display()))?;
            let der = key.to_public_key_der().map_err(|e| e.to_string())?;
            keys.push((hex(&Sha256::digest(der.as_bytes())), key));
        }
        if keys.is_empty() {
            return Err(format!("{}: no PUBLIC KEY in it", path.display()).into());
        }
        Ok(ScannerKeys(keys))
    }

    /// Whether `signature` (base64 of a DER ECDSA signature) is a signature
    /// of `body` by the key `identifier` names, and only by that one; why
    /// not, otherwise.
    fn verify(&self, identifier: &str, signature: &str, body: &[u8]) -> Result<(), &'static str> {
        let (_, key) = self
            .0
            .iter()
            .find(|(id, _)| id == identifier)
            .ok_or("unknown Github-Public-Key-Identifier")?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| "the signature is not base64")?;
        let signature =
            p256::ecdsa::Signature::from_der(&der).map_err(|_| "the signature is not DER")?;
        key.verify(body, &signature)
            .map_err(|_| "the signature does not verify")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One match GitHub reports.
#[derive(Deserialize)]
struct ScanMatch {
    token: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// GitHub's secret scanning partner endpoint: verifies the signature of the
/// raw body, revokes every live token reported, and labels each match.
async fn github_secret_scanning(
    State(app): Shared,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(keys) = &app.scanner_keys else {
        return Err(no_such_route());
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = match (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) {
        (Some(identifier), Some(signature)) => keys.verify(identifier, signature, &body),
        _ => Err("missing signature headers"),
    };
    if let Err(cause) = signed {
        eprintln!("{}", json!({ "secret_scanning_refused": cause }));
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "invalid signature",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(&body).into();
    if let Some(answered) = app.scanned.answered(&digest) {
        eprintln!("{}", json!({ "secret_scanning_replay": hex(&digest) }));
        return Ok(Json(answered));
    }
    let matches: Vec<ScanMatch> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid report: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let mut answers = Vec::with_capacity(matches.len());
    let mut events = Vec::new();
    for found in matches {
        let revoked = app.keys.revoke_token(&found.token, now).await?;
        let label = match revoked {
            Some(event) => {
                events.push(event.clone());
                // Where it leaked, for the operators; never the token.
                eprintln!(
                    "{}",
                    json!({ "leaked_token_revoked": {
                        "key_id": event.key_id(), "url": found.url, "source": found.source,
                    } })
                );
                "true_positive"
            }
            None => "false_positive",
        };
        answers.push(json!({
            "token_raw": found.token,
            "token_type": found.token_type,
            "label": label,
        }));
    }
    let answer = json!(answers);
    app.scanned.remember(digest, &answer);
    for event in &events {
        audit(&Actor::SecretScanning, event);
    }
    Ok(Json(answer))
}

/// The answers to the secret scanning reports of the last
/// [`REPLAY_WINDOW`], at most [`REPLAYS_KEPT`] of them, by the SHA-256 of
/// the report's body: a report sent again (replayed by whoever saw it, or
/// retried) gets the same answer and is not acted on twice.
#[derive(Default)]
struct Scanned(
    std::sync::Mutex<std::collections::VecDeque<([u8; 32], std::time::Instant, serde_json::Value)>>,
);

/// How long a report's answer is kept.
const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// How many answers are kept at most.
const REPLAYS_KEPT: usize = 10_000;

impl Scanned {
    fn answered(&self, digest: &[u8; 32]) -> Option<serde_json::Value> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        while kept
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) >= REPLAY_WINDOW)
        {
            kept.pop_front();
        }
        kept.iter()
            .find(|(kept, _, _)| kept == digest)
            .map(|(_, _, answer)| answer.clone())
    }

    fn remember(&self, digest: [u8; 32], answer: &serde_json::Value) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() == REPLAYS_KEPT {
            kept.pop_front();
        }
        kept.push_back((digest, std::time::Instant::now(), answer.clone()));
    }
}

/// The same shape of answer, with no authentication: the load baseline.
async fn ping() -> Json<Whoami> {
    Json(Whoami::default())
}

// ---------------------------------------------------------------- admin

/// The scope that authorizes the admin API.
const ADMIN_SCOPE: &str = "keyroll:admin";

/// The shortest bootstrap token accepted, in bytes.
const BOOTSTRAP_MIN_LEN: usize = 32;

/// The admin API's guard: an API key holding `keyroll:admin` (VTEX's rule:
/// keys are managed through a key with that permission), or the bootstrap
/// `KEYROLL_ADMIN_TOKEN`, only to create the first admin key: it is
/// accepted only while no active key holds `keyroll:admin`. The handler
/// finds who acts (an [`Actor`]) in the request's extensions.
async fn admin_only(
    State(app): Shared,
    mut request: Request,
    next: Next,
) -> Result<Response, Response> {
    let Some(presented) = bearer(&request) else {
        return Err(refused("no bearer token on the admin API", None).into_response());
    };
    let now = OffsetDateTime::now_utc();
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let actor = if bool::from(hash.ct_eq(&app.admin_token_hash)) {
        if admin_key_exists(&app.keys, now)
            .await
            .map_err(IntoResponse::into_response)?
        {
            return Err(refused(
                "the bootstrap token is retired: an active key holds keyroll:admin",
                None,
            )
            .into_response());
        }
        Actor::Bootstrap
    } else {
        match app.keys.authenticate(&presented, now).await {
            Ok(who) => {
                let caller = Caller(who);
                caller
                    .require_scope(ADMIN_SCOPE)
                    .map_err(IntoResponse::into_response)?;
                Actor::Key(caller.0.key_id)
            }
            Err(AuthError::Store(e)) => return Err(unavailable(&e).into_response()),
            Err(e) => return Err(refused(&e.to_string(), None).into_response()),
        }
    };
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}

/// Whether an active, unexpired key holds `keyroll:admin` (a scan of the
/// keys: it runs only when the bootstrap token is presented).
async fn admin_key_exists(
    keys: &KeyManager<DynKeyStore>,
    now: OffsetDateTime,
) -> Result<bool, ApiError> {
    let mut after: Option<KeyId> = None;
    loop {
        let page = keys.list(after.as_ref(), 500).await?;
        if page.iter().any(|key| {
            key.status() == keyroll::KeyStatus::Active
                && !key.is_expired(now)
                && key.scopes().contains(ADMIN_SCOPE)
        }) {
            return Ok(true);
        }
        match page.last() {
            Some(last) => after = Some(last.id().clone()),
            None => return Ok(false),
        }
    }
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    created_at: String,
    due_at: String,
    freshness: &'static str,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn token_view(token: &TokenInfo, now: OffsetDateTime) -> TokenView {
    TokenView {
        id: token.id().to_string(),
        created_at: rfc3339(token.created_at()),
        due_at: rfc3339(token.due_at()),
        freshness: match token.freshness(now) {
            keyroll::Freshness::Fresh { .. } => "fresh",
            keyroll::Freshness::Outdated { .. } => "outdated",
            _ => "long_outdated",
        },
        last_used_at: token.last_used_at().map(rfc3339),
        revoked_at: token.revoked_at().map(rfc3339),
    }
}

fn key_view(key: &ApiKey, now: OffsetDateTime) -> serde_json::Value {
    json!({
        "id": key.id(),
        "label": key.label(),
        "owner": key.owner(),
        "status": key.status().to_string(),
        "version": key.version(),
        "created_at": rfc3339(key.created_at()),
        "scopes": key.scopes(),
        "metadata": key.metadata(),
        "expires_at": key.expires_at().map(rfc3339),
        "expired": key.is_expired(now),
        "current_token": token_view(key.current_token(), now),
        "old_token": key.old_token().map(|t| token_view(t, now)),
        "pending_deletion": matches!(key.state(), RenewalState::Renewing { .. }),
        "decision": match key.state() {
            RenewalState::Renewing { decision } => json!(decision.to_string()),
            _ => json!(null),
        },
        "rate_limit": key.rate_limit().map(|r| json!({
            "limit": r.limit(),
            "period": duration_text(r.period()),
            "burst": r.burst(),
        })),
        "credits": key.credits().map(|c| json!({
            "remaining": c.remaining(),
            "refill": c.refill().map(|r| json!({
                "amount": r.amount(),
                "every": duration_text(r.every()),
            })),
            "set_at": key.credits_set_at().map(rfc3339),
        })),
    })
}

/// A duration as humantime writes it (`1m`, `30days`).
fn duration_text(d: Duration) -> String {
    humantime::format_duration(d.try_into().unwrap_or_default()).to_string()
}

/// A duration as humantime reads it (`90s`, `1m`, `30d`).
fn parse_duration(text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("not a duration: {text:?} (use e.g. 90s, 1m, 30d)"))
        })
}

/// What a key's limits allow now.
fn allowance_view(allowance: &Allowance) -> serde_json::Value {
    json!({
        "rate_remaining": allowance.rate_remaining(),
        "rate_reset_seconds": allowance.rate_reset().map(|d| d.as_seconds_f64()),
        "credits_remaining": allowance.credits_remaining(),
        "next_refill": allowance.next_refill().map(rfc3339),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    id: Option<String>,
    #[serde(default)]
    label: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default, deserialize_with = "entries")]
    metadata: Vec<(String, String)>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    owner: Option<String>,
}

/// A JSON object of strings as its entries, in order and with any key given
/// twice kept twice, so that `Metadata::new` refuses it by name (a map
/// would silently keep the last).
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(entry) = map.next_entry()? {
                all.push(entry);
            }
            Ok(all)
        }
    }
    d.deserialize_map(Entries)
}

/// An answer that carries a token: never to be cached.
type WithToken = (
    [(header::HeaderName, HeaderValue); 1],
    Json<serde_json::Value>,
);

/// The answer to `create_key` or `renew`, built from what the call returned
/// (the token is stored by then: nothing after may lose it).
fn with_token(id: &KeyId, token: &Token, event: &Event) -> WithToken {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(json!({
            "id": id,
            "token": token.expose_secret(),
            "token_id": token.id().to_string(),
            "event": event,
        })),
    )
}

async fn create_key(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, WithToken), ApiError> {
    let body = json(body)?;
    let mut rng = keyroll::os_rng();
    let id = match body.id {
        Some(raw) => key_id(&raw)?,
        None => KeyId::generate(&mut rng),
    };
    let now = OffsetDateTime::now_utc();
    let mut new = NewKey::new(id.clone())
        .label(body.label)
        .scopes(Scopes::new(body.scopes).map_err(ApiError::bad_request)?)
        .metadata(Metadata::new(body.metadata).map_err(ApiError::bad_request)?);
    if let Some(at) = body.expires_at {
        new = new.expires_at(at);
    }
    if let Some(owner) = body.owner {
        new = new.owner(OwnerId::new(owner).map_err(ApiError::bad_request)?);
    }
    let (token, event) = app.keys.create_key(new, now, &mut rng).await?;
    let answer = with_token(&id, &token, &event);
    audit(&actor, &event);
    Ok((StatusCode::CREATED, answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
    owner: Option<String>,
}

async fn list_keys(
    State(app): Shared,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let after = page.after.as_deref().map(key_id).transpose()?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let now = OffsetDateTime::now_utc();
    // Show the uses noted so far, not only those the periodic flush wrote.
    // A key that cannot be written holds up no listing (its uses are kept).
    if let Err(e) = app.keys.flush_usage(now).await {
        eprintln!("{}", json!({ "flush_error": e.to_string() }));
    }
    let keys = match page.owner {
        Some(owner) => {
            let owner = OwnerId::new(owner).map_err(ApiError::bad_request)?;
            app.keys.list_owned(&owner, after.as_ref(), limit).await?
        }
        None => app.keys.list(after.as_ref(), limit).await?,
    };
    let next = (keys.len() == limit)
        .then(|| keys.last().map(|k| k.id().to_string()))
        .flatten();
    Ok(Json(json!({
        "keys": keys.iter().map(|k| key_view(k, now)).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    since: Option<String>,
}

/// `GET /admin/keys/{id}/usage?since=7d`: the key's usage counts by UTC
/// hour (the hours with counts), counted up to now.
async fn usage(
    State(app): Shared,
    Path(raw): Path<String>,
    Query(since): Query<Since>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = key_id(&raw)?;
    let since = parse_duration(since.since.as_deref().unwrap_or("7d"))?;
    let now = OffsetDateTime::now_utc();
    // The counts noted so far, not only those the periodic flush wrote.
    if let Err(e) = app.keys.flush_usage(now).await {
        eprintln!("{}", json!({ "flush_error": e.to_string() }));
    }
    let rows = app
        .keys
        .usage(&id, now.saturating_sub(since), now + Duration::HOUR)
        .await?;
    Ok(Json(json!({
        "id": id,
        "hours": rows.iter().map(|r| json!({
            "hour": rfc3339(r.hour_start()),
            "accepted": r.accepted,
            "rate_limited": r.rate_limited,
            "usage_exceeded": r.usage_exceeded,
            "refused": r.refused,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Within {
    within: String,
}

/// `GET /admin/expiring?within=14d`: the keys that expire, or whose token
/// falls due for renewal, within the window, soonest first.
async fn expiring(
    State(app): Shared,
    Query(window): Query<Within>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let within = parse_duration(&window.within)?;
    let now = OffsetDateTime::now_utc();
    let soon = app.keys.expiring(within, now).await?;
    Ok(Json(json!({
        "keys": soon.iter().map(|s| json!({
            "at": rfc3339(s.at),
            "reason": match s.reason {
                keyroll::ExpiringReason::KeyExpires => "key_expires",
                _ => "renewal_due",
            },
            "key": key_view(&s.key, now),
        })).collect::<Vec<_>>(),
    })))
}

/// `PUT /admin/keys/{id}/owner`: `{"owner": ".." | null}`.
async fn set_owner(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetOwner>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owner = json(body)?
        .owner
        .map(OwnerId::new)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let event = app
        .keys
        .set_owner(&key_id(&raw)?, owner, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOwner {
    owner: Option<String>,
}

async fn show_key(
    State(app): Shared,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = key_id(&raw)?;
    let key = app
        .keys
        .get(&id)
        .await?
        .ok_or(ManagerError::<keyroll::store::DynStoreError>::NotFound)?;
    let now = OffsetDateTime::now_utc();
    let mut view = key_view(&key, now);
    view["allowance"] = allowance_view(&app.keys.allowance(&id, now).await?);
    Ok(Json(view))
}

/// `PUT /admin/keys/{id}/rate-limit`: `{"rate_limit": {"limit": 100,
/// "period": "1m", "burst": 20} | null}` (`burst` optional).
async fn set_rate_limit(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetRateLimit>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rate = match json(body)?.rate_limit {
        None => None,
        Some(RateBody {
            limit,
            period,
            burst,
        }) => {
            let rate =
                RateLimit::new(limit, parse_duration(&period)?).map_err(ApiError::bad_request)?;
            Some(match burst {
                Some(burst) => rate.with_burst(burst).map_err(ApiError::bad_request)?,
                None => rate,
            })
        }
    };
    let event = app
        .keys
        .set_rate_limit(&key_id(&raw)?, rate, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

/// `PUT /admin/keys/{id}/credits`: `{"credits": {"remaining": 1000,
/// "refill": {"amount": 1000, "every": "30d"}} | null}` (`refill`
/// optional). The balance starts over at `remaining`.
async fn set_credits(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetCredits>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let credits = match json(body)?.credits {
        None => None,
        Some(CreditsBody { remaining, refill }) => {
            let credits = Credits::new(remaining);
            Some(match refill {
                None => credits,
                Some(RefillBody { amount, every }) => credits.with_refill(
                    Refill::new(amount, parse_duration(&every)?).map_err(ApiError::bad_request)?,
                ),
            })
        }
    };
    let event = app
        .keys
        .set_credits(&key_id(&raw)?, credits, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRateLimit {
    rate_limit: Option<RateBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    limit: u32,
    period: String,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCredits {
    credits: Option<CreditsBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    remaining: u64,
    refill: Option<RefillBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefillBody {
    amount: u64,
    every: String,
}

async fn renew(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
) -> Result<WithToken, ApiError> {
    let id = key_id(&raw)?;
    let now = OffsetDateTime::now_utc();
    // An old token whose scheduled deletion is due is deleted by the
    // renewal itself (its event says so).
    let (token, event) = app.keys.renew(&id, now, &mut keyroll::os_rng()).await?;
    let answer = with_token(&id, &token, &event);
    audit(&actor, &event);
    Ok(answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Finalize {
    delete_old: OldTokenDeletion,
}

/// Answers a transition with its event, and audits it.
fn done(actor: &Actor, event: Event) -> Json<serde_json::Value> {
    let answer = Json(json!({ "event": &event }));
    audit(actor, &event);
    answer
}

async fn finalize(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<Finalize>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = json(body)?;
    let event = app
        .keys
        .finalize(&key_id(&raw)?, body.delete_old, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

/// `PUT /admin/keys/{id}/scopes`: `{"scopes": [..]}`.
async fn set_scopes(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetScopes>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = json(body)?;
    let scopes = Scopes::new(body.scopes).map_err(ApiError::bad_request)?;
    let event = app
        .keys
        .set_scopes(&key_id(&raw)?, scopes, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

/// `PUT /admin/keys/{id}/metadata`: `{"metadata": {..}}`.
async fn set_metadata(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetMetadata>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = json(body)?;
    let metadata = Metadata::new(body.metadata).map_err(ApiError::bad_request)?;
    let event = app
        .keys
        .set_metadata(&key_id(&raw)?, metadata, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

/// `PUT /admin/keys/{id}/expiry`: `{"expires_at": RFC 3339 | null}`.
async fn set_expiry(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetExpiry>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = json(body)?;
    let event = app
        .keys
        .set_expiry(&key_id(&raw)?, body.expires_at, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

/// `PUT /admin/keys/{id}/label`: `{"label": ".."}`.
async fn set_label(
    State(app): Shared,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    body: Result<Json<SetLabel>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = json(body)?;
    let event = app
        .keys
        .set_label(&key_id(&raw)?, &body.label, OffsetDateTime::now_utc())
        .await?;
    Ok(done(&actor, event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetScopes {
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetMetadata {
    #[serde(deserialize_with = "entries")]
    metadata: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetExpiry {
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLabel {
    label: String,
}

/// The transitions that take only the key id.
macro_rules! simple_transition {
    ($name:ident, $method:ident) => {
        async fn $name(
            State(app): Shared,
            Extension(actor): Extension<Actor>,
            Path(raw): Path<String>,
        ) -> Result<Json<serde_json::Value>, ApiError> {
            let event = app
                .keys
                .$method(&key_id(&raw)?, OffsetDateTime::now_utc())
                .await?;
            Ok(done(&actor, event))
        }
    };
}

simple_transition!(delete_old, delete_old);
simple_transition!(undo_renewal, undo_renewal);
simple_transition!(activate, activate);
simple_transition!(deactivate, deactivate);
simple_transition!(delete_key, delete_key);

fn router(app: Arc<App>) -> Router {
    let admin = Router::new()
        .route("/admin/keys", post(create_key).get(list_keys))
        .route("/admin/keys/{id}", get(show_key).delete(delete_key))
        .route("/admin/keys/{id}/renew", post(renew))
        .route("/admin/keys/{id}/finalize", post(finalize))
        .route(
            "/admin/keys/{id}/old-token",
            axum::routing::delete(delete_old),
        )
        .route("/admin/keys/{id}/undo-renewal", post(undo_renewal))
        .route("/admin/keys/{id}/activate", post(activate))
        .route("/admin/keys/{id}/deactivate", post(deactivate))
        .route("/admin/keys/{id}/scopes", axum::routing::put(set_scopes))
        .route(
            "/admin/keys/{id}/metadata",
            axum::routing::put(set_metadata),
        )
        .route("/admin/keys/{id}/expiry", axum::routing::put(set_expiry))
        .route("/admin/keys/{id}/label", axum::routing::put(set_label))
        .route(
            "/admin/keys/{id}/rate-limit",
            axum::routing::put(set_rate_limit),
        )
        .route("/admin/keys/{id}/credits", axum::routing::put(set_credits))
        .route("/admin/keys/{id}/owner", axum::routing::put(set_owner))
        .route("/admin/expiring", get(expiring))
        .route("/admin/keys/{id}/usage", get(usage))
        .route_layer(middleware::from_fn_with_state(app.clone(), admin_only));
    // `/v1/orders` under keyroll-axum's layer and a scope guard;
    // `/v1/whoami` authenticated by the `Caller` extractor alone, with the
    // same settings (`App::auth`, through `KeyrollState`).
    let orders = Router::new()
        .route(
            "/v1/orders",
            get(orders).layer(RequireScope::new(
                Scope::new("orders:read").expect("a valid scope"),
            )),
        )
        .layer(app.auth.clone());
    Router::new()
        .merge(admin)
        .merge(orders)
        .route("/v1/whoami", get(whoami))
        .route("/v1/ping", get(ping))
        .route("/secret-scanning/github", post(github_secret_scanning))
        .fallback(|| async { no_such_route() })
        .with_state(app)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
    // keyroll-axum's refusals and their causes, on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let admin_token = std::env::var("KEYROLL_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or("set KEYROLL_ADMIN_TOKEN to a bootstrap token for the admin API")?;
    if admin_token.len() < BOOTSTRAP_MIN_LEN {
        return Err(format!(
            "KEYROLL_ADMIN_TOKEN is {} bytes long: use at least {BOOTSTRAP_MIN_LEN} random \
             bytes (e.g. `openssl rand -hex 32`)",
            admin_token.len()
        )
        .into());
    }
    let (store, _listener) = open_store(&cli.store, cli.max_staleness, cli.migrate).await?;
    let keys = Arc::new(KeyManager::new(store).with_usage_recording(!cli.no_usage_recording));
    let app = Arc::new(App {
        auth: KeyrollLayer::new(keys.clone()).two_headers(
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("x-api-token"),
        ),
        keys,
        scanner_keys: cli
            .github_keys
            .as_deref()
            .map(ScannerKeys::load)
            .transpose()?,
        scanned: Scanned::default(),
        admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
    });
    let flusher = UsageFlusher::spawn(app.keys.clone(), cli.flush_usage_every);
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    flusher.shutdown().await;
    Ok(())
}
