//! The gRPC service `orders.v1.Orders` of `proto/orders.proto`, with one
//! method, `List`, served by tonic behind a `KeyrollLayer` (written out as
//! tonic's generated code would be: no protoc needed; the grpcio test
//! calls it through stubs protoc made of that file).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use keyroll::store::KeyStore;
use keyroll_axum::{Caller, KeyrollLayer};
use tonic::Status;

/// `List`'s request: nothing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRequest {}

/// `List`'s answer: the caller's key, and its orders (none).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListReply {
    /// The key that called.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// Its orders.
    #[prost(string, repeated, tag = "2")]
    pub orders: Vec<String>,
}

/// `List`'s path.
pub const LIST: &str = "/orders.v1.Orders/List";

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The `Orders` service.
#[derive(Clone, Debug)]
pub struct Orders;

impl tonic::server::NamedService for Orders {
    const NAME: &'static str = "orders.v1.Orders";
}

/// `List`: the caller's orders (none), scope `orders:read` needed.
struct List;

impl tonic::server::UnaryService<ListRequest> for List {
    type Response = ListReply;
    type Future = Boxed<Result<tonic::Response<ListReply>, Status>>;

    fn call(&mut self, request: tonic::Request<ListRequest>) -> Self::Future {
        Box::pin(async move {
            let caller = Caller::of_grpc(&request)?;
            caller.require_scope("orders:read")?;
            Ok(tonic::Response::new(ListReply {
                key_id: caller.key_id.to_string(),
                orders: Vec::new(),
            }))
        })
    }
}

impl tower_service::Service<axum::http::Request<tonic::body::Body>> for Orders {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Boxed<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != LIST {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(List, request).await)
        })
    }
}

/// Serves `Orders` on `listener`, behind `keyroll`, until the process
/// ends.
pub fn serve<S: KeyStore + 'static>(listener: tokio::net::TcpListener, keyroll: KeyrollLayer<S>) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(keyroll)
            .add_service(Orders)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the gRPC server stopped");
        }
    });
}
