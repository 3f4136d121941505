//! [`keyroll`] API keys for axum (and any tower service): a layer that
//! authenticates each request, an extractor for who it is, and a scope
//! guard, answering as RFC 6750 says.
//!
//! - [`KeyrollLayer`] authenticates `Authorization: Bearer <token>` (a
//!   keyroll token names its key) and, if configured with
//!   [`two_headers`](KeyrollLayer::two_headers), the product's two-header
//!   form (for instance VTEX's `X-VTEX-API-AppKey` and
//!   `X-VTEX-API-AppToken`). Every refused credential gets the same 401,
//!   with `WWW-Authenticate: Bearer realm="..."` (and `error="invalid_token"`
//!   when a token was presented) and one body, so that answers do not tell
//!   which key ids exist; the cause is a `tracing` event (with the key id,
//!   never the token). A store failure is a 503 with a generic body.
//! - The [`Authenticated`] extractor hands the handler the key, the token
//!   that matched, and the key's scopes and metadata.
//! - [`RequireScope`] answers 403 with `WWW-Authenticate: Bearer
//!   error="insufficient_scope", scope="..."` to a key without the scope.
//! - A request made with the old token of a pending renewal gets the response
//!   header [`TOKEN_RENEWED`] (`keyroll-token-renewed: true`): the client
//!   should move to the newer token before the old one is deleted.
//! - [`UsageFlusher`] writes the uses a manager with usage recording noted
//!   in memory, every few seconds, off the requests' path.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::get};
//! use keyroll::{AsyncKeyManager, InMemoryStore};
//! use keyroll_axum::{Authenticated, KeyrollLayer, RequireScope};
//!
//! async fn whoami(who: Authenticated) -> String {
//!     who.key_id.to_string()
//! }
//!
//! let keys = Arc::new(AsyncKeyManager::new(InMemoryStore::new()));
//! let app: Router = Router::new()
//!     .route("/v1/orders", get(whoami).layer(RequireScope::new("orders:read")))
//!     .route("/v1/whoami", get(whoami))
//!     .layer(KeyrollLayer::new(keys).realm("orders"));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyroll::{AsyncKeyManager, AsyncKeyStore, AuthError, KeyId, TokenMatch};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

mod usage;

pub use usage::UsageFlusher;

/// The response header set on answers to a request made with the old token
/// of a pending renewal: `keyroll-token-renewed: true`.
pub const TOKEN_RENEWED: HeaderName = HeaderName::from_static("keyroll-token-renewed");

/// The future both services return.
type Answer<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

/// The one body of every refused credential.
const REFUSED: &str = "invalid credentials";

/// A tower [`Layer`] that authenticates every request with keyroll. See the
/// crate's docs.
pub struct KeyrollLayer<S> {
    /// One reference per request (a reference count shared by the
    /// runtime's threads costs a cache line transfer per clone).
    shared: Arc<Shared<S>>,
}

impl<S> Clone for KeyrollLayer<S> {
    fn clone(&self) -> Self {
        KeyrollLayer {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<S> {
    keys: Arc<AsyncKeyManager<S>>,
    /// `WWW-Authenticate: Bearer realm="<realm>"`.
    challenge: String,
    /// The two-header form's key id and token headers.
    two_headers: Option<(HeaderName, HeaderName)>,
}

impl<S> KeyrollLayer<S> {
    /// A layer authenticating bearer tokens with `keys`, in the realm
    /// `keyroll`.
    pub fn new(keys: Arc<AsyncKeyManager<S>>) -> Self {
        KeyrollLayer {
            shared: Arc::new(Shared {
                keys,
                challenge: challenge("keyroll"),
                two_headers: None,
            }),
        }
    }

    /// The realm named in `WWW-Authenticate` challenges.
    pub fn realm(self, realm: &str) -> Self {
        self.configure(|shared| shared.challenge = challenge(realm))
    }

    /// Also accepts the two-header form: the key id in `key_id` and the
    /// token in `token` (e.g. `X-VTEX-API-AppKey` and `X-VTEX-API-AppToken`).
    /// A bearer token wins when both are sent; a key id beside it must be
    /// the one the token names.
    pub fn two_headers(self, key_id: HeaderName, token: HeaderName) -> Self {
        self.configure(|shared| shared.two_headers = Some((key_id, token)))
    }

    fn configure(self, change: impl FnOnce(&mut Shared<S>)) -> Self {
        let mut shared = Shared {
            keys: self.shared.keys.clone(),
            challenge: self.shared.challenge.clone(),
            two_headers: self.shared.two_headers.clone(),
        };
        change(&mut shared);
        KeyrollLayer {
            shared: Arc::new(shared),
        }
    }
}

/// `Bearer realm="<realm>"`, the realm's quotes and backslashes escaped.
fn challenge(realm: &str) -> String {
    let escaped: String = realm
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => vec![],
            c => vec![c],
        })
        .collect();
    format!("Bearer realm=\"{escaped}\"")
}

impl<S, I> Layer<I> for KeyrollLayer<S> {
    type Service = KeyrollService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        KeyrollService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`KeyrollLayer`] wraps around yours.
pub struct KeyrollService<S, I> {
    inner: I,
    layer: KeyrollLayer<S>,
}

impl<S, I: Clone> Clone for KeyrollService<S, I> {
    fn clone(&self) -> Self {
        KeyrollService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

/// What a request presented, borrowed from its headers.
enum Presented<'a> {
    Bearer {
        token: &'a str,
        key_id: Option<&'a str>,
    },
    TwoHeaders {
        key_id: &'a str,
        token: &'a str,
    },
    Nothing,
}

impl<'a> Presented<'a> {
    fn of<S>(parts: &'a Parts, config: &Shared<S>) -> Presented<'a> {
        let header = |name: &HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let bearer = header(&header::AUTHORIZATION).and_then(|value| value.strip_prefix("Bearer "));
        // Beside a bearer token only the key id header matters (it must
        // name the same key); the token header is read only without one.
        match (bearer, &config.two_headers) {
            (Some(token), two) => Presented::Bearer {
                token,
                key_id: two.as_ref().and_then(|(key_id, _)| header(key_id)),
            },
            (None, Some((key_id, token))) => match (header(key_id), header(token)) {
                (Some(key_id), Some(token)) => Presented::TwoHeaders { key_id, token },
                _ => Presented::Nothing,
            },
            (None, None) => Presented::Nothing,
        }
    }
}

/// A JSON error answer with a challenge.
fn refusal(status: StatusCode, message: &str, challenge: Option<String>) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

impl<S, I> Service<Request> for KeyrollService<S, I>
where
    S: AsyncKeyStore + 'static,
    I: Service<Request, Response = Response> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = I::Error;
    type Future = Answer<I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let config = &*shared;
            let now = OffsetDateTime::now_utc();
            let outcome = match Presented::of(&parts, config) {
                Presented::Nothing => {
                    tracing::info!(cause = "no credentials", "keyroll: request refused");
                    return Ok(refusal(
                        StatusCode::UNAUTHORIZED,
                        REFUSED,
                        Some(config.challenge.clone()),
                    ));
                }
                Presented::Bearer { token, key_id } => {
                    // A key id sent beside a bearer token must be the one it names.
                    let conflict = key_id.is_some_and(|sent| {
                        KeyId::from_token(token).is_ok_and(|named| named.as_str() != sent)
                    });
                    if conflict {
                        tracing::info!(
                            cause = "a key id header names another key than the bearer token",
                            "keyroll: request refused"
                        );
                        return Ok(invalid_token(config));
                    }
                    match config.keys.authenticate(token, now).await {
                        Ok(who) => Ok(who),
                        // The key id, for the log: the token's, if it names one.
                        Err(e) => Err((e, KeyId::from_token(token).ok())),
                    }
                }
                Presented::TwoHeaders { key_id, token } => match KeyId::new(key_id) {
                    Ok(id) => match config.keys.authenticate_key(&id, token, now).await {
                        Ok(who) => Ok(who),
                        Err(e) => Err((e, Some(id))),
                    },
                    Err(_) => {
                        tracing::info!(cause = "invalid key id", "keyroll: request refused");
                        return Ok(invalid_token(config));
                    }
                },
            };
            let who = match outcome {
                Ok(who) => who,
                Err((AuthError::Store(e), _)) => {
                    tracing::error!(error = %e, "keyroll: the key store failed");
                    return Ok(refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the service is unavailable; try again later",
                        None,
                    ));
                }
                Err((e, presented)) => {
                    let key_id = presented.as_ref().map(KeyId::as_str);
                    tracing::info!(cause = %e, key_id, "keyroll: request refused");
                    return Ok(invalid_token(config));
                }
            };
            let old = who.matched == TokenMatch::Old;
            parts.extensions.insert(who);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if old {
                response
                    .headers_mut()
                    .insert(TOKEN_RENEWED, HeaderValue::from_static("true"));
            }
            Ok(response)
        })
    }
}

/// The 401 for a presented credential that did not authenticate.
fn invalid_token<S>(config: &Shared<S>) -> Response {
    refusal(
        StatusCode::UNAUTHORIZED,
        REFUSED,
        Some(format!("{}, error=\"invalid_token\"", config.challenge)),
    )
}

/// Who a request authenticated as, for handlers behind a [`KeyrollLayer`]:
/// the key, the token that matched, and the key's scopes and metadata.
///
/// Extracting it without the layer in front is a 500 (a routing mistake,
/// logged), never an anonymous pass.
#[derive(Debug, Clone)]
pub struct Authenticated(pub keyroll::Authenticated);

impl std::ops::Deref for Authenticated {
    type Target = keyroll::Authenticated;

    fn deref(&self) -> &keyroll::Authenticated {
        &self.0
    }
}

impl<T: Send + Sync> FromRequestParts<T> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &T) -> Result<Self, Response> {
        match parts.extensions.get::<keyroll::Authenticated>() {
            Some(who) => Ok(Authenticated(who.clone())),
            None => {
                tracing::error!("keyroll: Authenticated extracted on a route without KeyrollLayer");
                Err(refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                    None,
                ))
            }
        }
    }
}

/// A layer that lets through only requests whose key holds a scope; put it
/// inside a [`KeyrollLayer`] (for instance on one route). Others get a 403
/// with `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`
/// (RFC 6750, 3.1).
#[derive(Debug, Clone)]
pub struct RequireScope(Arc<str>);

impl RequireScope {
    /// Requires `scope` (compared exactly, as `Scopes::contains` does).
    pub fn new(scope: &str) -> Self {
        RequireScope(scope.into())
    }
}

impl<I> Layer<I> for RequireScope {
    type Service = RequireScopeService<I>;

    fn layer(&self, inner: I) -> Self::Service {
        RequireScopeService {
            inner,
            scope: self.0.clone(),
        }
    }
}

/// The service [`RequireScope`] wraps around yours.
#[derive(Debug, Clone)]
pub struct RequireScopeService<I> {
    inner: I,
    scope: Arc<str>,
}

impl<I> Service<Request> for RequireScopeService<I>
where
    I: Service<Request, Response = Response> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = I::Error;
    type Future = Answer<I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let held = request
            .extensions()
            .get::<keyroll::Authenticated>()
            .map(|who| (who.key_id.clone(), who.scopes.contains(&self.scope)));
        let answer = match held {
            Some((_, true)) => None,
            Some((key_id, false)) => {
                tracing::info!(key_id = %key_id, scope = %self.scope, "keyroll: insufficient scope");
                Some(refusal(
                    StatusCode::FORBIDDEN,
                    &format!("this key lacks the scope {}", self.scope),
                    Some(format!(
                        "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                        self.scope
                    )),
                ))
            }
            None => {
                tracing::error!("keyroll: RequireScope on a route without KeyrollLayer");
                Some(refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                    None,
                ))
            }
        };
        match answer {
            Some(refused) => Box::pin(async move { Ok(refused) }),
            None => Box::pin(self.inner.call(request)),
        }
    }
}
