//! The layer on a real tonic server, called by a real tonic client over a
//! socket: refusals are gRPC statuses (with `google.rpc.RetryInfo` for a
//! rate limit), `Caller::of_grpc` hands the handler its caller, and a gRPC
//! method has a cost of its own.
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::uri::PathAndQuery;
use keyroll::meter::{Credits, RateLimit};
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, NewKey, Scopes};
use keyroll_axum::{Caller, KeyrollLayer, RequireScope};
use time::{Duration, OffsetDateTime};
use tonic::{Code, Status};
use tonic_types::StatusExt;

#[derive(Clone, PartialEq, prost::Message)]
struct ListRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct ListReply {
    #[prost(string, tag = "1")]
    key_id: String,
    #[prost(string, repeated, tag = "2")]
    orders: Vec<String>,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `orders.v1.Orders`, with `List` and `Place`, as tonic's generated code
/// serves a service (written out: no protoc here).
#[derive(Clone)]
struct Orders;

impl tonic::server::NamedService for Orders {
    const NAME: &'static str = "orders.v1.Orders";
}

struct Unary;

impl tonic::server::UnaryService<ListRequest> for Unary {
    type Response = ListReply;
    type Future = Boxed<Result<tonic::Response<ListReply>, Status>>;

    fn call(&mut self, request: tonic::Request<ListRequest>) -> Self::Future {
        Box::pin(async move {
            let caller = Caller::of_grpc(&request)?;
            caller.require_scope("orders:read")?;
            Ok(tonic::Response::new(ListReply {
                key_id: caller.key_id.to_string(),
                orders: vec!["tea".into()],
            }))
        })
    }
}

impl tower::Service<axum::http::Request<tonic::body::Body>> for Orders {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Boxed<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Unary, request).await)
        })
    }
}

/// Calls `method` with `token` (if any) over a fresh channel.
async fn call(
    addr: std::net::SocketAddr,
    method: &'static str,
    token: Option<&str>,
) -> Result<ListReply, Status> {
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
    let path = PathAndQuery::from_static(method);
    let reply = client
        .unary(
            request,
            path,
            tonic_prost::ProstCodec::<ListRequest, ListReply>::default(),
        )
        .await?;
    Ok(reply.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_behind_the_layer_answers_grpc_statuses() {
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
    let outsider = issue(NewKey::new(KeyId::new("outsider").unwrap())).await;
    let limited = issue(
        NewKey::new(KeyId::new("limited").unwrap())
            .scopes(Scopes::new(["orders:read"]).unwrap())
            .rate_limit(RateLimit::new(3, Duration::minutes(1)).unwrap())
            .credits(Credits::new(100)),
    )
    .await;
    let layer = KeyrollLayer::new(keys.clone()).path_cost("/orders.v1.Orders/Place", 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Orders)
            .serve_with_incoming(incoming),
    );

    let reply = call(addr, "/orders.v1.Orders/List", Some(&reader))
        .await
        .unwrap();
    assert_eq!((reply.key_id.as_str(), reply.orders.len()), ("reader", 1));
    let refused = call(addr, "/orders.v1.Orders/List", None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let wrong = call(addr, "/orders.v1.Orders/List", Some("kr_reader_0000"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let denied = call(addr, "/orders.v1.Orders/List", Some(&outsider))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("orders:read"), "{denied:?}");

    // `Place` costs the whole burst of 3: the next call is refused, with
    // the delay before a retry in RetryInfo.
    call(addr, "/orders.v1.Orders/Place", Some(&limited))
        .await
        .unwrap();
    let limited_id = KeyId::new("limited").unwrap();
    let allowance = keys.allowance(&limited_id, OffsetDateTime::now_utc()).await;
    assert_eq!(allowance.unwrap().credits_remaining(), Some(97));
    let exhausted = call(addr, "/orders.v1.Orders/List", Some(&limited))
        .await
        .unwrap_err();
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");
    let retry = exhausted.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!((1..=20).contains(&delay.as_secs()), "{delay:?}");
}

/// `listener`'s connections, as tonic's `serve_with_incoming` takes them.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// `RequireScope` guards a tonic service too: a trailers-only
/// `PERMISSION_DENIED`; and a method served without the layer is an
/// internal error for `Caller::of_grpc`, never an anonymous pass.
#[tokio::test]
async fn scope_guards_and_a_missing_layer_on_grpc() {
    use tower::{ServiceBuilder, ServiceExt};
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let new =
        NewKey::new(KeyId::new("reader").unwrap()).scopes(Scopes::new(["orders:read"]).unwrap());
    let (token, _) = keys.create_key(new, now, &mut rand::rng()).await.unwrap();
    let guarded = ServiceBuilder::new()
        .layer(KeyrollLayer::new(keys))
        .layer(RequireScope::new("orders:write".parse().unwrap()))
        .service(Orders);
    let request = axum::http::Request::post("/orders.v1.Orders/Place")
        .header("content-type", "application/grpc")
        .header("authorization", format!("Bearer {}", token.expose_secret()))
        .body(tonic::body::Body::empty())
        .unwrap();
    let answer = guarded.oneshot(request).await.unwrap();
    let status = Status::from_header_map(answer.headers()).expect("a trailers-only status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("orders:write"), "{status:?}");

    let unlayered = tonic::Request::new(ListRequest {});
    assert_eq!(
        Caller::of_grpc(&unlayered).unwrap_err().code(),
        Code::Internal
    );
}
