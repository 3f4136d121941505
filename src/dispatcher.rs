//! [`Dispatcher`]: reads the outbox in order and hands batches to a
//! [`Sink`], at least once.

use std::future::Future;

use time::{Duration, OffsetDateTime};

use crate::entry::{Entry, EntryState, OutboxCounts};
use crate::store::KeyStore;
use crate::telemetry;

/// Where a [`Dispatcher`] delivers entries: a log, webhooks, a queue.
///
/// `deliver` gets a batch in order (a subject's entries in the order of
/// its writes). It returns `Ok` once every entry is delivered, or a
/// [`SinkError`] saying how many of the first entries were delivered
/// before one failed: the dispatcher marks those delivered, retries the
/// one that failed later, and the rest at once.
pub trait Sink: Send + Sync {
    /// Delivers `entries`, in order.
    ///
    /// # Errors
    ///
    /// A [`SinkError`] at the first entry that could not be delivered.
    fn deliver(&self, entries: &[Entry]) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A delivery that failed part way: the first `delivered` entries of the
/// batch went out; the next one failed, saying `message` (kept as the
/// entry's `last_error`: never put a secret in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery failed after {delivered} entries: {message}")]
#[non_exhaustive]
pub struct SinkError {
    /// How many entries of the batch were delivered before the failure.
    pub delivered: usize,
    /// What failed.
    pub message: String,
}

impl SinkError {
    /// A failure at the entry after the first `delivered`.
    pub fn new(delivered: usize, message: impl Into<String>) -> SinkError {
        SinkError {
            delivered,
            message: message.into(),
        }
    }
}

/// A [`Sink`] that logs each entry through `tracing` (target
/// `keyroll::outbox`, level INFO): the audit trail in a service's log.
/// It never fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl Sink for TracingSink {
    async fn deliver(&self, entries: &[Entry]) -> Result<(), SinkError> {
        for entry in entries {
            tracing::info!(
                target: "keyroll::outbox",
                id = %entry.id,
                event = entry.event.name(),
                key = ?entry.event.key_id().map(ToString::to_string),
                "{:?}",
                entry.event,
            );
        }
        Ok(())
    }
}

/// What one [`Dispatcher::dispatch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dispatched {
    /// Entries claimed: 0 when nothing was due.
    pub claimed: usize,
    /// Entries delivered.
    pub delivered: usize,
    /// Entries that failed and will be retried after a backoff.
    pub retrying: usize,
    /// Entries that failed for the last allowed time, now parked.
    pub parked: usize,
    /// The outbox after the round.
    pub counts: OutboxCounts,
}

/// Reads the outbox of a store in order and hands batches to a [`Sink`];
/// marks them delivered only once the sink succeeded, so that delivery is
/// at least once and the entry's id lets a receiver drop duplicates.
///
/// A failed entry is retried after an exponential backoff (from
/// `backoff`'s first delay, doubling up to its maximum, each delay drawn
/// at random between its half and itself, so that retries of many
/// entries spread out), and parked after `max_attempts` failures, until
/// an operator puts it back. A subject's entries wait behind
/// its failed one, so a receiver sees each key's events in order; a
/// parked entry lets the next ones of its key go.
/// [`KeyManager::retry_parked`](crate::KeyManager::retry_parked) puts a
/// parked entry back.
///
/// Several replicas may each run a dispatcher on one store: a claim holds
/// its entries for `hold` (2 minutes by default), so that they split the
/// work. Make `hold` longer than a batch can take to deliver; an entry
/// whose dispatcher died is claimed again once its hold ends.
///
/// keyroll has no executor: call [`dispatch`](Self::dispatch) in a loop
/// of your runtime, soon again when it claimed a full batch, after a
/// pause when it claimed nothing.
///
/// # Example
///
/// ```
/// use keyroll::outbox::{Dispatcher, TracingSink};
/// use keyroll::store::InMemoryStore;
/// use keyroll::{KeyId, KeyManager};
/// use time::OffsetDateTime;
///
/// # pollster::block_on(async {
/// let keys = KeyManager::new(InMemoryStore::new()).with_outbox();
/// let now = OffsetDateTime::now_utc();
/// keys.create_key(KeyId::new("acme")?, now, &mut rand::rng()).await?;
/// let dispatcher = Dispatcher::new(keys.store(), TracingSink);
/// let round = dispatcher.dispatch(now).await?;
/// assert_eq!((round.delivered, round.counts.pending), (1, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Dispatcher<S, K> {
    store: S,
    sink: K,
    batch: usize,
    hold: Duration,
    max_attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl<S: KeyStore, K: Sink> Dispatcher<S, K> {
    /// A dispatcher of `store`'s outbox to `sink`: batches of 32, held 2
    /// minutes, retried after 1 s, 2 s, 4 s … up to 1 h, parked after 16
    /// failures (about 4 hours of retries).
    pub fn new(store: S, sink: K) -> Self {
        Dispatcher {
            store,
            sink,
            batch: 32,
            hold: Duration::minutes(2),
            max_attempts: 16,
            first_backoff: Duration::SECOND,
            max_backoff: Duration::HOUR,
        }
    }

    /// At most `entries` a batch (at least 1).
    pub fn batch(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How long a claim holds its entries from other dispatchers.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold.max(Duration::ZERO);
        self
    }

    /// Parks an entry at its `attempts`-th failure (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Retries after `first`, doubling up to `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first.max(Duration::ZERO);
        self.max_backoff = max.max(self.first_backoff);
        self
    }

    /// The sink.
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// Claims a batch of due entries, delivers it, and stores what
    /// happened; reports the outbox's counts to the `metrics` facade.
    ///
    /// # Errors
    ///
    /// The store's. Entries claimed before a store error are held until
    /// their hold ends, then claimed again.
    pub async fn dispatch(&self, now: OffsetDateTime) -> Result<Dispatched, S::Error> {
        let mut entries = self.store.claim_outbox(self.batch, now, self.hold).await?;
        let mut round = Dispatched {
            claimed: entries.len(),
            ..Dispatched::default()
        };
        if !entries.is_empty() {
            let (delivered, failure) = match self.sink.deliver(&entries).await {
                Ok(()) => (entries.len(), None),
                Err(e) => (e.delivered.min(entries.len()), Some(e.message)),
            };
            let mut lags = Vec::with_capacity(delivered);
            for entry in &mut entries[..delivered] {
                entry.state = EntryState::Delivered;
                entry.delivered_at = Some(now);
                lags.push((now - entry.event.at()).as_seconds_f64().max(0.0));
            }
            if let Some((failed, rest)) = entries[delivered..].split_first_mut() {
                failed.attempts = failed.attempts.saturating_add(1);
                failed.last_error = failure;
                if failed.attempts >= self.max_attempts {
                    failed.state = EntryState::Parked;
                    round.parked = 1;
                } else {
                    failed.next_attempt_at = now.saturating_add(self.backoff_for(failed.attempts));
                    round.retrying = 1;
                }
                for untried in rest {
                    untried.next_attempt_at = now;
                }
            }
            self.store.update_outbox(&entries).await?;
            round.delivered = delivered;
            telemetry::dispatched(&lags, round.retrying, round.parked);
        }
        round.counts = self.store.outbox_counts().await?;
        telemetry::outbox_counts(round.counts.pending, round.counts.parked);
        Ok(round)
    }

    /// The delay before the retry after the `attempts`-th failure: the
    /// exponential step, less a random part of up to its half.
    fn backoff_for(&self, attempts: u32) -> Duration {
        let step = self
            .first_backoff
            .checked_mul(
                1_i32
                    .checked_shl(attempts.saturating_sub(1))
                    .unwrap_or(i32::MAX),
            )
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        let fraction = getrandom::u32().unwrap_or(0) as f64 / u32::MAX as f64;
        step - step / 2 * fraction
    }
}
