//! [`NewKey`]: what [`ApiKey::issue`](crate::ApiKey::issue) and the
//! managers' `create_key` take.

use time::OffsetDateTime;

use crate::attributes::{Metadata, Scopes};
use crate::change::{Change, Settings};
use crate::errors::TransitionError;
use crate::id::{KeyId, OwnerId};
use crate::meter::{Credits, RateLimit};
use crate::policy::Policy;

/// A description of a key to issue: its id, and optionally a label, a
/// policy, scopes, metadata and a hard expiry. A bare [`KeyId`] converts
/// into one with the defaults.
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, KeyId, Metadata, NewKey, Policy, RenewalEnforcement, Scopes};
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::now_utc();
/// let new = NewKey::new(KeyId::new("acme-orders")?)
///     .label("orders service")
///     .policy(Policy { enforcement: RenewalEnforcement::Enforced, ..Policy::default() })
///     .scopes(Scopes::new(["orders:read", "orders:write"])?)
///     .metadata(Metadata::new([("tenant", "acme")])?)
///     .expires_at(now + time::Duration::days(365));
/// let (key, _token, _event) = ApiKey::issue(new, now, &mut rand::rng())?;
/// assert_eq!(key.label(), "orders service");
/// assert!(key.scopes().contains("orders:read"));
/// assert_eq!(key.metadata().get("tenant"), Some("acme"));
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
    pub(crate) scopes: Scopes,
    pub(crate) metadata: Metadata,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) credits: Option<Credits>,
    pub(crate) owner: Option<OwnerId>,
    pub(crate) settings: Settings,
}

impl NewKey {
    /// A key with this id, an empty label, [`Policy::default()`], no
    /// scopes, no metadata and no expiry.
    pub fn new(id: KeyId) -> NewKey {
        NewKey {
            id,
            label: String::new(),
            policy: Policy::default(),
            scopes: Scopes::default(),
            metadata: Metadata::default(),
            expires_at: None,
            rate_limit: None,
            credits: None,
            owner: None,
            settings: Settings::default(),
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

    /// What the key may do.
    pub fn scopes(mut self, scopes: Scopes) -> NewKey {
        self.scopes = scopes;
        self
    }

    /// Whose the key is, or anything else the service wants on it.
    pub fn metadata(mut self, metadata: Metadata) -> NewKey {
        self.metadata = metadata;
        self
    }

    /// A hard expiry of the whole key: from this instant on it verifies
    /// nothing ([`VerifyError::KeyExpired`](crate::VerifyError::KeyExpired)),
    /// and renewals never extend it.
    pub fn expires_at(mut self, at: OffsetDateTime) -> NewKey {
        self.expires_at = Some(at);
        self
    }

    /// A rate limit: the key is charged on each authentication.
    pub fn rate_limit(mut self, rate_limit: RateLimit) -> NewKey {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// Credits, spent by each authentication; refills count from the key's
    /// creation.
    pub fn credits(mut self, credits: Credits) -> NewKey {
        self.credits = Some(credits);
        self
    }

    /// Whom the key belongs to: keys are listed by owner.
    pub fn owner(mut self, owner: OwnerId) -> NewKey {
        self.owner = Some(owner);
        self
    }

    /// Any setting, as the [`Change`] that sets it: the one door for the
    /// settings without a method of their own here (networks, ...), and
    /// what takes back [`ApiKey::settings`](crate::ApiKey::settings).
    /// A setting given twice keeps the latter.
    ///
    /// # Errors
    ///
    /// [`TransitionError::NotASetting`] for a status change: a new key is
    /// active (deactivate it once issued).
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, Change, KeyId, NewKey};
    /// use time::OffsetDateTime;
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let new = NewKey::new(KeyId::new("acme")?).with(Change::Label("orders".into()))?;
    /// let (key, _token, _event) = ApiKey::issue(new, now, &mut rand::rng())?;
    /// assert_eq!(key.settings(), [Change::Label("orders".into())]);
    /// assert!(NewKey::new(KeyId::new("b")?).with(Change::Deactivate).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with(mut self, change: Change) -> Result<NewKey, TransitionError> {
        match change {
            Change::Label(label) => self.label = label,
            Change::Scopes(scopes) => self.scopes = scopes,
            Change::Metadata(metadata) => self.metadata = metadata,
            Change::Expiry(at) => self.expires_at = at,
            Change::Owner(owner) => self.owner = owner,
            Change::RateLimit(rate) => self.rate_limit = rate,
            Change::Credits(credits) => self.credits = credits,
            setting => {
                self.settings
                    .make(setting)
                    .map_err(|change| TransitionError::NotASetting {
                        change: change.name(),
                    })?;
            }
        }
        Ok(self)
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
