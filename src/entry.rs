//! Outbox entries: an [`Event`] kept by the store with its delivery
//! state, and [`MemoryOutbox`], the outbox of an in-memory store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use time::{Duration, OffsetDateTime};

use crate::event::Event;

/// An entry's id: given by the store when the event is written, unique
/// in the store and increasing in the order of the writes of one key, so
/// that a receiver can drop the duplicates that at-least-once delivery
/// brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct EntryId(u64);

impl EntryId {
    /// The id numbered `n`.
    pub const fn new(n: u64) -> EntryId {
        EntryId(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EntryId {
    /// `evt_` and the number: the `webhook-id` of its deliveries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "evt_{}", self.0)
    }
}

/// Where an entry is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum EntryState {
    /// Not delivered yet: due at its `next_attempt_at`.
    Pending,
    /// Delivered (kept until pruned).
    Delivered,
    /// Given up on after too many failures, until an operator retries it.
    Parked,
}

impl EntryState {
    /// The state's number in a store's column: 0, 1, 2.
    pub const fn code(self) -> i16 {
        match self {
            EntryState::Pending => 0,
            EntryState::Delivered => 1,
            EntryState::Parked => 2,
        }
    }

    /// The state numbered `code`, if any.
    pub const fn from_code(code: i16) -> Option<EntryState> {
        match code {
            0 => Some(EntryState::Pending),
            1 => Some(EntryState::Delivered),
            2 => Some(EntryState::Parked),
            _ => None,
        }
    }
}

/// An event in the outbox, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Entry {
    /// Its id.
    pub id: EntryId,
    /// The event.
    pub event: Event,
    /// Where it is in its delivery.
    pub state: EntryState,
    /// The failed attempts to deliver it so far.
    pub attempts: u32,
    /// When a pending entry is due: the event's time at first, later
    /// the time of its next retry, or the end of a dispatcher's hold.
    #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339"))]
    pub next_attempt_at: OffsetDateTime,
    /// What the last failed attempt said (never a secret).
    pub last_error: Option<String>,
    /// When it was delivered.
    #[cfg_attr(feature = "serde", serde(with = "time::serde::rfc3339::option"))]
    pub delivered_at: Option<OffsetDateTime>,
}

impl Entry {
    /// A new, pending entry of `event`, due at the event's time.
    pub fn new(id: EntryId, event: Event) -> Entry {
        Entry {
            id,
            next_attempt_at: event.at(),
            event,
            state: EntryState::Pending,
            attempts: 0,
            last_error: None,
            delivered_at: None,
        }
    }

    /// The entry as a store kept it: its state, failed attempts, due
    /// time, last error and delivery time (the columns a store keeps
    /// beside the event).
    pub fn with_delivery(
        mut self,
        state: EntryState,
        attempts: u32,
        next_attempt_at: OffsetDateTime,
        last_error: Option<String>,
        delivered_at: Option<OffsetDateTime>,
    ) -> Entry {
        self.state = state;
        self.attempts = attempts;
        self.next_attempt_at = next_attempt_at;
        self.last_error = last_error;
        self.delivered_at = delivered_at;
        self
    }

    /// What the entry's order is kept within: the key it is about, or
    /// `owner:` and the owner (entries of one subject are claimed in
    /// order, one batch at a time).
    pub fn subject(event: &Event) -> String {
        let (prefix, name) = Entry::subject_parts(event);
        format!("{prefix}{name}")
    }

    /// Whether `subject` is [`Entry::subject`] of `event` (no string made).
    fn is_of(event: &Event, subject: &str) -> bool {
        let (prefix, name) = Entry::subject_parts(event);
        subject.strip_prefix(prefix) == Some(name)
    }

    /// The subject's prefix and name: a key's id, `owner:` and an owner,
    /// or nothing.
    fn subject_parts(event: &Event) -> (&'static str, &str) {
        match (event.key_id(), event.owner_id()) {
            (Some(key), _) => ("", key.as_str()),
            (None, Some(owner)) => ("owner:", owner.as_str()),
            (None, None) => ("", ""),
        }
    }
}

/// How many entries wait: pending (to deliver) and parked (given up on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct OutboxCounts {
    /// Entries not delivered yet.
    pub pending: u64,
    /// Entries given up on.
    pub parked: u64,
}

impl OutboxCounts {
    /// `pending` and `parked` entries.
    pub const fn new(pending: u64, parked: u64) -> OutboxCounts {
        OutboxCounts { pending, parked }
    }
}

/// The outbox of a store that keeps its keys in memory: what
/// [`InMemoryStore`](crate::store::InMemoryStore) uses, and a store of
/// yours may too. Keep it under the lock of your key writes (push while
/// holding it), and each [`KeyStore`](crate::store::KeyStore) outbox
/// method is one call here.
///
/// # Example
///
/// ```
/// use keyroll::outbox::{EntryState, MemoryOutbox};
/// use keyroll::{ApiKey, KeyId};
/// use time::{Duration, OffsetDateTime};
///
/// let now = OffsetDateTime::UNIX_EPOCH;
/// let (_, _, issued) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
/// let mut outbox = MemoryOutbox::default();
/// outbox.push(&[issued.clone()]);
/// let claimed = outbox.claim(10, now, Duration::MINUTE);
/// assert_eq!(claimed[0].event, issued);
/// // Held: no one else claims it for a minute.
/// assert!(outbox.claim(10, now, Duration::MINUTE).is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    entries: BTreeMap<EntryId, Entry>,
    pending: BTreeSet<EntryId>,
    parked: BTreeSet<EntryId>,
    last: u64,
}

impl MemoryOutbox {
    /// Adds `events` as pending entries, in order.
    pub fn push(&mut self, events: &[Event]) {
        for event in events {
            self.last += 1;
            let id = EntryId(self.last);
            self.entries.insert(id, Entry::new(id, event.clone()));
            self.pending.insert(id);
        }
    }

    /// Claims at most `limit` due entries ([`KeyStore::claim_outbox`]'s
    /// contract), holding them until `now + hold`.
    ///
    /// [`KeyStore::claim_outbox`]: crate::store::KeyStore::claim_outbox
    pub fn claim(&mut self, limit: usize, now: OffsetDateTime, hold: Duration) -> Vec<Entry> {
        let mut blocked = HashSet::new();
        let mut claimed = Vec::new();
        for id in &self.pending {
            if claimed.len() == limit {
                break;
            }
            let entry = self
                .entries
                .get_mut(id)
                .expect("a pending id has its entry");
            // A subject is named (a string made) only when one waits.
            if entry.next_attempt_at > now {
                blocked.insert(Entry::subject(&entry.event));
            } else if blocked.is_empty() || !blocked.contains(&Entry::subject(&entry.event)) {
                entry.next_attempt_at = now.saturating_add(hold);
                claimed.push(entry.clone());
            }
        }
        claimed
    }

    /// Stores the delivery state of each of `entries` (by id; entries
    /// pruned since are skipped).
    pub fn update(&mut self, entries: &[Entry]) {
        for entry in entries {
            if let Some(kept) = self.entries.get_mut(&entry.id) {
                kept.state = entry.state;
                kept.attempts = entry.attempts;
                kept.next_attempt_at = entry.next_attempt_at;
                kept.last_error.clone_from(&entry.last_error);
                kept.delivered_at = entry.delivered_at;
                self.pending.remove(&entry.id);
                self.parked.remove(&entry.id);
                match entry.state {
                    EntryState::Pending => self.pending.insert(entry.id),
                    EntryState::Parked => self.parked.insert(entry.id),
                    EntryState::Delivered => false,
                };
            }
        }
    }

    /// At most `limit` entries in `state` with ids after `after`, in order.
    pub fn list(&self, state: EntryState, after: Option<EntryId>, limit: usize) -> Vec<Entry> {
        let from = after.map_or(0, |id| id.0.saturating_add(1));
        self.entries
            .range(EntryId(from)..)
            .map(|(_, entry)| entry)
            .filter(|entry| entry.state == state)
            .take(limit)
            .cloned()
            .collect()
    }

    /// At most `limit` entries of `subject` with ids before `before`,
    /// newest first, in any state.
    pub fn list_of(&self, subject: &str, before: Option<EntryId>, limit: usize) -> Vec<Entry> {
        self.entries
            .range(..before.unwrap_or(EntryId(u64::MAX)))
            .rev()
            .map(|(_, entry)| entry)
            .filter(|entry| Entry::is_of(&entry.event, subject))
            .take(limit)
            .cloned()
            .collect()
    }

    /// How many entries are pending and parked.
    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts::new(self.pending.len() as u64, self.parked.len() as u64)
    }

    /// Drops the entries delivered before `before`; how many went.
    pub fn prune(&mut self, before: OffsetDateTime) -> u64 {
        let before_len = self.entries.len();
        self.entries
            .retain(|_, entry| entry.delivered_at.is_none_or(|at| at >= before));
        (before_len - self.entries.len()) as u64
    }
}
