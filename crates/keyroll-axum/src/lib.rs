//! [`keyroll`] API keys for axum (and any tower service): a layer that
//! authenticates each request, an extractor for who it is, a scope guard,
//! and keyroll's errors as HTTP answers.
//!
//! - [`KeyrollLayer`] authenticates `Authorization: Bearer <token>` (a
//!   keyroll token names its key; the scheme is matched case-insensitively)
//!   and, if configured with [`two_headers`](KeyrollLayer::two_headers), the
//!   product's two-header form (for instance VTEX's `X-VTEX-API-AppKey` and
//!   `X-VTEX-API-AppToken`). Every refused credential gets the same 401,
//!   with `WWW-Authenticate: Bearer realm="..."` (and `error="invalid_token"`
//!   when a token was presented) and one body, so that answers do not tell
//!   which key ids exist; the cause is a `tracing` event (with the key id,
//!   never the token). A store failure is a 503 with a generic body.
//! - The [`Caller`] extractor hands a handler the key, the token that
//!   matched, and the key's scopes and metadata: the layer's finding, or,
//!   on a route without the layer, its own (with the layer's settings from
//!   the router's state, [`KeyrollState`]; cheaper than the layer).
//! - [`RequireScope`] answers 403 with `WWW-Authenticate: Bearer
//!   error="insufficient_scope", scope="..."` to a key without the scope.
//! - A request made with the old token of a pending renewal gets (from the
//!   layer, or [`Caller::headers`]) the response header [`TOKEN_RENEWED`]
//!   (`keyroll-token-renewed: true`): the client should move to the newer
//!   token before the old one is deleted.
//! - Keys with a rate limit or credits are charged by the layer (cost 1, or
//!   [`KeyrollLayer::cost`] for a route's own): a refusal is a 429 with
//!   `{"error": "rate_limited"}` or `{"error": "usage_exceeded"}` and
//!   `Retry-After` in whole seconds, rounded up (none when spent credits
//!   have no refill), with `"subject": "key"` or `"owner"` (whose limit
//!   refused it: the key's own, or the owner limits its owner's keys
//!   share). Every authenticated answer for a key with limits, 429s
//!   included, carries the IETF fields
//!   (draft-ietf-httpapi-ratelimit-headers), one item per policy:
//!   [`RATE_LIMIT_POLICY`] (`"key";q=<burst>;w=<seconds to refill the
//!   burst>, "credits";q=<refill amount>;w=<refill period>`) and
//!   [`RATE_LIMIT`] (`"key";r=<remaining>;t=<seconds until full>,
//!   "credits";r=<credits left>;t=<seconds to the refill>`), then
//!   `"owner"` and `"owner-credits"` the same way for owner limits (a 429
//!   lists the refusing subject's); a 401 never does. A request later
//!   refused by a scope guard has been charged.
//! - A key with networks ([`keyroll::ApiKey::networks`]) is refused with a
//!   403 `{"error": "network_not_allowed"}`, charged nothing, for a request
//!   from outside them (only a valid token learns it). The address is the
//!   connection's peer ([`ConnectInfo`](axum::extract::ConnectInfo)), or,
//!   behind proxies named with [`KeyrollLayer::trusted_proxies`], what they
//!   forwarded; never a header by default.
//! - [`ApiError`] answers keyroll's errors: 400 for bad input, 404, 409, 503.
//!   Every refusal of this crate is `{"error": code, "message": text}`:
//!   [`Json`] bodies' refusals too, and [`fallback`]'s 404.
//! - The background tasks, each stopped by `shutdown` after one last
//!   round: [`UsageFlusher`] writes the uses a manager with usage recording
//!   noted in memory, every few seconds, off the requests' path;
//!   [`Housekeeper`] applies due deletions, prunes what is past its
//!   retention and sweeps notices; [`Deliverer`] delivers the outbox
//!   (events and notices) with a [`keyroll::outbox::Dispatcher`].
//! - With the feature `admin`, `admin::router(manager)`: the admin REST
//!   API for every manager operation, its OpenAPI 3.1 document and a web
//!   console, to nest under a path of your service.
//! - With the feature `github`, `github::SecretScanning`: GitHub's secret
//!   scanning partner endpoint, which revokes the leaked tokens it reports.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::get};
//! use keyroll::KeyManager;
//! use keyroll::store::InMemoryStore;
//! use keyroll_axum::{Caller, KeyrollLayer, RequireScope};
//!
//! async fn whoami(caller: Caller) -> String {
//!     caller.key_id.to_string()
//! }
//!
//! let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
//! let keyroll = KeyrollLayer::new(keys).realm("orders");
//! let app: Router = Router::new()
//!     .route("/v1/orders", get(whoami).layer(RequireScope::new("orders:read".parse()?)))
//!     .route("/v1/whoami", get(whoami))
//!     .layer(keyroll.clone())
//!     // What `Caller` would authenticate with on a route without the layer.
//!     .with_state(keyroll);
//! # Ok::<(), keyroll::error::InvalidScope>(())
//! ```
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll-axum/0.3.0")]
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use client_ip::client_ip;
use keyroll::store::KeyStore;
use keyroll::{AuthError, Credentials, KeyId, KeyManager, Scope, TokenMatch, VerifyError};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "admin")]
pub mod admin;
mod client_ip;
mod error;
#[cfg(feature = "github")]
pub mod github;
#[cfg(feature = "grpc")]
mod grpc;
mod json;
mod limits;
mod tasks;

pub use client_ip::TrustedProxies;
pub use error::{ApiError, RefusalBody, fallback};
pub use json::Json;
pub use limits::{RATE_LIMIT, RATE_LIMIT_POLICY};
pub use tasks::{Deliverer, Housekeeper, UsageFlusher};

/// The response header set on answers to a request made with the old token
/// of a pending renewal: `keyroll-token-renewed: true`.
pub const TOKEN_RENEWED: HeaderName = HeaderName::from_static("keyroll-token-renewed");

/// The future the services of this crate return: a response with body
/// `B` (axum's, tonic's), or the inner service's error `E`.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<axum::http::Response<B>, E>> + Send>>;

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
/// assert_eq!(bearer_token("Bearers kr_abc"), None);
/// assert_eq!(bearer_token("Bearé kr_abc"), None);
/// ```
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked("bearer".len())?;
    let token = rest.strip_prefix(' ')?.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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

/// A tower [`Layer`](https://docs.rs/tower-layer/0.3/tower_layer/trait.Layer.html)
/// that authenticates every request with keyroll. See the crate's docs.
pub struct KeyrollLayer<S> {
    pub(crate) shared: Arc<Shared<S>>,
}

pub(crate) struct Shared<S> {
    keys: Arc<KeyManager<S>>,
    /// `Bearer realm="<realm>"`.
    challenge: String,
    /// The two-header form's key id and token headers.
    two_headers: Option<(HeaderName, HeaderName)>,
    /// What a request costs a key with limits.
    cost: u32,
    /// What a request of these methods costs instead.
    method_costs: Vec<(Method, u32)>,
    /// What a request of these paths (gRPC methods) costs instead.
    path_costs: Vec<(String, u32)>,
    /// The proxies that may tell the client's address.
    trusted_proxies: Option<TrustedProxies>,
}

impl<S> std::fmt::Debug for KeyrollLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyrollLayer")
            .field("challenge", &self.shared.challenge)
            .field("two_headers", &self.shared.two_headers)
            .field("cost", &self.shared.cost)
            .field("method_costs", &self.shared.method_costs)
            .field("path_costs", &self.shared.path_costs)
            .field("trusted_proxies", &self.shared.trusted_proxies)
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

impl<S> KeyrollLayer<S> {
    /// A layer authenticating bearer tokens with `keys`, in the realm
    /// `keyroll`.
    pub fn new(keys: Arc<KeyManager<S>>) -> Self {
        KeyrollLayer {
            shared: Arc::new(Shared {
                keys,
                challenge: format!("Bearer realm={}", quoted("keyroll")),
                two_headers: None,
                cost: 1,
                method_costs: Vec::new(),
                path_costs: Vec::new(),
                trusted_proxies: None,
            }),
        }
    }

    /// The realm named in `WWW-Authenticate` challenges.
    pub fn realm(self, realm: &str) -> Self {
        self.configure(|shared| shared.challenge = format!("Bearer realm={}", quoted(realm)))
    }

    /// Also accepts the two-header form: the key id in `key_id` and the
    /// token in `token` (e.g. `X-VTEX-API-AppKey` and `X-VTEX-API-AppToken`).
    /// A bearer token wins when both are sent; a key id beside it must be
    /// the one the token names.
    pub fn two_headers(self, key_id: HeaderName, token: HeaderName) -> Self {
        self.configure(|shared| shared.two_headers = Some((key_id, token)))
    }

    /// What each request costs a key with a rate limit or credits (1 by
    /// default): the layer charges `cost` of the burst and of the credits.
    ///
    /// To give a route its own cost, give it its own layer, and keep it out
    /// of a layer that covers the others (a request is authenticated, and
    /// charged, once: a layer under another passes the request through):
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use axum::{Router, routing::get};
    /// use keyroll::KeyManager;
    /// use keyroll::store::InMemoryStore;
    /// use keyroll_axum::{Caller, KeyrollLayer};
    ///
    /// async fn whoami(caller: Caller) -> String {
    ///     caller.key_id.to_string()
    /// }
    ///
    /// let keyroll = KeyrollLayer::new(Arc::new(KeyManager::new(InMemoryStore::new())));
    /// let app: Router = Router::new()
    ///     .route("/v1/whoami", get(whoami))
    ///     .layer(keyroll.clone())
    ///     // A search costs 5.
    ///     .route("/v1/search", get(whoami).layer(keyroll.clone().cost(5)))
    ///     .with_state(keyroll);
    /// ```
    ///
    /// A cost of 0, or above a key's burst, admits nothing: such a request
    /// is answered 500, and logged with the cost and the burst.
    pub fn cost(self, cost: u32) -> Self {
        self.configure(|shared| shared.cost = cost)
    }

    /// What a request of `method` costs, instead of [`cost`](Self::cost):
    /// one route's methods priced apart under one layer. The layer goes on
    /// the route (or a router of routes priced alike), under no other
    /// `KeyrollLayer` (an outer one would authenticate, and charge, first:
    /// the inner one then passes the request through). The cost is the
    /// request's method's, whichever handler serves it.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use axum::http::Method;
    /// use axum::{Router, routing::get};
    /// use keyroll::KeyManager;
    /// use keyroll::store::InMemoryStore;
    /// use keyroll_axum::{Caller, KeyrollLayer};
    ///
    /// async fn orders(caller: Caller) -> String {
    ///     caller.key_id.to_string()
    /// }
    ///
    /// let keyroll = KeyrollLayer::new(Arc::new(KeyManager::new(InMemoryStore::new())));
    /// // Listing orders costs 1, placing one 10, cancelling one 2.
    /// let priced = keyroll.clone().method_cost(Method::POST, 10).method_cost(Method::DELETE, 2);
    /// let app: Router = Router::new()
    ///     .route("/v1/orders", get(orders).post(orders).delete(orders).layer(priced))
    ///     .with_state(keyroll);
    /// ```
    pub fn method_cost(self, method: Method, cost: u32) -> Self {
        self.configure(|shared| {
            shared.method_costs.retain(|(priced, _)| *priced != method);
            shared.method_costs.push((method, cost));
        })
    }

    /// What a request of `path` costs, before any method's: for a gRPC
    /// method, whose requests are all `POST`s, its path
    /// (`/orders.v1.Orders/Place`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use keyroll::KeyManager;
    /// # use keyroll::store::InMemoryStore;
    /// # use keyroll_axum::KeyrollLayer;
    /// let keyroll = KeyrollLayer::new(Arc::new(KeyManager::new(InMemoryStore::new())))
    ///     .path_cost("/orders.v1.Orders/Place", 10);
    /// ```
    pub fn path_cost(self, path: &str, cost: u32) -> Self {
        self.configure(|shared| {
            shared.path_costs.retain(|(priced, _)| priced != path);
            shared.path_costs.push((path.to_owned(), cost));
        })
    }

    /// Behind proxies: which of them may tell the client's address, which
    /// a key's networks ([`keyroll::ApiKey::networks`]) are checked
    /// against. Without this the address is the connection's peer, read
    /// from [`ConnectInfo`](axum::extract::ConnectInfo) (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`), and
    /// `Forwarded`/`X-Forwarded-For` are never read: anyone can send them.
    /// A key with networks refuses a request whose address is not known.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use keyroll::KeyManager;
    /// use keyroll::store::InMemoryStore;
    /// use keyroll_axum::{KeyrollLayer, TrustedProxies};
    ///
    /// let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    /// // One load balancer in front, which appends the address it was reached from.
    /// let layer = KeyrollLayer::new(keys.clone()).trusted_proxies(TrustedProxies::Hops(1));
    /// // Or: whatever proxies run in 10.0.0.0/8.
    /// let layer = KeyrollLayer::new(keys)
    ///     .trusted_proxies(TrustedProxies::Networks("10.0.0.0/8".parse()?));
    /// # Ok::<(), keyroll::error::InvalidNetworks>(())
    /// ```
    pub fn trusted_proxies(self, proxies: TrustedProxies) -> Self {
        self.configure(|shared| shared.trusted_proxies = Some(proxies))
    }

    fn configure(self, change: impl FnOnce(&mut Shared<S>)) -> Self {
        let mut shared = Shared {
            keys: self.shared.keys.clone(),
            challenge: self.shared.challenge.clone(),
            two_headers: self.shared.two_headers.clone(),
            cost: self.shared.cost,
            method_costs: self.shared.method_costs.clone(),
            path_costs: self.shared.path_costs.clone(),
            trusted_proxies: self.shared.trusted_proxies.clone(),
        };
        change(&mut shared);
        KeyrollLayer {
            shared: Arc::new(shared),
        }
    }
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

/// For any request body and any response body keyroll's refusals can be
/// written in ([`RefusalBody`]): axum's routes, and (feature `grpc`)
/// tonic's services, whose refusals are gRPC statuses.
impl<S, I, ReqB, ResB> Service<axum::http::Request<ReqB>> for KeyrollService<S, I>
where
    S: KeyStore + 'static,
    I: Service<axum::http::Request<ReqB>, Response = axum::http::Response<ResB>>
        + Clone
        + Send
        + 'static,
    I::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: RefusalBody,
{
    type Response = axum::http::Response<ResB>;
    type Error = I::Error;
    type Future = ResponseFuture<ResB, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<ReqB>) -> Self::Future {
        // The inner service that was polled ready goes with the request; a
        // clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();
        Box::pin(async move {
            // Under another layer: authenticated, and charged, already.
            if request
                .extensions()
                .get::<keyroll::Authenticated>()
                .is_some()
            {
                return inner.call(request).await;
            }
            let who = match shared.authenticated(Asked::of(&request)).await {
                Ok(who) => who,
                Err(refused) => {
                    return Ok(error::refuse(request.headers(), request.version(), refused));
                }
            };
            let headers = response_headers(&who);
            request.extensions_mut().insert(who);
            let mut response = inner.call(request).await?;
            response.headers_mut().extend(headers);
            Ok(response)
        })
    }
}

/// What a request asks with: what authentication reads of it.
pub(crate) struct Asked<'a> {
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> Asked<'a> {
    /// What `request` asks with.
    pub(crate) fn of<B>(request: &'a axum::http::Request<B>) -> Self {
        Asked {
            method: request.method(),
            path: request.uri().path(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// What a request of these `parts` asks with.
    fn of_parts(parts: &'a Parts) -> Self {
        Asked {
            method: &parts.method,
            path: parts.uri.path(),
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }
}

impl<S: KeyStore> Shared<S> {
    /// What a request costs: its path's (a gRPC method's), else its
    /// method's, else the layer's.
    fn cost_of(&self, asked: &Asked<'_>) -> u32 {
        let by_path = self.path_costs.iter().find(|(path, _)| path == asked.path);
        let by_method = || {
            self.method_costs
                .iter()
                .find(|(method, _)| method == asked.method)
        };
        by_path
            .map(|(_, cost)| *cost)
            .or_else(|| by_method().map(|(_, cost)| *cost))
            .unwrap_or(self.cost)
    }

    /// Who `headers` authenticate as, or the refusal to answer, its cause
    /// logged (with the key id, never the token).
    pub(crate) async fn authenticated(
        &self,
        asked: Asked<'_>,
    ) -> Result<keyroll::Authenticated, ApiError> {
        let (headers, extensions) = (asked.headers, asked.extensions);
        let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let bearer = header(&header::AUTHORIZATION).and_then(bearer_token);
        let sent_id = self
            .two_headers
            .as_ref()
            .and_then(|(key_id, _)| header(key_id));
        let (token, id) = match (bearer, &self.two_headers) {
            // Beside a bearer token only the key id header is read: it must
            // name the key the token names.
            (Some(token), _) => (token, sent_id),
            (None, Some((_, token_header))) => match (sent_id, header(token_header)) {
                (Some(id), Some(token)) => (token, Some(id)),
                _ => return Err(self.refused("no credentials", None)),
            },
            (None, None) => return Err(self.refused("no credentials", None)),
        };
        let id = match id.map(KeyId::existing).transpose() {
            Ok(id) => id,
            Err(_) => return Err(self.refused("invalid key id", Some(token))),
        };
        let mut credentials = match &id {
            Some(id) => Credentials::bearer(token).with_id(id),
            None => Credentials::bearer(token),
        };
        let ip = client_ip(headers, extensions, self.trusted_proxies.as_ref());
        if let Some(ip) = ip {
            credentials = credentials.from_ip(ip);
        }
        let now = OffsetDateTime::now_utc();
        let key_id = || id.clone().or_else(|| KeyId::from_token(token).ok());
        match self
            .keys
            .authenticate(credentials.cost(self.cost_of(&asked)), now)
            .await
        {
            Ok(who) => Ok(who),
            Err(AuthError::Store(e)) => {
                tracing::error!(error = %e, "keyroll: the key store failed");
                Err(error::unavailable())
            }
            Err(AuthError::RateLimited {
                retry_after,
                subject,
                allowance,
                ..
            }) => {
                tracing::info!(key_id = key_id().as_ref().map(KeyId::as_str), %retry_after, %subject, "keyroll: rate limited");
                Err(limits::rate_limited(retry_after, &allowance, subject, now))
            }
            Err(AuthError::UsageExceeded {
                refill_at,
                subject,
                allowance,
            }) => {
                tracing::info!(
                    key_id = key_id().as_ref().map(KeyId::as_str),
                    %subject,
                    "keyroll: usage exceeded"
                );
                Err(limits::usage_exceeded(refill_at, &allowance, subject, now))
            }
            Err(AuthError::Verify(VerifyError::NetworkNotAllowed)) => {
                // Only a holder of the key's valid token gets here.
                tracing::info!(
                    key_id = key_id().as_ref().map(KeyId::as_str),
                    client_ip = ?ip,
                    "keyroll: request from outside the key's networks"
                );
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "network_not_allowed",
                    "the request's address is not in the key's networks",
                ))
            }
            Err(AuthError::CostOutOfRange { cost, max }) => {
                // The service's own mistake (the token was valid): a route
                // cost above the key's burst. Said where an operator looks.
                let key = key_id().map_or_else(|| "the key".to_owned(), |id| format!("key {id}"));
                let way_out = format!(
                    "this route costs {cost}, above the burst {max} of {key}'s rate limit: \
                     raise the burst of {key} to at least {cost}"
                );
                tracing::error!(
                    key_id = key_id().as_ref().map(KeyId::as_str),
                    cost,
                    burst = max,
                    "keyroll: {way_out}"
                );
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cost_above_burst",
                    way_out,
                ))
            }
            Err(e) => {
                tracing::info!(cause = %e, key_id = key_id().as_ref().map(KeyId::as_str), "keyroll: request refused");
                Err(self.refusal(true))
            }
        }
    }

    /// The refusal of `cause`, logged; `token` tells whether one was
    /// presented.
    fn refused(&self, cause: &str, token: Option<&str>) -> ApiError {
        tracing::info!(cause, "keyroll: request refused");
        self.refusal(token.is_some())
    }

    /// The one answer to every refused credential: a 401 with the realm's
    /// challenge, and `error="invalid_token"` when a token was presented.
    pub(crate) fn refusal(&self, token_presented: bool) -> ApiError {
        let challenge = if token_presented {
            format!("{}, error=\"invalid_token\"", self.challenge)
        } else {
            self.challenge.clone()
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid credentials",
        )
        .with_challenge(challenge)
    }
}

/// A router state that holds the [`KeyrollLayer`] whose settings (key
/// manager, realm, headers) [`Caller`] authenticates with on a route
/// without the layer.
///
/// A `KeyrollLayer` is one; so is an `Arc` of one. For a state of your
/// own, return the layer it holds.
pub trait KeyrollState {
    /// The key store the layer's manager reads.
    type Store: KeyStore + 'static;

    /// The layer whose settings [`Caller`] uses.
    fn keyroll(&self) -> &KeyrollLayer<Self::Store>;
}

impl<S: KeyStore + 'static> KeyrollState for KeyrollLayer<S> {
    type Store = S;

    fn keyroll(&self) -> &KeyrollLayer<S> {
        self
    }
}

impl<T: KeyrollState> KeyrollState for Arc<T> {
    type Store = T::Store;

    fn keyroll(&self) -> &KeyrollLayer<T::Store> {
        (**self).keyroll()
    }
}

/// Who a request authenticated as: the key, the token that matched, and
/// the key's scopes and metadata.
///
/// Behind a [`KeyrollLayer`], the identity the layer found (the request is
/// not authenticated, nor its use counted, twice). On a route without the
/// layer, the extractor authenticates the request itself, with the
/// settings of the layer in the router's state ([`KeyrollState`]), and
/// refuses with the same answers: one uniform 401 for every credential
/// failure, a 503 when the store fails, the causes logged. That costs
/// less than the layer (axum wraps every route under a layer in one more
/// boxed service, cloned for each request, and the identity travels in a
/// request extension); what the layer does to the response is then yours
/// to do: send [`headers`](Self::headers) with the answer, and
/// check scopes with [`require_scope`](Self::require_scope).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
///
/// use axum::response::IntoResponse;
/// use axum::{Router, routing::get};
/// use keyroll::KeyManager;
/// use keyroll::store::InMemoryStore;
/// use keyroll_axum::{Caller, InsufficientScope, KeyrollLayer};
///
/// async fn whoami(caller: Caller) -> impl IntoResponse {
///     (caller.headers(), caller.key_id.to_string())
/// }
///
/// async fn orders(caller: Caller) -> Result<String, InsufficientScope> {
///     caller.require_scope("orders:read")?;
///     Ok(format!("orders of {}", caller.key_id))
/// }
///
/// let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
/// let app: Router = Router::new()
///     .route("/v1/whoami", get(whoami))
///     .route("/v1/orders", get(orders))
///     .with_state(KeyrollLayer::new(keys).realm("orders"));
/// ```
#[derive(Debug, Clone)]
pub struct Caller(pub keyroll::Authenticated);

impl std::ops::Deref for Caller {
    type Target = keyroll::Authenticated;

    fn deref(&self) -> &keyroll::Authenticated {
        &self.0
    }
}

impl Caller {
    /// The headers a [`KeyrollLayer`] adds to the answer, as a part of a
    /// response: return them with yours, as in `(caller.headers(), body)`.
    /// They are [`TOKEN_RENEWED`] when the request used the old token of a
    /// pending renewal, and, for a key with a rate limit, the IETF fields
    /// [`RATE_LIMIT_POLICY`] and [`RATE_LIMIT`]. (Behind a layer, the
    /// layer adds them; adding them again changes nothing.)
    pub fn headers(&self) -> HeaderMap {
        response_headers(self)
    }

    /// Whether the key holds `scope` (compared exactly, as
    /// `Scopes::contains` does).
    ///
    /// # Errors
    ///
    /// [`InsufficientScope`] (logged) when it does not: as a response,
    /// [`RequireScope`]'s 403.
    pub fn require_scope(&self, scope: &str) -> Result<(), InsufficientScope> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(InsufficientScope::logged(&self.key_id, scope))
        }
    }
}

impl<T: KeyrollState + Send + Sync> FromRequestParts<T> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &T) -> Result<Self, ApiError> {
        match parts.extensions.get::<keyroll::Authenticated>() {
            Some(who) => Ok(Caller(who.clone())),
            None => state
                .keyroll()
                .shared
                .authenticated(Asked::of_parts(parts))
                .await
                .map(Caller),
        }
    }
}

/// What the answer to `who`'s request carries: [`TOKEN_RENEWED`] and the
/// rate-limit fields.
fn response_headers(who: &keyroll::Authenticated) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if who.matched == TokenMatch::Old {
        headers.insert(TOKEN_RENEWED, HeaderValue::from_static("true"));
    }
    limits::allowance_headers(&mut headers, &who.allowance);
    headers
}

/// A layer that lets through only requests whose key holds a scope; put it
/// inside a [`KeyrollLayer`] (for instance on one route). Others get a 403
/// with `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`
/// (RFC 6750, 3.1). A request it refuses was authenticated (and, for a key
/// with usage recording, counted) by the layer before.
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
    /// # Ok::<(), keyroll::error::InvalidScope>(())
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

/// For any request body and any response body keyroll's refusals can be
/// written in ([`RefusalBody`]), as [`KeyrollService`].
impl<I, ReqB, ResB> Service<axum::http::Request<ReqB>> for RequireScopeService<I>
where
    I: Service<axum::http::Request<ReqB>, Response = axum::http::Response<ResB>>
        + Clone
        + Send
        + 'static,
    I::Future: Send + 'static,
    I::Error: Send + 'static,
    ResB: RefusalBody,
{
    type Response = axum::http::Response<ResB>;
    type Error = I::Error;
    type Future = ResponseFuture<ResB, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<ReqB>) -> Self::Future {
        let refused = match request.extensions().get::<keyroll::Authenticated>() {
            Some(who) if who.scopes.contains(self.scope.as_str()) => None,
            Some(who) => Some(InsufficientScope::logged(&who.key_id, self.scope.as_str()).into()),
            None => {
                // A routing mistake, logged; never an anonymous pass.
                tracing::error!("keyroll: RequireScope on a route without KeyrollLayer");
                Some(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                ))
            }
        };
        match refused {
            Some(refused) => {
                let refused = error::refuse(request.headers(), request.version(), refused);
                Box::pin(std::future::ready(Ok(refused)))
            }
            None => Box::pin(self.inner.call(request)),
        }
    }
}

/// The refusal of a key that lacks a scope: a 403 with
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`
/// (RFC 6750, 3.1) as a response. [`RequireScope`] answers it;
/// [`Caller::require_scope`] returns it.
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
        ApiError::from(self).into_response()
    }
}

impl From<InsufficientScope> for ApiError {
    fn from(refusal: InsufficientScope) -> ApiError {
        let challenge = format!(
            "Bearer error=\"insufficient_scope\", scope={}",
            quoted(&refusal.scope)
        );
        ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            refusal.to_string(),
        )
        .with_challenge(challenge)
    }
}
