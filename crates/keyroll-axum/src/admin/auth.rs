//! Who may use the admin API: a key holding the admin scope, or, until
//! one has existed, the bootstrap token; and the [`Actor`] every audit
//! event names.
//!
//! The bootstrap token retires for good: once an active key holds the
//! admin scope, the store's [`BOOTSTRAP_RETIRED`] marker is set, and only
//! an operator clears it (`keyctl restore-bootstrap`, audited).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use keyroll::store::{BOOTSTRAP_RETIRED, KeyStore};
use keyroll::{Event, KeyId, KeyManager, KeyStatus, Scope, Scopes};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::{ApiError, Caller, KeyrollLayer, bearer_token};

/// Who made an admin call: every audit event names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Actor {
    /// The key that authenticated the call.
    Key(KeyId),
    /// The bootstrap token, which creates the first admin key.
    Bootstrap,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Key(id) => id.fmt(f),
            Actor::Bootstrap => f.write_str("bootstrap"),
        }
    }
}

/// What is told of every change the admin API makes.
pub(crate) type Audit = Arc<dyn Fn(&Actor, &Event) + Send + Sync>;

/// The admin router's state: the manager, and who may call.
pub(crate) struct AdminState<S> {
    pub(crate) keys: Arc<KeyManager<S>>,
    /// Authenticates bearer tokens (and only those) for the routes.
    pub(crate) auth: KeyrollLayer<S>,
    pub(crate) scope: Scope,
    /// The bootstrap token's bytes, compared in constant time.
    pub(crate) bootstrap: Option<Box<[u8]>>,
    /// Whether this process has seen the store's bootstrap marker set (or
    /// set it): then it need not write it again.
    pub(crate) retired: AtomicBool,
    pub(crate) audit: Audit,
}

impl<S> AdminState<S> {
    /// Tells `event`, made by `actor`. Call it once the answer is built,
    /// so that no audit sink can lose an answer (least of all a token).
    pub(crate) fn audit(&self, actor: &Actor, event: &Event) {
        (self.audit)(actor, event);
    }
}

impl<S: KeyStore> AdminState<S> {
    /// Records in the store that the bootstrap is over, once an active key
    /// holds the admin scope: written once per process (a failure is
    /// logged, and the next admin call tries again).
    pub(crate) async fn retire_bootstrap(&self, now: OffsetDateTime) {
        if !self.retired.load(Ordering::Relaxed) {
            self.record_retirement(now).await;
        }
    }

    /// Writes the store's marker that the bootstrap is over (kept at its
    /// first instant if it is already set).
    async fn record_retirement(&self, now: OffsetDateTime) {
        let store = self.keys.store();
        match store.set_marker(BOOTSTRAP_RETIRED, Some(now)).await {
            Ok(()) => self.retired.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(
                error = %e,
                "keyroll: recording that the bootstrap token retired failed"
            ),
        }
    }

    /// [`retire_bootstrap`](Self::retire_bootstrap) if a key holding
    /// `scopes` is an admin key.
    pub(crate) async fn retire_bootstrap_for(&self, scopes: &Scopes, now: OffsetDateTime) {
        if scopes.contains(self.scope.as_str()) {
            self.retire_bootstrap(now).await;
        }
    }
}

/// The admin routes' guard: finds the [`Actor`] and puts it in the
/// request's extensions, or answers the refusal. Under a `KeyrollLayer`
/// the identity it found is used (nothing is charged or counted twice);
/// otherwise the bearer token is authenticated here. The bootstrap token
/// is accepted only while no active key holds the admin scope.
pub(crate) async fn authorize<S: KeyStore + 'static>(
    State(admin): State<Arc<AdminState<S>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let found = request
        .extensions()
        .get::<keyroll::Authenticated>()
        .cloned();
    let (actor, headers) = match found {
        Some(who) => (admitted(&admin, Caller(who)).await, None),
        None => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match (presented, &admin.bootstrap) {
                (Some(token), Some(bootstrap)) if bool::from(token.as_bytes().ct_eq(bootstrap)) => {
                    (bootstrap_admitted(&admin).await, None)
                }
                _ => match admin
                    .auth
                    .shared
                    .authenticated(crate::Asked::of(&request))
                    .await
                {
                    Ok(who) => {
                        let caller = Caller(who);
                        let headers = caller.headers();
                        (admitted(&admin, caller).await, Some(headers))
                    }
                    Err(refused) => {
                        return crate::error::refuse(request.headers(), request.version(), refused);
                    }
                },
            }
        }
    };
    let actor = match actor {
        Ok(actor) => actor,
        Err(refused) => return crate::error::refuse(request.headers(), request.version(), refused),
    };
    request.extensions_mut().insert(actor);
    let mut response = next.run(request).await;
    response.headers_mut().extend(headers.unwrap_or_default());
    response
}

/// The caller, if its key holds the admin scope; an active admin key
/// retires the bootstrap token.
async fn admitted<S: KeyStore>(admin: &AdminState<S>, caller: Caller) -> Result<Actor, ApiError> {
    caller.require_scope(admin.scope.as_str())?;
    admin.retire_bootstrap(OffsetDateTime::now_utc()).await;
    Ok(Actor::Key(caller.0.key_id))
}

/// The bootstrap token's actor, unless it has retired: the store's marker
/// says so (one point read, no scan), or an active admin key exists (a
/// scan, which sets the marker, so it runs at most until one is found).
async fn bootstrap_admitted<S: KeyStore + 'static>(
    admin: &AdminState<S>,
) -> Result<Actor, ApiError> {
    let now = OffsetDateTime::now_utc();
    let retired = match admin.keys.store().marker(BOOTSTRAP_RETIRED).await {
        Ok(retired) => retired,
        Err(e) => {
            tracing::error!(error = %e, "keyroll: reading the bootstrap marker failed");
            return Err(crate::error::unavailable());
        }
    };
    let cause = if retired.is_some() {
        "the bootstrap token has retired for good (an admin key existed); \
         bring it back with `keyctl restore-bootstrap`"
    } else if admin_key_exists(admin, now).await? {
        // Written even if this process wrote it before: an operator may
        // have cleared it since.
        admin.record_retirement(now).await;
        "the bootstrap token has retired: an active key holds the admin scope"
    } else {
        return Ok(Actor::Bootstrap);
    };
    tracing::info!(cause, "keyroll: request refused");
    Err(admin.auth.shared.refusal(true))
}

/// Whether an active, unexpired key holds the admin scope: a scan of the
/// keys, which runs only when the bootstrap token is presented and has
/// not retired.
async fn admin_key_exists<S: KeyStore + 'static>(
    admin: &AdminState<S>,
    now: OffsetDateTime,
) -> Result<bool, ApiError> {
    let mut after: Option<KeyId> = None;
    loop {
        let page = admin.keys.list(after.as_ref(), 500).await?;
        if page.iter().any(|key| {
            key.status() == KeyStatus::Active
                && !key.is_expired(now)
                && key.scopes().contains(admin.scope.as_str())
        }) {
            return Ok(true);
        }
        match page.last() {
            Some(last) => after = Some(last.id().clone()),
            None => return Ok(false),
        }
    }
}
