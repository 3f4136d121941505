//! [`UsageFlusher`]: the periodic task that writes the uses a manager
//! noted in memory.

use std::sync::Arc;
use std::time::Duration;

use keyroll::KeyManager;
use keyroll::store::KeyStore;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
pub struct UsageFlusher {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl UsageFlusher {
    /// Starts the task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `period` is zero.
    pub fn spawn<S>(keys: Arc<KeyManager<S>>, period: Duration) -> UsageFlusher
    where
        S: KeyStore + 'static,
    {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is at once
            loop {
                tokio::select! {
                    _ = ticks.tick() => flush(&keys).await,
                    _ = &mut stopped => break,
                }
            }
            flush(&keys).await;
        });
        UsageFlusher {
            stop: Some(stop),
            task,
        }
    }

    /// Stops the task after one last flush, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn flush<S: KeyStore>(keys: &KeyManager<S>) {
    match keys.flush_usage(OffsetDateTime::now_utc()).await {
        Ok(written) => tracing::debug!(written, "keyroll: uses flushed"),
        Err(error) => tracing::warn!(
            written = error.written,
            %error,
            "keyroll: the uses of some keys were not flushed"
        ),
    }
}
