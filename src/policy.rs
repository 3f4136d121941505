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
/// use keyroll::{Policy, RenewalEnforcement};
///
/// let strict = Policy {
///     renewal_period: Policy::SIX_MONTHS,
///     enforcement: RenewalEnforcement::Enforced,
///     ..Policy::default()
/// };
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
    #[cfg_attr(feature = "serde", serde(with = "crate::duration"))]
    pub renewal_period: Duration,
    /// Whether a token past its renewal period still verifies. (Records
    /// written before 0.3 name this field `expiry`, and still load.)
    #[cfg_attr(feature = "serde", serde(alias = "expiry"))]
    pub enforcement: RenewalEnforcement,
    /// How fine [`TokenInfo::last_used_at`](crate::TokenInfo::last_used_at)
    /// is: [`ApiKey::record_use`](crate::ApiKey::record_use) changes the key
    /// at most once per token per this duration (default 60 seconds), so
    /// that a busy key is not written on every request.
    #[cfg_attr(
        feature = "serde",
        serde(default = "default_usage_resolution", with = "crate::duration")
    )]
    pub usage_resolution: Duration,
}

#[cfg(feature = "serde")]
fn default_usage_resolution() -> Duration {
    Policy::DEFAULT_USAGE_RESOLUTION
}

impl Policy {
    /// 90 days: the recommended renewal period, and the default.
    pub const THREE_MONTHS: Duration = Duration::days(90);
    /// 180 days.
    pub const SIX_MONTHS: Duration = Duration::days(180);
    /// 60 seconds: the default `usage_resolution`.
    pub const DEFAULT_USAGE_RESOLUTION: Duration = Duration::seconds(60);
}

impl Default for Policy {
    /// Prefix `kr`, a renewal period of [`Policy::THREE_MONTHS`],
    /// [`RenewalEnforcement::Advisory`], a usage resolution of 60 seconds.
    fn default() -> Self {
        Policy {
            token_format: TokenFormat::default(),
            renewal_period: Policy::THREE_MONTHS,
            enforcement: RenewalEnforcement::Advisory,
            usage_resolution: Policy::DEFAULT_USAGE_RESOLUTION,
        }
    }
}

/// What the renewal period means for verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum RenewalEnforcement {
    /// As in the product: a token past its period is shown as outdated
    /// ([`Freshness`](crate::Freshness)) but keeps verifying.
    #[default]
    Advisory,
    /// A token past its period fails with [`VerifyError::RenewalOverdue`](crate::VerifyError::RenewalOverdue).
    Enforced,
}
