//! A [`keyroll`] store in one SQLite file.
//!
//! One table, `keyroll_keys (id TEXT PRIMARY KEY, incarnation INTEGER NOT
//! NULL, version INTEGER NOT NULL, record TEXT NOT NULL)`, where `record` is
//! the key as [`keyroll::record`] encodes it (hashes only, never a secret).
//! The database runs in WAL mode so readers never wait for the writer, with
//! `synchronous=FULL` so that a committed write (a revocation, or a token
//! already shown) survives a power loss. A new database file is created
//! readable by its owner only (0600), and SQLite gives its `-wal` and `-shm`
//! files the same mode.
//!
//! Every write is one statement, and `update`/`delete` are a compare-and-swap
//! on the whole revision: `... WHERE id = ? AND incarnation = ? AND version =
//! ?`. Several processes or connections may share one file: SQLite
//! serializes their writes and the revision check keeps them from
//! overwriting each other, even across a delete and re-create of an id. A
//! row whose record names another id or revision than its columns (a record
//! copied into another row) is refused, never returned.
//!
//! [`SqliteStore`] is a [`KeyStore`]; with the default feature `tokio` it is
//! also an [`AsyncKeyStore`](keyroll::AsyncKeyStore) whose calls run on
//! tokio's blocking pool, never on the async workers.
//!
//! # Example
//!
//! ```
//! use keyroll::{KeyId, KeyManager};
//! use keyroll_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir()?;
//! let manager = KeyManager::new(SqliteStore::open(dir.path().join("keys.db"))?);
//! let now = time::OffsetDateTime::now_utc();
//! let (token, _event) = manager.create_key(KeyId::new("acme")?, now, &mut rand::rng())?;
//! assert_eq!(manager.authenticate(token.expose_secret(), now)?.key_id.as_str(), "acme");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll-sqlite/0.3.0")]
#![deny(missing_docs)]

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keyroll::record::{self, RecordError};
use keyroll::{ApiKey, KeyId, KeyStore, Revision, StoreError};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

/// What can go wrong in the SQLite store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteStoreError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("cannot create the database file: {0}")]
    Create(#[source] std::io::Error),
    /// A stored record could not be read, or names another id or revision
    /// than its row; or a key could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A version or incarnation beyond SQLite's 64-bit signed integers.
    #[error("{0} does not fit an SQLite integer")]
    OutOfRange(u64),
    /// `PRAGMA integrity_check` found problems (listed).
    #[error("the database failed its integrity check: {0}")]
    IntegrityCheck(String),
    /// The blocking task running the call could not finish (the runtime is
    /// shutting down).
    #[cfg(feature = "tokio")]
    #[error("the blocking task was cancelled: {0}")]
    Cancelled(#[source] tokio::task::JoinError),
}

/// A [`KeyStore`] in one SQLite database. Cheap to clone: clones share one
/// connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates, with mode 0600) the database at `path`, creates
    /// the table if it is missing and upgrades a table of keyroll 0.1.
    ///
    /// # Errors
    ///
    /// [`SqliteStoreError::Create`], or SQLite's refusal (for instance of a
    /// file that is not a database).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteStoreError> {
        let path = path.as_ref();
        create_private(path)?;
        Self::setup(Connection::open(path)?)
    }

    /// A private database in memory, for tests.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn open_in_memory() -> Result<Self, SqliteStoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, SqliteStoreError> {
        // Wait for another connection's write instead of failing at once.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS keyroll_keys (
                 id TEXT PRIMARY KEY,
                 incarnation INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 record TEXT NOT NULL
             ) WITHOUT ROWID;",
        )?;
        upgrade_0_1(&tx)?;
        tx.commit()?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The value of a pragma on this store's connection (e.g.
    /// `synchronous`, `journal_mode`), to check how it runs.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn pragma(&self, name: &str) -> Result<String, SqliteStoreError> {
        let value = self
            .conn()
            .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))?;
        Ok(match value {
            rusqlite::types::Value::Integer(n) => n.to_string(),
            rusqlite::types::Value::Text(text) => text,
            other => format!("{other:?}"),
        })
    }

    /// `PRAGMA integrity_check`: `Ok` when SQLite finds the database sound.
    ///
    /// # Errors
    ///
    /// SQLite's, or [`SqliteStoreError::IntegrityCheck`] with the problems
    /// it found.
    pub fn integrity_check(&self) -> Result<(), SqliteStoreError> {
        match self.pragma("integrity_check")?.as_str() {
            "ok" => Ok(()),
            problems => Err(SqliteStoreError::IntegrityCheck(problems.to_owned())),
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic cannot leave a connection mid-statement; keep using it.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a compare-and-swap changed no row: why.
    fn refusal(conn: &Connection, id: &KeyId, expected: Revision) -> StoreError<SqliteStoreError> {
        let found = conn
            .query_row(
                "SELECT incarnation, version FROM keyroll_keys WHERE id = ?1",
                [id.as_str()],
                |row| Ok(revision(row.get(0)?, row.get(1)?)),
            )
            .optional();
        match found {
            Ok(None) => StoreError::NotFound,
            Ok(Some(found)) => StoreError::Conflict { expected, found },
            Err(e) => StoreError::Backend(e.into()),
        }
    }
}

/// Creates `path` readable and writable by its owner only, unless it exists.
fn create_private(path: &Path) -> Result<(), SqliteStoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SqliteStoreError::Create(e)),
    }
}

/// Tables written by keyroll 0.1 have no incarnation column: add it, and
/// fill it from each record (schema-1 records derive theirs on load).
fn upgrade_0_1(conn: &Connection) -> Result<(), SqliteStoreError> {
    let has_column: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('keyroll_keys') WHERE name = 'incarnation'",
        [],
        |row| row.get(0),
    )?;
    if has_column {
        return Ok(());
    }
    conn.execute_batch("ALTER TABLE keyroll_keys ADD COLUMN incarnation INTEGER")?;
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT id, record FROM keyroll_keys")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, json) in rows {
        let key = record::decode(&json, &id)?;
        conn.execute(
            "UPDATE keyroll_keys SET incarnation = ?1 WHERE id = ?2",
            params![integer(key.revision().incarnation())?, id],
        )?;
    }
    Ok(())
}

fn integer(n: u64) -> Result<i64, SqliteStoreError> {
    i64::try_from(n).map_err(|_| SqliteStoreError::OutOfRange(n))
}

/// A revision read from the columns (written from `u64`s below 2^63).
fn revision(incarnation: i64, version: i64) -> Revision {
    Revision::new(incarnation as u64, version as u64)
}

/// The columns and record of a key, ready to bind.
fn row_of(key: &ApiKey) -> Result<(i64, i64, String), StoreError<SqliteStoreError>> {
    let revision = key.revision();
    let columns = (|| {
        Ok((
            integer(revision.incarnation())?,
            integer(revision.version())?,
            record::encode(key)?,
        ))
    })();
    columns.map_err(StoreError::Backend)
}

impl KeyStore for SqliteStore {
    type Error = SqliteStoreError;

    fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, SqliteStoreError> {
        let row: Option<(i64, i64, String)> = self
            .conn()
            .query_row(
                "SELECT incarnation, version, record FROM keyroll_keys WHERE id = ?1",
                [id.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let key = row.map(|(i, v, json)| record::decode_row(&json, id.as_str(), revision(i, v)));
        Ok(key.transpose()?)
    }

    fn insert(&self, key: &ApiKey) -> Result<(), StoreError<SqliteStoreError>> {
        let (incarnation, version, json) = row_of(key)?;
        let inserted = self.conn().execute(
            "INSERT INTO keyroll_keys (id, incarnation, version, record) VALUES (?1, ?2, ?3, ?4)",
            params![key.id().as_str(), incarnation, version, json],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(StoreError::Backend(e.into())),
        }
    }

    fn update(&self, key: &ApiKey, expected: Revision) -> Result<(), StoreError<SqliteStoreError>> {
        let (incarnation, version, json) = row_of(key)?;
        let backend = |e: SqliteStoreError| StoreError::Backend(e);
        let expected_version = integer(expected.version()).map_err(backend)?;
        let expected_incarnation = integer(expected.incarnation()).map_err(backend)?;
        let conn = self.conn();
        // The new record's incarnation must be the expected one too: a key
        // of another incarnation never replaces this one.
        let changed = conn
            .execute(
                "UPDATE keyroll_keys SET version = ?1, record = ?2
                 WHERE id = ?3 AND incarnation = ?4 AND version = ?5 AND incarnation = ?6",
                params![
                    version,
                    json,
                    key.id().as_str(),
                    expected_incarnation,
                    expected_version,
                    incarnation
                ],
            )
            .map_err(|e| backend(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(Self::refusal(&conn, key.id(), expected))
        }
    }

    fn delete(&self, id: &KeyId, expected: Revision) -> Result<(), StoreError<SqliteStoreError>> {
        let backend = |e: SqliteStoreError| StoreError::Backend(e);
        let version = integer(expected.version()).map_err(backend)?;
        let incarnation = integer(expected.incarnation()).map_err(backend)?;
        let conn = self.conn();
        let changed = conn
            .execute(
                "DELETE FROM keyroll_keys WHERE id = ?1 AND incarnation = ?2 AND version = ?3",
                params![id.as_str(), incarnation, version],
            )
            .map_err(|e| backend(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(Self::refusal(&conn, id, expected))
        }
    }

    fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, SqliteStoreError> {
        // TEXT compares with the BINARY collation: byte order, as KeyId's Ord.
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT id, incarnation, version, record FROM keyroll_keys
             WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![after.map(KeyId::as_str), limit], |row| {
            Ok((
                row.get::<_, String>(0)?,
                revision(row.get(1)?, row.get(2)?),
                row.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (id, revision, json) = row?;
            Ok(record::decode_row(&json, &id, revision)?)
        })
        .collect()
    }
}

#[cfg(feature = "tokio")]
mod blocking {
    //! [`AsyncKeyStore`] on tokio's blocking pool.

    use keyroll::{ApiKey, AsyncKeyStore, KeyId, KeyStore, Revision, StoreError};

    use super::{SqliteStore, SqliteStoreError};

    impl SqliteStore {
        /// Runs `call` on a clone of the store on tokio's blocking pool.
        async fn blocking<T: Send + 'static>(
            &self,
            call: impl FnOnce(&SqliteStore) -> T + Send + 'static,
        ) -> Result<T, SqliteStoreError> {
            let store = self.clone();
            match tokio::task::spawn_blocking(move || call(&store)).await {
                Ok(answer) => Ok(answer),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(SqliteStoreError::Cancelled(e)),
            }
        }
    }

    /// Every call runs on tokio's blocking pool (SQLite blocks on disk and
    /// on other connections' writes), so it needs a tokio runtime.
    impl AsyncKeyStore for SqliteStore {
        type Error = SqliteStoreError;

        async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, SqliteStoreError> {
            let id = id.clone();
            self.blocking(move |s| KeyStore::get(s, &id)).await?
        }

        async fn insert(&self, key: &ApiKey) -> Result<(), StoreError<SqliteStoreError>> {
            let key = key.clone();
            self.blocking(move |s| KeyStore::insert(s, &key))
                .await
                .map_err(StoreError::Backend)?
        }

        async fn update(
            &self,
            key: &ApiKey,
            expected: Revision,
        ) -> Result<(), StoreError<SqliteStoreError>> {
            let key = key.clone();
            self.blocking(move |s| KeyStore::update(s, &key, expected))
                .await
                .map_err(StoreError::Backend)?
        }

        async fn delete(
            &self,
            id: &KeyId,
            expected: Revision,
        ) -> Result<(), StoreError<SqliteStoreError>> {
            let id = id.clone();
            self.blocking(move |s| KeyStore::delete(s, &id, expected))
                .await
                .map_err(StoreError::Backend)?
        }

        async fn list(
            &self,
            after: Option<&KeyId>,
            limit: usize,
        ) -> Result<Vec<ApiKey>, SqliteStoreError> {
            let after = after.cloned();
            self.blocking(move |s| KeyStore::list(s, after.as_ref(), limit))
                .await?
        }
    }
}
