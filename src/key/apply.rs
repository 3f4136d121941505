//! [`ApiKey::apply`]: a [`Change`] made to a key, and the key's settings
//! as changes.

use time::OffsetDateTime;

use super::{ApiKey, NOW};
use crate::change::Change;
use crate::errors::TransitionError;
use crate::event::Event;
use crate::input;

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
            setting => self.set_setting(setting, now),
        }
    }

    /// Makes `change`, a change of one of the settings a key keeps only as
    /// data: [`Event::SettingChanged`].
    fn set_setting(
        &mut self,
        change: Change,
        now: OffsetDateTime,
    ) -> Result<Event, TransitionError> {
        let now = input::instant(now, NOW)?;
        self.settings
            .make(change.clone())
            .map_err(|change| TransitionError::NotASetting {
                change: change.name(),
            })?;
        let version = self.bump();
        Ok(Event::SettingChanged {
            key_id: self.id.clone(),
            at: now,
            version,
            change,
        })
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

    /// Every setting the key has, as the changes that set it, in
    /// [`Change`]'s order: its label, scopes and metadata unless empty, its
    /// expiry, owner, rate limit and credits (as set, not what is left)
    /// if it has them, then the settings it keeps as data (networks, ...).
    /// [`NewKey::with`](crate::NewKey::with) takes each of them back.
    pub fn settings(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        if !self.label.is_empty() {
            changes.push(Change::Label(self.label.to_string()));
        }
        if !self.scopes.is_empty() {
            changes.push(Change::Scopes(self.scopes.clone()));
        }
        if !self.metadata.is_empty() {
            changes.push(Change::Metadata(self.metadata.clone()));
        }
        if let Some(at) = self.expires_at {
            changes.push(Change::Expiry(Some(at)));
        }
        if let Some(owner) = &self.owner {
            changes.push(Change::Owner(Some(owner.clone())));
        }
        if let Some(rate) = self.rate_limit() {
            changes.push(Change::RateLimit(Some(*rate)));
        }
        if let Some(credits) = self.credits() {
            changes.push(Change::Credits(Some(*credits)));
        }
        changes.extend(self.settings.changes());
        changes
    }
}
