//! [`ApiError`]: keyroll's errors as HTTP answers, written once, and the
//! JSON shape of every refusal this crate sends.

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use keyroll::ManagerError;
use keyroll::meter::Subject;

/// An error answer: a status and `{"error": code, "message": text}`, the
/// shape of every refusal this crate sends.
///
/// `From<ManagerError<E>>` maps a manager's errors once, so that a handler
/// returning `Result<_, ApiError>` writes no table of its own:
///
/// | error | status | code |
/// |---|---|---|
/// | bad input ([`ManagerError::is_bad_input`]: a label, a policy, a grace, an instant) | 400 | `bad_request`, the message quoting it |
/// | `NotFound` | 404 | `not_found` |
/// | the key's state, `AlreadyExists`, a revision `Conflict` | 409 | `conflict` |
/// | `Store` | 503 | `unavailable`; the store's message goes to the log only |
///
/// # Example
///
/// ```
/// use axum::extract::{Path, State};
/// use keyroll::store::InMemoryStore;
/// use keyroll::{KeyId, KeyManager};
/// use keyroll_axum::ApiError;
/// use std::sync::Arc;
///
/// async fn activate(
///     State(keys): State<Arc<KeyManager<InMemoryStore>>>,
///     Path(id): Path<String>,
/// ) -> Result<String, ApiError> {
///     let id = KeyId::new(id).map_err(ApiError::bad_request)?;
///     let event = keys.apply(&id, keyroll::Change::Activate, time::OffsetDateTime::now_utc()).await?;
///     Ok(event.name().to_owned())
/// }
///
/// let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
/// let app: axum::Router = axum::Router::new()
///     .route("/keys/{id}/activate", axum::routing::post(activate))
///     .with_state(keys);
/// ```
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Few and rare (a challenge, `Retry-After`): a list, which keeps the
    /// error small.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Whose limit refused a request (a 429), if it is one.
    subject: Option<Subject>,
}

impl ApiError {
    /// An answer with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            subject: None,
        }
    }

    /// The same answer naming whose limit refused the request: `"subject":
    /// "key"` or `"owner"` in the body.
    pub fn with_subject(mut self, subject: Subject) -> ApiError {
        self.subject = Some(subject);
        self
    }

    /// A 400 for bad input, its message that of `error` (keyroll's input
    /// errors quote the value they refuse).
    pub fn bad_request(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", error.to_string())
    }

    /// The same answer with a `WWW-Authenticate` challenge (left out if
    /// it is not a valid header value).
    pub fn with_challenge(self, challenge: String) -> ApiError {
        match HeaderValue::try_from(challenge) {
            Ok(value) => self.with_header(header::WWW_AUTHENTICATE, value),
            Err(_) => self,
        }
    }

    /// The same answer with the header `name: value` (as `Retry-After` on
    /// a 429).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        self
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer's code, the `error` field of its body.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The whole seconds of its `Retry-After` header, if it has one.
    #[cfg(feature = "grpc")]
    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.headers
            .iter()
            .find(|(name, _)| name == header::RETRY_AFTER)
            .and_then(|(_, value)| value.to_str().ok()?.parse().ok())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let Some(subject) = self.subject {
            body["subject"] = subject.as_str().into();
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

impl<E: std::fmt::Display> From<ManagerError<E>> for ApiError {
    fn from(e: ManagerError<E>) -> ApiError {
        if e.is_bad_input() {
            return ApiError::bad_request(e);
        }
        match e {
            ManagerError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ManagerError::AlreadyExists | ManagerError::Transition(_) | ManagerError::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ManagerError::Store(cause) => {
                tracing::error!(error = %cause, "keyroll: the key store failed");
                unavailable()
            }
            other => {
                tracing::error!(error = %other, "keyroll: unexpected manager error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// A response body keyroll's refusals can be written in: axum's, and
/// (feature `grpc`) tonic's. [`KeyrollLayer`](crate::KeyrollLayer) and
/// [`RequireScope`](crate::RequireScope) serve any inner service whose
/// response body is one; implement it for another body type to use them
/// with it.
pub trait RefusalBody: Send + 'static {
    /// `body`, a refusal written as axum's body, as this body type.
    fn from_axum(body: axum::body::Body) -> Self;
}

impl RefusalBody for axum::body::Body {
    fn from_axum(body: axum::body::Body) -> Self {
        body
    }
}

#[cfg(feature = "grpc")]
impl RefusalBody for tonic::body::Body {
    fn from_axum(body: axum::body::Body) -> Self {
        tonic::body::Body::new(body)
    }
}

/// `refusal`, the answer to a request with these `headers` (of HTTP
/// `version`), given before its body was read. A gRPC request (feature
/// `grpc`) gets the gRPC status `refusal` maps to, as a trailers-only
/// answer. Otherwise `Connection: close` is added when the request has a
/// body: the server closes a connection whose request body it did not
/// read; without the header a client keeps that connection for its next
/// request, which then fails (`UnexpectedEof`), more often the busier the
/// machine.
pub(crate) fn refuse<B: RefusalBody>(
    headers: &HeaderMap,
    version: Version,
    refusal: ApiError,
) -> axum::http::Response<B> {
    #[cfg(feature = "grpc")]
    if crate::grpc::is_grpc(headers) {
        return crate::grpc::status(&refusal)
            .into_http::<axum::body::Body>()
            .map(B::from_axum);
    }
    let mut response = refusal.into_response();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if has_body && version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response.map(B::from_axum)
}

/// The answer to a store failure: 503, with nothing of the store's message.
pub(crate) fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the service is unavailable; try again later",
    )
}

/// The answer to a path a router does not serve.
pub(crate) fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route")
}

/// A router's fallback answering in keyroll's format: 404
/// `{"error": "no_such_route", "message": "no such route"}`, rather than
/// axum's empty 404.
///
/// ```
/// let app: axum::Router = axum::Router::new().fallback(keyroll_axum::fallback);
/// ```
pub async fn fallback() -> ApiError {
    no_such_route()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyroll::TransitionError;

    fn mapped(e: ManagerError<std::io::Error>) -> (StatusCode, &'static str, String) {
        let error = ApiError::from(e);
        (error.status, error.code, error.message)
    }

    #[test]
    fn manager_errors_map_to_one_status_each() {
        let bad = TransitionError::InvalidGrace {
            grace: time::Duration::seconds(-5),
        };
        let (status, code, message) = mapped(bad.into());
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "bad_request"));
        assert!(message.contains("-5s"), "{message}");
        assert_eq!(mapped(ManagerError::NotFound).0, StatusCode::NOT_FOUND);
        for conflict in [
            ManagerError::Transition(TransitionError::RenewalPending),
            ManagerError::AlreadyExists,
            ManagerError::Conflict,
        ] {
            assert_eq!(mapped(conflict).0, StatusCode::CONFLICT);
        }
        let store = std::io::Error::other("password=hunter2 at db.internal");
        let (status, code, message) = mapped(ManagerError::Store(store));
        assert_eq!(
            (status, code),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}
