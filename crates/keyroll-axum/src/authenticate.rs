//! [`Authenticate`]: authentication in an extractor, for routes without a
//! [`KeyrollLayer`].

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use keyroll::{AsyncKeyStore, TokenMatch};

use crate::{InsufficientScope, KeyrollLayer, TOKEN_RENEWED};

/// A router state that holds the [`KeyrollLayer`] the [`Authenticate`]
/// extractor authenticates with (its key manager, realm and headers).
///
/// A `KeyrollLayer` is one; so is an `Arc` of one. For a state of your
/// own, return the layer it holds.
pub trait KeyrollState {
    /// The key store the layer's manager reads.
    type Store: AsyncKeyStore + 'static;

    /// The layer whose settings [`Authenticate`] uses.
    fn keyroll(&self) -> &KeyrollLayer<Self::Store>;
}

impl<S: AsyncKeyStore + 'static> KeyrollState for KeyrollLayer<S> {
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

/// An extractor that authenticates the request itself, with the settings
/// of the [`KeyrollLayer`] in the router's state ([`KeyrollState`]): for
/// handlers on routes without the layer.
///
/// It accepts the same credentials and refuses them with the same answers
/// as the layer (one uniform 401 for every credential failure, a 503 when
/// the store fails, the causes logged), and costs less: axum wraps every
/// route under a layer in one more boxed service, cloned for each request.
/// What the layer does to the response is yours to do: send
/// [`renewal_hint`](Self::renewal_hint) with the answer, and check scopes
/// with [`require_scope`](Self::require_scope).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
///
/// use axum::response::IntoResponse;
/// use axum::{Router, routing::get};
/// use keyroll::{AsyncKeyManager, InMemoryStore};
/// use keyroll_axum::{Authenticate, InsufficientScope, KeyrollLayer};
///
/// async fn whoami(who: Authenticate) -> impl IntoResponse {
///     (who.renewal_hint(), who.key_id.to_string())
/// }
///
/// async fn orders(who: Authenticate) -> Result<String, InsufficientScope> {
///     who.require_scope("orders:read")?;
///     Ok(format!("orders of {}", who.key_id))
/// }
///
/// let keys = Arc::new(AsyncKeyManager::new(InMemoryStore::new()));
/// let app: Router = Router::new()
///     .route("/v1/whoami", get(whoami))
///     .route("/v1/orders", get(orders))
///     .with_state(KeyrollLayer::new(keys).realm("orders"));
/// ```
#[derive(Debug, Clone)]
pub struct Authenticate(pub keyroll::Authenticated);

impl std::ops::Deref for Authenticate {
    type Target = keyroll::Authenticated;

    fn deref(&self) -> &keyroll::Authenticated {
        &self.0
    }
}

impl Authenticate {
    /// The [`TOKEN_RENEWED`] header when the request used the old token of
    /// a pending renewal, as a part of a response: return it with your
    /// answer, as in `(who.renewal_hint(), body)`.
    pub fn renewal_hint(&self) -> Option<[(HeaderName, HeaderValue); 1]> {
        (self.matched == TokenMatch::Old)
            .then(|| [(TOKEN_RENEWED, HeaderValue::from_static("true"))])
    }

    /// Whether the key holds `scope` (compared exactly, as
    /// `Scopes::contains` does).
    ///
    /// # Errors
    ///
    /// [`InsufficientScope`] (logged) when it does not: as a response,
    /// [`RequireScope`](crate::RequireScope)'s 403.
    pub fn require_scope(&self, scope: &str) -> Result<(), InsufficientScope> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(InsufficientScope::logged(&self.key_id, scope))
        }
    }
}

impl<T> FromRequestParts<T> for Authenticate
where
    T: KeyrollState + Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &T) -> Result<Self, Response> {
        let config = &*state.keyroll().shared;
        let now = crate::clock::now();
        config
            .authenticated(&parts.headers, now)
            .await
            .map(Authenticate)
            .map_err(|refused| refused.response(config))
    }
}
