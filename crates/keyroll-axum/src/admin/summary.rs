//! What the admin API answers and the console shows: keys, tokens, limits
//! and usage as plain JSON, never a token's secret or hash.

use std::collections::BTreeMap;

use keyroll::meter::Allowance;
use keyroll::{ApiKey, Decision, Expiring, ExpiringReason, Freshness, RenewalState, TokenInfo};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

/// A key as the admin API answers it and the console shows it: its
/// attributes, its tokens' dates and its limits. It never holds a token's
/// secret nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct KeySummary {
    /// The key's public id.
    pub id: String,
    /// Its label (may be empty).
    pub label: String,
    /// Who owns it, if anyone.
    pub owner: Option<String>,
    /// `active` or `inactive`.
    pub status: String,
    /// Its version: one more at every change.
    pub version: u64,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// When it stops verifying, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Whether it has expired.
    pub expired: bool,
    /// The current token.
    pub current_token: TokenSummary,
    /// The old token of a pending renewal.
    pub old_token: Option<TokenSummary>,
    /// Whether a renewal is pending (an old token still exists).
    pub pending_deletion: bool,
    /// What was decided about the old token: `undecided` (which behaves
    /// as `later`), `later`, or when it is deleted.
    pub decision: Option<String>,
    /// When the old token is deleted, if that is scheduled.
    #[serde(with = "time::serde::rfc3339::option")]
    pub old_token_deleted_at: Option<OffsetDateTime>,
    /// The key's last recorded use, by any token, deleted ones included.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Its rate limit.
    pub rate_limit: Option<RateLimitSummary>,
    /// Its credits.
    pub credits: Option<CreditsSummary>,
    /// Every setting it has, by its name in a change, with the value a
    /// change takes (`PATCH /keys/{id}` sets it back as it is): the ones
    /// above, and those without a field here (`"networks"`, ...).
    #[schema(value_type = Object)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// A token's dates: never its secret nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct TokenSummary {
    /// The token's id (not a secret).
    pub id: String,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it is due for renewal.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    /// `fresh`, `outdated` (due) or `long_outdated` (due for 3 months).
    pub freshness: String,
    /// Its last recorded use.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A rate limit: `limit` requests per `period`, bursts of `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RateLimitSummary {
    /// Requests per period.
    pub limit: u32,
    /// The period, as `90s`, `1m` or `1day`.
    pub period: String,
    /// The largest burst.
    pub burst: u32,
}

/// Credits: a balance, and how it refills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreditsSummary {
    /// The balance they were set to.
    pub remaining: u64,
    /// How they refill, if they do.
    pub refill: Option<RefillSummary>,
    /// When they were set (refills count from then).
    #[serde(with = "time::serde::rfc3339::option")]
    pub set_at: Option<OffsetDateTime>,
}

/// A refill: the balance is set back to `amount` every `every`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RefillSummary {
    /// The balance after a refill.
    pub amount: u64,
    /// How often, as `30days`.
    pub every: String,
}

/// What a key's limits allow now, without charging it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AllowanceSummary {
    /// Requests left in the burst, with a rate limit.
    pub rate_remaining: Option<u32>,
    /// Seconds until the burst is full again.
    pub rate_reset_seconds: Option<f64>,
    /// Credits left, with credits.
    pub credits_remaining: Option<u64>,
    /// When credits refill next.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_refill: Option<OffsetDateTime>,
}

/// A key expiring, or due for renewal, soon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExpiringSummary {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `key_expires` or `renewal_due`.
    pub reason: String,
    /// The key.
    pub key: KeySummary,
}

/// A key's usage in one UTC hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageHour {
    /// The hour's start.
    #[serde(with = "time::serde::rfc3339")]
    pub hour: OffsetDateTime,
    /// Requests accepted.
    pub accepted: u64,
    /// Refused by the rate limit.
    pub rate_limited: u64,
    /// Refused for spent credits.
    pub usage_exceeded: u64,
    /// Refused by the key: a wrong, revoked or old token, an inactive or
    /// expired key.
    pub refused: u64,
}

impl KeySummary {
    /// `key` as of `now` (which says whether it has expired, and how
    /// fresh its tokens are).
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, NewKey};
    /// use keyroll_axum::admin::KeySummary;
    ///
    /// let now = time::OffsetDateTime::now_utc();
    /// let (key, _token, _event) =
    ///     ApiKey::issue(NewKey::new(KeyId::new("billing")?), now, &mut rand::rng())?;
    /// let summary = KeySummary::new(&key, now);
    /// assert_eq!(summary.id, "billing");
    /// assert!(!serde_json::to_string(&summary)?.contains("hash"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(key: &ApiKey, now: OffsetDateTime) -> KeySummary {
        let (decision, old_token_deleted_at) = match key.state() {
            RenewalState::Renewing { decision } => (
                Some(decision.to_string()),
                match decision {
                    Decision::Scheduled { at } => Some(at),
                    _ => None,
                },
            ),
            _ => (None, None),
        };
        let last_used_at = key.last_used_at();
        KeySummary {
            id: key.id().to_string(),
            label: key.label().to_owned(),
            owner: key.owner().map(ToString::to_string),
            status: key.status().to_string(),
            version: key.version(),
            created_at: key.created_at(),
            scopes: key.scopes().iter().map(ToString::to_string).collect(),
            metadata: key
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            expires_at: key.expires_at(),
            expired: key.is_expired(now),
            current_token: TokenSummary::new(key.current_token(), now),
            old_token: key.old_token().map(|t| TokenSummary::new(t, now)),
            pending_deletion: decision.is_some(),
            decision,
            old_token_deleted_at,
            last_used_at,
            rate_limit: key.rate_limit().map(|r| RateLimitSummary {
                limit: r.limit(),
                period: duration_text(r.period()),
                burst: r.burst(),
            }),
            credits: key.credits().map(|c| CreditsSummary {
                remaining: c.remaining(),
                refill: c.refill().map(|r| RefillSummary {
                    amount: r.amount(),
                    every: duration_text(r.every()),
                }),
                set_at: key.credits_set_at(),
            }),
            settings: key
                .settings()
                .iter()
                .filter_map(|change| match serde_json::to_value(change) {
                    Ok(serde_json::Value::Object(setting)) => Some(setting),
                    _ => None,
                })
                .flatten()
                .collect(),
        }
    }
}

impl TokenSummary {
    fn new(token: &TokenInfo, now: OffsetDateTime) -> TokenSummary {
        TokenSummary {
            id: token.id().to_string(),
            created_at: token.created_at(),
            due_at: token.due_at(),
            freshness: match token.freshness(now) {
                Freshness::Fresh { .. } => "fresh",
                Freshness::Outdated { .. } => "outdated",
                _ => "long_outdated",
            }
            .to_owned(),
            last_used_at: token.last_used_at(),
            revoked_at: token.revoked_at(),
        }
    }
}

impl From<&Allowance> for AllowanceSummary {
    fn from(allowance: &Allowance) -> AllowanceSummary {
        AllowanceSummary {
            rate_remaining: allowance.rate_remaining(),
            rate_reset_seconds: allowance.rate_reset().map(|d| d.as_seconds_f64()),
            credits_remaining: allowance.credits_remaining(),
            next_refill: allowance.next_refill(),
        }
    }
}

impl ExpiringSummary {
    pub(crate) fn new(expiring: &Expiring, now: OffsetDateTime) -> ExpiringSummary {
        ExpiringSummary {
            at: expiring.at,
            reason: match expiring.reason {
                ExpiringReason::KeyExpires => "key_expires",
                _ => "renewal_due",
            }
            .to_owned(),
            key: KeySummary::new(&expiring.key, now),
        }
    }
}

impl From<&keyroll::store::UsageRow> for UsageHour {
    fn from(row: &keyroll::store::UsageRow) -> UsageHour {
        UsageHour {
            hour: row.hour_start(),
            accepted: row.accepted,
            rate_limited: row.rate_limited,
            usage_exceeded: row.usage_exceeded,
            refused: row.refused,
        }
    }
}

/// A duration as humantime writes it (`1m`, `30days`).
fn duration_text(d: Duration) -> String {
    humantime::format_duration(d.try_into().unwrap_or_default()).to_string()
}
