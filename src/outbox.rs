//! The outbox: every event a write produces, stored in the same atomic
//! step as the write, then delivered at least once.
//!
//! With [`KeyManager::with_outbox`](crate::KeyManager::with_outbox), each
//! write of the manager hands the store its events with it, and the store
//! keeps them as [`Entry`]s beside the keys (the same lock in memory, the
//! same transaction in SQL): a crash can never keep a change and lose its
//! event, or the reverse. A [`Dispatcher`] then reads the entries in
//! order and hands them to a [`Sink`] ([`TracingSink`], or the webhooks
//! of `keyroll-webhooks`), retrying with backoff, parking what keeps
//! failing. [`KeyManager::housekeep_all`](crate::KeyManager::housekeep_all)
//! prunes delivered entries after the outbox retention.
//!
//! Notices ([`KeyManager::sweep_notices`](crate::KeyManager::sweep_notices))
//! go through the outbox too.

pub use crate::dispatcher::{Dispatched, Dispatcher, Sink, SinkError, TracingSink};
pub use crate::entry::{Entry, EntryId, EntryState, MemoryOutbox, OutboxCounts};
