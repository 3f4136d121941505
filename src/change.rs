//! [`Change`]: a change of a key's settings or status, as one piece of
//! data that every layer passes on unchanged: [`ApiKey::apply`], the
//! manager's `apply` and `apply_all`, the admin API's `PATCH`, keyctl.

use time::OffsetDateTime;

use crate::attributes::{Metadata, Scopes};
use crate::errors::TransitionError;
use crate::event::Event;
use crate::id::OwnerId;
use crate::key::ApiKey;
use crate::meter::{Credits, RateLimit};

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
    /// Activates the key: its tokens verify again.
    Activate,
    /// Deactivates the key: none of its tokens verifies.
    Deactivate,
}

impl Change {
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
            Change::Activate => "activate",
            Change::Deactivate => "deactivate",
        }
    }

    /// The rate limit this change sets, if it sets one.
    pub(crate) fn rate_limit(&self) -> Option<&RateLimit> {
        match self {
            Change::RateLimit(rate) => rate.as_ref(),
            _ => None,
        }
    }
}

impl ApiKey {
    /// Makes `change`: one transition, one event, the version bumped by
    /// one. A setting is replaced even by the same value; a status change
    /// that changes nothing is refused.
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: [`TransitionError::InvalidLabel`],
    /// [`TransitionError::InvalidCredits`], [`TransitionError::InvalidId`]
    /// (an owner only older versions allowed),
    /// [`TransitionError::AlreadyActive`],
    /// [`TransitionError::AlreadyInactive`], or
    /// [`TransitionError::TimeOutOfRange`] for a `now` or an expiry outside
    /// the years 1 to 9999.
    pub fn apply(&mut self, change: Change, now: OffsetDateTime) -> Result<Event, TransitionError> {
        match change {
            Change::Label(label) => self.set_label(label, now),
            Change::Scopes(scopes) => self.set_scopes(scopes, now),
            Change::Metadata(metadata) => self.set_metadata(metadata, now),
            Change::Expiry(at) => self.set_expiry(at, now),
            Change::Owner(owner) => self.set_owner(owner, now),
            Change::RateLimit(rate) => self.set_rate_limit(rate, now),
            Change::Credits(credits) => self.set_credits(credits, now),
            Change::Activate => self.activate(now),
            Change::Deactivate => self.deactivate(now),
        }
    }

    /// Makes `changes` in order, each as [`apply`](ApiKey::apply) would:
    /// all of them, or, if one is refused, none (the key is then exactly as
    /// it was).
    ///
    /// # Errors
    ///
    /// The first change's refusal, as [`apply`](ApiKey::apply)'s.
    pub fn apply_all(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        now: OffsetDateTime,
    ) -> Result<Vec<Event>, TransitionError> {
        let mut next = self.clone();
        let events = changes
            .into_iter()
            .map(|change| next.apply(change, now))
            .collect::<Result<_, _>>()?;
        *self = next;
        Ok(events)
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
