//! [`ApiKey`]: the renewal state machine.
//!
//! A key holds a current token and, while a renewal is pending, an old one.
//! Every transition is a `&mut self` method that either succeeds with exactly
//! one [`Event`] and a version one higher, or returns a [`TransitionError`]
//! and leaves the key exactly as it was.

use time::{Duration, OffsetDateTime};

use crate::attributes::{Metadata, Scopes};
use crate::event::{DeletionReason, Event};
use crate::id::{KeyId, TokenId};
use crate::input::{self, InvalidLabel};
use crate::new_key::NewKey;
use crate::policy::Policy;
use crate::revision::Revision;
use crate::token::{Token, TokenHash};
use crate::verify::{TokenMatch, VerifyError};

/// An API key: a stable public id, a label, a status and one or two tokens.
///
/// It holds no secret, only token hashes, so it can be cloned, logged and
/// stored freely. It reads no clock and no random source: `now` and `rng`
/// come from the caller.
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, KeyId, KeyState, NewKey, OldTokenDeletion, TokenMatch};
/// use time::{Duration, OffsetDateTime};
///
/// let mut rng = rand::rng();
/// let t0 = OffsetDateTime::now_utc();
/// let new = NewKey::new(KeyId::new("acme-orders")?).label("orders service");
/// let (mut key, first, _event) = ApiKey::issue(new, t0, &mut rng)?;
/// assert_eq!(key.verify(first.expose_secret(), t0)?, TokenMatch::Current);
///
/// // Renew: the new token is shown once; the first one keeps working.
/// let t1 = t0 + Duration::days(80);
/// let (second, _event) = key.renew(t1, &mut rng)?;
/// assert_eq!(key.verify(second.expose_secret(), t1)?, TokenMatch::Current);
/// assert_eq!(key.verify(first.expose_secret(), t1)?, TokenMatch::Old);
///
/// // Once no integration uses the old token, delete it.
/// key.finalize(OldTokenDeletion::Later, t1)?;
/// key.delete_old(t1 + Duration::days(7))?;
/// assert!(key.verify(first.expose_secret(), t1).is_err());
/// assert_eq!(key.state(), KeyState::Single);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub(crate) id: KeyId,
    pub(crate) label: Box<str>,
    pub(crate) status: KeyStatus,
    /// Random, below 2^63, fixed at issue: see [`Revision`].
    pub(crate) incarnation: u64,
    pub(crate) version: u64,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) policy: Policy,
    pub(crate) scopes: Scopes,
    pub(crate) metadata: Metadata,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) current: TokenInfo,
    /// Boxed: most keys are not renewing, and a key stays small.
    pub(crate) renewal: Option<Box<Renewal>>,
}

/// A pending renewal: the previous token, still valid, and what was decided
/// about its deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub(crate) struct Renewal {
    #[cfg_attr(feature = "serde", serde(rename = "old_token"))]
    pub(crate) old: TokenInfo,
    pub(crate) decision: Decision,
}

impl Renewal {
    /// The old token, unless its scheduled deletion is due at `now`.
    pub(crate) fn live_old_token(&self, now: OffsetDateTime) -> Option<&TokenInfo> {
        self.decision.keeps_old_token(now).then_some(&self.old)
    }
}

impl Decision {
    /// Whether the old token still lives at `now`: not once its scheduled
    /// deletion is due.
    pub(crate) fn keeps_old_token(&self, now: OffsetDateTime) -> bool {
        !matches!(*self, Decision::Scheduled { at } if at <= now)
    }
}

/// What a key keeps of one token: its public id, dates and hash. No secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct TokenInfo {
    pub(crate) id: TokenId,
    #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
    pub(crate) created_at: OffsetDateTime,
    #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
    pub(crate) due_at: OffsetDateTime,
    #[cfg_attr(feature = "serde", serde(with = "crate::record::hash"))]
    pub(crate) hash: TokenHash,
    #[cfg_attr(
        feature = "serde",
        serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )
    )]
    pub(crate) last_used_at: Option<OffsetDateTime>,
    #[cfg_attr(
        feature = "serde",
        serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )
    )]
    pub(crate) revoked_at: Option<OffsetDateTime>,
    /// Issued by keyroll 0.1, whose tokens name no key
    /// (`{prefix}_{secret}{checksum}`): only such a token is accepted in
    /// that framing.
    #[cfg_attr(
        feature = "serde",
        serde(
            default,
            rename = "legacy_framing",
            skip_serializing_if = "std::ops::Not::not"
        )
    )]
    pub(crate) legacy: bool,
}

impl TokenInfo {
    /// A new token's record; `due_at` comes from [`input::due_date`].
    fn new(
        token: &Token,
        hash: TokenHash,
        now: OffsetDateTime,
        due_at: OffsetDateTime,
    ) -> TokenInfo {
        TokenInfo {
            id: token.id(),
            created_at: now,
            due_at,
            hash,
            last_used_at: None,
            revoked_at: None,
            legacy: false,
        }
    }

    /// The token's public id.
    pub fn id(&self) -> TokenId {
        self.id
    }

    /// When the token was created (issued or renewed).
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// When the token is due for renewal: `created_at` + the policy's
    /// renewal period. A token keeps its own due date after a renewal.
    pub fn due_at(&self) -> OffsetDateTime {
        self.due_at
    }

    /// The last use recorded with [`ApiKey::record_use`], to within the
    /// policy's `usage_resolution`; `None` if no use was recorded.
    pub fn last_used_at(&self) -> Option<OffsetDateTime> {
        self.last_used_at
    }

    /// Whether the token was issued by keyroll 0.1, in the framing that
    /// names no key (`{prefix}_{secret}{checksum}`). Only such a token
    /// verifies in that framing, and only in the two-credential form (it
    /// names no key); secret scanners do not find it. Renew the key to
    /// hand out a token that names it.
    pub fn legacy_framing(&self) -> bool {
        self.legacy
    }

    /// When the token was revoked with [`ApiKey::revoke_token`]: from then
    /// on it never verifies again. Only a current token can be revoked and
    /// kept (a revoked old token is deleted).
    pub fn revoked_at(&self) -> Option<OffsetDateTime> {
        self.revoked_at
    }
}

/// Whether requests made with the key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum KeyStatus {
    /// Requests verify.
    Active,
    /// Every request fails with [`VerifyError::KeyInactive`](crate::VerifyError::KeyInactive).
    Inactive,
}

/// Where a key is in its renewal cycle. `#[non_exhaustive]`, like
/// [`Decision`]: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// One token.
    Single,
    /// Two tokens: the new (current) one and the old one, until the old one
    /// is deleted or the renewal undone.
    Renewing {
        /// What was decided about the old token.
        decision: Decision,
    },
}

/// What was decided about the old token of a pending renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Decision {
    /// Nothing yet. Behaves exactly like `Later`, as in the product when the
    /// page is closed before a choice.
    Undecided,
    /// Kept until [`ApiKey::delete_old`] or [`ApiKey::undo_renewal`].
    Later,
    /// Deleted at `at`: from then on it no longer verifies, and
    /// [`ApiKey::housekeep`] removes it.
    Scheduled {
        /// When the old token stops verifying.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        at: OffsetDateTime,
    },
    /// Kept until the new token's first recorded use, then for `grace`
    /// more: that use turns this into `Scheduled { at: use + grace }`.
    AfterNewTokenUse {
        /// How long the old token lives after the new one is first used.
        #[cfg_attr(feature = "serde", serde(with = "crate::record::duration"))]
        grace: Duration,
    },
}

/// How [`ApiKey::finalize`] treats the old token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum OldTokenDeletion {
    /// Delete it now; only the new token stays valid.
    Now,
    /// Keep both valid until the old one is deleted by hand.
    Later,
    /// Keep the old token until this instant; an instant not after `now`
    /// deletes it at once, as [`Now`](OldTokenDeletion::Now).
    #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
    At(OffsetDateTime),
    /// Keep the old token until the new one has been used (as recorded by
    /// [`ApiKey::record_use`]), then for `grace` more.
    AfterNewTokenUse {
        /// How long the old token lives after the new one's first use.
        #[cfg_attr(feature = "serde", serde(with = "crate::record::duration"))]
        grace: Duration,
    },
}

/// A transition refused because of the key's state or because of its input.
/// The key is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// `renew` while a renewal is pending.
    #[error(
        "cannot renew: the key already has a renewed token pending; delete the old token or undo the renewal first"
    )]
    RenewalPending,
    /// `finalize` with no renewal pending.
    #[error("cannot finalize: no renewed token was found; renew the key first")]
    NoRenewalPending,
    /// `finalize` of a renewal already finalized.
    #[error(
        "cannot finalize: the renewal was already finalized; delete the old token or undo the renewal"
    )]
    AlreadyFinalized,
    /// `delete_old` or `undo_renewal` with no old token.
    #[error(
        "cannot delete or restore the old token: the key has none; renew again or delete the key"
    )]
    NoOldToken,
    /// `activate` of an active key.
    #[error("cannot activate: the key is already active")]
    AlreadyActive,
    /// `deactivate` of an inactive key.
    #[error("cannot deactivate: the key is already inactive")]
    AlreadyInactive,
    /// `delete_old_if_idle` while the old token was used recently.
    #[error(
        "cannot delete the old token: it was used at {last_used_at}; wait until it is idle or delete it anyway with delete_old"
    )]
    OldTokenInUse {
        /// The old token's last recorded use.
        last_used_at: OffsetDateTime,
    },
    /// A label longer than 256 bytes or holding a control character.
    #[error(transparent)]
    InvalidLabel(#[from] InvalidLabel),
    /// A policy a key cannot live by: a renewal period that is not positive,
    /// or a negative usage resolution.
    #[error("invalid policy: {field} is {value}, and it must be {rule}")]
    InvalidPolicy {
        /// The refused field of [`Policy`].
        field: &'static str,
        /// Its value.
        value: Duration,
        /// What it must be.
        rule: &'static str,
    },
    /// A negative grace in [`OldTokenDeletion::AfterNewTokenUse`].
    #[error("invalid grace {grace}: a grace must be zero or positive")]
    InvalidGrace {
        /// The refused grace.
        grace: Duration,
    },
    /// `renew` of a key past its hard expiry
    /// ([`ApiKey::expires_at`]): renewals never extend it. Move or remove it
    /// with [`ApiKey::set_expiry`] first.
    #[error(
        "cannot renew: the key expired at {expires_at}; move or remove its expiry with set_expiry first"
    )]
    KeyExpired {
        /// When the key expired.
        expires_at: OffsetDateTime,
    },
    /// An instant outside the years 1 to 9999 (UTC), the range a key's
    /// record can hold: the `now` given, a deletion time, an expiry, or the
    /// due date it would give a token.
    #[error("{what} {at} is outside the years 1 to 9999 (UTC)")]
    TimeOutOfRange {
        /// Which instant.
        what: &'static str,
        /// The instant given.
        at: OffsetDateTime,
    },
}

/// What every transition calls its `now` in errors.
const NOW: &str = "the time given";
/// What errors call a hard expiry.
const EXPIRY: &str = "the expiry";

impl ApiKey {
    /// Issues a new key with its first token, which is shown only here.
    ///
    /// The key starts `Active`, in state `Single`, at version 1, with a
    /// random incarnation (see [`Revision`]).
    ///
    /// `rng` must be a cryptographically secure generator seeded from the
    /// operating system, such as `rand::rng()`. The `CryptoRng` bound is only
    /// a marker: a generator seeded with a known value makes every token it
    /// draws predictable, and the public token ids in events give away its
    /// position. Seeded generators are for tests.
    ///
    /// # Errors
    ///
    /// Nothing is issued when the input could not make a key that can be
    /// stored: [`TransitionError::InvalidLabel`],
    /// [`TransitionError::InvalidPolicy`], or
    /// [`TransitionError::TimeOutOfRange`] for a `now` (or a due date) outside
    /// the years 1 to 9999.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, NewKey, TransitionError};
    /// use time::OffsetDateTime;
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let (key, token, _event) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
    /// assert!(key.verify(token.expose_secret(), now).is_ok());
    ///
    /// let bad = NewKey::new(KeyId::new("acme")?).label("line\nbreak");
    /// assert!(matches!(
    ///     ApiKey::issue(bad, now, &mut rand::rng()),
    ///     Err(TransitionError::InvalidLabel(_))
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn issue<R: rand_core::CryptoRng + ?Sized>(
        new: impl Into<NewKey>,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(ApiKey, Token, Event), TransitionError> {
        let NewKey {
            id,
            label,
            policy,
            scopes,
            metadata,
            expires_at,
        } = new.into();
        let label = input::check_label(label)?;
        input::check_policy(&policy)?;
        let now = input::instant(now, NOW)?;
        let expires_at = expires_at
            .map(|at| input::instant(at, EXPIRY))
            .transpose()?;
        let due_at = input::due_date(now, &policy)?;
        let (token, hash) = policy.token_format.generate(&id, rng);
        let key = ApiKey {
            current: TokenInfo::new(&token, hash, now, due_at),
            id,
            label,
            status: KeyStatus::Active,
            incarnation: rng.next_u64() >> 1,
            version: 1,
            created_at: now,
            policy,
            scopes,
            metadata,
            expires_at,
            renewal: None,
        };
        let event = Event::KeyIssued {
            key_id: key.id.clone(),
            at: now,
            version: key.version,
            label: key.label.to_string(),
            token_id: key.current.id,
            scopes: key.scopes.clone(),
            metadata: key.metadata.clone(),
            expires_at: key.expires_at,
        };
        Ok((key, token, event))
    }

    /// The key's public id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The label given at issue.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Active or inactive.
    pub fn status(&self) -> KeyStatus {
        self.status
    }

    /// `Single`, or `Renewing` with the decision about the old token.
    pub fn state(&self) -> KeyState {
        match &self.renewal {
            None => KeyState::Single,
            Some(renewal) => KeyState::Renewing {
                decision: renewal.decision,
            },
        }
    }

    /// 1 after issue, one more after each successful transition; never
    /// changed by a refused transition or by `verify`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The key's incarnation and version: what stores compare before they
    /// replace or delete it (optimistic concurrency).
    pub fn revision(&self) -> Revision {
        Revision::new(self.incarnation, self.version)
    }

    /// When the key was issued.
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// The policy the key was issued under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What the key may do.
    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }

    /// Whose the key is, or anything else the service keeps on it.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The key's hard expiry: from this instant on it verifies nothing.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    /// Whether the key is past its hard expiry at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Changes the label.
    ///
    /// # Errors
    ///
    /// [`TransitionError::InvalidLabel`], [`TransitionError::TimeOutOfRange`].
    pub fn set_label(
        &mut self,
        label: impl Into<String>,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        self.label = input::check_label(label.into())?;
        let version = self.bump();
        Ok(Event::LabelChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            label: self.label.to_string(),
        })
    }

    /// Replaces the key's scopes. A renewal, finalize, undo, activate or
    /// deactivate never changes them.
    ///
    /// # Errors
    ///
    /// [`TransitionError::TimeOutOfRange`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, Scopes};
    /// use time::OffsetDateTime;
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let (mut key, _, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
    /// key.set_scopes(Scopes::new(["orders:read"])?, now)?;
    /// assert!(key.scopes().contains("orders:read"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_scopes(
        &mut self,
        scopes: Scopes,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        self.scopes = scopes;
        let version = self.bump();
        Ok(Event::ScopesChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            scopes: self.scopes.clone(),
        })
    }

    /// Replaces the key's metadata.
    ///
    /// # Errors
    ///
    /// [`TransitionError::TimeOutOfRange`].
    pub fn set_metadata(
        &mut self,
        metadata: Metadata,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        self.metadata = metadata;
        let version = self.bump();
        Ok(Event::MetadataChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            metadata: self.metadata.clone(),
        })
    }

    /// Moves (`Some`) or removes (`None`) the key's hard expiry; an instant
    /// not after `now` expires the key at once.
    ///
    /// # Errors
    ///
    /// [`TransitionError::TimeOutOfRange`] for a `now` or an expiry outside
    /// the years 1 to 9999.
    pub fn set_expiry(
        &mut self,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        let expires_at = expires_at
            .map(|at| input::instant(at, EXPIRY))
            .transpose()?;
        self.expires_at = expires_at;
        let version = self.bump();
        Ok(Event::ExpiryChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            expires_at,
        })
    }

    /// The current token: the only one, or the new one while renewing.
    pub fn current_token(&self) -> &TokenInfo {
        &self.current
    }

    /// The old token, while a renewal is pending.
    pub fn old_token(&self) -> Option<&TokenInfo> {
        self.renewal.as_ref().map(|r| &r.old)
    }

    /// Renews the key: a new token becomes current and the previous one
    /// stays valid as the old token. The new token is shown only here.
    ///
    /// If the current token was revoked, it is replaced outright: the key
    /// ends `Single`, with the new token only (`TokenRenewed` says so).
    ///
    /// `rng` must be seeded by the operating system: see [`Token`].
    ///
    /// # Errors
    ///
    /// [`TransitionError::KeyExpired`] past the key's hard expiry (checked
    /// first); [`TransitionError::RenewalPending`] while a previous renewal
    /// still has its old token; [`TransitionError::TimeOutOfRange`].
    pub fn renew<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), TransitionError> {
        let now = input::instant(now, NOW)?;
        if let Some(expires_at) = self.expires_at.filter(|&at| now >= at) {
            return Err(TransitionError::KeyExpired { expires_at });
        }
        if self.renewal.is_some() {
            return Err(TransitionError::RenewalPending);
        }
        let due_at = input::due_date(now, &self.policy)?;
        let (token, hash) = self.policy.token_format.generate(&self.id, rng);
        let new = TokenInfo::new(&token, hash, now, due_at);
        let previous = std::mem::replace(&mut self.current, new);
        let old_token_id = previous.id;
        let previous_revoked = previous.revoked_at.is_some();
        if !previous_revoked {
            self.renewal = Some(Box::new(Renewal {
                old: previous,
                decision: Decision::Undecided,
            }));
        }
        let version = self.bump();
        let event = Event::TokenRenewed {
            key_id: self.id.clone(),
            at: now,
            version,
            new_token_id: token.id(),
            old_token_id,
            previous_revoked,
        };
        Ok((token, event))
    }

    /// Decides what happens to the old token of a pending renewal:
    /// [`OldTokenDeletion::Now`] deletes it, [`OldTokenDeletion::Later`]
    /// keeps it until [`delete_old`](ApiKey::delete_old),
    /// [`OldTokenDeletion::At`] schedules its deletion and
    /// [`OldTokenDeletion::AfterNewTokenUse`] schedules it once the new token
    /// is used. Deleting now emits `OldTokenDeleted`; the other modes emit
    /// `RenewalFinalized`.
    ///
    /// # Errors
    ///
    /// [`TransitionError::NoRenewalPending`] with no renewal pending;
    /// [`TransitionError::AlreadyFinalized`] when it was already decided;
    /// [`TransitionError::InvalidGrace`] for a negative grace;
    /// [`TransitionError::TimeOutOfRange`] for a `now` or an `At` instant
    /// outside the years 1 to 9999.
    pub fn finalize(
        &mut self,
        deletion: OldTokenDeletion,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        let deletion = match deletion {
            OldTokenDeletion::At(at) => {
                OldTokenDeletion::At(input::instant(at, "the deletion time")?)
            }
            OldTokenDeletion::AfterNewTokenUse { grace } if grace.is_negative() => {
                return Err(TransitionError::InvalidGrace { grace });
            }
            other => other,
        };
        let renewal = self
            .renewal
            .as_mut()
            .ok_or(TransitionError::NoRenewalPending)?;
        if renewal.decision != Decision::Undecided {
            return Err(TransitionError::AlreadyFinalized);
        }
        renewal.decision = match deletion {
            OldTokenDeletion::Later => Decision::Later,
            OldTokenDeletion::At(at) if at > now => Decision::Scheduled { at },
            OldTokenDeletion::AfterNewTokenUse { grace } => Decision::AfterNewTokenUse { grace },
            // `Now`, or an instant already past.
            OldTokenDeletion::Now | OldTokenDeletion::At(_) => {
                let old = renewal.old.id;
                self.renewal = None;
                return Ok(self.old_deleted(old, DeletionReason::FinalizedNow, now));
            }
        };
        let version = self.bump();
        Ok(Event::RenewalFinalized {
            key_id: self.id.clone(),
            at: now,
            version,
            deletion,
        })
    }

    /// Deletes the old token, irreversibly. Make sure no integration still
    /// uses it.
    ///
    /// # Errors
    ///
    /// [`TransitionError::NoOldToken`] with no renewal pending;
    /// [`TransitionError::TimeOutOfRange`].
    pub fn delete_old(&mut self, now: OffsetDateTime) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        let renewal = self.renewal.take().ok_or(TransitionError::NoOldToken)?;
        Ok(self.old_deleted(renewal.old.id, DeletionReason::Manual, now))
    }

    /// Undoes a pending renewal: the old token becomes the only token again
    /// and the new one stops verifying at once. Possible in every deletion
    /// mode while the old token exists.
    ///
    /// # Errors
    ///
    /// [`TransitionError::NoOldToken`] once the old token is gone (deleted,
    /// or past its scheduled deletion): renew again or delete the key;
    /// [`TransitionError::TimeOutOfRange`].
    pub fn undo_renewal(&mut self, now: OffsetDateTime) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        let Renewal { old, .. } = *self
            .renewal
            .take_if(|r| r.live_old_token(now).is_some())
            .ok_or(TransitionError::NoOldToken)?;
        let discarded = std::mem::replace(&mut self.current, old);
        let version = self.bump();
        Ok(Event::RenewalUndone {
            key_id: self.id.clone(),
            at: now,
            version,
            discarded_token_id: discarded.id,
            restored_token_id: self.current.id,
        })
    }

    /// Deactivates the key: every request made with it fails until it is
    /// activated again.
    ///
    /// # Errors
    ///
    /// [`TransitionError::AlreadyInactive`]; [`TransitionError::TimeOutOfRange`].
    pub fn deactivate(&mut self, now: OffsetDateTime) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        if self.status == KeyStatus::Inactive {
            return Err(TransitionError::AlreadyInactive);
        }
        self.status = KeyStatus::Inactive;
        let version = self.bump();
        Ok(Event::KeyDeactivated {
            key_id: self.id.clone(),
            at: now,
            version,
        })
    }

    /// Activates a deactivated key.
    ///
    /// # Errors
    ///
    /// [`TransitionError::AlreadyActive`]; [`TransitionError::TimeOutOfRange`].
    pub fn activate(&mut self, now: OffsetDateTime) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        if self.status == KeyStatus::Active {
            return Err(TransitionError::AlreadyActive);
        }
        self.status = KeyStatus::Active;
        let version = self.bump();
        Ok(Event::KeyActivated {
            key_id: self.id.clone(),
            at: now,
            version,
        })
    }

    /// Deletes the old token like [`delete_old`](ApiKey::delete_old), unless
    /// it was used less than `min_idle` before `now`: the safe way to clean
    /// up once no integration uses it. A token never used counts as idle.
    ///
    /// # Errors
    ///
    /// [`TransitionError::NoOldToken`] with no renewal pending;
    /// [`TransitionError::OldTokenInUse`] when it was used too recently;
    /// [`TransitionError::TimeOutOfRange`].
    pub fn delete_old_if_idle(
        &mut self,
        min_idle: Duration,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        let old = self.old_token().ok_or(TransitionError::NoOldToken)?;
        if let Some(last_used_at) = old.last_used_at
            && now < last_used_at.saturating_add(min_idle)
        {
            return Err(TransitionError::OldTokenInUse { last_used_at });
        }
        self.delete_old(now)
    }

    /// Records a use of the token `matched` (as returned by
    /// [`verify`](ApiKey::verify)) and returns whether the key changed, in
    /// which case the caller should store it.
    ///
    /// To keep a busy key from being written on every request, a use changes
    /// the key only when the token was never used, when its last recorded use
    /// is at least the policy's `usage_resolution` old, or when it is the
    /// first use of the new token under
    /// [`Decision::AfterNewTokenUse`], which schedules the old token's
    /// deletion at `now + grace` (saturated at the end of year 9999). A
    /// change bumps the version like a transition, but emits no event. A
    /// `now` outside the years 1 to 9999 changes nothing.
    pub fn record_use(&mut self, matched: TokenMatch, now: OffsetDateTime) -> bool {
        let Some(now) = input::in_range(now) else {
            return false;
        };
        let resolution = self.policy.usage_resolution;
        let (token, schedule) = match (matched, &mut self.renewal) {
            (TokenMatch::Current, Some(renewal)) => match renewal.decision {
                Decision::AfterNewTokenUse { grace } => {
                    renewal.decision = Decision::Scheduled {
                        at: input::saturating_add(now, grace),
                    };
                    (&mut self.current, true)
                }
                _ => (&mut self.current, false),
            },
            (TokenMatch::Current, None) => (&mut self.current, false),
            (TokenMatch::Old, Some(renewal)) => (&mut renewal.old, false),
            (TokenMatch::Old, None) => return false,
        };
        let stale = token
            .last_used_at
            .is_none_or(|last| now >= last.saturating_add(resolution));
        if stale || schedule {
            token.last_used_at = Some(now);
            self.bump();
        }
        stale || schedule
    }

    /// Applies a scheduled deletion of the old token that is due at `now`,
    /// returning its `OldTokenDeleted` event; `None` (and no change) when
    /// nothing is due. [`verify`](ApiKey::verify) already refuses a token
    /// past its scheduled deletion; this removes it from the key. A `now`
    /// outside the years 1 to 9999 changes nothing.
    pub fn housekeep(&mut self, now: OffsetDateTime) -> Option<Event> {
        let now = input::in_range(now)?;
        // An old token that is no longer live is one whose deletion is due.
        let due = self.renewal.take_if(|r| r.live_old_token(now).is_none())?;
        Some(self.old_deleted(due.old.id, DeletionReason::Scheduled, now))
    }

    /// Revokes the live token that `presented` matches, whatever the key's
    /// status or expiry: the response to a leaked token. An old token is
    /// deleted (as by [`delete_old`](ApiKey::delete_old)); the current token
    /// is marked revoked ([`TokenInfo::revoked_at`]) and never verifies
    /// again, whatever follows: renew then replaces it outright. Returns one
    /// `TokenRevoked` event. A `now` outside the years 1 to 9999 is clamped
    /// into them.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`] for a token that is not well-formed for
    /// this key's format; [`VerifyError::Mismatch`] for anything that is not
    /// a live token of this key (a wrong token, another key's, one already
    /// revoked or deleted). The key is unchanged.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, VerifyError};
    /// use time::OffsetDateTime;
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let (mut key, leaked, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
    /// key.revoke_token(leaked.expose_secret(), now)?;
    /// assert_eq!(key.verify(leaked.expose_secret(), now), Err(VerifyError::Mismatch));
    /// assert!(key.current_token().revoked_at().is_some());
    ///
    /// // A renewal replaces the revoked token outright.
    /// let (fresh, _) = key.renew(now, &mut rand::rng())?;
    /// assert!(key.verify(fresh.expose_secret(), now).is_ok());
    /// assert!(key.old_token().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn revoke_token(
        &mut self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Event, VerifyError> {
        let now = input::clamp(now);
        let (is_current, is_old, _) = self.view().compare(presented, now)?;
        // Revocation is not the hot path, and what matched is no secret once
        // the call returns.
        let (token_id, which) = if bool::from(is_current) {
            self.current.revoked_at = Some(now);
            (self.current.id, TokenMatch::Current)
        } else if bool::from(is_old) {
            let renewal = self
                .renewal
                .take()
                .unwrap_or_else(|| unreachable!("a live old token was matched"));
            (renewal.old.id, TokenMatch::Old)
        } else {
            return Err(VerifyError::Mismatch);
        };
        let version = self.bump();
        Ok(Event::TokenRevoked {
            key_id: self.id.clone(),
            at: now,
            version,
            token_id,
            which,
        })
    }

    /// Deletes the key, irreversibly, and returns its `KeyDeleted` event. A
    /// store removes its record; the managers do both.
    ///
    /// # Errors
    ///
    /// [`TransitionError::TimeOutOfRange`].
    pub fn delete(self, now: OffsetDateTime) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        Ok(Event::KeyDeleted {
            key_id: self.id,
            at: now,
            version: self.version + 1,
        })
    }

    /// Completes the deletion of the old token `old`, already removed.
    fn old_deleted(&mut self, old: TokenId, reason: DeletionReason, now: OffsetDateTime) -> Event {
        let version = self.bump();
        Event::OldTokenDeleted {
            key_id: self.id.clone(),
            at: now,
            version,
            token_id: old,
            reason,
        }
    }

    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}
