//! A `KeyStore` over SQLite: a real backend to copy into your service.
//!
//! One table, `keyroll_keys (id TEXT PRIMARY KEY, version INTEGER NOT NULL,
//! record TEXT NOT NULL)`, where `record` is the key serialized as JSON (hashes
//! only, never a secret). The database runs in WAL mode so readers never wait
//! for the writer; every write is one statement, and `update`/`delete` are a
//! compare-and-swap: `... WHERE id = ? AND version = ?`. Several processes or
//! connections may share one file: SQLite serializes their writes and the
//! version check keeps them from overwriting each other.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keyroll::{ApiKey, KeyId, KeyStore, StoreError};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

/// What can go wrong in the SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum SqliteStoreError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record does not load (its JSON is bad or breaks an invariant).
    #[error("stored key {id} is unreadable: {source}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// Why it does not load.
        source: serde_json::Error,
    },
    /// A version beyond SQLite's 64-bit signed integers.
    #[error("version {0} does not fit an SQLite integer")]
    VersionOutOfRange(u64),
}

/// A [`KeyStore`] in one SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and creates the table if it
    /// is missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteStoreError> {
        Self::setup(Connection::open(path)?)
    }

    /// A private database in memory, for tests.
    pub fn open_in_memory() -> Result<Self, SqliteStoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, SqliteStoreError> {
        // Wait for another connection's write instead of failing at once.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS keyroll_keys (
                 id TEXT PRIMARY KEY,
                 version INTEGER NOT NULL,
                 record TEXT NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic cannot leave a connection mid-statement; keep using it.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version stored for `id`, if any (to tell `NotFound` from `Conflict`).
    fn stored_version(conn: &Connection, id: &KeyId) -> Result<Option<u64>, SqliteStoreError> {
        let version: Option<i64> = conn
            .query_row(
                "SELECT version FROM keyroll_keys WHERE id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        Ok(version.map(|v| v as u64))
    }

    /// After a compare-and-swap changed no row: why.
    fn refusal(conn: &Connection, id: &KeyId, expected: u64) -> StoreError<SqliteStoreError> {
        match Self::stored_version(conn, id) {
            Ok(None) => StoreError::NotFound,
            Ok(Some(found)) => StoreError::Conflict { expected, found },
            Err(e) => StoreError::Backend(e),
        }
    }
}

fn to_sql_version(version: u64) -> Result<i64, SqliteStoreError> {
    i64::try_from(version).map_err(|_| SqliteStoreError::VersionOutOfRange(version))
}

fn record_of(key: &ApiKey) -> String {
    // An ApiKey always serializes: its fields are plain strings, numbers and
    // dates keyroll built itself.
    serde_json::to_string(key).unwrap_or_else(|e| unreachable!("an ApiKey serializes: {e}"))
}

fn load(id: String, record: String) -> Result<ApiKey, SqliteStoreError> {
    serde_json::from_str(&record).map_err(|source| SqliteStoreError::Corrupt { id, source })
}

impl KeyStore for SqliteStore {
    type Error = SqliteStoreError;

    fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, SqliteStoreError> {
        let record: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM keyroll_keys WHERE id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        record.map(|r| load(id.to_string(), r)).transpose()
    }

    fn insert(&self, key: &ApiKey) -> Result<(), StoreError<SqliteStoreError>> {
        let version = to_sql_version(key.version()).map_err(StoreError::Backend)?;
        let inserted = self.conn().execute(
            "INSERT INTO keyroll_keys (id, version, record) VALUES (?1, ?2, ?3)",
            params![key.id().as_str(), version, record_of(key)],
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

    fn update(
        &self,
        key: &ApiKey,
        expected_version: u64,
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let backend = |e: SqliteStoreError| StoreError::Backend(e);
        let version = to_sql_version(key.version()).map_err(backend)?;
        let expected = to_sql_version(expected_version).map_err(backend)?;
        let conn = self.conn();
        let changed = conn
            .execute(
                "UPDATE keyroll_keys SET version = ?1, record = ?2 WHERE id = ?3 AND version = ?4",
                params![version, record_of(key), key.id().as_str(), expected],
            )
            .map_err(|e| backend(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(Self::refusal(&conn, key.id(), expected_version))
        }
    }

    fn delete(
        &self,
        id: &KeyId,
        expected_version: u64,
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let expected = to_sql_version(expected_version).map_err(StoreError::Backend)?;
        let conn = self.conn();
        let changed = conn
            .execute(
                "DELETE FROM keyroll_keys WHERE id = ?1 AND version = ?2",
                params![id.as_str(), expected],
            )
            .map_err(|e| StoreError::Backend(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(Self::refusal(&conn, id, expected_version))
        }
    }

    fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, SqliteStoreError> {
        // TEXT compares with the BINARY collation: byte order, as KeyId's Ord.
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT id, record FROM keyroll_keys WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![after.map(KeyId::as_str), limit], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (id, record) = row?;
            load(id, record)
        })
        .collect()
    }
}
