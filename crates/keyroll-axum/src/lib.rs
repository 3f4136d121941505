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
//!   never the token). A store failure is a 503 with a generic body. A
//!   store that answers from memory (`InMemoryStore`, a `CachedStore`
//!   holding the key: [`AsyncKeyStore::verify_now`]) is answered during the
//!   layer's `call`, which then calls your service with nothing boxed or
//!   cloned; one that has to be waited for (a cache miss) is awaited in a
//!   boxed future.
//! - The [`Authenticated`] extractor hands the handler the key, the token
//!   that matched, and the key's scopes and metadata.
//! - The [`Authenticate`] extractor authenticates by itself, with the
//!   settings of a `KeyrollLayer` in the router's state ([`KeyrollState`]),
//!   for routes without the layer: the same credentials and answers, at a
//!   lower cost per request (axum wraps every route under a layer in one
//!   more boxed service); the renewal header and scopes are then the
//!   handler's to send and check.
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
//!     .route("/v1/orders", get(whoami).layer(RequireScope::new("orders:read".parse()?)))
//!     .route("/v1/whoami", get(whoami))
//!     .layer(KeyrollLayer::new(keys).realm("orders"));
//! # Ok::<(), keyroll::InvalidScope>(())
//! ```
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll-axum/0.3.0")]
#![deny(missing_docs)]

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use future::mark_renewed;
use keyroll::{AsyncKeyManager, AsyncKeyStore, AuthError, KeyId, Scope, TokenMatch};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

mod authenticate;
mod clock;
mod future;
mod usage;

pub use authenticate::{Authenticate, KeyrollState};
pub use future::ResponseFuture;
pub use usage::UsageFlusher;

/// The response header set on answers to a request made with the old token
/// of a pending renewal: `keyroll-token-renewed: true`.
pub const TOKEN_RENEWED: HeaderName = HeaderName::from_static("keyroll-token-renewed");

/// The one body of every refused credential.
const REFUSED: &str = "invalid credentials";

/// A tower [`Layer`](https://docs.rs/tower-layer/0.3/tower_layer/trait.Layer.html)
/// that authenticates every request with keyroll. See the
/// crate's docs.
pub struct KeyrollLayer<S> {
    /// One reference per request (a reference count shared by the
    /// runtime's threads costs a cache line transfer per clone).
    shared: Arc<Shared<S>>,
}

impl<S> std::fmt::Debug for KeyrollLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyrollLayer")
            .field("challenge", &self.shared.challenge)
            .field("two_headers", &self.shared.two_headers)
            .finish_non_exhaustive()
    }
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

/// The token of an `Authorization` header value of the `Bearer` scheme,
/// which RFC 7235 makes case-insensitive (`Bearer`, `bearer`, `BEARER`),
/// followed by one or more spaces; `None` for any other scheme or an empty
/// token.
///
/// # Example
///
/// ```
/// use keyroll_axum::bearer_token;
///
/// assert_eq!(bearer_token("Bearer kr_abc"), Some("kr_abc"));
/// assert_eq!(bearer_token("bearer  kr_abc"), Some("kr_abc"));
/// assert_eq!(bearer_token("Basic a2V5OnRva2Vu"), None);
/// assert_eq!(bearer_token("Bearer "), None);
/// ```
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `Bearer realm="<realm>"`.
fn challenge(realm: &str) -> String {
    format!("Bearer realm={}", quoted(realm))
}

/// `value` as an HTTP quoted-string: its quotes and backslashes escaped,
/// control characters left out.
fn quoted(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
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

impl<S, I: std::fmt::Debug> std::fmt::Debug for KeyrollService<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyrollService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, I: Clone> Clone for KeyrollService<S, I> {
    fn clone(&self) -> Self {
        KeyrollService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
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
    type Future = ResponseFuture<I::Future, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let config = &*self.layer.shared;
        let now = clock::now();
        // A store answering from memory (`InMemoryStore`, a `CachedStore`
        // holding the key) answers here: the inner service, which was
        // polled ready, is called now, and nothing is boxed or cloned.
        let answered = match config.check(request.headers()) {
            Ok(check) => config.authenticate_now(&check, now),
            Err(refused) => Some(Err(refused)),
        };
        match answered {
            Some(Ok(who)) => {
                let renewed = who.matched == TokenMatch::Old;
                request.extensions_mut().insert(who);
                ResponseFuture::inner(self.inner.call(request), renewed)
            }
            Some(Err(refused)) => ResponseFuture::answered(refused.response(config)),
            // The store has to be waited for (a cache miss): the request
            // waits in a future of its own, with the inner service that was
            // polled ready (a clone stays).
            None => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let shared = self.layer.shared.clone();
                ResponseFuture::waiting(async move {
                    let who = match shared.authenticated(request.headers(), now).await {
                        Ok(who) => who,
                        Err(refused) => return Ok(refused.response(&shared)),
                    };
                    let renewed = who.matched == TokenMatch::Old;
                    request.extensions_mut().insert(who);
                    let mut response = inner.call(request).await?;
                    if renewed {
                        mark_renewed(&mut response);
                    }
                    Ok(response)
                })
            }
        }
    }
}

/// Why a request is refused: each has one answer.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// No credentials: 401 with the realm's challenge.
    NoCredentials,
    /// Credentials that did not authenticate: 401, `error="invalid_token"`.
    InvalidToken,
    /// The key store failed: 503.
    Unavailable,
}

impl Refusal {
    /// The answer to send.
    fn response<S>(self, config: &Shared<S>) -> Response {
        match self {
            Refusal::NoCredentials => refusal(
                StatusCode::UNAUTHORIZED,
                REFUSED,
                Some(config.challenge.clone()),
            ),
            Refusal::InvalidToken => refusal(
                StatusCode::UNAUTHORIZED,
                REFUSED,
                Some(format!("{}, error=\"invalid_token\"", config.challenge)),
            ),
            Refusal::Unavailable => refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is unavailable; try again later",
                None,
            ),
        }
    }
}

/// What a request's credentials ask of the manager, their shape checked.
enum Check<'a> {
    Bearer(&'a str),
    TwoHeaders(KeyId, &'a str),
}

impl<S: AsyncKeyStore> Shared<S> {
    /// The credentials in `headers`, or their refusal unread (none
    /// presented; a key id header naming another key than the bearer
    /// token; an invalid key id), the cause logged.
    fn check<'a>(&self, headers: &'a HeaderMap) -> Result<Check<'a>, Refusal> {
        let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let bearer = header(&header::AUTHORIZATION).and_then(bearer_token);
        if let Some(token) = bearer {
            // Beside a bearer token only the key id header is read: it must
            // name the key the token names.
            let sent = self
                .two_headers
                .as_ref()
                .and_then(|(key_id, _)| header(key_id));
            let conflict = sent.is_some_and(|sent| {
                KeyId::from_token(token).is_ok_and(|named| named.as_str() != sent)
            });
            if conflict {
                tracing::info!(
                    cause = "a key id header names another key than the bearer token",
                    "keyroll: request refused"
                );
                return Err(Refusal::InvalidToken);
            }
            return Ok(Check::Bearer(token));
        }
        let two = self
            .two_headers
            .as_ref()
            .and_then(|(key_id, token)| Some((header(key_id)?, header(token)?)));
        let Some((key_id, token)) = two else {
            tracing::info!(cause = "no credentials", "keyroll: request refused");
            return Err(Refusal::NoCredentials);
        };
        match KeyId::new(key_id) {
            Ok(id) => Ok(Check::TwoHeaders(id, token)),
            Err(_) => {
                tracing::info!(cause = "invalid key id", "keyroll: request refused");
                Err(Refusal::InvalidToken)
            }
        }
    }

    /// Who `check` authenticates as, if the store answers without waiting.
    fn authenticate_now(
        &self,
        check: &Check<'_>,
        now: OffsetDateTime,
    ) -> Option<Result<keyroll::Authenticated, Refusal>> {
        let outcome = match check {
            Check::Bearer(token) => self.keys.authenticate_now(token, now),
            Check::TwoHeaders(id, token) => self.keys.authenticate_key_now(id, token, now),
        }?;
        Some(self.logged(outcome, check))
    }

    /// Who `headers` authenticate as: answered at once when the store has
    /// the key at hand, else the store awaited in a boxed future (so that a
    /// caller's future does not carry its size on every request).
    async fn authenticated(
        &self,
        headers: &HeaderMap,
        now: OffsetDateTime,
    ) -> Result<keyroll::Authenticated, Refusal> {
        let check = self.check(headers)?;
        match self.authenticate_now(&check, now) {
            Some(answer) => answer,
            None => Box::pin(self.authenticate(&check, now)).await,
        }
    }

    /// Who `check` authenticates as.
    async fn authenticate(
        &self,
        check: &Check<'_>,
        now: OffsetDateTime,
    ) -> Result<keyroll::Authenticated, Refusal> {
        let outcome = match check {
            Check::Bearer(token) => self.keys.authenticate(token, now).await,
            Check::TwoHeaders(id, token) => self.keys.authenticate_key(id, token, now).await,
        };
        self.logged(outcome, check)
    }

    /// The refusal of a failed authentication, its cause logged (with the
    /// key id, never the token).
    fn logged(
        &self,
        outcome: Result<keyroll::Authenticated, AuthError<S::Error>>,
        check: &Check<'_>,
    ) -> Result<keyroll::Authenticated, Refusal> {
        outcome.map_err(|refused| match refused {
            AuthError::Store(e) => {
                tracing::error!(error = %e, "keyroll: the key store failed");
                Refusal::Unavailable
            }
            e => {
                // The key id, for the log: the token's, if it names one.
                let presented = match check {
                    Check::Bearer(token) => KeyId::from_token(token).ok(),
                    Check::TwoHeaders(id, _) => Some(id.clone()),
                };
                let key_id = presented.as_ref().map(KeyId::as_str);
                tracing::info!(cause = %e, key_id, "keyroll: request refused");
                Refusal::InvalidToken
            }
        })
    }
}

/// Who a request authenticated as, for handlers behind a [`KeyrollLayer`]:
/// the key, the token that matched, and the key's scopes and metadata.
///
/// Extracting it without the layer in front is a 500 (a routing mistake,
/// logged), never an anonymous pass; routes without the layer use
/// [`Authenticate`].
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
///
/// The scope is a [`Scope`], checked when it is made, so nothing in it can
/// break the `WWW-Authenticate` header.
#[derive(Debug, Clone)]
pub struct RequireScope(Scope);

impl RequireScope {
    /// Requires `scope` (compared exactly, as `Scopes::contains` does).
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::Scope;
    /// use keyroll_axum::RequireScope;
    ///
    /// let guard = RequireScope::new(Scope::new("orders:read")?);
    /// assert!(Scope::new("orders\", read").is_err());
    /// # let _ = guard;
    /// # Ok::<(), keyroll::InvalidScope>(())
    /// ```
    pub fn new(scope: Scope) -> Self {
        RequireScope(scope)
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
    scope: Scope,
}

impl<I> Service<Request> for RequireScopeService<I>
where
    I: Service<Request, Response = Response> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = I::Error;
    type Future = ResponseFuture<I::Future, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let answer = match request.extensions().get::<keyroll::Authenticated>() {
            Some(who) if who.scopes.contains(self.scope.as_str()) => None,
            Some(who) => {
                Some(InsufficientScope::logged(&who.key_id, self.scope.as_str()).into_response())
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
            Some(refused) => ResponseFuture::answered(refused),
            None => ResponseFuture::inner(self.inner.call(request), false),
        }
    }
}

/// The refusal of a key that lacks a scope: a 403 with
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`
/// (RFC 6750, 3.1) as a response. [`RequireScope`] answers it;
/// [`Authenticate::require_scope`] returns it.
#[derive(Debug, Clone)]
pub struct InsufficientScope {
    scope: Box<str>,
}

impl InsufficientScope {
    /// The refusal of `key_id` for lacking `scope`, logged.
    fn logged(key_id: &KeyId, scope: &str) -> Self {
        tracing::info!(key_id = %key_id, scope = %scope, "keyroll: insufficient scope");
        InsufficientScope {
            scope: scope.into(),
        }
    }

    /// The scope the key lacks.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl std::fmt::Display for InsufficientScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "this key lacks the scope {}", self.scope)
    }
}

impl std::error::Error for InsufficientScope {}

impl IntoResponse for InsufficientScope {
    fn into_response(self) -> Response {
        refusal(
            StatusCode::FORBIDDEN,
            &self.to_string(),
            Some(format!(
                "Bearer error=\"insufficient_scope\", scope={}",
                quoted(&self.scope)
            )),
        )
    }
}

impl From<InsufficientScope> for Response {
    fn from(refused: InsufficientScope) -> Response {
        refused.into_response()
    }
}
