//! The layer in front of a gRPC service (feature `grpc`), called in
//! process: refusals are trailers-only gRPC statuses (with
//! `google.rpc.RetryInfo` for a rate limit), `RequireScope` guards too,
//! a gRPC method has a cost of its own, and `Caller::of_grpc` never lets
//! an unauthenticated call through. (keyroll-demo's tests serve a tonic
//! service behind the layer over a socket, called by tonic's client and
//! by Python's grpcio.)
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{Request, Response};
use keyroll::meter::{Credits, RateLimit};
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, NewKey, Scopes};
use keyroll_axum::{Caller, KeyrollLayer, RequireScope};
use time::{Duration, OffsetDateTime};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::{ServiceBuilder, ServiceExt};

/// A gRPC call of `path` with `token`, as tonic's client sends it.
fn call(path: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::post(path).header("content-type", "application/grpc");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Body::empty()).unwrap()
}

/// The status an answer carries (`OK` for the inner service's empty
/// answer).
fn status_of(answer: &Response<Body>) -> Status {
    Status::from_header_map(answer.headers()).unwrap_or_else(|| Status::ok(""))
}

#[tokio::test]
async fn refusals_are_grpc_statuses() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let issue = async |new: NewKey| {
        let (token, _) = keys.create_key(new, now, &mut rand::rng()).await.unwrap();
        token.expose_secret().to_owned()
    };
    let reader = issue(
        NewKey::new(KeyId::new("reader").unwrap()).scopes(Scopes::new(["orders:read"]).unwrap()),
    )
    .await;
    let writer = issue(
        NewKey::new(KeyId::new("writer").unwrap())
            .scopes(Scopes::new(["orders:write"]).unwrap())
            .rate_limit(RateLimit::new(3, Duration::minutes(1)).unwrap())
            .credits(Credits::new(100)),
    )
    .await;
    // The inner service answers OK, with the caller's key id.
    let service = ServiceBuilder::new()
        .layer(KeyrollLayer::new(keys.clone()).path_cost("/orders.v1.Orders/Place", 3))
        .layer(RequireScope::new("orders:write".parse().unwrap()))
        .service(tower::service_fn(|request: Request<Body>| async move {
            let caller = request
                .extensions()
                .get::<keyroll::Authenticated>()
                .cloned();
            let mut answer = Response::new(Body::empty());
            let key = caller.map(|who| who.key_id.to_string()).unwrap_or_default();
            answer.headers_mut().insert("x-key", key.parse().unwrap());
            Ok::<_, Infallible>(answer)
        }));
    let send = |request| service.clone().oneshot(request);

    let anonymous = send(call("/orders.v1.Orders/List", None)).await.unwrap();
    assert_eq!(status_of(&anonymous).code(), Code::Unauthenticated);
    let wrong = send(call("/orders.v1.Orders/List", Some("kr_reader_0000")))
        .await
        .unwrap();
    assert_eq!(status_of(&wrong).code(), Code::Unauthenticated);
    let denied = send(call("/orders.v1.Orders/List", Some(&reader)))
        .await
        .unwrap();
    let denied = status_of(&denied);
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("orders:write"), "{denied:?}");

    // `Place` costs the whole burst of 3: the next call is refused, with
    // the delay before a retry in RetryInfo.
    let placed = send(call("/orders.v1.Orders/Place", Some(&writer)))
        .await
        .unwrap();
    assert_eq!(status_of(&placed).code(), Code::Ok);
    assert_eq!(placed.headers()["x-key"], "writer");
    let writer_id = KeyId::new("writer").unwrap();
    let allowance = keys.allowance(&writer_id, OffsetDateTime::now_utc()).await;
    assert_eq!(allowance.unwrap().credits_remaining(), Some(97));
    let exhausted = send(call("/orders.v1.Orders/List", Some(&writer)))
        .await
        .unwrap();
    let exhausted = status_of(&exhausted);
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");
    let delay = exhausted
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay;
    assert!(
        (1..=20).contains(&delay.expect("a delay").as_secs()),
        "{delay:?}"
    );
}

/// A handler's own scope check converts to `PERMISSION_DENIED`, and a
/// method served without the layer is an internal error for
/// `Caller::of_grpc`, never an anonymous pass.
#[tokio::test]
async fn a_handlers_checks_answer_grpc_statuses() {
    let unlayered = tonic::Request::new(());
    assert_eq!(
        Caller::of_grpc(&unlayered).unwrap_err().code(),
        Code::Internal
    );
    let keys = KeyManager::new(InMemoryStore::new());
    let now = OffsetDateTime::now_utc();
    let id = KeyId::new("reader").unwrap();
    let (token, _) = keys.create_key(id, now, &mut rand::rng()).await.unwrap();
    let mut layered = tonic::Request::new(());
    let who = keys.authenticate(token.expose_secret(), now).await.unwrap();
    layered.extensions_mut().insert(who);
    let caller = Caller::of_grpc(&layered).unwrap();
    let refused: Status = caller.require_scope("orders:read").unwrap_err().into();
    assert_eq!(refused.code(), Code::PermissionDenied);
}
