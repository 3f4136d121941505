//! [`Listener`]: a task that keeps a [`CachedStore`] in step with the
//! table, through PostgreSQL's `LISTEN`/`NOTIFY`.
//!
//! [`PgStore::migrate`](crate::PgStore::migrate) installs a trigger that
//! sends, in the writing transaction, a notification on the channel named
//! after the table with the key id as payload, for every inserted, updated
//! or deleted row, with `/` and the owner for every change of an owner's
//! limits (not of its meter), and with an empty payload for a `TRUNCATE`
//! (whoever writes it: a replica, `keyctl`, plain SQL). The
//! listener holds its own connection (outside the pool: `LISTEN` belongs
//! to a session), invalidates each notified id, and clears the whole cache
//! whenever it connects or loses its connection, since notifications sent
//! while it was not listening are lost.

use std::sync::Arc;
use std::time::Duration;

use keyroll::store::CachedStore;
use keyroll::{KeyId, OwnerId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection, Notification};

/// How to open the listener's own connection: the pool's settings.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain(tokio_postgres::Config),
    Tls(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
}

impl Connector {
    /// The role the connections log in as, for messages.
    pub(crate) fn role(&self) -> &str {
        let (Connector::Plain(config) | Connector::Tls(config, _)) = self;
        config.get_user().unwrap_or("(the default role)")
    }
}

/// Waits before reconnecting: from the first value, doubling up to the
/// last.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// What a [`Listener`] is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerState {
    /// Opening its connection (the first time, or again after a failure).
    Connecting,
    /// Listening: notifications invalidate the cache as they come.
    Listening {
        /// How many times it has connected, this one included.
        connects: u64,
    },
    /// The connection failed or was lost; the cache was cleared and a new
    /// connection is tried after `retry_in`. Until it is listening again,
    /// writes made elsewhere are seen within the cache's `max_staleness`.
    Disconnected {
        /// What went wrong.
        error: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
}

/// The task [`PgStore::listen`](crate::PgStore::listen) starts. Dropping
/// it stops the task.
#[derive(Debug)]
pub struct Listener {
    state: watch::Receiver<ListenerState>,
    task: JoinHandle<()>,
}

impl Listener {
    pub(crate) fn spawn<S>(
        connector: Connector,
        channel: String,
        cache: Arc<CachedStore<S>>,
    ) -> Listener
    where
        S: Send + Sync + 'static,
    {
        let (report, state) = watch::channel(ListenerState::Connecting);
        let task = tokio::spawn(run(connector, channel, cache, report));
        Listener { state, task }
    }

    /// What it is doing now.
    pub fn state(&self) -> ListenerState {
        self.state.borrow().clone()
    }

    /// Waits until it is listening, with at least `connects` connections
    /// made (1 for the first; 2 for the first reconnection...).
    pub async fn listening(&mut self, connects: u64) {
        let _ = self
            .state
            .wait_for(|s| matches!(s, ListenerState::Listening { connects: c } if *c >= connects))
            .await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<S>(
    connector: Connector,
    channel: String,
    cache: Arc<CachedStore<S>>,
    report: watch::Sender<ListenerState>,
) {
    let mut connects = 0;
    let mut retry_in = FIRST_RETRY;
    loop {
        report.send_replace(ListenerState::Connecting);
        let error = match connector.open(&channel).await {
            Ok((_client, mut notifications)) => {
                // Anything written before LISTEN took effect was not
                // notified to this connection.
                cache.invalidate_all();
                connects += 1;
                retry_in = FIRST_RETRY;
                report.send_replace(ListenerState::Listening { connects });
                let error = loop {
                    match notifications.recv().await {
                        Some(Ok(notification)) => invalidate(&cache, notification.payload()),
                        Some(Err(e)) => break e.to_string(),
                        None => break "the connection closed".to_owned(),
                    }
                };
                // Notifications sent from now until the next LISTEN are lost.
                cache.invalidate_all();
                error
            }
            Err(e) => e.to_string(),
        };
        report.send_replace(ListenerState::Disconnected { error, retry_in });
        tokio::time::sleep(retry_in).await;
        retry_in = (retry_in * 2).min(LAST_RETRY);
    }
}

type Notifications = mpsc::UnboundedReceiver<Result<Notification, tokio_postgres::Error>>;

impl Connector {
    /// A new connection listening on `channel`, and its notifications.
    async fn open(&self, channel: &str) -> Result<(Client, Notifications), tokio_postgres::Error> {
        let (sender, notifications) = mpsc::unbounded_channel();
        let client = match self {
            Connector::Plain(config) => {
                let (client, connection) = named(config, channel)
                    .connect(tokio_postgres::NoTls)
                    .await?;
                tokio::spawn(forward(connection, sender));
                client
            }
            Connector::Tls(config, tls) => {
                let (client, connection) = named(config, channel).connect(tls.clone()).await?;
                tokio::spawn(forward(connection, sender));
                client
            }
        };
        // The channel is the table's name: a plain identifier.
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok((client, notifications))
    }
}

/// The settings, with an application name that shows the connection's
/// purpose in `pg_stat_activity`: `keyroll-listener:<table>`.
fn named(config: &tokio_postgres::Config, channel: &str) -> tokio_postgres::Config {
    let mut config = config.clone();
    config.application_name(format!("keyroll-listener:{channel}"));
    config
}

/// Forgets what `payload` names: a key id, or `/` and an owner id (its
/// limits changed: no key id holds a `/`). Anything else (empty, for a
/// `TRUNCATE`) names every key.
fn invalidate<S>(cache: &CachedStore<S>, payload: &str) {
    match payload.strip_prefix('/') {
        Some(owner) => match OwnerId::existing(owner) {
            Ok(owner) => cache.invalidate_owner(&owner),
            Err(_) => cache.invalidate_all(),
        },
        None => match KeyId::existing(payload) {
            Ok(id) => cache.invalidate(&id),
            Err(_) => cache.invalidate_all(),
        },
    }
}

/// Drives a connection, passing its notifications on, and its end as an
/// error (or the channel's closing).
async fn forward<S, T>(
    mut connection: Connection<S, T>,
    notifications: mpsc::UnboundedSender<Result<Notification, tokio_postgres::Error>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if notifications.send(Ok(n)).is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let _ = notifications.send(Err(e));
                return;
            }
            None => return,
        }
    }
}
