//! The background tasks a service runs beside its routes, each a tokio
//! task that [`shutdown`](UsageFlusher::shutdown) stops after one last
//! round: [`UsageFlusher`] (uses noted in memory, written),
//! [`Housekeeper`] (scheduled deletions, old counts and delivered events
//! pruned, notices swept) and [`Deliverer`] (the outbox delivered).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyroll::KeyManager;
use keyroll::outbox::{Dispatcher, Sink};
use keyroll::store::KeyStore;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A task running `round` every `period` (the first at once when `now` is
/// set), and once more when stopped. `round` answers whether to run again
/// at once (work is left) rather than after the period.
#[derive(Debug)]
struct Periodic {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Periodic {
    fn spawn<F, R>(period: Duration, now: bool, mut round: R) -> Periodic
    where
        R: FnMut() -> F + Send + 'static,
        F: Future<Output = bool> + Send,
    {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if !now {
                ticks.tick().await; // the first tick is at once
            }
            loop {
                tokio::select! {
                    _ = ticks.tick() => while round().await {},
                    _ = &mut stopped => break,
                }
            }
            round().await;
        });
        Periodic {
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// A tokio task calling [`KeyManager::flush_usage`] every `period`,
/// for a manager [with usage recording](KeyManager::with_usage_recording)
/// on. A failed flush is a `tracing` warning (its notes are kept for the
/// next one).
///
/// [`shutdown`](Self::shutdown) stops it after one last flush; so does
/// dropping it (the last flush then runs in the background). Aborting the
/// runtime without either loses at most one period of uses, never a
/// transition.
///
/// # Example
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use keyroll::KeyManager;
/// use keyroll::store::InMemoryStore;
/// use keyroll_axum::{KeyrollLayer, UsageFlusher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_usage_recording(true));
/// let flusher = UsageFlusher::spawn(keys.clone(), Duration::from_secs(5));
/// let layer = KeyrollLayer::new(keys);
/// // ... serve with the layer; on shutdown:
/// flusher.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct UsageFlusher(Periodic);

impl UsageFlusher {
    /// Starts the task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `period` is zero.
    pub fn spawn<S: KeyStore + 'static>(keys: Arc<KeyManager<S>>, period: Duration) -> Self {
        UsageFlusher(Periodic::spawn(period, false, move || {
            let keys = keys.clone();
            async move {
                match keys.flush_usage(OffsetDateTime::now_utc()).await {
                    Ok(written) => tracing::debug!(written, "keyroll: uses flushed"),
                    Err(error) => tracing::warn!(
                        written = error.written,
                        %error,
                        "keyroll: the uses of some keys were not flushed"
                    ),
                }
                false
            }
        }))
    }

    /// Stops the task after one last flush, and waits for it.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// A tokio task running [`KeyManager::housekeep_all`] (due deletions of
/// old tokens, usage counts and delivered outbox entries past their
/// retention) then [`KeyManager::sweep_notices`] every `period`, the
/// first at once. Every replica may run one: deletions and notices are
/// compare-and-swaps, each done once. Failures are `tracing` warnings.
///
/// # Example
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use keyroll::KeyManager;
/// use keyroll::store::InMemoryStore;
/// use keyroll_axum::Housekeeper;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_outbox());
/// let housekeeper = Housekeeper::spawn(keys, Duration::from_secs(60));
/// housekeeper.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct Housekeeper(Periodic);

impl Housekeeper {
    /// Starts the task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `period` is zero.
    pub fn spawn<S: KeyStore + 'static>(keys: Arc<KeyManager<S>>, period: Duration) -> Self {
        Housekeeper(Periodic::spawn(period, true, move || {
            let keys = keys.clone();
            async move {
                let now = OffsetDateTime::now_utc();
                match keys.housekeep_all(now).await {
                    Ok(events) => tracing::debug!(events = events.len(), "keyroll: housekept"),
                    Err(error) => tracing::warn!(%error, "keyroll: housekeeping failed"),
                }
                match keys.sweep_notices(now).await {
                    Ok(notices) => {
                        tracing::debug!(notices = notices.len(), "keyroll: notices swept")
                    }
                    Err(error) => tracing::warn!(%error, "keyroll: sweeping notices failed"),
                }
                false
            }
        }))
    }

    /// Stops the task after one last round, and waits for it.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// A tokio task delivering the outbox with a [`Dispatcher`]: a round every
/// `idle` when nothing was due, the next at once after a round that
/// delivered. Store failures are `tracing` warnings; failed deliveries are
/// the dispatcher's to retry.
///
/// # Example
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use keyroll::outbox::{Dispatcher, TracingSink};
/// use keyroll::store::InMemoryStore;
/// use keyroll_axum::Deliverer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = Arc::new(InMemoryStore::new());
/// let deliverer = Deliverer::spawn(Dispatcher::new(store, TracingSink), Duration::from_secs(1));
/// deliverer.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct Deliverer(Periodic);

impl Deliverer {
    /// Starts the task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `idle` is zero.
    pub fn spawn<S, K>(dispatcher: Dispatcher<S, K>, idle: Duration) -> Self
    where
        S: KeyStore + 'static,
        K: Sink + 'static,
    {
        let dispatcher = Arc::new(dispatcher);
        Deliverer(Periodic::spawn(idle, true, move || {
            let dispatcher = dispatcher.clone();
            async move {
                match dispatcher.dispatch(OffsetDateTime::now_utc()).await {
                    Ok(round) => round.delivered > 0,
                    Err(error) => {
                        tracing::warn!(%error, "keyroll: the outbox could not be read");
                        false
                    }
                }
            }
        }))
    }

    /// Stops the task after one last round, and waits for it.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}
