//! [`Change`]: a change of a key's settings or status, as one piece of
//! data that every layer passes on unchanged: [`ApiKey::apply`](crate::ApiKey::apply),
//! the manager's `apply` and `apply_all`, the admin API's `PATCH`,
//! keyctl; and [`Settings`], the settings a key keeps only as data.

use time::OffsetDateTime;

use crate::attributes::{Metadata, Scopes};
use crate::id::OwnerId;
use crate::meter::{Credits, RateLimit};
use crate::networks::Networks;

/// One change of a key: a setting replaced (or removed, with `None`), or
/// its status.
///
/// With feature `serde` its JSON is what the admin API takes: each change
/// is an object of one field named after it (`{"label": "orders"}`,
/// `{"expiry": "2027-01-01T00:00:00Z"}`, `{"owner": null}`,
/// `{"rate_limit": {"limit": 100, "period": {"secs": 60}, "burst": 20}}`),
/// or a string for the status (`"activate"`, `"deactivate"`).
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, Change, KeyId, Scopes};
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::now_utc();
/// let (mut key, _, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
/// key.apply(Change::Label("orders".into()), now)?;
/// key.apply(Change::Scopes(Scopes::new(["orders:read"])?), now)?;
/// assert_eq!((key.label(), key.version()), ("orders", 3));
///
/// let change: Change = serde_json::from_str(r#"{"label": "orders v2"}"#)?;
/// assert_eq!(change, Change::Label("orders v2".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Change {
    /// The label: at most 256 bytes, no control character.
    Label(String),
    /// The scopes, replaced.
    Scopes(Scopes),
    /// The metadata, replaced.
    Metadata(Metadata),
    /// The hard expiry of the whole key, moved or removed (its JSON name
    /// `expiry`, or `expires_at` as in [`NewKey`](crate::NewKey)).
    #[cfg_attr(feature = "serde", serde(alias = "expires_at"))]
    Expiry(
        #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339::option"))]
        Option<OffsetDateTime>,
    ),
    /// The owner, set or removed.
    Owner(Option<OwnerId>),
    /// The rate limit, set or removed; the bucket is kept.
    RateLimit(Option<RateLimit>),
    /// The credits, set (the balance starts over) or removed.
    Credits(Option<Credits>),
    /// The networks the key's requests may come from, set or removed
    /// (JSON: `"10.0.0.0/8,2001:db8::/32"`).
    Networks(Option<Networks>),
    /// Activates the key: its tokens verify again.
    Activate,
    /// Deactivates the key: none of its tokens verifies.
    Deactivate,
}

impl Change {
    /// The name of every setting, in the order of [`Change`]'s variants
    /// (the status changes aside): what [`name`](Change::name) gives, and
    /// what a change's JSON is named by.
    pub const SETTINGS: &'static [&'static str] = &[
        "label",
        "scopes",
        "metadata",
        "expiry",
        "owner",
        "rate_limit",
        "credits",
        "networks",
    ];

    /// The change's name, as its JSON names it (`"label"`, `"rate_limit"`,
    /// `"activate"`, ...): the setting it replaces, or the status change.
    pub fn name(&self) -> &'static str {
        match self {
            Change::Label(_) => "label",
            Change::Scopes(_) => "scopes",
            Change::Metadata(_) => "metadata",
            Change::Expiry(_) => "expiry",
            Change::Owner(_) => "owner",
            Change::RateLimit(_) => "rate_limit",
            Change::Credits(_) => "credits",
            Change::Networks(_) => "networks",
            Change::Activate => "activate",
            Change::Deactivate => "deactivate",
        }
    }

    /// Whether the change removes its setting (`None`): for the model.
    #[cfg(feature = "proptest")]
    pub(crate) fn removes(&self) -> bool {
        matches!(
            self,
            Change::Expiry(None)
                | Change::Owner(None)
                | Change::RateLimit(None)
                | Change::Credits(None)
                | Change::Networks(None)
        )
    }

    /// The rate limit this change sets, if it sets one.
    pub(crate) fn rate_limit(&self) -> Option<&RateLimit> {
        match self {
            Change::RateLimit(rate) => rate.as_ref(),
            _ => None,
        }
    }
}

/// The settings a key keeps as data for the layers that read them
/// (networks, ...): each is set by its [`Change`] alone, through one
/// generic transition ([`Event::SettingChanged`](crate::Event::SettingChanged)),
/// and kept as a unit by the record codec and every store. A new plain
/// setting is a field here, a variant of [`Change`], and an arm in
/// [`make`](Settings::make) and [`changes`](Settings::changes): nothing
/// else in keyroll names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub(crate) struct Settings {
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    networks: Option<Networks>,
}

impl Settings {
    /// No setting set: [`Settings::default()`], in a `const`.
    pub(crate) const NONE: Settings = Settings { networks: None };

    /// Whether no setting is set (the record then leaves them out).
    pub(crate) fn is_empty(&self) -> bool {
        *self == Settings::NONE
    }

    /// The networks the key's requests may come from.
    pub(crate) fn networks(&self) -> Option<&Networks> {
        self.networks.as_ref()
    }

    /// Makes `change` if it sets one of these settings; gives it back
    /// otherwise.
    pub(crate) fn make(&mut self, change: Change) -> Result<(), Change> {
        match change {
            Change::Networks(networks) => self.networks = networks,
            other => return Err(other),
        }
        Ok(())
    }

    /// Each setting that is set, as the change that sets it.
    pub(crate) fn changes(&self) -> Vec<Change> {
        let Settings { networks } = self;
        [networks.clone().map(|n| Change::Networks(Some(n)))]
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn changes_read_and_write_json_of_one_field_each() {
        let at = time::macros::datetime!(2027-01-01 0:00 UTC);
        for (change, json) in [
            (Change::Label("a".into()), r#"{"label":"a"}"#),
            (
                Change::Expiry(Some(at)),
                r#"{"expiry":"2027-01-01T00:00:00Z"}"#,
            ),
            (Change::Expiry(None), r#"{"expiry":null}"#),
            (Change::Owner(None), r#"{"owner":null}"#),
            (
                Change::Credits(Some(Credits::new(5))),
                r#"{"credits":{"remaining":5}}"#,
            ),
            (
                Change::Networks(Some("10.0.0.0/8, 2001:db8::/32".parse().unwrap())),
                r#"{"networks":"10.0.0.0/8,2001:db8::/32"}"#,
            ),
            (Change::Activate, r#""activate""#),
        ] {
            assert_eq!(serde_json::to_string(&change).unwrap(), json);
            assert_eq!(serde_json::from_str::<Change>(json).unwrap(), change);
        }
        // Its name is its JSON's.
        for change in [
            Change::Label("a".into()),
            Change::Scopes(Scopes::default()),
            Change::Metadata(Metadata::default()),
            Change::Expiry(None),
            Change::Owner(None),
            Change::RateLimit(None),
            Change::Credits(None),
            Change::Networks(None),
            Change::Activate,
            Change::Deactivate,
        ] {
            let json = serde_json::to_value(&change).unwrap();
            let named = match &json {
                serde_json::Value::String(name) => name.clone(),
                other => other.as_object().unwrap().keys().next().unwrap().clone(),
            };
            assert_eq!(named, change.name());
        }
        let error = serde_json::from_str::<Change>(r#"{"colour":"red"}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `colour`"),
            "{error}"
        );
    }
}
