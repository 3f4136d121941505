//! An `AsyncKeyStore` over PostgreSQL: keys shared by the replicas of a
//! service running on many machines.
//!
//! One table (created by [`PgStore::migrate`], idempotent):
//!
//! ```sql
//! CREATE TABLE keyroll_keys (
//!     id         TEXT COLLATE "C" PRIMARY KEY,  -- byte order, as KeyId's Ord
//!     version    BIGINT NOT NULL,
//!     record     JSONB NOT NULL,                -- the ApiKey: hashes only, no secret
//!     updated_at TIMESTAMPTZ NOT NULL
//! );
//! ```
//!
//! Writes are single statements; `update` and `delete` are a compare-and-swap
//! (`... WHERE id = $1 AND version = $2`), so two replicas that loaded the
//! same version cannot both write: no update is lost, and a write is visible
//! to every replica as soon as it returns. `list` pages by key (`id > $1
//! ORDER BY id LIMIT $2`), never by OFFSET.

use deadpool_postgres::{Pool, PoolError};
use keyroll::{ApiKey, AsyncKeyStore, KeyId, StoreError};
use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;

/// What can go wrong in the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
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
        source: tokio_postgres::Error,
    },
    /// A stored record does not load.
    #[error("stored key {id} is unreadable: {source}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// Why it does not load.
        source: serde_json::Error,
    },
    /// A version beyond BIGINT.
    #[error("version {0} does not fit a BIGINT")]
    VersionOutOfRange(u64),
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

/// A [`AsyncKeyStore`] in one PostgreSQL table.
pub struct PgStore {
    pool: Pool,
    table: String,
    migrated: OnceCell<()>,
    sql: Statements,
}

/// The statements, written once for the table's name.
struct Statements {
    get: String,
    insert: String,
    update: String,
    delete: String,
    version: String,
    list: String,
}

impl PgStore {
    /// A store in the table `keyroll_keys`.
    pub fn new(pool: Pool) -> Self {
        Self::with_table(pool, "keyroll_keys")
    }

    /// A store in another table: `table` must be a plain lower-case SQL
    /// identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    ///
    /// # Panics
    ///
    /// If `table` is not such an identifier: it is spliced into SQL.
    pub fn with_table(pool: Pool, table: &str) -> Self {
        let plain = table.len() <= 63
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        assert!(plain, "not a plain SQL identifier: {table:?}");
        let sql = Statements {
            get: format!("SELECT record::text FROM {table} WHERE id = $1"),
            insert: format!(
                "INSERT INTO {table} (id, version, record, updated_at) VALUES ($1, $2, $3::text::jsonb, now())"
            ),
            update: format!(
                "UPDATE {table} SET version = $3, record = $4::text::jsonb, updated_at = now() \
                 WHERE id = $1 AND version = $2"
            ),
            delete: format!("DELETE FROM {table} WHERE id = $1 AND version = $2"),
            version: format!("SELECT version FROM {table} WHERE id = $1"),
            list: format!(
                "SELECT id, record::text FROM {table} WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
            ),
        };
        PgStore {
            pool,
            table: table.to_owned(),
            migrated: OnceCell::new(),
            sql,
        }
    }

    /// Creates the table if it does not exist. Safe to run from many
    /// replicas at once; every other method runs it once first.
    pub async fn migrate(&self) -> Result<(), PgStoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Serializes concurrent migrations (CREATE IF NOT EXISTS alone races).
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&self.table])
            .await?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 id TEXT COLLATE \"C\" PRIMARY KEY,
                 version BIGINT NOT NULL,
                 record JSONB NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL
             )",
            self.table
        ))
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops the table: for tests.
    pub async fn drop_table(&self) -> Result<(), PgStoreError> {
        let client = self.pool.get().await?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgStoreError> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        Ok(self.pool.get().await?)
    }

    /// After a compare-and-swap changed no row: why.
    async fn refusal(
        &self,
        client: &deadpool_postgres::Object,
        id: &KeyId,
        expected: u64,
    ) -> StoreError<PgStoreError> {
        match client
            .query_opt(self.sql.version.as_str(), &[&id.as_str()])
            .await
        {
            Ok(None) => StoreError::NotFound,
            Ok(Some(row)) => StoreError::Conflict {
                expected,
                found: row.get::<_, i64>(0) as u64,
            },
            Err(e) => StoreError::Backend(e.into()),
        }
    }
}

fn bigint(version: u64) -> Result<i64, PgStoreError> {
    i64::try_from(version).map_err(|_| PgStoreError::VersionOutOfRange(version))
}

fn record_of(key: &ApiKey) -> String {
    serde_json::to_string(key).unwrap_or_else(|e| unreachable!("an ApiKey serializes: {e}"))
}

fn load(id: String, record: &str) -> Result<ApiKey, PgStoreError> {
    serde_json::from_str(record).map_err(|source| PgStoreError::Corrupt { id, source })
}

impl AsyncKeyStore for PgStore {
    type Error = PgStoreError;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, PgStoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(self.sql.get.as_str(), &[&id.as_str()])
            .await?;
        row.map(|row| load(id.to_string(), row.get(0))).transpose()
    }

    async fn insert(&self, key: &ApiKey) -> Result<(), StoreError<PgStoreError>> {
        let version = bigint(key.version()).map_err(StoreError::Backend)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let inserted = client
            .execute(
                self.sql.insert.as_str(),
                &[&key.id().as_str(), &version, &record_of(key)],
            )
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(StoreError::Backend(e.into())),
        }
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected_version: u64,
    ) -> Result<(), StoreError<PgStoreError>> {
        let version = bigint(key.version()).map_err(StoreError::Backend)?;
        let expected = bigint(expected_version).map_err(StoreError::Backend)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let changed = client
            .execute(
                self.sql.update.as_str(),
                &[&key.id().as_str(), &expected, &version, &record_of(key)],
            )
            .await
            .map_err(|e| StoreError::Backend(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(self.refusal(&client, key.id(), expected_version).await)
        }
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected_version: u64,
    ) -> Result<(), StoreError<PgStoreError>> {
        let expected = bigint(expected_version).map_err(StoreError::Backend)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let changed = client
            .execute(self.sql.delete.as_str(), &[&id.as_str(), &expected])
            .await
            .map_err(|e| StoreError::Backend(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(self.refusal(&client, id, expected_version).await)
        }
    }

    async fn list(&self, after: Option<&KeyId>, limit: usize) -> Result<Vec<ApiKey>, PgStoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(self.sql.list.as_str(), &[&after.map(KeyId::as_str), &limit])
            .await?;
        rows.iter()
            .map(|row| load(row.get(0), row.get(1)))
            .collect()
    }
}
