//! The admin router: its answers, who may call it, its OpenAPI document
//! (checked by a real validator, and against the routes it serves).
#![cfg(feature = "admin")]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use keyroll::meter::Subject;
use keyroll::store::{BOOTSTRAP_RETIRED, InMemoryStore, KeyStore};
use keyroll::{KeyId, KeyManager, NewKey, Scopes};
use keyroll_axum::KeyrollLayer;
use keyroll_axum::admin::{Actor, Admin};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower::ServiceExt;

const BOOTSTRAP: &str = "test-bootstrap-token-0123456789abcdef";

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(app: &Router, method: Method, uri: &str, token: &str, body: Option<Value>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if !token.is_empty() {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

struct Fixture {
    app: Router,
    keys: Arc<KeyManager<InMemoryStore>>,
    /// The token of `root`, an admin key made with the bootstrap token.
    admin: String,
    audit: Arc<Mutex<Vec<(Actor, String)>>>,
}

async fn fixture() -> Fixture {
    let keys = Arc::new(
        KeyManager::new(InMemoryStore::new())
            .with_usage_recording(true)
            .with_outbox(),
    );
    let audit = Arc::new(Mutex::new(Vec::new()));
    let log = audit.clone();
    let app = Admin::new(keys.clone())
        .bootstrap_token(BOOTSTRAP)
        .unwrap()
        .on_event(move |actor, event| {
            log.lock()
                .unwrap()
                .push((actor.clone(), event.name().to_owned()))
        })
        .router();
    let created = call(
        &app,
        Method::POST,
        "/keys",
        BOOTSTRAP,
        Some(json!({"id": "root", "scopes": ["keyroll:admin"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let admin = created.body["token"].as_str().unwrap().to_owned();
    Fixture {
        app,
        keys,
        admin,
        audit,
    }
}

impl Fixture {
    /// A key `id` made through the manager, without scopes: its token.
    async fn key_without_scopes(&self, id: &str) -> keyroll::Token {
        let now = OffsetDateTime::now_utc();
        let id = KeyId::new(id).unwrap();
        let (token, _) = self
            .keys
            .create_key(id, now, &mut rand::rng())
            .await
            .unwrap();
        token
    }
}

#[tokio::test]
async fn the_bootstrap_token_makes_the_first_admin_key_then_retires() {
    let f = fixture().await;
    assert_eq!(
        f.audit.lock().unwrap()[0],
        (Actor::Bootstrap, "key_issued".to_owned())
    );
    let again = call(&f.app, Method::GET, "/keys", BOOTSTRAP, None).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.body["error"], "invalid_credentials");
    let listed = call(&f.app, Method::GET, "/keys", &f.admin, None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["keys"][0]["id"], "root");
    // It retired for good: not back when the last admin key expires (an
    // admin key moving its own expiry), is deactivated or is deleted.
    let past = (OffsetDateTime::now_utc() - time::Duration::seconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let expired = call(
        &f.app,
        Method::PUT,
        "/keys/root/expiry",
        &f.admin,
        Some(json!({"expires_at": past})),
    )
    .await;
    assert_eq!(expired.status, StatusCode::OK, "{}", expired.body);
    let root = KeyId::new("root").unwrap();
    let now = OffsetDateTime::now_utc();
    for refused in [
        call(&f.app, Method::GET, "/keys", &f.admin, None).await,
        call(&f.app, Method::GET, "/keys", BOOTSTRAP, None).await,
    ] {
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    }
    f.keys
        .apply(&root, keyroll::Change::Deactivate, now)
        .await
        .unwrap();
    f.keys.delete_key(&root, now).await.unwrap();
    let after = call(&f.app, Method::GET, "/keys", BOOTSTRAP, None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    // The store remembers it: a restarted service (a new router on the same
    // store) refuses it too, without reading the keys.
    let restarted = Admin::new(f.keys.clone())
        .bootstrap_token(BOOTSTRAP)
        .unwrap()
        .router();
    let again = call(&restarted, Method::GET, "/keys", BOOTSTRAP, None).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    // An operator's explicit step (keyctl restore-bootstrap) brings it back.
    f.keys
        .store()
        .set_marker(BOOTSTRAP_RETIRED, None)
        .await
        .unwrap();
    let restored = call(&restarted, Method::GET, "/keys", BOOTSTRAP, None).await;
    assert_eq!(restored.status, StatusCode::OK, "{}", restored.body);
}

#[test]
fn placeholder_and_low_entropy_bootstrap_tokens_are_refused() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    for (weak, why) in [
        ("change-me-to-32-random-bytes-or-more", "placeholder"),
        ("CHANGE-ME-please-to-something-long-enough", "placeholder"),
        (&"ab".repeat(20), "2 distinct bytes"),
        (&"0123456789".repeat(4), "10 distinct bytes"),
    ] {
        let error = Admin::new(keys.clone()).bootstrap_token(weak).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(why), "{message}");
        assert!(message.contains("openssl rand -base64 32"), "{message}");
        assert!(!message.contains(weak), "{message}");
    }
}

#[test]
fn a_short_bootstrap_token_is_refused_without_quoting_it() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let error = Admin::new(keys)
        .bootstrap_token("short-secret")
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("12 bytes long"), "{message}");
    assert!(!message.contains("short-secret"), "{message}");
}

#[tokio::test]
async fn credentials_are_refused_uniformly_and_the_scope_is_required() {
    let f = fixture().await;
    let plain = f.key_without_scopes("plain").await;
    let none = call(&f.app, Method::GET, "/keys", "", None).await;
    let wrong = call(&f.app, Method::GET, "/keys", "kr_wrong", None).await;
    for refused in [&none, &wrong] {
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.body,
            json!({"error": "invalid_credentials", "message": "invalid credentials"})
        );
    }
    let forbidden = call(&f.app, Method::GET, "/keys", plain.expose_secret(), None).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.body["error"], "insufficient_scope");
    assert!(
        forbidden.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("keyroll:admin")
    );
}

#[tokio::test]
async fn errors_have_one_shape_and_the_statuses_the_design_names() {
    let f = fixture().await;
    let cases = [
        (
            Method::POST,
            "/keys",
            Some(json!({"id": "has space"})),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/keys",
            Some(json!({"scopes": "x"})),
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            "/keys/root/label",
            Some(json!({"label": "a\u{7}"})),
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            "/keys/root/rate-limit",
            Some(json!({"rate_limit": {"limit": 0, "period": "1m"}})),
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            "/keys/root/credits",
            Some(json!({"credits": {"remaining": 1, "refill": {"amount": 1, "every": "soon"}}})),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/expiring?within=forever",
            None,
            400,
            "bad_request",
        ),
        (Method::GET, "/keys?limit=many", None, 400, "bad_request"),
        (Method::GET, "/keys/nobody", None, 404, "not_found"),
        (Method::POST, "/keys/nobody/renew", None, 404, "not_found"),
        (
            Method::POST,
            "/keys",
            Some(json!({"id": "root"})),
            409,
            "conflict",
        ),
        (
            Method::DELETE,
            "/keys/root/old-token",
            None,
            409,
            "conflict",
        ),
        (
            Method::POST,
            "/keys/root/undo-renewal",
            None,
            409,
            "conflict",
        ),
        (Method::GET, "/no/such/route", None, 404, "no_such_route"),
        (Method::PATCH, "/keys", None, 405, "method_not_allowed"),
    ];
    for (method, uri, body, status, code) in cases {
        let answer = call(&f.app, method.clone(), uri, &f.admin, body).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {uri}: {}",
            answer.body
        );
        assert_eq!(answer.body["error"], code, "{method} {uri}");
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let quoted = call(
        &f.app,
        Method::POST,
        "/keys",
        &f.admin,
        Some(json!({"id": "has space"})),
    )
    .await;
    assert!(
        quoted.body["message"]
            .as_str()
            .unwrap()
            .contains("has space")
    );
}

#[tokio::test]
async fn the_renewal_flow_shows_tokens_once_uncached_and_summaries_hold_no_hash() {
    let f = fixture().await;
    let created = call(
        &f.app,
        Method::POST,
        "/keys",
        &f.admin,
        Some(json!({"id": "shop", "label": "Shop", "owner": "acme", "scopes": ["orders:read"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.headers[header::CACHE_CONTROL], "no-store");
    let first = created.body["token"].as_str().unwrap().to_owned();
    let renewed = call(&f.app, Method::POST, "/keys/shop/renew", &f.admin, None).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
    assert_eq!(renewed.headers[header::CACHE_CONTROL], "no-store");
    let second = renewed.body["token"].as_str().unwrap().to_owned();
    let shown = call(&f.app, Method::GET, "/keys/shop", &f.admin, None).await;
    assert_eq!(shown.body["pending_deletion"], true);
    assert_eq!(shown.body["decision"], "undecided");
    assert!(shown.body["old_token"]["due_at"].is_string());
    assert!(shown.headers.get(header::CACHE_CONTROL).is_none());
    let text = shown.body.to_string();
    for secret in [&first, &second] {
        assert!(!text.contains(secret.as_str()));
    }
    assert!(!text.contains("hash"), "{text}");
    // Both tokens verify while the renewal is pending; "later" keeps it so.
    let later = call(
        &f.app,
        Method::POST,
        "/keys/shop/finalize",
        &f.admin,
        Some(json!({"delete_old": "later"})),
    )
    .await;
    assert_eq!(later.status, StatusCode::OK, "{}", later.body);
    let now = OffsetDateTime::now_utc();
    assert!(f.keys.authenticate(first.as_str(), now).await.is_ok());
    let deleted = call(
        &f.app,
        Method::DELETE,
        "/keys/shop/old-token",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert!(f.keys.authenticate(first.as_str(), now).await.is_err());
    assert!(f.keys.authenticate(second.as_str(), now).await.is_ok());
    // A renewal with its choice in one call, then undone.
    let at_once = call(
        &f.app,
        Method::POST,
        "/keys/shop/renew",
        &f.admin,
        Some(json!({"delete_old": "at", "at": "2999-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(at_once.status, StatusCode::OK, "{}", at_once.body);
    let shown = call(&f.app, Method::GET, "/keys/shop", &f.admin, None).await;
    assert_eq!(shown.body["old_token_deleted_at"], "2999-01-01T00:00:00Z");
    let undone = call(
        &f.app,
        Method::POST,
        "/keys/shop/undo-renewal",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(undone.status, StatusCode::OK);
    assert!(f.keys.authenticate(second.as_str(), now).await.is_ok());
    // Owners list.
    let owned = call(&f.app, Method::GET, "/keys?owner=acme", &f.admin, None).await;
    assert_eq!(owned.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(owned.body["keys"][0]["label"], "Shop");
}

#[tokio::test]
async fn revoking_takes_the_token_in_the_body_and_never_quotes_it() {
    let f = fixture().await;
    let now = OffsetDateTime::now_utc();
    let token = f.key_without_scopes("leaky").await;
    let secret = token.expose_secret();
    let revoked = call(
        &f.app,
        Method::POST,
        "/tokens/revoke",
        &f.admin,
        Some(json!({"token": secret})),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.body["revoked"], true);
    assert!(!revoked.body.to_string().contains(secret));
    let again = call(
        &f.app,
        Method::POST,
        "/tokens/revoke",
        &f.admin,
        Some(json!({"token": secret})),
    )
    .await;
    assert_eq!(again.body, json!({"revoked": false, "event": null}));
    let bad = call(
        &f.app,
        Method::POST,
        "/tokens/revoke",
        &f.admin,
        Some(json!({"token": secret, "more": secret})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(!bad.body.to_string().contains(secret));
    assert!(f.keys.authenticate(secret, now).await.is_err());
}

#[tokio::test]
async fn under_a_keyroll_layer_an_admin_call_is_charged_once() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let new = NewKey::new(KeyId::new("ops").unwrap())
        .scopes(Scopes::new(["keyroll:admin"]).unwrap())
        .credits(keyroll::meter::Credits::new(10));
    let (token, _) = keys.create_key(new, now, &mut rand::rng()).await.unwrap();
    let app = Router::new()
        .nest("/admin", keyroll_axum::admin::router(keys.clone()))
        .layer(KeyrollLayer::new(keys.clone()));
    let listed = call(
        &app,
        Method::GET,
        "/admin/keys",
        token.expose_secret(),
        None,
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let allowance = keys
        .allowance(&KeyId::new("ops").unwrap(), now)
        .await
        .unwrap();
    assert_eq!(allowance.credits_remaining(), Some(9));
}

#[tokio::test]
async fn limits_usage_and_expiring_keys_read_back() {
    let f = fixture().await;
    call(
        &f.app,
        Method::POST,
        "/keys",
        &f.admin,
        Some(json!({"id": "metered", "expires_at": "2999-01-01T00:00:00Z"})),
    )
    .await;
    let set = call(
        &f.app,
        Method::PUT,
        "/keys/metered/rate-limit",
        &f.admin,
        Some(json!({"rate_limit": {"limit": 100, "period": "1m", "burst": 20}})),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let set = call(
        &f.app,
        Method::PUT,
        "/keys/metered/credits",
        &f.admin,
        Some(json!({"credits": {"remaining": 1000, "refill": {"amount": 1000, "every": "30d"}}})),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let shown = call(&f.app, Method::GET, "/keys/metered", &f.admin, None).await;
    assert_eq!(
        shown.body["rate_limit"],
        json!({"limit": 100, "period": "1m", "burst": 20})
    );
    assert_eq!(shown.body["credits"]["refill"]["every"], "30days");
    assert_eq!(shown.body["allowance"]["rate_remaining"], 20);
    assert_eq!(shown.body["allowance"]["credits_remaining"], 1000);
    let usage = call(
        &f.app,
        Method::GET,
        "/keys/root/usage?since=1d",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(usage.status, StatusCode::OK);
    assert_eq!(usage.body["id"], "root");
    // `root`'s five calls in this test, this one included, each counted.
    let accepted: u64 = usage.body["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hour| hour["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 5, "{}", usage.body);
    let expiring = call(&f.app, Method::GET, "/expiring?within=400d", &f.admin, None).await;
    assert_eq!(expiring.status, StatusCode::OK);
    let reasons: Vec<&str> = expiring.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"renewal_due"), "{reasons:?}");
}

#[tokio::test]
async fn the_console_is_served_without_credentials_under_a_strict_policy() {
    let f = fixture().await;
    for (uri, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let answer = call(&f.app, Method::GET, uri, "", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        assert!(
            answer.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert_eq!(
            answer.headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; frame-ancestors 'none'"
        );
    }
    let missing = call(&f.app, Method::GET, "/console/other.js", "", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------- OpenAPI

/// The document, as served.
async fn document(app: &Router) -> Value {
    let answer = call(app, Method::GET, "/openapi.json", "", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.body
}

/// Whether the path `template` (with `{name}` segments) matches `path`.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

#[tokio::test]
async fn every_documented_route_is_served_and_every_served_route_is_documented() {
    let f = fixture().await;
    let document = document(&f.app).await;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for (path, item) in paths {
        let uri = path
            .replace("{id}", "nobody")
            .replace("{owner}", "nobody")
            .replace("{file}", "app.js")
            .replace("{change}", "activate");
        for method in &methods {
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            // Bodies the handlers refuse: what matters is that a route
            // answered, not what it did.
            let answer = call(
                &f.app,
                method.clone(),
                &uri,
                &f.admin,
                Some(json!({"x": 1})),
            )
            .await;
            let routed = !matches!(
                answer.body["error"].as_str(),
                Some("no_such_route" | "method_not_allowed")
            );
            assert_eq!(
                routed, documented,
                "{method} {path}: {} {}",
                answer.status, answer.body
            );
        }
        // Nothing undocumented one level below.
        let below = format!("{uri}/undocumented");
        if !paths.keys().any(|template| matches(template, &below)) {
            let answer = call(&f.app, Method::GET, &below, &f.admin, None).await;
            assert_eq!(answer.body["error"], "no_such_route", "{below}");
        }
    }
    // The document is the one `openapi()` returns.
    assert_eq!(
        document,
        serde_json::to_value(keyroll_axum::admin::openapi()).unwrap()
    );
}

#[tokio::test]
#[cfg_attr(
    not(keyroll_validator),
    ignore = "needs Python's openapi-spec-validator: `pip install openapi-spec-validator` and set KEYROLL_OPENAPI_VALIDATOR=python3 (`bash .ci/run` does)"
)]
async fn the_document_passes_a_real_openapi_validator() {
    let f = fixture().await;
    let document = document(&f.app).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join("keyroll-admin-openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let python = std::env::var("KEYROLL_OPENAPI_VALIDATOR").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
             validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The validator's last lines say what is wrong (its first ones quote
    // the whole document).
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    assert!(output.status.success(), "{tail:#?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "valid");
}

/// Ids that start with `.`, `_` or `-` are refused for new keys and
/// owners (a browser collapses `.` and `..` in a URL); a key stored with one
/// by an older version is still reachable, to be renamed or deleted.
#[tokio::test]
async fn ids_made_only_of_dots_are_refused_and_stored_ones_stay_reachable() {
    let f = fixture().await;
    for bad in [".", "..", "...", "_x", "-x"] {
        let refused = call(
            &f.app,
            Method::POST,
            "/keys",
            &f.admin,
            Some(json!({"id": bad})),
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            refused.body
        );
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains(&format!("{bad:?}")), "{message}");
        assert!(
            message.contains("must start with an ASCII letter or digit"),
            "{message}"
        );
        let owner = call(
            &f.app,
            Method::POST,
            "/keys",
            &f.admin,
            Some(json!({"id": "fine", "owner": bad})),
        )
        .await;
        assert_eq!(owner.status, StatusCode::BAD_REQUEST, "{}", owner.body);
    }
    // A record of keyroll 0.3 with such an id loads, and is reachable.
    let (key, _, _) = keyroll::ApiKey::issue(
        KeyId::new("x-legacy").unwrap(),
        OffsetDateTime::now_utc(),
        &mut rand::rng(),
    )
    .unwrap();
    let mut record = serde_json::to_value(&key).unwrap();
    record["id"] = json!("_legacy");
    let legacy: keyroll::ApiKey = serde_json::from_value(record).unwrap();
    f.keys.store().insert(&legacy, &[]).await.unwrap();
    let got = call(&f.app, Method::GET, "/keys/_legacy", &f.admin, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let deleted = call(&f.app, Method::DELETE, "/keys/_legacy", &f.admin, None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
}

/// A key is never live without the limits it was created with; a burst
/// below the largest route cost the service declared is refused.
#[tokio::test]
async fn create_takes_limits_and_refuses_a_burst_below_the_largest_cost() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_largest_cost(5));
    let app = Admin::new(keys.clone())
        .bootstrap_token(BOOTSTRAP)
        .unwrap()
        .router();
    let created = call(
        &app,
        Method::POST,
        "/keys",
        BOOTSTRAP,
        Some(json!({
            "id": "limited",
            "rate_limit": {"limit": 10, "period": "1m"},
            "credits": {"remaining": 2, "refill": {"amount": 2, "every": "1h"}},
        })),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let token = created.body["token"].as_str().unwrap().to_owned();
    let now = OffsetDateTime::now_utc();
    for _ in 0..2 {
        keys.authenticate(token.as_str(), now).await.unwrap();
    }
    assert!(matches!(
        keys.authenticate(token.as_str(), now).await,
        Err(keyroll::AuthError::UsageExceeded { .. })
    ));
    let low = call(
        &app,
        Method::POST,
        "/keys",
        BOOTSTRAP,
        Some(json!({"id": "low", "rate_limit": {"limit": 10, "period": "1m", "burst": 3}})),
    )
    .await;
    assert_eq!(low.status, StatusCode::BAD_REQUEST, "{}", low.body);
    let message = low.body["message"].as_str().unwrap();
    assert!(
        message.contains("raise the burst to at least 5"),
        "{message}"
    );
    assert_eq!(keys.get(&KeyId::new("low").unwrap()).await.unwrap(), None);
    let set = call(
        &app,
        Method::PUT,
        "/keys/limited/rate-limit",
        BOOTSTRAP,
        Some(json!({"rate_limit": {"limit": 10, "period": "1m", "burst": 4}})),
    )
    .await;
    assert_eq!(set.status, StatusCode::BAD_REQUEST, "{}", set.body);
}

/// The router's root, and the console's address with a slash too many,
/// lead to the console, wherever the router is nested.
#[tokio::test]
async fn the_root_and_console_slash_lead_to_the_console() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let app = Router::new().nest("/admin", Admin::new(keys).router());
    for (from, to) in [
        ("/admin", "admin/console"),
        ("/admin/console/", "../console"),
    ] {
        let answer = call(&app, Method::GET, from, "", None).await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{from}: {}",
            answer.body
        );
        assert_eq!(answer.headers[header::LOCATION], to, "{from}");
    }
    // Served at the root of a service, the root leads to `console`.
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let answer = call(&Admin::new(keys).router(), Method::GET, "/", "", None).await;
    assert_eq!(answer.headers[header::LOCATION], "console");
}

/// Changes as data: `PATCH /keys/{id}` takes a list of `keyroll::Change`,
/// made in one write, all or none; `PUT /keys/{id}/{setting}` takes one.
#[tokio::test]
async fn changes_are_data_made_all_or_none() {
    let f = fixture().await;
    let made = call(
        &f.app,
        Method::PATCH,
        "/keys/root",
        &f.admin,
        Some(json!([
            {"label": "root key"},
            {"metadata": {"team": "ops"}},
            {"rate_limit": {"limit": 100, "period": "1m"}},
            {"credits": {"remaining": 50, "refill": {"amount": 50, "every": "30d"}}},
            {"expiry": null},
        ])),
    )
    .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    let names: Vec<&str> = made.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "label_changed",
            "metadata_changed",
            "rate_limit_changed",
            "credits_set",
            "expiry_changed"
        ]
    );
    let root = f
        .keys
        .get(&KeyId::new("root").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(root.label(), "root key");
    assert_eq!(root.rate_limit().unwrap().burst(), 100);
    let version = root.version();

    // One bad change refuses them all: nothing changes.
    for (changes, quoted) in [
        (
            json!([{"label": "changed"}, {"label": "bell\u{7}"}]),
            "control character",
        ),
        (
            json!([{"label": "changed"}, {"owner": ".."}]),
            "must start with an ASCII letter",
        ),
        (
            json!([{"label": "changed"}, {"colour": "red"}]),
            "unknown variant `colour`",
        ),
        (
            json!([{"label": "changed"}, {"rate_limit": {"limit": 0, "period": "1m"}}]),
            "limit 0",
        ),
        (
            json!([{"label": "changed"}, {"credits": {"remaining": 1, "refill": {"amount": 1, "every": "1 fortnight"}}}]),
            "invalid duration",
        ),
    ] {
        let refused = call(&f.app, Method::PATCH, "/keys/root", &f.admin, Some(changes)).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains(quoted), "{quoted:?} in {message}");
        let root = f
            .keys
            .get(&KeyId::new("root").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((root.label(), root.version()), ("root key", version));
    }
    // A status change in the list that the key's state refuses: 409.
    let refused = call(
        &f.app,
        Method::PATCH,
        "/keys/root",
        &f.admin,
        Some(json!([{"label": "x"}, "activate"])),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);

    // One change through the path that names it; a body naming another
    // setting is refused.
    let one = call(
        &f.app,
        Method::PUT,
        "/keys/root/rate-limit",
        &f.admin,
        Some(json!({"rate_limit": null})),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(one.body["event"]["event"], "rate_limit_changed");
    let crossed = call(
        &f.app,
        Method::PUT,
        "/keys/root/label",
        &f.admin,
        Some(json!({"scopes": []})),
    )
    .await;
    assert_eq!(crossed.status, StatusCode::BAD_REQUEST, "{}", crossed.body);
    let nothing = call(&f.app, Method::POST, "/keys/root/promote", &f.admin, None).await;
    assert_eq!(nothing.body["error"], "no_such_route", "{}", nothing.body);
}

/// A change that makes a key an active admin key retires the bootstrap
/// token, as creating one does; other changes leave it acting.
#[tokio::test]
async fn granting_the_admin_scope_by_a_change_retires_the_bootstrap_token() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let app = Admin::new(keys.clone())
        .bootstrap_token(BOOTSTRAP)
        .unwrap()
        .router();
    let created = call(
        &app,
        Method::POST,
        "/keys",
        BOOTSTRAP,
        Some(json!({"id": "ops"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let relabelled = call(
        &app,
        Method::PATCH,
        "/keys/ops",
        BOOTSTRAP,
        Some(json!([{"label": "ops"}])),
    )
    .await;
    assert_eq!(relabelled.status, StatusCode::OK, "{}", relabelled.body);
    let granted = call(
        &app,
        Method::PATCH,
        "/keys/ops",
        BOOTSTRAP,
        Some(json!([{"scopes": ["keyroll:admin"]}])),
    )
    .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    // Recorded then: even once no key holds the scope any more (the
    // scan that runs for a bootstrap token would find none), it is over.
    let ops = KeyId::new("ops").unwrap();
    let none = keyroll::Change::Scopes(Scopes::default());
    keys.apply(&ops, none, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let after = call(&app, Method::GET, "/keys", BOOTSTRAP, None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
}

/// Networks through the admin API: taken at create and by a change, shown
/// in the key's settings, and bad ones refused quoting the entry, with
/// nothing changed or created.
#[tokio::test]
async fn networks_are_set_shown_and_refused_by_entry() {
    let f = fixture().await;
    let created = call(
        &f.app,
        Method::POST,
        "/keys",
        &f.admin,
        Some(json!({"id": "fenced", "networks": "10.1.2.3/8, 2001:db8::/32"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["event"]["settings"],
        json!([{"networks": "10.0.0.0/8,2001:db8::/32"}])
    );
    let shown = call(&f.app, Method::GET, "/keys/fenced", &f.admin, None).await;
    assert_eq!(
        shown.body["settings"]["networks"], "10.0.0.0/8,2001:db8::/32",
        "{}",
        shown.body
    );
    let many: Vec<String> = (0..65).map(|n| format!("10.0.{n}.0/24")).collect();
    for (body, quoted) in [
        (
            json!("10.0.0.0/33"),
            "invalid network \"10.0.0.0/33\": the prefix is longer than 32",
        ),
        (
            json!("2001:db8::/129"),
            "longer than 128, the most for IPv6",
        ),
        (json!("10.0.0.0/8,bogus"), "invalid network \"bogus\""),
        (
            json!(many.join(",")),
            "too many networks: 65 given, at most 64",
        ),
    ] {
        let refused = call(
            &f.app,
            Method::PATCH,
            "/keys/fenced",
            &f.admin,
            Some(json!([{"label": "x"}, {"networks": body.clone()}])),
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains(quoted), "{quoted:?} in {message}");
        let created = call(
            &f.app,
            Method::POST,
            "/keys",
            &f.admin,
            Some(json!({"id": "never", "networks": body})),
        )
        .await;
        assert_eq!(created.status, StatusCode::BAD_REQUEST, "{}", created.body);
        assert!(created.body["message"].as_str().unwrap().contains(quoted));
    }
    let key = f
        .keys
        .get(&KeyId::new("fenced").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((key.label(), key.version()), ("", 1));
    assert!(
        f.keys
            .get(&KeyId::new("never").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // A field that is no setting is refused by name.
    let unknown = call(
        &f.app,
        Method::POST,
        "/keys",
        &f.admin,
        Some(json!({"id": "never", "colour": "red"})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    assert!(
        unknown.body["message"]
            .as_str()
            .unwrap()
            .contains("`colour`")
    );
    // Removed through the path that names it.
    let removed = call(
        &f.app,
        Method::PUT,
        "/keys/fenced/networks",
        &f.admin,
        Some(json!({"networks": null})),
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert_eq!(
        removed.body["event"],
        json!({"event": "setting_changed", "key_id": "fenced",
               "at": removed.body["event"]["at"], "version": 2, "change": {"networks": null}})
    );
    let key = f
        .keys
        .get(&KeyId::new("fenced").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.networks(), None);
}

/// An owner's page: its limits, what they allow, its keys and their usage
/// summed; limits set and cleared; bad limits refused, quoted, changing
/// nothing.
#[tokio::test]
async fn owners_show_their_keys_limits_and_usage_and_refuse_bad_limits() {
    let keys = Arc::new(
        KeyManager::new(InMemoryStore::new())
            .with_largest_cost(5)
            .with_usage_recording(true),
    );
    let app = Admin::new(keys.clone())
        .bootstrap_token(BOOTSTRAP)
        .unwrap()
        .router();
    let mut tokens = Vec::new();
    for id in ["prod", "ci"] {
        let created = call(
            &app,
            Method::POST,
            "/keys",
            BOOTSTRAP,
            Some(json!({"id": id, "owner": "acme"})),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        tokens.push(created.body["token"].as_str().unwrap().to_owned());
    }
    let set = call(
        &app,
        Method::PUT,
        "/owners/acme/limits",
        BOOTSTRAP,
        Some(json!({"credits": {"remaining": 3}})),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["event"]["event"], "owner_limits_changed");
    assert_eq!(set.body["event"]["owner"], "acme");
    let now = OffsetDateTime::now_utc();
    for token in [&tokens[0], &tokens[0], &tokens[1]] {
        keys.authenticate(token.as_str(), now).await.unwrap();
    }
    let refused = keys.authenticate(tokens[1].as_str(), now).await;
    assert!(
        matches!(
            refused,
            Err(keyroll::AuthError::UsageExceeded {
                subject: Subject::Owner,
                ..
            })
        ),
        "{refused:?}"
    );
    let owner = call(&app, Method::GET, "/owners/acme", BOOTSTRAP, None).await;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.body);
    assert_eq!(owner.body["limits"]["credits"]["remaining"], 3);
    assert_eq!(owner.body["limits"]["version"], 1);
    assert_eq!(owner.body["allowance"]["credits_remaining"], 0);
    let ids: Vec<&str> = owner.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ci", "prod"]);
    let total = |field: &str| -> u64 {
        owner.body["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!((total("accepted"), total("usage_exceeded")), (3, 1));
    let key = call(&app, Method::GET, "/keys/prod", BOOTSTRAP, None).await;
    assert_eq!(
        key.body["owner_allowance"]["credits_remaining"], 0,
        "{}",
        key.body
    );

    // Bad input: 400, the bad value quoted, nothing changed.
    let bad = [
        (
            "/owners/.acme/limits",
            json!({"credits": {"remaining": 3}}),
            ".acme",
        ),
        (
            "/owners/acme/limits",
            json!({"rate_limit": {"limit": 10, "period": "1m", "burst": 3}}),
            "raise the burst to at least 5",
        ),
        (
            "/owners/acme/limits",
            json!({"credits": {"remaining": 9_223_372_036_854_775_808_u64}}),
            "9223372036854775808",
        ),
        (
            "/owners/acme/limits",
            json!({"credit": {"remaining": 3}}),
            "credit",
        ),
    ];
    for (uri, body, quoted) in bad {
        let answer = call(&app, Method::PUT, uri, BOOTSTRAP, Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            answer.body
        );
        let message = answer.body["message"].as_str().unwrap();
        assert!(message.contains(quoted), "{uri}: {message}");
    }
    let owner = call(&app, Method::GET, "/owners/acme", BOOTSTRAP, None).await;
    assert_eq!(owner.body["limits"]["version"], 1, "{}", owner.body);
    let other = call(&app, Method::GET, "/owners/.acme", BOOTSTRAP, None).await;
    assert_eq!(other.body["limits"], Value::Null, "{}", other.body);

    let cleared = call(&app, Method::DELETE, "/owners/acme/limits", BOOTSTRAP, None).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.body);
    keys.authenticate(tokens[1].as_str(), now).await.unwrap();
    let owner = call(&app, Method::GET, "/owners/acme", BOOTSTRAP, None).await;
    assert_eq!(owner.body["limits"]["version"], 2, "{}", owner.body);
    assert_eq!(owner.body["allowance"], Value::Null, "{}", owner.body);
}

/// A sink whose receiver always fails.
struct Failing;

impl keyroll::outbox::Sink for Failing {
    async fn deliver(
        &self,
        _: &[keyroll::outbox::Entry],
    ) -> Result<(), keyroll::outbox::SinkError> {
        Err(keyroll::outbox::SinkError::new(
            0,
            "POST http://hooks.example/: answered 503",
        ))
    }
}

/// Deliveries a receiver keeps refusing are parked, listed with their last
/// error, and put back by a retry; bad input is refused, naming it.
#[tokio::test]
async fn parked_deliveries_are_listed_and_retried() {
    let f = fixture().await;
    let dispatcher = keyroll::outbox::Dispatcher::new(f.keys.store(), Failing).max_attempts(1);
    let round = dispatcher
        .dispatch(OffsetDateTime::now_utc())
        .await
        .unwrap();
    // The admin key's issue, parked at its first failure; nothing after it.
    assert_eq!((round.parked, round.counts.parked), (1, 1));
    let listed = call(&f.app, Method::GET, "/outbox", &f.admin, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["parked"], 1);
    let entry = &listed.body["entries"][0];
    assert_eq!(entry["state"], "parked");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["event"]["event"], "key_issued");
    assert_eq!(entry["event"]["key_id"], "root");
    assert!(entry["last_error"].as_str().unwrap().contains("503"));
    let id = entry["id"].as_u64().unwrap();

    let retried = call(
        &f.app,
        Method::POST,
        &format!("/outbox/evt_{id}/retry"),
        &f.admin,
        None,
    )
    .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let pending = call(&f.app, Method::GET, "/outbox?state=pending", &f.admin, None).await;
    assert_eq!(pending.body["parked"], 0);
    assert_eq!(pending.body["entries"][0]["id"], id);
    assert_eq!(pending.body["entries"][0]["attempts"], 0);
    let again = call(
        &f.app,
        Method::POST,
        &format!("/outbox/{id}/retry"),
        &f.admin,
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.body);
    assert_eq!(again.body["error"], "not_parked");

    let bad_state = call(&f.app, Method::GET, "/outbox?state=lost", &f.admin, None).await;
    assert_eq!(bad_state.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_state.body["message"]
            .as_str()
            .unwrap()
            .contains("\"lost\""),
        "{}",
        bad_state.body
    );
    let bad_id = call(&f.app, Method::POST, "/outbox/msg_1/retry", &f.admin, None).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_id.body["message"].as_str().unwrap().contains("msg_1"),
        "{}",
        bad_id.body
    );
    let anonymous = call(&f.app, Method::GET, "/outbox", "", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// A key's events come from the outbox newest first, delivered or not,
/// a page at a time, and stay listed once the key is deleted; another
/// key's events are not among them.
#[tokio::test]
async fn a_key_s_events_are_listed_newest_first() {
    let f = fixture().await;
    let created = call(
        &f.app,
        Method::POST,
        "/keys",
        &f.admin,
        Some(json!({"id": "evented"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let renewed = call(&f.app, Method::POST, "/keys/evented/renew", &f.admin, None).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
    let labelled = call(
        &f.app,
        Method::PATCH,
        "/keys/evented",
        &f.admin,
        Some(json!([{"label": "orders"}])),
    )
    .await;
    assert_eq!(labelled.status, StatusCode::OK, "{}", labelled.body);
    // Delivered entries are listed too.
    let delivered = keyroll::outbox::Dispatcher::new(f.keys.store(), keyroll::outbox::TracingSink)
        .dispatch(OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(delivered.delivered, 4);

    let names = |body: &Value| -> Vec<String> {
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["event"]["event"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = call(&f.app, Method::GET, "/keys/evented/events", &f.admin, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(
        names(&listed.body),
        ["label_changed", "token_renewed", "key_issued"]
    );
    assert_eq!(listed.body["entries"][0]["state"], "delivered");
    let first = call(
        &f.app,
        Method::GET,
        "/keys/evented/events?limit=1",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(names(&first.body), ["label_changed"]);
    let id = first.body["entries"][0]["id"].as_u64().unwrap();
    let older = call(
        &f.app,
        Method::GET,
        &format!("/keys/evented/events?before={id}"),
        &f.admin,
        None,
    )
    .await;
    assert_eq!(names(&older.body), ["token_renewed", "key_issued"]);

    let deleted = call(&f.app, Method::DELETE, "/keys/evented", &f.admin, None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let after = call(&f.app, Method::GET, "/keys/evented/events", &f.admin, None).await;
    assert_eq!(
        names(&after.body),
        [
            "key_deleted",
            "label_changed",
            "token_renewed",
            "key_issued"
        ]
    );

    let bad = call(
        &f.app,
        Method::GET,
        "/keys/evented/events?before=x",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let anonymous = call(&f.app, Method::GET, "/keys/evented/events", "", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// A search finds keys by id, label and owner, in any case, sorted as
/// asked, a page at a time by offset, with the total; a bad sort is
/// refused naming it.
#[tokio::test]
async fn search_finds_by_id_label_and_owner_sorted_with_a_total() {
    let f = fixture().await;
    let now = OffsetDateTime::now_utc();
    for (id, label, owner, days) in [
        ("alpha", "Orders prod", "acme", 30),
        ("beta", "billing", "ACME-eu", 10),
        ("gamma", "orders staging", "globex", 20),
        ("delta", "misc", "initech", 5),
    ] {
        let new = keyroll::NewKey::new(KeyId::new(id).unwrap())
            .label(label)
            .owner(keyroll::OwnerId::new(owner).unwrap())
            .expires_at(now + time::Duration::days(days));
        f.keys.create_key(new, now, &mut rand::rng()).await.unwrap();
    }
    let ids = |answer: &Answer| -> Vec<String> {
        answer.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // "orders" in two labels, any case; "acme" in two owners.
    let found = call(&f.app, Method::GET, "/search?q=ORDERS", &f.admin, None).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert_eq!(
        (ids(&found), found.body["total"].clone()),
        (vec!["alpha".into(), "gamma".into()], json!(2))
    );
    let found = call(
        &f.app,
        Method::GET,
        "/search?q=acme&sort=expiry",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(ids(&found), ["beta", "alpha"]);
    // Every key (the admin key `root` too, which never expires: last).
    let all = call(
        &f.app,
        Method::GET,
        "/search?sort=expiry&limit=2&offset=2",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(
        (ids(&all), all.body["total"].clone()),
        (vec!["gamma".into(), "alpha".into()], json!(5))
    );
    let last = call(
        &f.app,
        Method::GET,
        "/search?sort=expiry&offset=4",
        &f.admin,
        None,
    )
    .await;
    assert_eq!(ids(&last), ["root"]);
    let bad = call(&f.app, Method::GET, "/search?sort=size", &f.admin, None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body["message"].as_str().unwrap().contains("\"size\""),
        "{}",
        bad.body
    );
}
