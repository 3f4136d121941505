//! Verification of a presented token against a key, what a successful one
//! hands out ([`Authenticated`]), and the revocation of a leaked token,
//! which finds its token the same way.

use subtle::Choice;
use time::OffsetDateTime;

use super::ApiKey;
use crate::attributes::{Metadata, Scopes};
use crate::errors::VerifyError;
use crate::event::Event;
use crate::id::{KeyId, TokenId};
use crate::input;
use crate::meter::Allowance;
use crate::networks::Networks;
use crate::policy::{Policy, RenewalEnforcement};
use crate::state::{Decision, KeyStatus, TokenMatch};
use crate::token::{PresentedToken, TokenHash};

/// Who a request authenticated as: the key, which of its tokens matched,
/// and what the key may do and whose it is.
///
/// Returned by [`KeyManager::authenticate`](crate::KeyManager::authenticate)
/// and by stores that verify in place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Authenticated {
    /// The key the token belongs to.
    pub key_id: KeyId,
    /// Which of the key's tokens matched: `Old` tells that the caller uses
    /// the old token of a pending renewal and should move to the new one.
    pub matched: TokenMatch,
    /// The public id of the token that matched (what a log line may name;
    /// usage recording notes uses by it).
    pub token_id: TokenId,
    /// What the key may do (shared with the key, not copied).
    pub scopes: Scopes,
    /// Whose the key is (shared with the key, not copied).
    pub metadata: Metadata,
    /// What the key's rate limit and credits allow after this request was
    /// charged (empty for a key without limits).
    pub allowance: Allowance,
    /// The networks the key's requests may come from, if it has any
    /// (shared with the key, not copied): the manager refuses a request
    /// from elsewhere. [`Verification::of`] sets them; a store that builds
    /// its own answers must too (the conformance suite checks it).
    ///
    /// [`Verification::of`]: crate::store::Verification::of
    pub networks: Option<Networks>,
    /// The key's incarnation: usage counts are kept under it.
    pub(crate) incarnation: u64,
    /// Whether the key has limits: the manager then charges it.
    pub(crate) metered: bool,
}

impl Authenticated {
    /// Authentication as `key_id` with its `matched` token `token_id`, with
    /// the key's scopes and metadata: for stores and tests that build one.
    pub fn new(
        key_id: KeyId,
        matched: TokenMatch,
        token_id: TokenId,
        scopes: Scopes,
        metadata: Metadata,
    ) -> Authenticated {
        Authenticated {
            key_id,
            matched,
            token_id,
            scopes,
            metadata,
            allowance: Allowance::default(),
            networks: None,
            incarnation: 0,
            metered: false,
        }
    }

    /// The same, of the key's `incarnation`: the usage counts of the
    /// request are kept under it. [`Verification::of`] does this; a store
    /// that builds its own answers must too, or their counts are lost.
    ///
    /// [`Verification::of`]: crate::store::Verification::of
    pub fn with_incarnation(mut self, incarnation: u64) -> Authenticated {
        self.incarnation = incarnation;
        self
    }

    /// The same, for a key with a rate limit or credits: the manager then
    /// charges the request to key `incarnation` ([`KeyStore::charge`]).
    /// [`Verification::of`] does this; a store that builds its own answers
    /// must too, or its keys' limits are never applied.
    ///
    /// [`KeyStore::charge`]: crate::store::KeyStore::charge
    /// [`Verification::of`]: crate::store::Verification::of
    pub fn charged_to(self, incarnation: u64) -> Authenticated {
        Authenticated {
            metered: true,
            ..self.with_incarnation(incarnation)
        }
    }
}

impl ApiKey {
    /// Verifies a presented token against the key: [`PresentedToken::parse`],
    /// then [`verify_presented`](ApiKey::verify_presented).
    ///
    /// # Errors
    ///
    /// As [`verify_presented`](ApiKey::verify_presented), and
    /// [`VerifyError::Malformed`] for a string that is not a well-formed
    /// token.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, TokenMatch, VerifyError};
    /// use time::OffsetDateTime;
    ///
    /// let now = OffsetDateTime::now_utc();
    /// let (key, token, _) = ApiKey::issue(KeyId::new("k")?, now, &mut rand::rng())?;
    /// assert_eq!(key.verify(token.expose_secret(), now), Ok(TokenMatch::Current));
    /// assert_eq!(key.verify("kr_typo", now), Err(VerifyError::Malformed));
    ///
    /// let (_, other, _) = ApiKey::issue(KeyId::new("other")?, now, &mut rand::rng())?;
    /// assert_eq!(key.verify(other.expose_secret(), now), Err(VerifyError::Mismatch));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(&self, presented: &str, now: OffsetDateTime) -> Result<TokenMatch, VerifyError> {
        self.verify_presented(&PresentedToken::parse(presented)?, now)
    }

    /// Verifies a parsed token against the key. `verify` never changes the
    /// key.
    ///
    /// A token of another prefix than the key's format is `Malformed`; one
    /// naming another key id is a `Mismatch`, refused before hashing (the
    /// id is no secret). Otherwise the token is hashed once and compared in
    /// constant time against both the current and the old token, with no
    /// early exit; only then are the key's status, hard expiry and, under
    /// [`RenewalEnforcement::Enforced`], the matched token's due date
    /// applied. A revoked token is a `Mismatch` at the same cost as any
    /// other wrong token.
    ///
    /// Tokens issued by keyroll 0.1 (`{prefix}_{secret}{checksum}`, without
    /// the key id) still verify against their key, in that framing, as long
    /// as its record says keyroll 0.1 issued them
    /// ([`TokenInfo::legacy_framing`](crate::TokenInfo::legacy_framing)); a
    /// token issued since is refused in that framing. Renew to hand out a
    /// token that names its key.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`], [`VerifyError::Mismatch`],
    /// [`VerifyError::KeyInactive`], [`VerifyError::KeyExpired`] or
    /// [`VerifyError::RenewalOverdue`], in that order of checks.
    pub fn verify_presented(
        &self,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<TokenMatch, VerifyError> {
        self.view().verify(token, now)
    }

    /// Revokes the live token that `presented` matches, whatever the key's
    /// status or expiry: the response to a leaked token. An old token is
    /// deleted (as by [`delete_old`](ApiKey::delete_old)); the current token
    /// is marked revoked ([`TokenInfo::revoked_at`](crate::TokenInfo::revoked_at))
    /// and never verifies again, whatever follows: renew then replaces it
    /// outright. Returns one `TokenRevoked` event. A `now` outside the years
    /// 1 to 9999 is clamped into them.
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
        let token = PresentedToken::parse(presented)?;
        let now = input::clamp(now);
        // Revocation is not the hot path, and what matched is no secret once
        // the call returns.
        let matched = self.view().compare(&token, now)?;
        let (token_id, which) = match matched {
            Some(TokenMatch::Current) => {
                self.current.revoked_at = Some(now);
                (self.current.id, TokenMatch::Current)
            }
            Some(TokenMatch::Old) => {
                let renewal = self
                    .renewal
                    .take()
                    .unwrap_or_else(|| unreachable!("a live old token was matched"));
                (renewal.old.id, TokenMatch::Old)
            }
            None => return Err(VerifyError::Mismatch),
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

    /// What verification reads of this key.
    fn view(&self) -> KeyView<'_> {
        KeyView {
            id: &self.id,
            policy: &self.policy,
            status: self.status,
            expires_at: self.expires_at,
            scopes: &self.scopes,
            metadata: &self.metadata,
            incarnation: self.incarnation,
            metered: self.limits.is_some(),
            networks: self.settings.networks(),
            current: TokenView {
                id: self.current.id,
                hash: &self.current.hash,
                created_at: self.current.created_at,
                revoked: self.current.revoked_at.is_some(),
                legacy: self.current.legacy,
            },
            old: self.renewal.as_deref().map(|renewal| {
                let old = TokenView {
                    id: renewal.old.id,
                    hash: &renewal.old.hash,
                    created_at: renewal.old.created_at,
                    revoked: false,
                    legacy: renewal.old.legacy,
                };
                (old, renewal.decision)
            }),
        }
    }

    /// [`verify_presented`](ApiKey::verify_presented), answered as an
    /// authentication: the key's scopes and metadata are shared, not copied.
    pub(crate) fn authenticate(
        &self,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Authenticated, VerifyError> {
        self.view().authenticate(token, now)
    }
}

/// What verification reads of one token.
#[derive(Clone, Copy)]
pub(crate) struct TokenView<'a> {
    pub(crate) id: TokenId,
    pub(crate) hash: &'a TokenHash,
    /// Its due date is this plus the policy's renewal period, computed
    /// only under an enforced policy (date arithmetic costs a few percent
    /// of a request).
    pub(crate) created_at: OffsetDateTime,
    pub(crate) revoked: bool,
    /// Issued by keyroll 0.1: accepted in the framing that names no key.
    pub(crate) legacy: bool,
}

/// What verification reads of a key, borrowed from an [`ApiKey`] or from a
/// store's own compact copy of one, so that both verify the same way.
pub(crate) struct KeyView<'a> {
    pub(crate) id: &'a KeyId,
    pub(crate) policy: &'a Policy,
    pub(crate) status: KeyStatus,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) scopes: &'a Scopes,
    pub(crate) metadata: &'a Metadata,
    pub(crate) incarnation: u64,
    /// Whether the key has limits.
    pub(crate) metered: bool,
    pub(crate) networks: Option<&'a Networks>,
    pub(crate) current: TokenView<'a>,
    /// The old token of a pending renewal, and what was decided about it.
    pub(crate) old: Option<(TokenView<'a>, Decision)>,
}

impl KeyView<'_> {
    /// See [`ApiKey::verify_presented`], answered as an authentication.
    pub(crate) fn authenticate(
        &self,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Authenticated, VerifyError> {
        let matched = self.verify(token, now)?;
        let token_id = match (matched, &self.old) {
            (TokenMatch::Old, Some((old, _))) => old.id,
            _ => self.current.id,
        };
        Ok(Authenticated {
            key_id: self.id.clone(),
            matched,
            token_id,
            scopes: self.scopes.clone(),
            metadata: self.metadata.clone(),
            allowance: Allowance::default(),
            networks: self.networks.cloned(),
            incarnation: self.incarnation,
            metered: self.metered,
        })
    }

    /// See [`ApiKey::verify_presented`].
    fn verify(
        &self,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<TokenMatch, VerifyError> {
        let matched = self.compare(token, now)?.ok_or(VerifyError::Mismatch)?;
        if self.status == KeyStatus::Inactive {
            return Err(VerifyError::KeyInactive);
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(VerifyError::KeyExpired);
        }
        if self.policy.enforcement == RenewalEnforcement::Enforced {
            let created_at = match (matched, &self.old) {
                (TokenMatch::Old, Some((old, _))) => old.created_at,
                _ => self.current.created_at,
            };
            if now >= created_at.saturating_add(self.policy.renewal_period) {
                return Err(VerifyError::RenewalOverdue);
            }
        }
        Ok(matched)
    }

    /// Which live token `token` is, whatever the key's status and expiry
    /// (`None`: neither). Hashes once and compares against both tokens in
    /// constant time, without an early exit; a key with no live old token
    /// compares against its current hash twice, so that every shape of key
    /// costs the same.
    fn compare(
        &self,
        token: &PresentedToken<'_>,
        now: OffsetDateTime,
    ) -> Result<Option<TokenMatch>, VerifyError> {
        if token.prefix() != self.policy.token_format.prefix() {
            return Err(VerifyError::Malformed);
        }
        // The key id a token names is public: branching on it tells the
        // presenter nothing it did not know. A token in the framing of
        // keyroll 0.1 names none: it may match only a token that keyroll
        // 0.1 issued (its hash binds it to its key).
        let legacy = match token.names(self.id) {
            Some(true) => false,
            Some(false) => return Err(VerifyError::Mismatch),
            None => true,
        };
        let framed = |t: &TokenView<'_>| Choice::from(u8::from(!legacy || t.legacy));
        let hash = token.hash_for(self.id);

        let current = &self.current;
        let is_current =
            hash.ct_eq(current.hash) & Choice::from(u8::from(!current.revoked)) & framed(current);
        let old = self
            .old
            .filter(|(_, decision)| decision.keeps_old_token(now))
            .map(|(old, _)| old);
        let (old_hash, has_old) = match &old {
            Some(old) => (old.hash, framed(old)),
            None => (current.hash, Choice::from(0)),
        };
        let is_old = hash.ct_eq(old_hash) & has_old;
        Ok(if bool::from(is_current) {
            Some(TokenMatch::Current)
        } else if bool::from(is_old) {
            Some(TokenMatch::Old)
        } else {
            None
        })
    }
}
