//! The layer, the `Caller` extractor and the scope guard in an axum
//! `Router`: in process (`tower::ServiceExt::oneshot`) and over a real
//! socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use keyroll::store::{Action, Call, InMemoryStore, Intercept, KeyStore};
use keyroll::{KeyId, KeyManager, NewKey, Scopes, Token};
use keyroll_axum::{Caller, InsufficientScope, KeyrollLayer, RequireScope, TOKEN_RENEWED};
use time::OffsetDateTime;
use tower::ServiceExt;

async fn whoami(caller: Caller) -> impl IntoResponse {
    let body = serde_json::json!({ "key_id": caller.key_id, "scopes": caller.scopes.len() });
    (caller.headers(), Json(body))
}

async fn orders(caller: Caller) -> Result<Json<serde_json::Value>, InsufficientScope> {
    caller.require_scope("orders:read")?;
    Ok(Json(serde_json::json!({ "key_id": caller.key_id })))
}

/// The two ways a route authenticates: the routes without a prefix behind
/// the layer, those under `/own` by the `Caller` extractor alone.
const WAYS: [&str; 2] = ["", "/own"];

/// `/orders` (scope `orders:read`) and `/whoami`, behind the layer (the
/// scope checked by `RequireScope`), and the same under `/own` without it
/// (checked by `Caller::require_scope`).
fn router<S: KeyStore + 'static>(layer: KeyrollLayer<S>) -> Router {
    let layered = Router::new()
        .route(
            "/orders",
            get(whoami).layer(RequireScope::new("orders:read".parse().unwrap())),
        )
        .route("/whoami", get(whoami))
        .layer(layer.clone());
    Router::new()
        .route("/own/orders", get(orders))
        .route("/own/whoami", get(whoami))
        .merge(layered)
        .with_state(layer)
}

struct Fixture {
    app: Router,
    keys: Arc<KeyManager<InMemoryStore>>,
    reader: Token,
    plain: Token,
}

async fn fixture() -> Fixture {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let mut rng = rand::rng();
    let new =
        NewKey::new(KeyId::new("reader").unwrap()).scopes(Scopes::new(["orders:read"]).unwrap());
    let (reader, _) = keys.create_key(new, now, &mut rng).await.unwrap();
    let (plain, _) = keys
        .create_key(KeyId::new("plain").unwrap(), now, &mut rng)
        .await
        .unwrap();
    let app = router(KeyrollLayer::new(keys.clone()).realm("orders").two_headers(
        "x-vtex-api-appkey".parse().unwrap(),
        "x-vtex-api-apptoken".parse().unwrap(),
    ));
    Fixture {
        app,
        keys,
        reader,
        plain,
    }
}

async fn send(
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, Option<String>, Option<String>, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let (challenge, renewed) = (header(header::WWW_AUTHENTICATE), header(TOKEN_RENEWED));
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        challenge,
        renewed,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn bearer(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn bearer_tokens_authenticate_and_refusals_are_uniform() {
    let f = fixture().await;
    let app = &f.app;
    let mut wrong = f.plain.expose_secret().to_owned();
    let at = wrong.len() - 20;
    let swap = if &wrong[at..at + 1] == "A" { "B" } else { "A" };
    wrong.replace_range(at..at + 1, swap);
    f.keys
        .delete_key(&KeyId::new("plain").unwrap(), OffsetDateTime::now_utc())
        .await
        .unwrap();
    let mut uniform = None;
    for way in WAYS {
        let whoami = format!("{way}/whoami");
        let (status, _, renewed, body) = send(app, bearer(&whoami, f.reader.expose_secret())).await;
        assert_eq!(status, StatusCode::OK, "{way}");
        assert_eq!(body, r#"{"key_id":"reader","scopes":1}"#);
        assert_eq!(renewed, None);

        // No credential: a challenge without an error code.
        let (status, challenge, _, body) =
            send(app, Request::get(&whoami).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{way}");
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="orders""#));
        // The same body whichever way authenticates.
        assert_eq!(uniform.get_or_insert_with(|| body.clone()), &body);

        // Malformed, unknown key (deleted), wrong token: one answer.
        for token in ["kr_typo", f.plain.expose_secret(), &wrong] {
            let (status, challenge, _, body) = send(app, bearer(&whoami, token)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{way} {token}");
            assert_eq!(
                challenge.as_deref(),
                Some(r#"Bearer realm="orders", error="invalid_token""#)
            );
            assert_eq!(uniform.as_ref(), Some(&body));
        }
    }
}

/// RFC 7235 makes the scheme case-insensitive, and allows more than one
/// space before the token.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let f = fixture().await;
    let token = f.reader.expose_secret();
    for way in WAYS {
        let whoami = format!("{way}/whoami");
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            for value in [format!("{scheme} {token}"), format!("{scheme}   {token}")] {
                let request = Request::get(&whoami)
                    .header(header::AUTHORIZATION, value.clone())
                    .body(Body::empty())
                    .unwrap();
                let (status, _, _, _) = send(&f.app, request).await;
                assert_eq!(status, StatusCode::OK, "{way} {scheme:?}");
            }
        }
        for value in [
            format!("Bearer{token}"),
            format!("Bearers {token}"),
            "Bearer ".into(),
        ] {
            let request = Request::get(&whoami)
                .header(header::AUTHORIZATION, value.clone())
                .body(Body::empty())
                .unwrap();
            let (status, challenge, _, _) = send(&f.app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{way} {value:?}");
            assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="orders""#));
        }
    }
}

/// A scope guard's scope is a `Scope`: nothing in the challenge can be
/// broken out of its quotes; `require_scope` quotes what it is given.
#[test]
fn scopes_in_challenges_stay_quoted() {
    assert!("orders\", error=\"x".parse::<keyroll::Scope>().is_err());
    let refused = Caller(keyroll::Authenticated::new(
        KeyId::new("k").unwrap(),
        keyroll::TokenMatch::Current,
        "00000000000000000000000000000000".parse().unwrap(),
        Scopes::default(),
        keyroll::Metadata::default(),
    ))
    .require_scope("a\"b")
    .unwrap_err()
    .into_response();
    assert_eq!(
        refused.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer error="insufficient_scope", scope="a\"b""#
    );
}

#[tokio::test]
async fn the_two_header_form_and_conflicting_headers() {
    let f = fixture().await;
    let app = &f.app;
    for way in WAYS {
        let whoami = format!("{way}/whoami");
        let two = |key: &str, token: &str| {
            Request::get(&whoami)
                .header("X-VTEX-API-AppKey", key)
                .header("X-VTEX-API-AppToken", token)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            send(app, two("reader", f.reader.expose_secret())).await.0,
            StatusCode::OK
        );
        assert_eq!(
            send(app, two("plain", f.reader.expose_secret())).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(app, two("bad id!", f.reader.expose_secret())).await.0,
            StatusCode::UNAUTHORIZED
        );
        // One of the two headers alone is no credential: no error code.
        let alone = Request::get(&whoami)
            .header("X-VTEX-API-AppKey", "reader")
            .body(Body::empty())
            .unwrap();
        let (status, challenge, _, _) = send(app, alone).await;
        assert_eq!(
            (status, challenge.as_deref()),
            (StatusCode::UNAUTHORIZED, Some(r#"Bearer realm="orders""#))
        );
        let conflicting = Request::get(&whoami)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", f.reader.expose_secret()),
            )
            .header("X-VTEX-API-AppKey", "plain")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(app, conflicting).await.0, StatusCode::UNAUTHORIZED);
        // An `Authorization` header of another scheme is not a bearer token:
        // the two headers beside it are the credential.
        let mut basic = two("reader", f.reader.expose_secret());
        basic
            .headers_mut()
            .insert(header::AUTHORIZATION, "Basic cmVhZGVyOg==".parse().unwrap());
        assert_eq!(send(app, basic).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn scopes_guard_routes_and_old_tokens_are_told_to_move() {
    let f = fixture().await;
    let app = &f.app;
    let id = KeyId::new("reader").unwrap();
    let now = OffsetDateTime::now_utc();
    let (newer, _) = f.keys.renew(&id, now, &mut rand::rng()).await.unwrap();
    for way in WAYS {
        let orders = format!("{way}/orders");
        assert_eq!(
            send(app, bearer(&orders, f.reader.expose_secret())).await.0,
            StatusCode::OK,
            "{way}"
        );
        let (status, challenge, _, _) = send(app, bearer(&orders, f.plain.expose_secret())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{way}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer error="insufficient_scope", scope="orders:read""#)
        );

        let whoami = format!("{way}/whoami");
        let (_, _, renewed, _) = send(app, bearer(&whoami, f.reader.expose_secret())).await;
        assert_eq!(renewed.as_deref(), Some("true"), "{way}");
        let (_, _, renewed, _) = send(app, bearer(&whoami, newer.expose_secret())).await;
        assert_eq!(renewed, None, "{way}");
    }
}

#[tokio::test]
async fn store_failures_are_a_generic_503() {
    // A store whose every call fails.
    let down = Call::ALL
        .into_iter()
        .fold(Intercept::new(InMemoryStore::new()), |store, call| {
            store.on(call, |_| Action::Fail)
        });
    let f = fixture().await;
    let app = router(KeyrollLayer::new(Arc::new(KeyManager::new(down))));
    for way in WAYS {
        let whoami = format!("{way}/whoami");
        let (status, _, _, body) = send(&app, bearer(&whoami, f.reader.expose_secret())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{way}");
        assert!(
            !body.contains("database"),
            "no detail for the caller: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture().await;
    let app = f.app;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    let get = |token: String| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let ok = get(f.reader.expose_secret().to_owned()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let refused = get("kr_nope".to_owned()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused
            .to_lowercase()
            .contains("www-authenticate: bearer realm=\"orders\", error=\"invalid_token\"")
    );
    let forbidden = get(f.plain.expose_secret().to_owned()).await;
    assert!(forbidden.starts_with("HTTP/1.1 403"), "{forbidden}");
    server.abort();
}

#[tokio::test]
async fn a_store_that_answers_later_gets_the_same_answers() {
    // `InMemoryStore` behind reads that first yield to the runtime, as a
    // store doing I/O does: the layer cannot answer during its `call`.
    let later = Intercept::new(InMemoryStore::new()).on(Call::Get, |_| Action::Yield);
    let keys = Arc::new(KeyManager::new(later));
    let (now, mut rng) = (OffsetDateTime::now_utc(), rand::rng());
    let id = KeyId::new("later").unwrap();
    let (old, _) = keys.create_key(id.clone(), now, &mut rng).await.unwrap();
    let (new, _) = keys.renew(&id, now, &mut rng).await.unwrap();
    let app = router(KeyrollLayer::new(keys.clone()));
    let (status, _, renewed, body) = send(&app, bearer("/whoami", new.expose_secret())).await;
    assert_eq!((status, renewed), (StatusCode::OK, None));
    assert_eq!(body, r#"{"key_id":"later","scopes":0}"#);
    let (status, _, renewed, _) = send(&app, bearer("/whoami", old.expose_secret())).await;
    assert_eq!((status, renewed.as_deref()), (StatusCode::OK, Some("true")));
    let (status, challenge, _, _) = send(
        &app,
        bearer(
            "/whoami",
            "kr_later_0000000000000000000000000000000000000000000000",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer realm="keyroll", error="invalid_token""#)
    );
}

/// Behind the layer, `Caller` hands out what the layer found: the store is
/// read once per request (and a use noted once), whichever way a route
/// authenticates.
#[tokio::test]
async fn a_request_is_authenticated_once() {
    // `InMemoryStore`, its reads counted.
    let keys = Arc::new(KeyManager::new(Intercept::new(InMemoryStore::new())));
    let now = OffsetDateTime::now_utc();
    let (token, _) = keys
        .create_key(KeyId::new("k").unwrap(), now, &mut rand::rng())
        .await
        .unwrap();
    let app = router(KeyrollLayer::new(keys.clone()));
    for way in WAYS {
        let before = keys.store().count(Call::Verify);
        let (status, ..) = send(
            &app,
            bearer(&format!("{way}/whoami"), token.expose_secret()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{way}");
        assert_eq!(keys.store().count(Call::Verify) - before, 1, "{way}");
    }
}

/// A refusal given before the request's body was read closes the
/// connection, and says so: the server will not read that body, and a
/// client that kept the connection would fail its next request on it.
#[tokio::test]
async fn refusals_before_the_body_is_read_close_the_connection() {
    let f = fixture().await;
    let with_body = |path: &str, token: &str| {
        Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_LENGTH, "7")
            .body(Body::from("{\"a\":1}"))
            .unwrap()
    };
    let connection = |response: &axum::response::Response| {
        response
            .headers()
            .get(header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for (request, status) in [
        (with_body("/whoami", "kr_wrong"), StatusCode::UNAUTHORIZED),
        (
            with_body("/orders", f.plain.expose_secret()),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = f.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(connection(&response).as_deref(), Some("close"));
    }
    let response = f
        .app
        .clone()
        .oneshot(bearer("/whoami", "kr_wrong"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(connection(&response), None, "no body: the connection stays");
    let response = f
        .app
        .clone()
        .oneshot(with_body("/whoami", f.reader.expose_secret()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(connection(&response), None);
}

/// `keyroll_axum::Json` bodies refused in keyroll's format, with the
/// status axum chose, after the request was authenticated; a path no
/// route serves answers the same way.
#[tokio::test]
async fn json_bodies_and_unknown_paths_are_refused_in_keyrolls_format() {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Order {
        item: String,
        quantity: u32,
    }
    async fn order(
        _: Caller,
        keyroll_axum::Json(order): keyroll_axum::Json<Order>,
    ) -> keyroll_axum::Json<Order> {
        keyroll_axum::Json(order)
    }
    let f = fixture().await;
    let layer = KeyrollLayer::new(f.keys.clone());
    let app = Router::new()
        .route("/orders", axum::routing::post(order))
        .layer(layer.clone())
        .fallback(keyroll_axum::fallback)
        .with_state(layer);
    let post = |content_type: &str, body: &str| {
        Request::post("/orders")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", f.plain.expose_secret()),
            )
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let (status, _, _, body) = send(
        &app,
        post("application/json", r#"{"item": "tea", "quantity": 2}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, r#"{"item":"tea","quantity":2}"#);
    for (request, expected, code, says) in [
        (
            post("text/plain", "{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            post("application/json", "{not json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "as JSON",
        ),
        (
            post("application/json", r#"{"item": "tea", "quantity": "two"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "quantity",
        ),
        (
            bearer("/nowhere", f.plain.expose_secret()),
            StatusCode::NOT_FOUND,
            "no_such_route",
            "no such route",
        ),
    ] {
        let (status, _, _, body) = send(&app, request).await;
        assert_eq!(status, expected, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().unwrap().contains(says), "{body}");
    }
    // Without a credential, the body is never read: the 401 comes first.
    let anonymous = Request::post("/orders")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&app, anonymous).await.0, StatusCode::UNAUTHORIZED);
}

/// One route's methods priced apart under one layer: each request is
/// charged its method's cost, the others the layer's.
#[tokio::test]
async fn a_routes_methods_are_priced_apart() {
    use axum::http::Method;
    let f = fixture().await;
    let now = OffsetDateTime::now_utc();
    let id = KeyId::new("metered").unwrap();
    let new = NewKey::new(id.clone()).credits(keyroll::meter::Credits::new(20));
    let (token, _) = f.keys.create_key(new, now, &mut rand::rng()).await.unwrap();
    let keyroll = KeyrollLayer::new(f.keys.clone());
    let priced = keyroll
        .clone()
        .method_cost(Method::POST, 10)
        .method_cost(Method::DELETE, 2);
    let app = Router::new()
        .route(
            "/orders",
            get(whoami).post(whoami).delete(whoami).layer(priced),
        )
        .with_state(keyroll);
    let mut left = Vec::new();
    for method in [Method::GET, Method::POST, Method::DELETE, Method::POST] {
        let request = Request::builder()
            .method(method)
            .uri("/orders")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", token.expose_secret()),
            )
            .body(Body::empty())
            .unwrap();
        let (status, _, _, body) = send(&app, request).await;
        let allowance = f
            .keys
            .allowance(&id, OffsetDateTime::now_utc())
            .await
            .unwrap();
        left.push((
            status,
            allowance.credits_remaining(),
            body.contains("metered"),
        ));
    }
    assert_eq!(
        left,
        [
            (StatusCode::OK, Some(19), true),
            (StatusCode::OK, Some(9), true),
            (StatusCode::OK, Some(7), true),
            (StatusCode::TOO_MANY_REQUESTS, Some(7), false),
        ]
    );
}
