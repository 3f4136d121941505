//! The demo's gRPC service behind `KeyrollLayer` on a real tonic server,
//! called by a real tonic client over a socket: the caller's key back,
//! `UNAUTHENTICATED`, `PERMISSION_DENIED`, and `RESOURCE_EXHAUSTED` with
//! `google.rpc.RetryInfo` once a method's cost spent the burst.

use std::sync::Arc;

use axum::http::uri::PathAndQuery;
use keyroll::meter::RateLimit;
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, NewKey, Scopes};
use keyroll_axum::KeyrollLayer;
use keyroll_demo::orders::{LIST, ListReply, ListRequest};
use time::{Duration, OffsetDateTime};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// `List`, called with `token` (if any) over a fresh channel to `addr`.
async fn list(addr: std::net::SocketAddr, token: Option<&str>) -> Result<ListReply, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(ListRequest {});
    if let Some(token) = token {
        let bearer = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
    }
    let codec = tonic_prost::ProstCodec::<ListRequest, ListReply>::default();
    let reply = client
        .unary(request, PathAndQuery::from_static(LIST), codec)
        .await?;
    Ok(reply.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_calls_the_service_behind_the_layer() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let issue = async |new: NewKey| {
        let (token, _) = keys.create_key(new, now, &mut rand::rng()).await.unwrap();
        token.expose_secret().to_owned()
    };
    let read = Scopes::new(["orders:read"]).unwrap();
    let reader = issue(NewKey::new(KeyId::new("reader").unwrap()).scopes(read.clone())).await;
    let outsider = issue(NewKey::new(KeyId::new("outsider").unwrap())).await;
    let limited = issue(
        NewKey::new(KeyId::new("limited").unwrap())
            .scopes(read)
            .rate_limit(RateLimit::new(2, Duration::minutes(1)).unwrap()),
    )
    .await;
    // `List` costs 2: the whole burst of the limited key.
    let layer = KeyrollLayer::new(keys).path_cost(LIST, 2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    keyroll_demo::orders::serve(listener, layer);

    let reply = list(addr, Some(&reader)).await.unwrap();
    assert_eq!(reply.key_id, "reader");
    assert_eq!(
        list(addr, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let denied = list(addr, Some(&outsider)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("orders:read"), "{denied:?}");
    assert_eq!(list(addr, Some(&limited)).await.unwrap().key_id, "limited");
    let exhausted = list(addr, Some(&limited)).await.unwrap_err();
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");
    let delay = exhausted
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay;
    assert!(
        (1..=60).contains(&delay.expect("a delay").as_secs()),
        "{delay:?}"
    );
}
