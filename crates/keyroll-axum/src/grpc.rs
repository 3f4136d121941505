//! gRPC (feature `grpc`): keyroll's refusals as gRPC statuses, and the
//! caller of a tonic request.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{ApiError, Caller, InsufficientScope};

/// Whether a request is gRPC's (its content type `application/grpc`, with
/// or without a `+proto`-like suffix).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// The gRPC status of a refusal: `UNAUTHENTICATED` for a credential,
/// `PERMISSION_DENIED` for a missing scope or network, `RESOURCE_EXHAUSTED`
/// for a rate limit or spent credits (with the delay before a retry in
/// `google.rpc.RetryInfo`, when one helps), `UNAVAILABLE` for a store
/// failure, `INVALID_ARGUMENT` for bad input, `INTERNAL` otherwise.
pub(crate) fn status(refusal: &ApiError) -> Status {
    let code = match refusal.status() {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::NOT_FOUND => Code::NotFound,
        status if status.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    };
    let message = format!("{}: {refusal}", refusal.code());
    match refusal.retry_after() {
        Some(seconds) => {
            let retry = ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds)));
            Status::with_error_details(code, message, retry)
        }
        None => Status::new(code, message),
    }
}

impl From<InsufficientScope> for Status {
    /// `PERMISSION_DENIED`, naming the scope.
    fn from(refusal: InsufficientScope) -> Status {
        status(&ApiError::from(refusal))
    }
}

impl Caller {
    /// The caller of a tonic request: what
    /// [`KeyrollLayer`](crate::KeyrollLayer) found (tonic hands a handler
    /// the HTTP request's extensions).
    ///
    /// # Errors
    ///
    /// `INTERNAL` for a method served without the layer (a routing
    /// mistake, logged): never an anonymous pass.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll_axum::Caller;
    ///
    /// async fn list(request: tonic::Request<()>) -> Result<tonic::Response<String>, tonic::Status> {
    ///     let caller = Caller::of_grpc(&request)?;
    ///     caller.require_scope("orders:read")?; // PERMISSION_DENIED without it
    ///     Ok(tonic::Response::new(caller.key_id.to_string()))
    /// }
    /// ```
    pub fn of_grpc<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
        match request.extensions().get::<keyroll::Authenticated>() {
            Some(who) => Ok(Caller(who.clone())),
            None => {
                tracing::error!("keyroll: a gRPC method served without KeyrollLayer");
                Err(Status::internal("internal error"))
            }
        }
    }
}
