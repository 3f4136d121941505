//! [`ApiKey`]: the renewal state machine.
//!
//! A key holds a current token and, while a renewal is pending, an old one.
//! Every transition is a `&mut self` method that either succeeds with exactly
//! one [`Event`] and a version one higher, or returns a [`TransitionError`]
//! and leaves the key exactly as it was.

use time::{Duration, OffsetDateTime};

use crate::attributes::{Metadata, Scopes};
use crate::change::Settings;
use crate::errors::TransitionError;
use crate::event::{DeletionReason, Event};
use crate::id::{KeyId, OwnerId, TokenId};
use crate::input;
use crate::meter::{
    Allowance, Credits, CreditsPeriod, CreditsSetting, Limits, MAX_CREDITS, Meter, RateLimit,
    Refusal, StoredMeter,
};
use crate::networks::Networks;
use crate::new_key::NewKey;
use crate::notice::{NoticeClaims, NoticePolicy, Subject as NoticeSubject};
use crate::owner::{Charged, OwnerLimits};
use crate::policy::Policy;
use crate::revision::Revision;
use crate::state::{Decision, Freshness, KeyStatus, OldTokenDeletion, RenewalState, TokenMatch};
use crate::token::{Token, TokenHash};

mod apply;
mod verify;

pub use verify::Authenticated;
pub(crate) use verify::{KeyView, TokenView};

/// An API key: a stable public id, a label, a status and one or two tokens.
///
/// It holds no secret, only token hashes, so it can be cloned, logged and
/// stored freely. It reads no clock and no random source: `now` and `rng`
/// come from the caller.
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, KeyId, RenewalState, NewKey, OldTokenDeletion, TokenMatch};
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
/// assert_eq!(key.state(), RenewalState::Single);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: KeyId,
    label: Box<str>,
    status: KeyStatus,
    /// Random, below 2^63, fixed at issue: see [`Revision`].
    incarnation: u64,
    version: u64,
    created_at: OffsetDateTime,
    policy: Policy,
    scopes: Scopes,
    metadata: Metadata,
    expires_at: Option<OffsetDateTime>,
    current: TokenInfo,
    /// Boxed: most keys are not renewing, and a key stays small.
    renewal: Option<Box<Renewal>>,
    /// Boxed, and `None` rather than empty: most keys have no limits.
    limits: Option<Box<Limits>>,
    owner: Option<OwnerId>,
    /// The latest recorded use of any of its tokens, deleted ones included.
    last_used_at: Option<OffsetDateTime>,
    /// The settings it keeps only as data (networks, ...).
    settings: Settings,
    /// The notices it was sent; boxed, and `None` until its first.
    notices: Option<Box<NoticeClaims>>,
}

/// Every field of an [`ApiKey`], for the record codec and
/// `InMemoryStore`'s packed form: they take a key apart and put it back
/// together with [`ApiKey::into_parts`] and [`ApiKey::from_parts`], naming
/// every field, so that a new field breaks their build until they keep it.
/// `from_parts` checks nothing: the codec checks a loaded key after.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) id: KeyId,
    pub(crate) label: Box<str>,
    pub(crate) status: KeyStatus,
    pub(crate) incarnation: u64,
    pub(crate) version: u64,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) policy: Policy,
    pub(crate) scopes: Scopes,
    pub(crate) metadata: Metadata,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) current: TokenInfo,
    pub(crate) renewal: Option<Box<Renewal>>,
    pub(crate) limits: Option<Box<Limits>>,
    pub(crate) owner: Option<OwnerId>,
    pub(crate) last_used_at: Option<OffsetDateTime>,
    pub(crate) settings: Settings,
    pub(crate) notices: Option<Box<NoticeClaims>>,
}

impl ApiKey {
    /// The key's fields, moved out.
    pub(crate) fn into_parts(self) -> Parts {
        let ApiKey {
            id,
            label,
            status,
            incarnation,
            version,
            created_at,
            policy,
            scopes,
            metadata,
            expires_at,
            current,
            renewal,
            limits,
            owner,
            last_used_at,
            settings,
            notices,
        } = self;
        Parts {
            id,
            label,
            status,
            incarnation,
            version,
            created_at,
            policy,
            scopes,
            metadata,
            expires_at,
            current,
            renewal,
            limits,
            owner,
            last_used_at,
            settings,
            notices,
        }
    }

    /// The key these fields make, unchecked.
    pub(crate) fn from_parts(parts: Parts) -> ApiKey {
        let Parts {
            id,
            label,
            status,
            incarnation,
            version,
            created_at,
            policy,
            scopes,
            metadata,
            expires_at,
            current,
            renewal,
            limits,
            owner,
            last_used_at,
            settings,
            notices,
        } = parts;
        ApiKey {
            id,
            label,
            status,
            incarnation,
            version,
            created_at,
            policy,
            scopes,
            metadata,
            expires_at,
            current,
            renewal,
            limits,
            owner,
            last_used_at,
            settings,
            notices,
        }
    }
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

    /// This token's freshness at `now`: `Fresh` before `due_at`, `Outdated`
    /// from `due_at`, `LongOutdated` from 3 months (90 days) past `due_at`.
    pub fn freshness(&self, now: OffsetDateTime) -> Freshness {
        let due_at = self.due_at;
        if now < due_at {
            Freshness::Fresh { due_at }
        } else if now < due_at.saturating_add(Policy::THREE_MONTHS) {
            Freshness::Outdated { due_at }
        } else {
            Freshness::LongOutdated { due_at }
        }
    }

    /// When the token was revoked with [`ApiKey::revoke_token`]: from then
    /// on it never verifies again. Only a current token can be revoked and
    /// kept (a revoked old token is deleted).
    pub fn revoked_at(&self) -> Option<OffsetDateTime> {
        self.revoked_at
    }
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
    /// [`TransitionError::InvalidPolicy`], [`TransitionError::InvalidId`] for
    /// a key id or owner that only [`KeyId::existing`] takes, or
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
            rate_limit,
            credits,
            owner,
            settings,
        } = new.into();
        input::check_new_id(&id)?;
        if let Some(owner) = &owner {
            input::check_new_owner(owner)?;
        }
        let label = input::check_label(label)?;
        if let Some(credits) = &credits {
            check_credits(credits)?;
        }
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
            limits: None,
            owner,
            last_used_at: None,
            settings,
            notices: None,
        };
        let mut key = key;
        key.set_limits(Limits {
            rate: rate_limit,
            credits: credits.map(|credits| CreditsSetting {
                credits,
                set_at: now,
                generation: 1,
            }),
        });
        let event = Event::KeyIssued {
            key_id: key.id.clone(),
            at: now,
            version: key.version,
            label: key.label.to_string(),
            token_id: key.current.id,
            scopes: key.scopes.clone(),
            metadata: key.metadata.clone(),
            expires_at: key.expires_at,
            settings: key.settings.changes(),
        };
        Ok((key, token, event))
    }

    /// The networks the key's requests may come from, if it is limited to
    /// some: [`KeyManager::authenticate`](crate::KeyManager::authenticate)
    /// refuses a request from elsewhere, or that tells no address
    /// ([`Credentials::from_ip`](crate::Credentials::from_ip)), with
    /// [`VerifyError::NetworkNotAllowed`](crate::VerifyError::NetworkNotAllowed).
    /// Set them with [`Change::Networks`](crate::Change::Networks).
    pub fn networks(&self) -> Option<&Networks> {
        self.settings.networks()
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
    pub fn state(&self) -> RenewalState {
        match &self.renewal {
            None => RenewalState::Single,
            Some(renewal) => RenewalState::Renewing {
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

    /// Sets (`Some`) or removes (`None`) the key's owner.
    ///
    /// # Errors
    ///
    /// [`TransitionError::TimeOutOfRange`]; [`TransitionError::InvalidId`]
    /// for an owner made by [`OwnerId::existing`] that [`OwnerId::new`]
    /// refuses.
    pub fn set_owner(
        &mut self,
        owner: Option<OwnerId>,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        if let Some(owner) = &owner {
            input::check_new_owner(owner)?;
        }
        self.owner = owner;
        let version = self.bump();
        Ok(Event::OwnerChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            owner: self.owner.clone(),
        })
    }

    /// Whom the key belongs to, if anyone.
    pub fn owner(&self) -> Option<&OwnerId> {
        self.owner.as_ref()
    }

    /// Sets (`Some`) or removes (`None`) the key's rate limit. The bucket
    /// is kept: the new limit and burst apply from the next charge.
    ///
    /// # Errors
    ///
    /// [`TransitionError::TimeOutOfRange`].
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::meter::RateLimit;
    /// use keyroll::{ApiKey, KeyId};
    /// use time::{Duration, OffsetDateTime};
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let (mut key, _, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
    /// key.set_rate_limit(Some(RateLimit::new(100, Duration::MINUTE)?), now)?;
    /// assert_eq!(key.rate_limit().map(|r| r.burst()), Some(100));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_rate_limit(
        &mut self,
        rate_limit: Option<RateLimit>,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        let mut limits = self.limits.as_deref().cloned().unwrap_or_default();
        limits.rate = rate_limit;
        self.set_limits(limits);
        let version = self.bump();
        Ok(Event::RateLimitChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            rate_limit,
        })
    }

    /// Sets (`Some`) or removes (`None`) the key's credits. Setting them
    /// starts the balance over at `credits.remaining()` (at the key's next
    /// charge, whatever was spent before), and refills count from `now`.
    ///
    /// # Errors
    ///
    /// [`TransitionError::InvalidCredits`] for a balance above
    /// [`MAX_CREDITS`](crate::meter::MAX_CREDITS);
    /// [`TransitionError::TimeOutOfRange`].
    pub fn set_credits(
        &mut self,
        credits: Option<Credits>,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        if let Some(credits) = &credits {
            check_credits(credits)?;
        }
        let mut limits = self.limits.as_deref().cloned().unwrap_or_default();
        let version = self.version + 1;
        limits.credits = credits.map(|credits| CreditsSetting {
            credits,
            set_at: now,
            generation: version,
        });
        self.set_limits(limits);
        self.bump();
        Ok(Event::CreditsSet {
            key_id: self.id.clone(),
            at: now,
            version,
            credits,
        })
    }

    /// The key's rate limit, if any.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.limits.as_deref().and_then(|l| l.rate.as_ref())
    }

    /// The key's credits as set, if any (what remains is the store's: see
    /// [`KeyManager::allowance`](crate::KeyManager::allowance)).
    pub fn credits(&self) -> Option<&Credits> {
        self.limits
            .as_deref()
            .and_then(|l| l.credits.as_ref())
            .map(|c| &c.credits)
    }

    /// When the key's credits were set: their refills count from then.
    pub fn credits_set_at(&self) -> Option<OffsetDateTime> {
        self.limits
            .as_deref()
            .and_then(|l| l.credits.as_ref())
            .map(|c| c.set_at)
    }

    /// Whether the key has a rate limit or credits, and so is charged on
    /// authentication.
    pub fn is_metered(&self) -> bool {
        self.limits.is_some()
    }

    /// Charges `cost` to the key's limits, on the meter a store keeps
    /// beside it (`None`: a full one): the meter to store if admitted, and
    /// what it allows. This is what [`KeyStore::charge`] implementations
    /// run under their own atomicity (a lock, a transaction). A key
    /// without limits admits anything, and hands back the meter unchanged.
    ///
    /// [`KeyStore::charge`]: crate::store::KeyStore::charge
    ///
    /// # Errors
    ///
    /// A [`Refusal`]; then nothing is to be stored.
    pub fn charge(
        &self,
        stored: Option<&StoredMeter>,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<(StoredMeter, Allowance), Refusal> {
        match self.limits.as_deref() {
            Some(limits) => limits.charge(stored, cost, now),
            // Nothing to count, so no cost to check, and the meter as it
            // was (a limit set again finds its bucket): stores skip such
            // keys.
            None => Ok((
                stored
                    .cloned()
                    .unwrap_or_else(|| StoredMeter::new(0, Meter::new(None, now))),
                Allowance::default(),
            )),
        }
    }

    /// Charges `cost` to the key's limits and to those of its owner,
    /// both or neither: what [`KeyStore::charge`] implementations run
    /// under their own atomicity once they read the key's meter
    /// (`meter`) and, for a key with an owner, the owner's limits and
    /// meter (`owner`, `None` when the owner has none stored). Each
    /// meter charged is to be stored; a side without limits is left
    /// alone (`None` in [`Charged`]).
    ///
    /// [`KeyStore::charge`]: crate::store::KeyStore::charge
    ///
    /// # Errors
    ///
    /// The [`Refusal`] of the key's limits, or else of its owner's (its
    /// `subject` tells which); then nothing is to be stored.
    pub fn charge_with_owner(
        &self,
        meter: Option<&StoredMeter>,
        owner: Option<(&OwnerLimits, Option<&StoredMeter>)>,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Charged, Refusal> {
        let owner = self
            .owner
            .as_ref()
            .zip(owner)
            .map(|(id, (limits, meter))| (id, limits, meter));
        let limits = self.limits.as_deref().map(|limits| (limits, meter));
        crate::owner::charge_both(limits, owner, cost, now)
    }

    /// Gives back `amount` credits that a charge took in `period` (from
    /// [`Allowance::credits_period`](crate::meter::Allowance::credits_period))
    /// and nothing spent, on the meter a store keeps beside the key: the
    /// meter to store, or `None` when the refund is void (the key has no
    /// credits or no meter, the credits were set again, or a refill came
    /// since: credits never cross into another period). Never above what
    /// the period started with. This is what
    /// [`KeyStore::refund`](crate::store::KeyStore::refund) implementations
    /// run under their own atomicity.
    pub fn refund(
        &self,
        stored: Option<&StoredMeter>,
        amount: u64,
        period: CreditsPeriod,
    ) -> Option<StoredMeter> {
        self.limits.as_deref()?.refund(stored, amount, period)
    }

    /// What the key's limits allow at `now`, on the stored meter, without
    /// charging.
    pub fn allowance(&self, stored: Option<&StoredMeter>, now: OffsetDateTime) -> Allowance {
        self.limits
            .as_deref()
            .unwrap_or(&Limits::default())
            .peek(stored, now)
    }

    /// Claims the notices due at `now` under `policy` ([`NoticePolicy`]),
    /// with `stored` the meter kept beside the key: the events, the
    /// claims kept in the key and its version bumped, or none and the key
    /// unchanged. Inactive keys get none. What
    /// [`KeyManager::sweep_notices`](crate::KeyManager::sweep_notices)
    /// writes, with the compare-and-swap that makes each notice claimed
    /// once.
    pub fn claim_notices(
        &mut self,
        policy: &NoticePolicy,
        stored: Option<&StoredMeter>,
        now: OffsetDateTime,
    ) -> Vec<Event> {
        if self.status != KeyStatus::Active {
            return Vec::new();
        }
        let allowance = self.allowance(stored, now);
        let mut claims = self.notices.as_deref().cloned().unwrap_or_default();
        let subject = NoticeSubject {
            key_id: &self.id,
            expires_at: self.expires_at,
            token_id: self.current.id,
            due_at: self.current.due_at,
            allowance: &allowance,
        };
        let events = claims.claim(policy, &subject, now, self.version + 1);
        if !events.is_empty() {
            self.notices = Some(Box::new(claims));
            self.bump();
        }
        events
    }

    /// The key's limits, if it has any.
    #[cfg(feature = "serde")]
    pub(crate) fn limits(&self) -> Option<&Limits> {
        self.limits.as_deref()
    }

    /// Keeps `limits`, or none when they are empty.
    fn set_limits(&mut self, limits: Limits) {
        self.limits = (!limits.is_empty()).then(|| Box::new(limits));
    }

    /// The freshness of the current token at `now`. See
    /// [`TokenInfo::freshness`].
    pub fn freshness(&self, now: OffsetDateTime) -> Freshness {
        self.current.freshness(now)
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
    /// stays valid as the old token, until [`finalize`](ApiKey::finalize),
    /// [`delete_old`](ApiKey::delete_old) or [`undo_renewal`](ApiKey::undo_renewal)
    /// decides its fate. The new token is shown only here.
    /// [`renew_with`](ApiKey::renew_with) renews and decides in one step.
    ///
    /// If the current token was revoked, it is replaced outright: the key
    /// ends `Single`, with the new token only (`TokenRenewed` says so). If
    /// the only obstacle is an old token whose scheduled deletion is due,
    /// the deletion is applied first, in the same transition (the event
    /// names the token deleted as scheduled).
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
        self.renew_deciding(None, now, rng)
    }

    /// Renews the key and decides what becomes of the old token, in one
    /// transition: one version, one `TokenRenewed` event carrying the
    /// choice. [`OldTokenDeletion::Now`] (or an instant not after `now`)
    /// leaves only the new token; the other choices keep the old token as
    /// [`finalize`](ApiKey::finalize) would. When there is no old token to
    /// keep (the current one was revoked), the choice is moot and the call
    /// succeeds all the same. Otherwise as [`renew`](ApiKey::renew).
    ///
    /// # Errors
    ///
    /// As [`renew`](ApiKey::renew); [`TransitionError::InvalidGrace`] for a
    /// negative grace and [`TransitionError::TimeOutOfRange`] for an `At`
    /// instant outside the years 1 to 9999, checked before anything
    /// changes.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, OldTokenDeletion, RenewalState, VerifyError};
    /// use time::OffsetDateTime;
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let (mut key, first, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
    /// let (second, _) = key.renew_with(OldTokenDeletion::Now, now, &mut rand::rng())?;
    /// assert_eq!(key.state(), RenewalState::Single);
    /// assert_eq!(key.verify(first.expose_secret(), now), Err(VerifyError::Mismatch));
    /// assert!(key.verify(second.expose_secret(), now).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn renew_with<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        deletion: OldTokenDeletion,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), TransitionError> {
        self.renew_deciding(Some(deletion), now, rng)
    }

    /// `renew`, and with `deletion`, `renew_with`.
    fn renew_deciding<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        deletion: Option<OldTokenDeletion>,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Result<(Token, Event), TransitionError> {
        let now = input::instant(now, NOW)?;
        let deletion = deletion.map(checked_deletion).transpose()?;
        if let Some(expires_at) = self.expires_at.filter(|&at| now >= at) {
            return Err(TransitionError::KeyExpired { expires_at });
        }
        // An old token past its scheduled deletion no longer verifies: it
        // blocks nothing.
        let due = self
            .renewal
            .as_ref()
            .filter(|r| r.live_old_token(now).is_none())
            .map(|r| r.old.id);
        if self.renewal.is_some() && due.is_none() {
            return Err(TransitionError::RenewalPending);
        }
        let due_at = input::due_date(now, &self.policy)?;
        self.renewal = None;
        let (token, hash) = self.policy.token_format.generate(&self.id, rng);
        let new = TokenInfo::new(&token, hash, now, due_at);
        let previous = std::mem::replace(&mut self.current, new);
        let old_token_id = previous.id;
        let previous_revoked = previous.revoked_at.is_some();
        let decision = match deletion {
            None => Some(Decision::Undecided),
            Some(deletion) => decision_of(deletion, now),
        };
        if let (false, Some(decision)) = (previous_revoked, decision) {
            self.renewal = Some(Box::new(Renewal {
                old: previous,
                decision,
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
            deletion,
            deleted_as_scheduled: due,
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
        let deletion = checked_deletion(deletion)?;
        let renewal = self
            .renewal
            .as_mut()
            .ok_or(TransitionError::NoRenewalPending)?;
        if renewal.decision != Decision::Undecided {
            return Err(TransitionError::AlreadyFinalized);
        }
        renewal.decision = match decision_of(deletion, now) {
            Some(decision) => decision,
            None => {
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
            self.last_used_at = self.last_used_at.max(Some(now));
            self.bump();
        }
        stale || schedule
    }

    /// The key's latest recorded use, by whichever token, including one
    /// deleted since (each token's own is
    /// [`TokenInfo::last_used_at`]): deleting an old token never makes a
    /// busy key look unused.
    pub fn last_used_at(&self) -> Option<OffsetDateTime> {
        // `record_use` keeps it at least its tokens'; so do the codec and
        // the packed form when they load a key.
        self.last_used_at
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

    pub(crate) fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

/// `credits`, refused if a key cannot hold them.
fn check_credits(credits: &Credits) -> Result<(), TransitionError> {
    if credits.remaining() > MAX_CREDITS {
        return Err(TransitionError::InvalidCredits {
            remaining: credits.remaining(),
        });
    }
    Ok(())
}

/// `deletion`, refused if it could not be kept: a negative grace, an
/// instant outside the years 1 to 9999.
fn checked_deletion(deletion: OldTokenDeletion) -> Result<OldTokenDeletion, TransitionError> {
    match deletion {
        OldTokenDeletion::At(at) => Ok(OldTokenDeletion::At(input::instant(
            at,
            "the deletion time",
        )?)),
        OldTokenDeletion::AfterNewTokenUse { grace } if grace.is_negative() => {
            Err(TransitionError::InvalidGrace { grace })
        }
        other => Ok(other),
    }
}

/// What `deletion`, chosen at `now`, decides about an old token; `None`:
/// delete it now (`Now`, or an instant not after `now`).
fn decision_of(deletion: OldTokenDeletion, now: OffsetDateTime) -> Option<Decision> {
    match deletion {
        OldTokenDeletion::Later => Some(Decision::Later),
        OldTokenDeletion::At(at) if at > now => Some(Decision::Scheduled { at }),
        OldTokenDeletion::AfterNewTokenUse { grace } => Some(Decision::AfterNewTokenUse { grace }),
        OldTokenDeletion::Now | OldTokenDeletion::At(_) => None,
    }
}

impl ApiKey {
    /// Every invariant a key built by transitions keeps, or what breaks one.
    #[cfg(feature = "serde")]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        if self.incarnation > i64::MAX as u64 {
            return Err(format!("incarnation {} is out of range", self.incarnation));
        }
        // Each of these took a transition of its own (a renewal and its
        // decision may take one: `renew_with`).
        let min_version =
            1 + u64::from(self.renewal.is_some()) + u64::from(self.status == KeyStatus::Inactive);
        if self.version < min_version {
            return Err(format!(
                "version {} is too low for the key's state (at least {min_version})",
                self.version
            ));
        }
        if self.version > i64::MAX as u64 {
            return Err(format!("version {} is out of range", self.version));
        }
        if let Some(credits) = self.limits.as_deref().and_then(|l| l.credits.as_ref()) {
            if credits.credits.remaining() > MAX_CREDITS {
                return Err(format!(
                    "credits {} are above {MAX_CREDITS}",
                    credits.credits.remaining()
                ));
            }
            if !(1..=self.version).contains(&credits.generation) {
                return Err(format!(
                    "the credits' generation {} is not a version of the key (1 to {})",
                    credits.generation, self.version
                ));
            }
        }
        let mut tokens = vec![("current", &self.current)];
        if let Some(renewal) = &self.renewal {
            if renewal.old.id == self.current.id {
                return Err("the current and the old token have the same id".into());
            }
            if bool::from(renewal.old.hash.ct_eq(&self.current.hash)) {
                return Err("the current and the old token have the same hash".into());
            }
            if renewal.old.revoked_at.is_some() {
                return Err(
                    "the old token is marked revoked (a revoked old token is deleted)".into(),
                );
            }
            tokens.push(("old", &renewal.old));
        }
        for (which, token) in tokens {
            if token.due_at != token.created_at.saturating_add(self.policy.renewal_period) {
                return Err(format!(
                    "the {which} token's due date is not its creation plus the renewal period"
                ));
            }
        }
        Ok(())
    }
}
