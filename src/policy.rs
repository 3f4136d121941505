//! How long a key's tokens stay fresh, and what happens after.

use time::Duration;

use crate::token::TokenFormat;

/// The rules a key is issued under. They stay with the key for its life.
///
/// A plain struct: set what you need and take the rest from the default.
///
/// # Example
///
/// ```
/// use keyroll::{Expiry, Policy};
///
/// let strict = Policy { renewal_period: Policy::SIX_MONTHS, expiry: Expiry::Enforced, ..Policy::default() };
/// assert_eq!(strict.token_format.prefix(), "kr");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Policy {
    /// The prefix of the key's tokens.
    #[cfg_attr(feature = "serde", serde(rename = "token_prefix"))]
    pub token_format: TokenFormat,
    /// How long a token stays fresh, counted from its creation (the latest
    /// renewal). [`Policy::THREE_MONTHS`] (the default, recommended) or
    /// [`Policy::SIX_MONTHS`] in the product; any duration is accepted.
    #[cfg_attr(feature = "serde", serde(with = "crate::record::duration"))]
    pub renewal_period: Duration,
    /// Whether a token past its renewal period still verifies.
    pub expiry: Expiry,
}

impl Policy {
    /// 90 days: the recommended renewal period, and the default.
    pub const THREE_MONTHS: Duration = Duration::days(90);
    /// 180 days.
    pub const SIX_MONTHS: Duration = Duration::days(180);
}

impl Default for Policy {
    /// Prefix `kr`, a renewal period of [`Policy::THREE_MONTHS`], [`Expiry::Advisory`].
    fn default() -> Self {
        Policy {
            token_format: TokenFormat::default(),
            renewal_period: Policy::THREE_MONTHS,
            expiry: Expiry::Advisory,
        }
    }
}

/// What the renewal period means for verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Expiry {
    /// As in the product: a token past its period is shown as outdated
    /// ([`Freshness`](crate::Freshness)) but keeps verifying.
    #[default]
    Advisory,
    /// A token past its period fails with [`VerifyError::Expired`](crate::VerifyError::Expired).
    Enforced,
}
