//! [`Json`]: JSON bodies whose refusals answer in keyroll's format.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON request body (and answer), as `axum::Json`, whose refusals
/// answer `{"error": code, "message": text}` like every refusal of this
/// crate, not axum's plain text:
///
/// | refusal | status | code |
/// |---|---|---|
/// | no `Content-Type: application/json` | 415 | `unsupported_media_type` |
/// | not JSON | 400 | `bad_request` |
/// | JSON of the wrong shape (a field missing, of the wrong type) | 422 | `invalid_body` |
/// | a body over the router's limit | 413 | `body_too_large` |
///
/// The message is axum's (it names the field and what was wrong). Under a
/// [`KeyrollLayer`](crate::KeyrollLayer), a request is authenticated (and
/// charged) before its body is read.
///
/// # Example
///
/// ```
/// use axum::routing::post;
/// use keyroll_axum::Json;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Order { item: String, quantity: u32 }
///
/// async fn order(Json(order): Json<Order>) -> Json<Order> {
///     Json(order)
/// }
///
/// let app: axum::Router = axum::Router::new()
///     .route("/v1/orders", post(order))
///     .fallback(keyroll_axum::fallback);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(refusal(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// axum's rejection, in keyroll's format.
fn refusal(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        _ => "bad_request",
    };
    ApiError::new(status, code, rejection.body_text())
}
