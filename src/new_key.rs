//! [`NewKey`]: what [`ApiKey::issue`](crate::ApiKey::issue) and the
//! managers' `create_key` take.

use crate::id::KeyId;
use crate::policy::Policy;

/// A description of a key to issue: its id, and optionally a label and a
/// policy. A bare [`KeyId`] converts into one with the defaults.
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, Expiry, KeyId, NewKey, Policy};
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::now_utc();
/// let new = NewKey::new(KeyId::new("acme-orders")?)
///     .label("orders service")
///     .policy(Policy { expiry: Expiry::Enforced, ..Policy::default() });
/// let (key, _token, _event) = ApiKey::issue(new, now, &mut rand::rng())?;
/// assert_eq!(key.label(), "orders service");
///
/// // The defaults: no label, `Policy::default()`.
/// let (plain, _token, _event) = ApiKey::issue(KeyId::new("plain")?, now, &mut rand::rng())?;
/// assert_eq!(plain.label(), "");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct NewKey {
    pub(crate) id: KeyId,
    pub(crate) label: String,
    pub(crate) policy: Policy,
}

impl NewKey {
    /// A key with this id, an empty label and [`Policy::default()`].
    pub fn new(id: KeyId) -> NewKey {
        NewKey {
            id,
            label: String::new(),
            policy: Policy::default(),
        }
    }

    /// A label for people: at most 256 bytes, no control characters
    /// (checked by `issue`).
    pub fn label(mut self, label: impl Into<String>) -> NewKey {
        self.label = label.into();
        self
    }

    /// The policy the key lives by.
    pub fn policy(mut self, policy: Policy) -> NewKey {
        self.policy = policy;
        self
    }

    /// The id the key will have.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

impl From<KeyId> for NewKey {
    fn from(id: KeyId) -> NewKey {
        NewKey::new(id)
    }
}
