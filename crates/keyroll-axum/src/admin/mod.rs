//! An admin API and a web console that a service mounts (feature `admin`).
//!
//! [`router`] (or [`Admin`], to configure it) returns an
//! [`axum::Router`](https://docs.rs/axum/0.8/axum/struct.Router.html) to nest, e.g. under `/admin`:
//!
//! - **The REST JSON API** for every manager operation: create, list (paged,
//!   by owner), get (with what its limits allow now), renew (with the old
//!   token's deletion), finalize, delete the old token (now, or if idle),
//!   undo, housekeep, revoke a leaked token (in the body, never a URL),
//!   delete; changes as data (`keyroll::Change` as JSON: `PATCH
//!   /keys/{id}` with a list, made in one write, all or none; `PUT
//!   /keys/{id}/{setting}` with one; `POST /keys/{id}/activate` and
//!   `/deactivate`); usage counts by hour; keys expiring soon. Its routes are authorised by a scope ([`ADMIN_SCOPE`] by
//!   default) with bearer tokens only: no cookies, so no CSRF. Under a
//!   [`KeyrollLayer`] the identity the layer found is
//!   used, so nothing is charged or counted twice. Refusals are
//!   `{"error": code, "message": text}`: 400 for bad input, quoting it
//!   (never a token), 401 for refused credentials, 403 without the scope,
//!   404 for an unknown key, 409 for the key's state or a concurrent
//!   change, 503 when the store fails (nothing of its message). Answers
//!   that carry a token have `Cache-Control: no-store`. Keys are shown as
//!   [`KeySummary`], which never holds a hash.
//! - **`GET /openapi.json`**: the OpenAPI 3.1 document of every route, made
//!   from the handlers' types ([`openapi`]).
//! - **`GET /console`**: a one-page web console (its script and style ship
//!   in this crate; no CDN, no build step), served with
//!   `Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`.
//!   It asks for an admin token, keeps it in memory only and sends it as a
//!   bearer token. It lists keys (id, label, owner, scopes, status,
//!   renewal, last use, due dates, expiry), flags those expiring soon,
//!   creates and renews them showing each new token once with a copy
//!   button, deletes old tokens, undoes renewals, revokes, deactivates,
//!   activates, and draws a key's last 7 days of use by hour as SVG.
//!
//! The console, its assets and the document hold no data and are served
//! without credentials. (Under a `KeyrollLayer` that covers the whole
//! router, the layer would refuse them: a browser sends no bearer token
//! for a page. Nest the router beside such a layer, or under one that
//! covers only your API, as in the example.) The first admin key is made with the bootstrap
//! token ([`Admin::bootstrap_token`]), which retires for good as soon as
//! an active key holds the admin scope: the store records it
//! ([`BOOTSTRAP_RETIRED`](keyroll::store::BOOTSTRAP_RETIRED)), and the token
//! never acts again, even once every admin key is deactivated, expired or
//! deleted, until an operator runs `keyctl restore-bootstrap` (audited). Every change is told to [`Admin::on_event`]
//! with its [`Actor`] (by default, a `tracing` event with target
//! `keyroll::audit`).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::get};
//! use keyroll::KeyManager;
//! use keyroll::store::InMemoryStore;
//! use keyroll_axum::admin::Admin;
//! use keyroll_axum::{Caller, KeyrollLayer};
//!
//! async fn whoami(caller: Caller) -> String {
//!     caller.key_id.to_string()
//! }
//!
//! let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
//! let admin = Admin::new(keys.clone())
//!     // e.g. from `openssl rand -base64 32`, kept in a secret store
//!     .bootstrap_token("q8Zf3LwT0pXv9KcR2mYh7NbD4sJe6GaU")?
//!     .on_event(|actor, event| println!("{actor}: {}", event.name()));
//! // The layer covers the API; the admin router beside it authenticates
//! // its own routes, and serves the console to a browser.
//! let keyroll = KeyrollLayer::new(keys);
//! let api = Router::new()
//!     .route("/v1/whoami", get(whoami))
//!     .layer(keyroll.clone())
//!     .with_state(keyroll);
//! let app: Router = api.nest("/admin", admin.router());
//! # Ok::<(), keyroll_axum::admin::WeakBootstrapToken>(())
//! ```

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{MethodFilter, MethodRouter};
use keyroll::store::KeyStore;
use keyroll::{Event, KeyManager, Scope};
use utoipa::OpenApi;

use crate::error::no_such_route;
use crate::{ApiError, KeyrollLayer};

mod api;
mod auth;
mod console;
mod summary;

pub use auth::Actor;
pub use summary::{
    AllowanceSummary, CreditsSummary, ExpiringSummary, KeySummary, RateLimitSummary, RefillSummary,
    TokenSummary, UsageHour,
};

use auth::{AdminState, Audit};

/// The scope that authorises the admin API by default.
pub const ADMIN_SCOPE: &str = "keyroll:admin";

/// The shortest bootstrap token accepted, in bytes.
pub const BOOTSTRAP_MIN_LEN: usize = 32;

/// The admin router of `keys`, with the defaults: the scope
/// [`ADMIN_SCOPE`], no bootstrap token, and changes told as `tracing`
/// events. See [the module](self).
pub fn router<S: KeyStore + 'static>(keys: Arc<KeyManager<S>>) -> Router {
    Admin::new(keys).router()
}

/// The OpenAPI 3.1 document of the admin router, as served at
/// `/openapi.json`: every route it serves, with its parameters, bodies and
/// answers. Paths are relative to where the router is nested.
///
/// # Example
///
/// ```
/// let document = keyroll_axum::admin::openapi();
/// assert!(document.paths.paths.contains_key("/keys/{id}/renew"));
/// ```
pub fn openapi() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

/// An admin router to configure: who may call it, and where changes are
/// told. See [the module](self).
pub struct Admin<S> {
    keys: Arc<KeyManager<S>>,
    scope: Scope,
    bootstrap: Option<Box<[u8]>>,
    audit: Audit,
}

impl<S> fmt::Debug for Admin<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("scope", &self.scope)
            .field("bootstrap", &self.bootstrap.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore + 'static> Admin<S> {
    /// The admin API of `keys`, for keys holding [`ADMIN_SCOPE`].
    pub fn new(keys: Arc<KeyManager<S>>) -> Self {
        Admin {
            keys,
            scope: Scope::new(ADMIN_SCOPE).expect("a valid scope"),
            bootstrap: None,
            audit: Arc::new(|actor: &Actor, event: &Event| {
                let event = serde_json::to_string(event).unwrap_or_default();
                tracing::info!(target: "keyroll::audit", %actor, %event, "keyroll: admin change");
            }),
        }
    }

    /// Authorises keys holding `scope` instead of [`ADMIN_SCOPE`].
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Also accepts `token` (as `Authorization: Bearer <token>`) while no
    /// active key holds the admin scope: to create the first admin key.
    /// It retires as soon as one does.
    ///
    /// # Errors
    ///
    /// [`WeakBootstrapToken`] when `token` is shorter than
    /// [`BOOTSTRAP_MIN_LEN`] bytes, is a placeholder from documentation
    /// (`change-me-...`), or has fewer than 16 distinct bytes (`aaaa...`,
    /// `0123...0123`): none of these is a secret. The error never quotes
    /// the token.
    pub fn bootstrap_token(mut self, token: &str) -> Result<Self, WeakBootstrapToken> {
        let distinct = token
            .bytes()
            .fold([false; 256], |mut seen, b| {
                seen[usize::from(b)] = true;
                seen
            })
            .iter()
            .filter(|&&seen| seen)
            .count();
        let lower = token.to_ascii_lowercase();
        let problem = if token.len() < BOOTSTRAP_MIN_LEN {
            format!("is {} bytes long", token.len())
        } else if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
            "is a placeholder from documentation".to_owned()
        } else if distinct < BOOTSTRAP_MIN_DISTINCT {
            format!("has only {distinct} distinct bytes")
        } else {
            self.bootstrap = Some(token.as_bytes().into());
            return Ok(self);
        };
        Err(WeakBootstrapToken { problem })
    }

    /// Tells every change the API makes to `audit`, with who made it,
    /// once the answer is built (so that a failing sink never loses an
    /// answer, least of all a new token). Events hold ids and times, never
    /// a token.
    pub fn on_event(mut self, audit: impl Fn(&Actor, &Event) + Send + Sync + 'static) -> Self {
        self.audit = Arc::new(audit);
        self
    }

    /// The router: the API, `/openapi.json` and `/console`.
    pub fn router(self) -> Router {
        let state = Arc::new(AdminState {
            auth: KeyrollLayer::new(self.keys.clone()),
            keys: self.keys,
            scope: self.scope,
            bootstrap: self.bootstrap,
            retired: Default::default(),
            audit: self.audit,
        });
        let guard = axum::middleware::from_fn_with_state(state.clone(), auth::authorize::<S>);
        api_routes::<S>()
            .route_layer(guard)
            .merge(console_routes::<S>())
            .fallback(|| async { no_such_route() })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this route does not take that method",
                )
            })
            .with_state(state)
    }
}

/// The fewest distinct bytes a bootstrap token may have.
const BOOTSTRAP_MIN_DISTINCT: usize = 16;

/// Words that mark a placeholder copied from documentation.
const PLACEHOLDERS: [&str; 4] = ["change-me", "changeme", "bytes-or-more", "placeholder"];

/// [`Admin::bootstrap_token`]'s refusal of a token that is no secret: too
/// short, a placeholder, or too few distinct bytes. It never quotes the
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakBootstrapToken {
    problem: String,
}

impl fmt::Display for WeakBootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused bootstrap token: it {}; use at least {BOOTSTRAP_MIN_LEN} random bytes, \
             made with e.g. `openssl rand -base64 32`",
            self.problem
        )
    }
}

impl std::error::Error for WeakBootstrapToken {}

/// Adds the route of `handler`, whose operation id (its function's name)
/// is `name`, at the path and methods the document gives that operation:
/// the router and the document are made from one declaration.
///
/// # Panics
///
/// When the document has no operation `name`: a handler listed but not
/// documented, which every test of the router would show.
fn route<S, H, T>(
    router: Router<Arc<AdminState<S>>>,
    document: &utoipa::openapi::OpenApi,
    name: &str,
    handler: H,
) -> Router<Arc<AdminState<S>>>
where
    S: KeyStore + 'static,
    H: Handler<T, Arc<AdminState<S>>>,
    T: 'static,
{
    for (path, item) in &document.paths.paths {
        let methods: Vec<MethodFilter> = [
            (MethodFilter::GET, &item.get),
            (MethodFilter::PUT, &item.put),
            (MethodFilter::POST, &item.post),
            (MethodFilter::DELETE, &item.delete),
            (MethodFilter::PATCH, &item.patch),
            (MethodFilter::HEAD, &item.head),
            (MethodFilter::OPTIONS, &item.options),
            (MethodFilter::TRACE, &item.trace),
        ]
        .into_iter()
        .filter(|(_, operation)| {
            operation
                .as_ref()
                .is_some_and(|o| o.operation_id.as_deref() == Some(name))
        })
        .map(|(method, _)| method)
        .collect();
        if !methods.is_empty() {
            let methods = methods
                .into_iter()
                .fold(MethodRouter::new(), |router, method| {
                    router.on(method, handler.clone())
                });
            return router.route(path, methods);
        }
    }
    panic!("the admin router's handler {name} is not in its OpenAPI document")
}

/// The document's bearer scheme.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(format!(
                        "An API key holding the admin scope ({ADMIN_SCOPE} by default), or \
                         the bootstrap token while none does"
                    )))
                    .build(),
            ),
        );
    }
}

/// The routes and their document, from one list of handlers.
macro_rules! documented {
    (api: $($handler:ident),* ; open: $($module:ident :: $open:ident),* $(,)?) => {
        #[derive(OpenApi)]
        #[openapi(
            info(title = "keyroll admin API", description = "Manage keyroll API keys: \
                create, renew with an overlap, revoke, limit and watch them."),
            servers((url = ".", description = "Where this document is served from")),
            paths($(api::$handler,)* $($module::$open,)*),
            components(schemas(api::ErrorBody)),
            modifiers(&Bearer),
            security(("bearer" = [])),
            tags(
                (name = "keys", description = "Keys: create, list, read, delete, status, usage"),
                (name = "renewal", description = "Renewing a key's token with an overlap"),
                (name = "tokens", description = "Revoking a leaked token"),
                (name = "settings", description = "A key's label, scopes, metadata, expiry, owner and limits"),
                (name = "owners", description = "An owner's keys, usage, and the limits its keys share"),
                (name = "outbox", description = "Events and notices waiting for delivery, and those given up on"),
                (name = "console", description = "The web console and this document"),
            )
        )]
        struct Document;

        fn api_routes<S: KeyStore + 'static>() -> Router<Arc<AdminState<S>>> {
            let (router, document) = (Router::new(), openapi());
            $(let router = route(router, &document, stringify!($handler), api::$handler::<S>);)*
            router
        }

        fn console_routes<S: KeyStore + 'static>() -> Router<Arc<AdminState<S>>> {
            let (router, document) = (Router::new(), openapi());
            $(let router = route(router, &document, stringify!($open), $module::$open);)*
            router
        }
    };
}

documented!(
    api: create_key, list_keys, search_keys, get_key, change_key, set, set_status, delete_key, usage, expiring,
        renew, finalize, delete_old, delete_old_if_idle, undo_renewal, housekeep, housekeep_all,
        revoke_token, get_owner, set_owner_limits, clear_owner_limits, outbox, key_events, retry_entry;
    open: console::root, console::page, console::page_with_slash, console::asset, self::document,
);

/// This document, for tools and people.
#[utoipa::path(get, path = "/openapi.json", tag = "console", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this router",
        content_type = "application/json")))]
async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}
