//! The audit trail: one [`Event`] per successful transition, and the
//! notices of what is about to happen.

use time::{Duration, OffsetDateTime};

use crate::attributes::{Metadata, Scopes};
use crate::change::Change;
use crate::id::{KeyId, OwnerId, TokenId};
use crate::meter::{Credits, RateLimit};
use crate::state::{OldTokenDeletion, TokenMatch};

/// What happened to a key, or (the notices [`KeyExpiring`](Event::KeyExpiring),
/// [`RenewalDue`](Event::RenewalDue), [`CreditsLow`](Event::CreditsLow),
/// [`CreditsExhausted`](Event::CreditsExhausted)) what is about to. Every
/// successful transition returns exactly one.
///
/// Each variant carries the key id, the time given to the transition and the
/// key's version after it. Events hold public ids only, never a secret, so
/// they can be logged or shipped as they are (with feature `serde`, as JSON
/// tagged by `"event"`).
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, Event, KeyId, NewKey};
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::UNIX_EPOCH;
/// let new = NewKey::new(KeyId::new("acme")?).label("orders");
/// let (mut key, _token, issued) = ApiKey::issue(new, now, &mut rand::rng())?;
/// assert!(matches!(issued, Event::KeyIssued { .. }));
/// let (_new, renewed) = key.renew(now, &mut rand::rng())?;
/// assert_eq!((renewed.key_id(), renewed.version()), (Some(key.id()), 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "event", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Event {
    /// A key was issued with its first token.
    #[non_exhaustive]
    KeyIssued {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The key's label.
        label: String,
        /// The first token.
        token_id: TokenId,
        /// The key's scopes: with the `*Changed` events, the audit trail
        /// alone rebuilds what a key could do, when.
        #[cfg_attr(feature = "serde", serde(default))]
        scopes: Scopes,
        /// The key's metadata.
        #[cfg_attr(feature = "serde", serde(default))]
        metadata: Metadata,
        /// The key's hard expiry.
        #[cfg_attr(
            feature = "serde",
            serde(default, with = "time::serde::rfc3339::option")
        )]
        expires_at: Option<OffsetDateTime>,
        /// The settings it keeps only as data (networks, ...), as the
        /// changes that set them (left out of the JSON when none).
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Vec::is_empty")
        )]
        settings: Vec<Change>,
    },
    /// A new token was issued; the previous one is now the old token, or,
    /// if it was revoked, dropped.
    #[non_exhaustive]
    TokenRenewed {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new, current token.
        new_token_id: TokenId,
        /// The previous token: still valid as the old token, unless
        /// `previous_revoked`.
        old_token_id: TokenId,
        /// Whether the previous token had been revoked, and was dropped
        /// rather than kept as the old token (the key is then `Single`).
        #[cfg_attr(feature = "serde", serde(default))]
        previous_revoked: bool,
        /// What was chosen for the previous token in the same call
        /// ([`ApiKey::renew_with`](crate::ApiKey::renew_with)); `None` for
        /// [`ApiKey::renew`](crate::ApiKey::renew), which leaves it
        /// undecided.
        #[cfg_attr(feature = "serde", serde(default))]
        deletion: Option<OldTokenDeletion>,
        /// The old token of an earlier renewal, deleted first because its
        /// scheduled deletion was due (it blocked nothing but this renewal).
        #[cfg_attr(feature = "serde", serde(default))]
        deleted_as_scheduled: Option<TokenId>,
    },
    /// A live token was revoked ([`ApiKey::revoke_token`](crate::ApiKey::revoke_token)):
    /// an old token is deleted, a current token never verifies again.
    #[non_exhaustive]
    TokenRevoked {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The revoked token.
        token_id: TokenId,
        /// Whether it was the current or the old token.
        which: TokenMatch,
    },
    /// A pending renewal was finalized with a deletion mode that keeps the old
    /// token for now (a renewal finalized with [`OldTokenDeletion::Now`]
    /// emits [`Event::OldTokenDeleted`] instead).
    #[non_exhaustive]
    RenewalFinalized {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The mode chosen.
        deletion: OldTokenDeletion,
    },
    /// The old token was deleted, for good.
    #[non_exhaustive]
    OldTokenDeleted {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The deleted token.
        token_id: TokenId,
        /// Why it was deleted.
        reason: DeletionReason,
    },
    /// A renewal was undone: the old token is the only token again and the
    /// new one no longer verifies.
    #[non_exhaustive]
    RenewalUndone {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The discarded new token.
        discarded_token_id: TokenId,
        /// The restored token, current again.
        restored_token_id: TokenId,
    },
    /// The key was deactivated: no request made with it verifies.
    #[non_exhaustive]
    KeyDeactivated {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
    },
    /// The key was activated again.
    #[non_exhaustive]
    KeyActivated {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
    },
    /// The label was changed.
    #[non_exhaustive]
    LabelChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new label.
        label: String,
    },
    /// The scopes were replaced.
    #[non_exhaustive]
    ScopesChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new scopes.
        scopes: Scopes,
    },
    /// The metadata was replaced.
    #[non_exhaustive]
    MetadataChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new metadata.
        metadata: Metadata,
    },
    /// The hard expiry was moved or removed.
    #[non_exhaustive]
    ExpiryChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new expiry (`None`: removed).
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339::option"))]
        expires_at: Option<OffsetDateTime>,
    },
    /// The owner was set or removed.
    #[non_exhaustive]
    OwnerChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new owner (`None`: removed).
        owner: Option<OwnerId>,
    },
    /// The rate limit was set or removed.
    #[non_exhaustive]
    RateLimitChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new rate limit (`None`: removed).
        rate_limit: Option<RateLimit>,
    },
    /// The credits were set (their balance starts over) or removed.
    #[non_exhaustive]
    CreditsSet {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The new credits (`None`: removed).
        credits: Option<Credits>,
    },
    /// A setting the key keeps only as data (networks, ...) was set or
    /// removed. (The settings of keyroll 0.3 have events of their own, which
    /// keep their JSON.)
    #[non_exhaustive]
    SettingChanged {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the transition.
        version: u64,
        /// The change made: `{"networks": "10.0.0.0/8"}` in JSON.
        change: Change,
    },
    /// The key was deleted, irreversibly, with all its tokens.
    #[non_exhaustive]
    KeyDeleted {
        /// The key.
        key_id: KeyId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The version the key would have had after the deletion (the last
        /// stored version + 1).
        version: u64,
    },
    /// The limits an owner's keys share were set, or cleared (both
    /// `None`). The one event about an owner rather than a key:
    /// [`key_id`](Event::key_id) is `None`, [`owner_id`](Event::owner_id)
    /// names it.
    #[non_exhaustive]
    OwnerLimitsChanged {
        /// The owner.
        owner: OwnerId,
        /// When.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The version of the owner's limits after the change.
        version: u64,
        /// The owner's rate limit (`None`: none).
        rate_limit: Option<RateLimit>,
        /// The owner's credits (`None`: none).
        credits: Option<Credits>,
    },
    /// A notice: the key's hard expiry is within `within`
    /// ([`KeyManager::sweep_notices`](crate::KeyManager::sweep_notices)).
    #[non_exhaustive]
    KeyExpiring {
        /// The key.
        key_id: KeyId,
        /// When the sweep noticed.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the notice was claimed.
        version: u64,
        /// When the key expires.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        expires_at: OffsetDateTime,
        /// The threshold crossed: the expiry is at most this far away.
        #[cfg_attr(feature = "serde", serde(with = "crate::duration"))]
        within: Duration,
    },
    /// A notice: the current token's renewal is due within `within`.
    #[non_exhaustive]
    RenewalDue {
        /// The key.
        key_id: KeyId,
        /// When the sweep noticed.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the notice was claimed.
        version: u64,
        /// The token due for renewal.
        token_id: TokenId,
        /// When its renewal is due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
        /// The threshold crossed: the due date is at most this far away.
        #[cfg_attr(feature = "serde", serde(with = "crate::duration"))]
        within: Duration,
    },
    /// A notice: the key's credits fell below the configured fraction of
    /// what their period started with.
    #[non_exhaustive]
    CreditsLow {
        /// The key.
        key_id: KeyId,
        /// When the sweep noticed.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the notice was claimed.
        version: u64,
        /// The credits left.
        remaining: u64,
        /// What the period started with.
        of: u64,
    },
    /// A notice: the key's credits are spent.
    #[non_exhaustive]
    CreditsExhausted {
        /// The key.
        key_id: KeyId,
        /// When the sweep noticed.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
        /// The key's version after the notice was claimed.
        version: u64,
        /// When the credits are refilled, if they are.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339::option"))]
        next_refill: Option<OffsetDateTime>,
    },
}

impl Event {
    /// The key the event is about; `None` for the event of an owner
    /// ([`Event::OwnerLimitsChanged`]).
    pub fn key_id(&self) -> Option<&KeyId> {
        self.common().0
    }

    /// The owner the event is about: only [`Event::OwnerLimitsChanged`]
    /// is about an owner (a key's own events name its owner only when
    /// they change it).
    pub fn owner_id(&self) -> Option<&OwnerId> {
        match self {
            Event::OwnerLimitsChanged { owner, .. } => Some(owner),
            _ => None,
        }
    }

    /// The time given to the transition.
    pub fn at(&self) -> OffsetDateTime {
        self.common().1
    }

    /// The key's version after the transition (the owner limits' for
    /// [`Event::OwnerLimitsChanged`]).
    pub fn version(&self) -> u64 {
        self.common().2
    }

    /// The event's name as serialized, e.g. `"token_renewed"`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::KeyIssued { .. } => "key_issued",
            Event::TokenRenewed { .. } => "token_renewed",
            Event::TokenRevoked { .. } => "token_revoked",
            Event::RenewalFinalized { .. } => "renewal_finalized",
            Event::OldTokenDeleted { .. } => "old_token_deleted",
            Event::RenewalUndone { .. } => "renewal_undone",
            Event::KeyDeactivated { .. } => "key_deactivated",
            Event::KeyActivated { .. } => "key_activated",
            Event::KeyDeleted { .. } => "key_deleted",
            Event::LabelChanged { .. } => "label_changed",
            Event::ScopesChanged { .. } => "scopes_changed",
            Event::MetadataChanged { .. } => "metadata_changed",
            Event::ExpiryChanged { .. } => "expiry_changed",
            Event::OwnerChanged { .. } => "owner_changed",
            Event::RateLimitChanged { .. } => "rate_limit_changed",
            Event::CreditsSet { .. } => "credits_set",
            Event::SettingChanged { .. } => "setting_changed",
            Event::OwnerLimitsChanged { .. } => "owner_limits_changed",
            Event::KeyExpiring { .. } => "key_expiring",
            Event::RenewalDue { .. } => "renewal_due",
            Event::CreditsLow { .. } => "credits_low",
            Event::CreditsExhausted { .. } => "credits_exhausted",
        }
    }

    fn common(&self) -> (Option<&KeyId>, OffsetDateTime, u64) {
        match self {
            Event::KeyIssued {
                key_id,
                at,
                version,
                ..
            }
            | Event::TokenRenewed {
                key_id,
                at,
                version,
                ..
            }
            | Event::TokenRevoked {
                key_id,
                at,
                version,
                ..
            }
            | Event::LabelChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::ScopesChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::OwnerChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::RateLimitChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::CreditsSet {
                key_id,
                at,
                version,
                ..
            }
            | Event::SettingChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::KeyExpiring {
                key_id,
                at,
                version,
                ..
            }
            | Event::RenewalDue {
                key_id,
                at,
                version,
                ..
            }
            | Event::CreditsLow {
                key_id,
                at,
                version,
                ..
            }
            | Event::CreditsExhausted {
                key_id,
                at,
                version,
                ..
            }
            | Event::MetadataChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::ExpiryChanged {
                key_id,
                at,
                version,
                ..
            }
            | Event::RenewalFinalized {
                key_id,
                at,
                version,
                ..
            }
            | Event::OldTokenDeleted {
                key_id,
                at,
                version,
                ..
            }
            | Event::RenewalUndone {
                key_id,
                at,
                version,
                ..
            }
            | Event::KeyDeactivated {
                key_id,
                at,
                version,
            }
            | Event::KeyActivated {
                key_id,
                at,
                version,
            }
            | Event::KeyDeleted {
                key_id,
                at,
                version,
            } => (Some(key_id), *at, *version),
            Event::OwnerLimitsChanged { at, version, .. } => (None, *at, *version),
        }
    }
}

/// Why an old token was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum DeletionReason {
    /// By [`ApiKey::delete_old`](crate::ApiKey::delete_old).
    Manual,
    /// By [`ApiKey::finalize`](crate::ApiKey::finalize) with [`OldTokenDeletion::Now`]
    /// (or an instant already past).
    FinalizedNow,
    /// By [`ApiKey::housekeep`](crate::ApiKey::housekeep), at its scheduled time.
    Scheduled,
}
