//! Verification of a presented token, and the freshness of a key's tokens.

use subtle::Choice;
use time::OffsetDateTime;

use crate::attributes::{Metadata, Scopes};
use crate::id::{KeyId, TokenId};
use crate::key::{ApiKey, Decision, KeyStatus, TokenInfo};
use crate::policy::{Expiry, Policy};
use crate::token::{Presented, TokenHash};

/// Which of a key's tokens a presented token matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum TokenMatch {
    /// The current token.
    Current,
    /// The old token of a pending renewal: the integration using it should
    /// move to the new one.
    Old,
}

/// Why a presented token was refused. It says no more than this: a caller
/// cannot learn which part of a wrong token was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a well-formed token of the key's format (prefix, shape, key id,
    /// alphabet or checksum). Nothing was hashed.
    #[error("malformed token")]
    Malformed,
    /// A well-formed token that is neither the current nor the old token:
    /// a wrong token, a token of another key, or a revoked token.
    #[error("token does not match the key")]
    Mismatch,
    /// The token matched, but the key is inactive.
    #[error("the key is inactive")]
    KeyInactive,
    /// The token matched, but the key is past its hard expiry
    /// ([`ApiKey::expires_at`]).
    #[error("the key has expired")]
    KeyExpired,
    /// The token matched, but it is past its renewal period and the policy
    /// enforces it.
    #[error("the token is past its renewal period; renew the key")]
    Expired,
}

/// Who a request authenticated as: the key, which of its tokens matched,
/// and what the key may do and whose it is.
///
/// Returned by the managers' `authenticate` and `authenticate_key`, and by
/// stores that verify in place.
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
}

impl Authenticated {
    /// Authentication as `key_id` with its `matched` token `token_id`, with
    /// the key's scopes and metadata.
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
        }
    }
}

/// How the current token stands against its renewal period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "freshness", rename_all = "snake_case"))]
pub enum Freshness {
    /// Before its due date.
    Fresh {
        /// When it becomes due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
    },
    /// Due, for less than 3 months (the product's orange alert).
    Outdated {
        /// When it became due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
    },
    /// Due for 3 months or more (the product's red alert).
    LongOutdated {
        /// When it became due.
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
        due_at: OffsetDateTime,
    },
}

impl Freshness {
    /// Whether the token is past its due date (`Outdated` or `LongOutdated`).
    pub fn is_outdated(&self) -> bool {
        !matches!(self, Freshness::Fresh { .. })
    }

    /// The due date, whatever the variant.
    pub fn due_at(&self) -> OffsetDateTime {
        match *self {
            Freshness::Fresh { due_at }
            | Freshness::Outdated { due_at }
            | Freshness::LongOutdated { due_at } => due_at,
        }
    }
}

impl TokenInfo {
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
}

impl ApiKey {
    /// The freshness of the current token at `now`. See
    /// [`TokenInfo::freshness`].
    pub fn freshness(&self, now: OffsetDateTime) -> Freshness {
        self.current.freshness(now)
    }

    /// Verifies a presented token against the key.
    ///
    /// The token's format is checked first, without hashing. Then it is
    /// hashed once and compared, in constant time and without an early exit,
    /// against both the current and the old token; only then are the key's
    /// status and, under [`Expiry::Enforced`], the matched token's due date
    /// applied. A revoked token is a [`VerifyError::Mismatch`] at the same
    /// cost as any other; so is a well-formed token that names another key
    /// id, refused before hashing (the id is no secret).
    /// `verify` never changes the key.
    ///
    /// Tokens issued by keyroll 0.1 (`{prefix}_{secret}{checksum}`, without
    /// the key id) still verify against their key, in that framing, as long
    /// as its record says keyroll 0.1 issued them
    /// ([`TokenInfo::legacy_framing`]); a token issued since is refused in
    /// that framing. Renew to hand out a token that names its key.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`], [`VerifyError::Mismatch`],
    /// [`VerifyError::KeyInactive`], [`VerifyError::KeyExpired`] or
    /// [`VerifyError::Expired`], in that order of checks.
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
        self.view().verify(presented, now)
    }

    /// [`verify`](ApiKey::verify), answered as an authentication.
    pub(crate) fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, VerifyError> {
        self.view().authenticate(presented, now)
    }

    /// What verification reads of this key.
    pub(crate) fn view(&self) -> KeyView<'_> {
        KeyView {
            id: &self.id,
            policy: &self.policy,
            status: self.status,
            expires_at: self.expires_at,
            scopes: &self.scopes,
            metadata: &self.metadata,
            current: TokenView::of(&self.current),
            old: self
                .renewal
                .as_deref()
                .map(|r| (TokenView::of(&r.old), r.decision)),
        }
    }
}

/// What verification reads of one token.
#[derive(Clone, Copy)]
pub(crate) struct TokenView<'a> {
    pub(crate) id: &'a TokenId,
    pub(crate) hash: &'a TokenHash,
    /// Read only under [`Expiry::Enforced`].
    pub(crate) due_at: OffsetDateTime,
    pub(crate) revoked: bool,
    /// Issued by keyroll 0.1: accepted in the framing that names no key.
    pub(crate) legacy: bool,
}

impl<'a> TokenView<'a> {
    pub(crate) fn of(token: &'a TokenInfo) -> TokenView<'a> {
        TokenView {
            id: &token.id,
            hash: &token.hash,
            due_at: token.due_at,
            revoked: token.revoked_at.is_some(),
            legacy: token.legacy,
        }
    }
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
    pub(crate) current: TokenView<'a>,
    /// The old token of a pending renewal, and what was decided about it.
    pub(crate) old: Option<(TokenView<'a>, Decision)>,
}

impl KeyView<'_> {
    /// [`verify`](Self::verify), answered as an authentication: the key's
    /// scopes and metadata are shared, not copied.
    pub(crate) fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, VerifyError> {
        let matched = self.verify(presented, now)?;
        let token_id = match (matched, &self.old) {
            (TokenMatch::Old, Some((old, _))) => *old.id,
            _ => *self.current.id,
        };
        Ok(Authenticated {
            key_id: self.id.clone(),
            matched,
            token_id,
            scopes: self.scopes.clone(),
            metadata: self.metadata.clone(),
        })
    }

    /// See [`ApiKey::verify`].
    pub(crate) fn verify(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<TokenMatch, VerifyError> {
        let (is_current, is_old, old) = self.compare(presented, now)?;

        // From here on a match and a mismatch run the same instructions:
        // status and expiries are read for both tokens whatever matched, and
        // the answer is picked from a table by an index computed with
        // arithmetic, not branches. (What matched is no secret once
        // answered; this keeps the answer's timing from telling it early.)
        const ANSWERS: [Result<TokenMatch, VerifyError>; 6] = [
            Err(VerifyError::Mismatch),
            Err(VerifyError::KeyInactive),
            Err(VerifyError::KeyExpired),
            Err(VerifyError::Expired),
            Ok(TokenMatch::Current),
            Ok(TokenMatch::Old),
        ];
        let current = u8::from(bool::from(is_current));
        let matched = u8::from(bool::from(is_current | is_old));
        let enforced = self.policy.expiry == Expiry::Enforced;
        // Due dates are compared only under an enforced policy: a property
        // of the key, the same whatever matched.
        let due = |token: Option<TokenView<'_>>| {
            u8::from(enforced && token.is_some_and(|t| now >= t.due_at))
        };
        let expired = current * due(Some(self.current)) + (1 - current) * due(old);
        let key_expired = u8::from(self.expires_at.is_some_and(|at| now >= at));
        let inactive = u8::from(self.status == KeyStatus::Inactive);
        let if_valid = 5 - current; // Ok(Current) or Ok(Old)
        let if_key_live = expired * 3 + (1 - expired) * if_valid;
        let if_active = key_expired * 2 + (1 - key_expired) * if_key_live;
        let answer = matched * (inactive + (1 - inactive) * if_active);
        ANSWERS[usize::from(answer)]
    }

    /// Whether `presented` is the current token and whether it is the (live)
    /// old token, whatever the key's status and expiry; and the live old
    /// token. Hashes once and compares against both, without an early exit.
    #[inline(always)] // its answer is read at once: no trip through memory
    pub(crate) fn compare(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<(Choice, Choice, Option<TokenView<'_>>), VerifyError> {
        // The key id a token names is public: branching on it tells the
        // presenter nothing it did not know. A token in the framing of
        // keyroll 0.1 names none: it may match only a token that keyroll
        // 0.1 issued (its hash binds it to its key).
        let (secret, legacy) = match self.policy.token_format.presented_to(presented, self.id)? {
            Presented::ThisKey(secret) => (secret, false),
            Presented::Legacy(secret) => (secret, true),
            Presented::OtherKey => return Err(VerifyError::Mismatch),
        };
        let hash = TokenHash::of(self.id, &secret);
        let framed = |token: &TokenView<'_>| Choice::from(u8::from(!legacy || token.legacy));

        let current_live = Choice::from(u8::from(!self.current.revoked)) & framed(&self.current);
        let is_current = hash.ct_eq(self.current.hash) & current_live;
        // With no old token (none, or past its scheduled deletion), compare
        // against the current hash once more so that every shape of key
        // costs the same, and mask the result.
        let old = self
            .old
            .filter(|(_, decision)| decision.keeps_old_token(now))
            .map(|(old, _)| old);
        let (old_hash, has_old) = match old {
            Some(old) => (old.hash, framed(&old)),
            None => (self.current.hash, Choice::from(0)),
        };
        let is_old = hash.ct_eq(old_hash) & has_old;
        Ok((is_current, is_old, old))
    }
}
