//! A [`keyroll`] store in PostgreSQL: API keys shared by the replicas of a
//! service running on many machines.
//!
//! [`PgStore`] is a [`KeyStore`] over `tokio-postgres` and a
//! `deadpool-postgres` pool, made from a URL by [`PgStore::connect`]
//! (and [`PgStore::in_table`] for another table than `keyroll_keys`); its
//! calls need a tokio runtime. `connect` requires TLS
//! (through rustls, the server's certificate verified) unless the URL says
//! `sslmode=disable`: a server that declines TLS is refused, never used in
//! the clear.
//!
//! One table, created by [`PgStore::migrate`] (idempotent), an explicit
//! step run by a role that may create tables; the service's own role needs
//! only `SELECT`, `INSERT`, `UPDATE` and `DELETE`:
//!
//! ```sql
//! CREATE TABLE keyroll_keys (
//!     id          TEXT COLLATE "C" PRIMARY KEY,  -- byte order, as KeyId's Ord
//!     incarnation BIGINT NOT NULL,
//!     version     BIGINT NOT NULL,
//!     record      JSONB NOT NULL,                -- the ApiKey: hashes only, no secret
//!     updated_at  TIMESTAMPTZ NOT NULL
//! );
//! ```
//!
//! Writes are single statements; `update` and `delete` are a compare-and-swap
//! on the whole revision (`... WHERE id = $1 AND incarnation = $2 AND version
//! = $3`), so two replicas that loaded the same revision cannot both write,
//! and a copy loaded before a delete and re-create of its id matches
//! nothing: no update is lost, and a write is visible to every replica as
//! soon as it returns. `list` pages by key (`id > $1 ORDER BY id LIMIT $2`),
//! never by OFFSET. Records are written and read through
//! [`keyroll::record`]; a row whose record names another id or revision than
//! its columns is refused. Backend errors keep their SQLSTATE
//! ([`PgStoreError::code`]).
//!
//! # Example
//!
//! ```no_run
//! use keyroll::{KeyManager, KeyId};
//! use keyroll_postgres::PgStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at deployment, as a role that may create tables:
//! PgStore::connect("postgres://admin@db.internal/keys").await?.migrate().await?;
//! // The service, as a role with DML rights only; TLS is required.
//! let store = PgStore::connect("postgres://keyroll@db.internal/keys").await?;
//! let manager = KeyManager::new(store);
//! let now = time::OffsetDateTime::now_utc();
//! let mut rng = keyroll::os_rng(); // Send, unlike rand::rng()
//! let (token, _event) = manager.create_key(KeyId::new("acme")?, now, &mut rng).await?;
//! assert!(manager.authenticate(token.expose_secret(), now).await.is_ok());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll-postgres/0.3.0")]
#![deny(missing_docs)]

use std::sync::Arc;

use deadpool_postgres::{Pool, PoolError};
use keyroll::ApiKey;
use keyroll::KeyId;
use keyroll::record::{self, RecordError};
use keyroll::store::{CachedStore, KeyStore, Revision, StoreError};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

mod listen;

use listen::Connector;
pub use listen::{Listener, ListenerState};

/// The root certificates [`PgStore::connect_with_roots`] verifies the server against
/// (rustls's).
#[doc(no_inline)]
pub use rustls::RootCertStore;

/// What can go wrong in the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// No connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(#[from] PoolError),
    /// The server refused or failed a statement; `code` is its SQLSTATE.
    #[error("postgres{}: {source}", code.as_ref().map(|c| format!(" (SQLSTATE {})", c.code())).unwrap_or_default())]
    Postgres {
        /// The SQLSTATE, when the server sent one.
        code: Option<SqlState>,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored record could not be read, or names another id or revision
    /// than its row; or a key could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The URL or the TLS settings could not make a pool.
    #[error("cannot connect: {0}")]
    Config(String),
    /// A version or incarnation beyond BIGINT.
    #[error("{0} does not fit a BIGINT")]
    OutOfRange(u64),
    /// The store's table does not exist: [`PgStore::migrate`] has not run.
    #[error(
        "table {table} does not exist: create it with PgStore::migrate (keyctl migrate), as a role that may"
    )]
    NotMigrated {
        /// The table's name.
        table: String,
    },
}

impl From<tokio_postgres::Error> for PgStoreError {
    fn from(source: tokio_postgres::Error) -> Self {
        PgStoreError::Postgres {
            code: source.code().cloned(),
            source,
        }
    }
}

impl PgStoreError {
    /// The SQLSTATE of a server error, e.g. to retry on serialization failures.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgStoreError::Postgres { code, .. } => code.as_ref(),
            _ => None,
        }
    }
}

/// A [`KeyStore`] in one PostgreSQL table. Its calls need a tokio runtime
/// (`tokio-postgres` drives its connections on one).
pub struct PgStore {
    pool: Pool,
    table: String,
    sql: Statements,
    /// The pool's settings, for a listener's own connection.
    connector: Connector,
}

/// The statements, written once for the table's name.
struct Statements {
    get: String,
    insert: String,
    update: String,
    delete: String,
    revision: String,
    list: String,
}

impl PgStore {
    /// A store over a pool made from `url` (`postgres://user@host/db?...`),
    /// in the table `keyroll_keys`.
    ///
    /// **TLS is required** unless the URL says `sslmode=disable`: without
    /// `sslmode`, and with `sslmode=prefer` or `require`, every connection
    /// uses TLS through rustls and verifies the server's certificate
    /// against the system's root certificates. A server (or anyone in the
    /// middle) that declines TLS is refused, never used in the clear:
    /// unlike libpq's `prefer`, which falls back to plaintext, and so lets
    /// whoever sits on the path rewrite key rows. Only an explicit
    /// `sslmode=disable` connects in the clear, and says so in a `tracing`
    /// warning.
    ///
    /// # Errors
    ///
    /// [`PgStoreError::Config`] for a URL the driver refuses or no root
    /// certificates. Connecting is lazy: a server that cannot be reached is
    /// an error of the first call.
    pub async fn connect(url: &str) -> Result<PgStore, PgStoreError> {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        PgStore::connect_with_roots(url, roots).await
    }

    /// [`connect`](PgStore::connect), verifying the server's certificate
    /// against `roots` (for instance your own CA) instead of the system's.
    ///
    /// # Errors
    ///
    /// [`PgStoreError::Config`].
    pub async fn connect_with_roots(
        url: &str,
        roots: RootCertStore,
    ) -> Result<PgStore, PgStoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| PgStoreError::Config(format!("{e}")))?;
        // The driver's default, `prefer`, goes on in the clear when TLS is
        // declined: a downgrade anyone on the path can force.
        if config.get_ssl_mode() == SslMode::Prefer {
            config.ssl_mode(SslMode::Require);
        }
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let (pool, connector) = if config.get_ssl_mode() == SslMode::Disable {
            tracing::warn!(
                "keyroll-postgres: sslmode=disable: connections to the database are not encrypted"
            );
            let manager = deadpool_postgres::Manager::from_config(
                config.clone(),
                tokio_postgres::NoTls,
                manager_config,
            );
            (Pool::builder(manager).build(), Connector::Plain(config))
        } else {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| PgStoreError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let manager = deadpool_postgres::Manager::from_config(
                config.clone(),
                tls.clone(),
                manager_config,
            );
            (Pool::builder(manager).build(), Connector::Tls(config, tls))
        };
        let pool = pool.map_err(|e| PgStoreError::Config(e.to_string()))?;
        Ok(PgStore::in_named_table(
            pool,
            connector,
            "keyroll_keys".into(),
        ))
    }

    fn in_named_table(pool: Pool, connector: Connector, table: String) -> Self {
        let sql = Statements {
            get: format!(
                "SELECT id, incarnation, version, record::text FROM {table} WHERE id = $1"
            ),
            insert: format!(
                "INSERT INTO {table} (id, incarnation, version, record, updated_at) \
                 VALUES ($1, $2, $3, $4::text::jsonb, now())"
            ),
            // $5 is the new record's incarnation: a key of another
            // incarnation never replaces the stored one.
            update: format!(
                "UPDATE {table} SET version = $4, record = $6::text::jsonb, updated_at = now() \
                 WHERE id = $1 AND incarnation = $2 AND version = $3 AND incarnation = $5"
            ),
            delete: format!(
                "DELETE FROM {table} WHERE id = $1 AND incarnation = $2 AND version = $3"
            ),
            revision: format!("SELECT incarnation, version FROM {table} WHERE id = $1"),
            list: format!(
                "SELECT id, incarnation, version, record::text FROM {table} \
                 WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
            ),
        };
        PgStore {
            pool,
            table,
            sql,
            connector,
        }
    }

    /// Starts a [`Listener`]: a task on its own connection that invalidates
    /// `cache`'s entry of every key written to this store's table by
    /// anyone (the trigger [`migrate`](PgStore::migrate) installs notifies
    /// each write, in its transaction), and clears the whole cache each
    /// time it connects or loses its connection. A write on one replica
    /// then reaches the others' caches in milliseconds (see the crate's
    /// README for measured figures), and never later than the cache's
    /// `max_staleness`, which bounds staleness while the listener is
    /// reconnecting or a connection dies silently. Reconnects on its own,
    /// waiting 50 ms, then twice as long each time, up to 5 s.
    ///
    /// Needs a tokio runtime. The cache can be in front of this store or
    /// of anything else reading the same table.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::{sync::Arc, time::Duration};
    /// use keyroll::KeyManager;
    /// use keyroll::store::CachedStore;
    /// use keyroll_postgres::PgStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PgStore::connect("postgres://keyroll@db.internal/keys").await?;
    /// let cache = Arc::new(CachedStore::new(store, 100_000, Duration::from_secs(30)));
    /// let listener = cache.inner().listen(cache.clone());
    /// let manager = KeyManager::new(cache);
    /// // ... serve; keep `listener` alive as long as the cache.
    /// # drop(listener); Ok(())
    /// # }
    /// ```
    pub fn listen<S>(&self, cache: Arc<CachedStore<S>>) -> Listener
    where
        S: Send + Sync + 'static,
    {
        Listener::spawn(self.connector.clone(), self.table.clone(), cache)
    }

    /// The same store (the same pool) in another table than
    /// `keyroll_keys`: the one way to name a table. `table` must be a plain
    /// lower-case SQL identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes),
    /// since it is spliced into SQL.
    ///
    /// # Errors
    ///
    /// [`PgStoreError::Config`] for any other name.
    pub fn in_table(self, table: &str) -> Result<Self, PgStoreError> {
        let plain = table.len() <= 63
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !plain {
            return Err(PgStoreError::Config(format!(
                "not a plain lower-case SQL identifier: {table:?}"
            )));
        }
        Ok(PgStore::in_named_table(
            self.pool,
            self.connector,
            table.to_owned(),
        ))
    }

    /// Creates the table if it does not exist, and upgrades a table written
    /// by keyroll 0.1 (adds and fills the incarnation column); installs the
    /// triggers that notify every write (the function `keyroll_notify()`
    /// and, on the table, the triggers `keyroll_notify` for each row
    /// written and `keyroll_notify_truncate` for a `TRUNCATE`: see
    /// [`listen`](PgStore::listen)). Idempotent, and safe to run from many
    /// replicas at once.
    ///
    /// It is an explicit step, run by a role that may create tables (a
    /// deployment step, `keyctl migrate`, or the demo service's
    /// `--migrate`). No other method runs it: the service itself needs
    /// only `SELECT`, `INSERT`, `UPDATE` and `DELETE` on the table, so it
    /// can neither drop the table nor the triggers that keep caches in
    /// step. Until it has run, every call fails with
    /// [`PgStoreError::NotMigrated`].
    ///
    /// # Errors
    ///
    /// The server's, or [`PgStoreError::Record`] for an old row that does
    /// not load.
    pub async fn migrate(&self) -> Result<(), PgStoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Serializes concurrent migrations (CREATE IF NOT EXISTS alone races).
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&self.table])
            .await?;
        let table = &self.table;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 id TEXT COLLATE \"C\" PRIMARY KEY,
                 incarnation BIGINT NOT NULL,
                 version BIGINT NOT NULL,
                 record JSONB NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL
             );
             -- Tables of keyroll 0.1 have no incarnation: add it, filled below.
             ALTER TABLE {table} ADD COLUMN IF NOT EXISTS incarnation BIGINT;"
        ))
        .await?;
        let old = tx
            .query(
                &format!("SELECT id, record::text FROM {table} WHERE incarnation IS NULL"),
                &[],
            )
            .await?;
        for row in old {
            let id: String = row.get(0);
            let key = record::decode(row.get(1), &id)?;
            let incarnation = bigint(key.revision().incarnation())?;
            tx.execute(
                &format!("UPDATE {table} SET incarnation = $2 WHERE id = $1"),
                &[&id, &incarnation],
            )
            .await?;
        }
        tx.batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN incarnation SET NOT NULL"
        ))
        .await?;
        // Every write notifies the id on the channel named after the table,
        // in the writing transaction (for `listen`). The function is shared
        // by every keyroll table: serialize its replacement too.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('keyroll_notify()'))",
            &[],
        )
        .await?;
        tx.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION keyroll_notify() RETURNS trigger
                 LANGUAGE plpgsql AS $$
             BEGIN
                 IF TG_OP = 'TRUNCATE' THEN
                     -- No id: listeners forget every key.
                     PERFORM pg_notify(TG_TABLE_NAME, '');
                 ELSIF TG_OP = 'DELETE' THEN
                     PERFORM pg_notify(TG_TABLE_NAME, OLD.id);
                 ELSE
                     PERFORM pg_notify(TG_TABLE_NAME, NEW.id);
                 END IF;
                 RETURN NULL;
             END $$;
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'keyroll_notify' AND tgrelid = '{table}'::regclass) THEN
                     CREATE TRIGGER keyroll_notify AFTER INSERT OR UPDATE OR DELETE ON {table}
                         FOR EACH ROW EXECUTE FUNCTION keyroll_notify();
                 END IF;
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'keyroll_notify_truncate' AND tgrelid = '{table}'::regclass) THEN
                     CREATE TRIGGER keyroll_notify_truncate AFTER TRUNCATE ON {table}
                         FOR EACH STATEMENT EXECUTE FUNCTION keyroll_notify();
                 END IF;
             END $$;"
        ))
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Drops the table: for tests.
    ///
    /// # Errors
    ///
    /// The server's.
    pub async fn drop_table(&self) -> Result<(), PgStoreError> {
        let client = self.pool.get().await?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgStoreError> {
        Ok(self.pool.get().await?)
    }

    /// The driver's error, or [`PgStoreError::NotMigrated`] when it says
    /// the table does not exist.
    fn error(&self, e: tokio_postgres::Error) -> PgStoreError {
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            PgStoreError::NotMigrated {
                table: self.table.clone(),
            }
        } else {
            e.into()
        }
    }

    /// Runs `sql`, prepared once per pooled connection; the rows changed.
    async fn execute(
        &self,
        client: &deadpool_postgres::Object,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, PgStoreError> {
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.error(e))?;
        client
            .execute(&statement, params)
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs the query `sql`, prepared once per pooled connection; its one
    /// row, if any.
    async fn query_opt(
        &self,
        client: &deadpool_postgres::Object,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, PgStoreError> {
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.error(e))?;
        client
            .query_opt(&statement, params)
            .await
            .map_err(|e| self.error(e))
    }

    /// After a compare-and-swap changed no row: why.
    async fn refusal(
        &self,
        client: &deadpool_postgres::Object,
        id: &KeyId,
        expected: Revision,
    ) -> StoreError<PgStoreError> {
        match self
            .query_opt(client, &self.sql.revision, &[&id.as_str()])
            .await
        {
            Ok(None) => StoreError::NotFound,
            Ok(Some(row)) => StoreError::Conflict {
                expected,
                found: revision(row.get(0), row.get(1)),
            },
            Err(e) => StoreError::Backend(e),
        }
    }
}

fn bigint(n: u64) -> Result<i64, PgStoreError> {
    i64::try_from(n).map_err(|_| PgStoreError::OutOfRange(n))
}

/// A revision read from the columns (written from `u64`s below 2^63).
fn revision(incarnation: i64, version: i64) -> Revision {
    Revision::new(incarnation as u64, version as u64)
}

/// The columns and record of a key, ready to bind.
fn row_of(key: &ApiKey) -> Result<(i64, i64, String), StoreError<PgStoreError>> {
    let revision = key.revision();
    let columns = (|| {
        Ok((
            bigint(revision.incarnation())?,
            bigint(revision.version())?,
            record::encode(key)?,
        ))
    })();
    columns.map_err(StoreError::Backend)
}

/// Loads a row (id, incarnation, version, record), refusing a record that
/// names another id or revision.
fn decode(row: &tokio_postgres::Row) -> Result<ApiKey, PgStoreError> {
    let id: &str = row.get(0);
    Ok(record::decode_row(
        row.get(3),
        id,
        revision(row.get(1), row.get(2)),
    )?)
}

impl KeyStore for PgStore {
    type Error = PgStoreError;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, PgStoreError> {
        let client = self.client().await?;
        let row = self
            .query_opt(&client, &self.sql.get, &[&id.as_str()])
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError<PgStoreError>> {
        let (incarnation, version, record) = row_of(key)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let inserted = self
            .execute(
                &client,
                &self.sql.insert,
                &[&key.id().as_str(), &incarnation, &version, &record],
            )
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(PgStoreError::Postgres {
                code: Some(SqlState::UNIQUE_VIOLATION),
                ..
            }) => Err(StoreError::AlreadyExists),
            Err(e) => Err(StoreError::Backend(e)),
        }
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
    ) -> Result<(), StoreError<PgStoreError>> {
        let (incarnation, version, record) = row_of(key)?;
        let expected_incarnation = bigint(expected.incarnation()).map_err(StoreError::Backend)?;
        let expected_version = bigint(expected.version()).map_err(StoreError::Backend)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let changed = self
            .execute(
                &client,
                &self.sql.update,
                &[
                    &key.id().as_str(),
                    &expected_incarnation,
                    &expected_version,
                    &version,
                    &incarnation,
                    &record,
                ],
            )
            .await
            .map_err(StoreError::Backend)?;
        if changed == 1 {
            Ok(())
        } else {
            Err(self.refusal(&client, key.id(), expected).await)
        }
    }

    async fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<PgStoreError>> {
        let incarnation = bigint(expected.incarnation()).map_err(StoreError::Backend)?;
        let version = bigint(expected.version()).map_err(StoreError::Backend)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let changed = self
            .execute(
                &client,
                &self.sql.delete,
                &[&id.as_str(), &incarnation, &version],
            )
            .await
            .map_err(StoreError::Backend)?;
        if changed == 1 {
            Ok(())
        } else {
            Err(self.refusal(&client, id, expected).await)
        }
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, PgStoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(self.sql.list.as_str(), &[&after.map(KeyId::as_str), &limit])
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(decode).collect()
    }
}
