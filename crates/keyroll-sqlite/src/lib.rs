//! A [`keyroll`] store in one SQLite file.
//!
//! The table `keyroll_keys (id TEXT PRIMARY KEY, incarnation INTEGER NOT
//! NULL, version INTEGER NOT NULL, record TEXT NOT NULL)`, where `record` is
//! the key as [`keyroll::record`] encodes it (hashes only, never a secret).
//! The database runs in WAL mode so readers never wait for the writer, with
//! `synchronous=FULL` so that a committed write (a revocation, or a token
//! already shown) survives a power loss. A new database file is created
//! readable by its owner only (0600), and SQLite gives its `-wal` and `-shm`
//! files the same mode.
//!
//! An `owner` column, with a partial index on `(owner, id)`, answers
//! `list_owned`; `keyroll_usage` keeps the usage counts by key,
//! incarnation and UTC hour, a batch added in one transaction.
//! Beside it, `keyroll_meters` keeps the moving state of the keys' rate
//! limits and credits ([`keyroll::record::MeterRow`]): a charge reads the
//! key and its meter and writes the meter in one immediate transaction, so
//! stores on one file charge a key exactly once each; deleting a key
//! deletes its meter in the same transaction.
//!
//! Every write is one statement, and `update`/`delete` are a compare-and-swap
//! on the whole revision: `... WHERE id = ? AND incarnation = ? AND version =
//! ?`. Several processes or stores may share one file: SQLite serializes
//! their writes and the revision check keeps them from overwriting each
//! other, even across a delete and re-create of an id. A row whose record
//! names another id or revision than its columns (a record copied into
//! another row) is refused, never returned.
//!
//! [`SqliteStore`] is a [`KeyStore`] whose connection lives on a thread of
//! its own: each call is sent to that thread and its answer comes back on a
//! channel that any executor can wait on (tokio, or a plain `block_on`).
//! SQLite blocks on disk and on other connections' writes; it never blocks
//! an async worker. One store is one connection, so its calls run one at a
//! time, in order; open several stores on one file for reads in parallel
//! (WAL lets them).
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
//! pollster::block_on(async {
//!     let (token, _event) = manager.create_key(KeyId::new("acme")?, now, &mut rand::rng()).await?;
//!     let who = manager.authenticate(token.expose_secret(), now).await?;
//!     assert_eq!(who.key_id.as_str(), "acme");
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll-sqlite/0.3.0")]
#![deny(missing_docs)]

use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use futures_channel::oneshot;
use keyroll::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
use keyroll::outbox::{Entry, EntryId, EntryState, OutboxCounts};
use keyroll::record::{self, EntryRow, KeyRow, LimitColumns, MeterRow, RecordError};
use keyroll::store::{KeyStore, Revision, StoreError, UsageRow};
use keyroll::{ApiKey, Event, KeyId, OwnerId, OwnerLimits};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    /// A marker's stored instant is not RFC 3339 (the row was written by
    /// hand), or an instant could not be written as RFC 3339.
    #[error("marker {0}")]
    Marker(String),
    /// A version or incarnation beyond SQLite's 64-bit signed integers.
    #[error("{0} does not fit an SQLite integer")]
    OutOfRange(u64),
    /// `PRAGMA integrity_check` found problems (listed).
    #[error("the database failed its integrity check: {0}")]
    IntegrityCheck(String),
    /// The store's thread is gone: a call panicked on it (the panic was
    /// printed), and the store is closed.
    #[error("the SQLite store's thread has stopped; open the store again")]
    Closed,
}

/// A [`KeyStore`] in one SQLite database: one connection, on a thread of
/// its own. Cheap to clone: clones share the connection. The thread ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
}

/// A call, run on the store's thread with its connection.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

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
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS keyroll_meters (
                 id TEXT PRIMARY KEY,
                 incarnation INTEGER NOT NULL,
                 generation INTEGER NOT NULL,
                 tat_secs INTEGER NOT NULL,
                 tat_nanos INTEGER NOT NULL,
                 remaining INTEGER NOT NULL,
                 refills INTEGER NOT NULL,
                 anchor_secs INTEGER NOT NULL,
                 anchor_nanos INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS keyroll_usage (
                 id TEXT NOT NULL,
                 incarnation INTEGER NOT NULL,
                 hour INTEGER NOT NULL,
                 accepted INTEGER NOT NULL,
                 rate_limited INTEGER NOT NULL,
                 usage_exceeded INTEGER NOT NULL,
                 refused INTEGER NOT NULL,
                 PRIMARY KEY (id, incarnation, hour)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS keyroll_usage_hour ON keyroll_usage (hour);
             CREATE TABLE IF NOT EXISTS keyroll_markers (
                 name TEXT PRIMARY KEY,
                 at TEXT NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS keyroll_owners (
                 owner TEXT PRIMARY KEY,
                 version INTEGER NOT NULL,
                 rate_limit INTEGER, rate_period_ns INTEGER, rate_burst INTEGER,
                 credits INTEGER, refill_amount INTEGER, refill_every_ns INTEGER,
                 credits_set_secs INTEGER, credits_set_nanos INTEGER, credits_generation INTEGER,
                 generation INTEGER, tat_secs INTEGER, tat_nanos INTEGER, remaining INTEGER,
                 refills INTEGER, anchor_secs INTEGER, anchor_nanos INTEGER
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS keyroll_outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 subject TEXT NOT NULL,
                 state INTEGER NOT NULL,
                 attempts INTEGER NOT NULL,
                 next_at INTEGER NOT NULL,
                 last_error TEXT,
                 delivered_at INTEGER,
                 event TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS keyroll_outbox_state ON keyroll_outbox (state, id);
             CREATE INDEX IF NOT EXISTS keyroll_outbox_subject
                 ON keyroll_outbox (subject, id) WHERE state = 0;
             CREATE INDEX IF NOT EXISTS keyroll_outbox_subject_all ON keyroll_outbox (subject, id);",
        )?;
        upgrade_0_1(&tx)?;
        upgrade_0_2(&tx)?;
        tx.commit()?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("keyroll-sqlite".into())
            .spawn(move || {
                for job in queue {
                    job(&mut conn);
                }
            })
            .map_err(SqliteStoreError::Create)?;
        Ok(SqliteStore { jobs })
    }

    /// Runs `call` with the connection, on the store's thread, and waits
    /// for its answer without blocking the caller's thread.
    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, SqliteStoreError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = answer.send(call(conn));
        });
        self.jobs.send(job).map_err(|_| SqliteStoreError::Closed)?;
        answered.await.map_err(|_| SqliteStoreError::Closed)
    }

    /// The value of a pragma on this store's connection (e.g.
    /// `synchronous`, `journal_mode`), to check how it runs.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub async fn pragma(&self, name: &str) -> Result<String, SqliteStoreError> {
        let name = name.to_owned();
        let value = self
            .call(move |conn| {
                conn.pragma_query_value(None, &name, |row| row.get::<_, rusqlite::types::Value>(0))
            })
            .await??;
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
    pub async fn integrity_check(&self) -> Result<(), SqliteStoreError> {
        match self.pragma("integrity_check").await?.as_str() {
            "ok" => Ok(()),
            problems => Err(SqliteStoreError::IntegrityCheck(problems.to_owned())),
        }
    }

    /// After a compare-and-swap changed no row: why.
    fn refusal(conn: &Connection, id: &KeyId, expected: Revision) -> StoreError<SqliteStoreError> {
        let found = conn
            .query_row(
                "SELECT incarnation, version FROM keyroll_keys WHERE id = ?1",
                [id.as_str()],
                |row| Ok(KeyRow::revision(row.get(0)?, row.get(1)?)),
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

/// A page of one owner's keys (`?3`) after `?1`, at most `?2`.
const OWNED_PAGE: &str = "SELECT id, incarnation, version, record FROM keyroll_keys
     WHERE owner = ?3 AND (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2";

/// Tables written before keyroll 0.3 have no owner column: add it (NULL:
/// records of 0.1 and 0.2 have no owner) and its index.
fn upgrade_0_2(conn: &Connection) -> Result<(), SqliteStoreError> {
    let has_column: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('keyroll_keys') WHERE name = 'owner'",
        [],
        |row| row.get(0),
    )?;
    if !has_column {
        conn.execute_batch("ALTER TABLE keyroll_keys ADD COLUMN owner TEXT")?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS keyroll_keys_owner ON keyroll_keys (owner, id)
         WHERE owner IS NOT NULL",
    )?;
    Ok(())
}

/// A count as an INTEGER: saturated at `i64::MAX`, which no count reaches.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn integer(n: u64) -> Result<i64, SqliteStoreError> {
    i64::try_from(n).map_err(|_| SqliteStoreError::OutOfRange(n))
}

/// The calls, each run with the connection on the store's thread.
mod calls {
    use super::*;

    pub(super) fn get(conn: &Connection, id: &KeyId) -> Result<Option<ApiKey>, SqliteStoreError> {
        let row: Option<KeyRow> = conn
            .prepare_cached("SELECT incarnation, version, record FROM keyroll_keys WHERE id = ?1")?
            .query_row([id.as_str()], |row| {
                Ok(KeyRow {
                    incarnation: row.get(0)?,
                    version: row.get(1)?,
                    record: row.get(2)?,
                })
            })
            .optional()?;
        Ok(row.map(|row| row.decode(id.as_str())).transpose()?)
    }

    /// Inserts the key and its events, in one transaction.
    pub(super) fn insert(
        conn: &mut Connection,
        key: &ApiKey,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let KeyRow {
            incarnation,
            version,
            record: json,
        } = KeyRow::of(key).map_err(|e| StoreError::Backend(e.into()))?;
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::Backend(e.into()))?;
        let inserted = tx.execute(
            "INSERT INTO keyroll_keys (id, incarnation, version, record, owner)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                key.id().as_str(),
                incarnation,
                version,
                json,
                key.owner().map(OwnerId::as_str)
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::AlreadyExists);
            }
            Err(e) => return Err(StoreError::Backend(e.into())),
        }
        push_events(&tx, events).map_err(StoreError::Backend)?;
        tx.commit().map_err(|e| StoreError::Backend(e.into()))
    }

    /// Adds `events` to the outbox, in the caller's transaction.
    fn push_events(tx: &Transaction<'_>, events: &[Event]) -> Result<(), SqliteStoreError> {
        for event in events {
            let row = EntryRow::pending(event)?;
            tx.prepare_cached(
                "INSERT INTO keyroll_outbox (subject, state, attempts, next_at, event)
                 VALUES (?1, ?2, 0, ?3, ?4)",
            )?
            .execute(params![row.subject, row.state, row.next_at, row.event])?;
        }
        Ok(())
    }

    /// Replaces the key if its revision is `expected`, and adds its
    /// events, in one transaction.
    pub(super) fn update(
        conn: &mut Connection,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let KeyRow {
            incarnation,
            version,
            record: json,
        } = KeyRow::of(key).map_err(|e| StoreError::Backend(e.into()))?;
        let backend = |e: SqliteStoreError| StoreError::Backend(e);
        let expected_version = integer(expected.version()).map_err(backend)?;
        let expected_incarnation = integer(expected.incarnation()).map_err(backend)?;
        // The new record's incarnation must be the expected one too: a key
        // of another incarnation never replaces this one.
        let tx = conn.transaction().map_err(|e| backend(e.into()))?;
        let changed = tx
            .execute(
                "UPDATE keyroll_keys SET version = ?1, record = ?2, owner = ?7
                 WHERE id = ?3 AND incarnation = ?4 AND version = ?5 AND incarnation = ?6",
                params![
                    version,
                    json,
                    key.id().as_str(),
                    expected_incarnation,
                    expected_version,
                    incarnation,
                    key.owner().map(OwnerId::as_str)
                ],
            )
            .map_err(|e| backend(e.into()))?;
        if changed != 1 {
            return Err(SqliteStore::refusal(&tx, key.id(), expected));
        }
        push_events(&tx, events).map_err(backend)?;
        tx.commit().map_err(|e| backend(e.into()))
    }

    /// Deletes the key and its meter, and adds its events, in one
    /// transaction.
    pub(super) fn delete(
        conn: &mut Connection,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let backend = |e: rusqlite::Error| StoreError::Backend(e.into());
        let version = integer(expected.version()).map_err(StoreError::Backend)?;
        let incarnation = integer(expected.incarnation()).map_err(StoreError::Backend)?;
        let tx = conn.transaction().map_err(backend)?;
        let changed = tx
            .execute(
                "DELETE FROM keyroll_keys WHERE id = ?1 AND incarnation = ?2 AND version = ?3",
                params![id.as_str(), incarnation, version],
            )
            .map_err(backend)?;
        if changed != 1 {
            return Err(SqliteStore::refusal(&tx, id, expected));
        }
        tx.execute("DELETE FROM keyroll_meters WHERE id = ?1", [id.as_str()])
            .map_err(backend)?;
        tx.execute("DELETE FROM keyroll_usage WHERE id = ?1", [id.as_str()])
            .map_err(backend)?;
        push_events(&tx, events).map_err(StoreError::Backend)?;
        tx.commit().map_err(backend)
    }

    /// Adds `rows` to the counts, in one transaction.
    pub(super) fn add_usage(
        conn: &mut Connection,
        rows: &[UsageRow],
    ) -> Result<(), SqliteStoreError> {
        let tx = conn.transaction()?;
        {
            let mut add = tx.prepare_cached(
                "INSERT INTO keyroll_usage
                 (id, incarnation, hour, accepted, rate_limited, usage_exceeded, refused)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id, incarnation, hour) DO UPDATE SET
                     accepted = accepted + excluded.accepted,
                     rate_limited = rate_limited + excluded.rate_limited,
                     usage_exceeded = usage_exceeded + excluded.usage_exceeded,
                     refused = refused + excluded.refused",
            )?;
            for row in rows {
                add.execute(params![
                    row.id.as_str(),
                    integer(row.incarnation)?,
                    row.hour,
                    count(row.accepted),
                    count(row.rate_limited),
                    count(row.usage_exceeded),
                    count(row.refused),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The counts of key `id` of `incarnation` in `hours`, by hour.
    pub(super) fn usage(
        conn: &Connection,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, SqliteStoreError> {
        let mut statement = conn.prepare_cached(
            "SELECT hour, accepted, rate_limited, usage_exceeded, refused FROM keyroll_usage
             WHERE id = ?1 AND incarnation = ?2 AND hour >= ?3 AND hour < ?4 ORDER BY hour",
        )?;
        let rows = statement.query_map(
            params![id.as_str(), integer(incarnation)?, hours.start, hours.end],
            |row| {
                let counted = |i| row.get::<_, i64>(i).map(|n| n.max(0) as u64);
                Ok(UsageRow {
                    id: id.clone(),
                    incarnation,
                    hour: row.get(0)?,
                    accepted: counted(1)?,
                    rate_limited: counted(2)?,
                    usage_exceeded: counted(3)?,
                    refused: counted(4)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The meter kept beside key `id` of `incarnation`.
    pub(super) fn meter(
        conn: &Connection,
        id: &KeyId,
        incarnation: u64,
    ) -> Result<Option<StoredMeter>, SqliteStoreError> {
        let row = conn
            .prepare_cached(
                "SELECT generation, tat_secs, tat_nanos, remaining, refills, anchor_secs, anchor_nanos
                 FROM keyroll_meters WHERE id = ?1 AND incarnation = ?2",
            )?
            .query_row(params![id.as_str(), integer(incarnation)?], |row| {
                meter_row(row, 0)
            })
            .optional()?
            .flatten();
        Ok(row.map(|row| row.load(id.as_str())).transpose()?)
    }

    /// The meter in a row's 7 columns from `first` on (`None` when its
    /// generation is NULL: an owner never charged).
    fn meter_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<MeterRow>> {
        let Some(generation) = row.get::<_, Option<i64>>(first)? else {
            return Ok(None);
        };
        Ok(Some(MeterRow {
            generation,
            tat_secs: row.get(first + 1)?,
            tat_nanos: row.get(first + 2)?,
            remaining: row.get(first + 3)?,
            refills: row.get(first + 4)?,
            anchor_secs: row.get(first + 5)?,
            anchor_nanos: row.get(first + 6)?,
        }))
    }

    /// A meter's 7 columns, ready to bind after the row's key.
    fn meter_params(row: &MeterRow) -> [&dyn rusqlite::ToSql; 7] {
        [
            &row.generation,
            &row.tat_secs,
            &row.tat_nanos,
            &row.remaining,
            &row.refills,
            &row.anchor_secs,
            &row.anchor_nanos,
        ]
    }

    /// Charges key `id` of `incarnation`: the key, its meter, the charge
    /// and the new meter in one immediate transaction (so that another
    /// connection to the file waits rather than charging the same meter).
    pub(super) fn charge(
        conn: &mut Connection,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<SqliteStoreError>> {
        let backend = |e: SqliteStoreError| StoreError::Backend(e);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| backend(e.into()))?;
        let key = get(&tx, id)
            .map_err(backend)?
            .filter(|key| key.revision().incarnation() == incarnation)
            .ok_or(StoreError::NotFound)?;
        // The key's meter, then its owner's: both or neither.
        let stored = match key.is_metered() {
            true => meter(&tx, id, incarnation).map_err(backend)?,
            false => None,
        };
        let owned = match key.owner() {
            Some(owner) => owner_row(&tx, owner).map_err(backend)?,
            None => None,
        };
        let owner_limits = owned
            .as_ref()
            .map(|(limits, meter)| (limits, meter.as_ref()));
        let charged = match key.charge_with_owner(stored.as_ref(), owner_limits, cost, now) {
            Ok(charged) => charged,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if let Some(next) = &charged.key {
            set_meter(&tx, id, incarnation, next).map_err(backend)?;
        }
        if let (Some(owner), Some(next)) = (key.owner(), &charged.owner) {
            set_owner_meter(&tx, owner, next).map_err(backend)?;
        }
        tx.commit().map_err(|e| backend(e.into()))?;
        Ok(Ok(charged.allowance))
    }

    /// Stores `next` as the meter of key `id` of `incarnation`.
    fn set_meter(
        tx: &Connection,
        id: &KeyId,
        incarnation: u64,
        next: &StoredMeter,
    ) -> Result<(), SqliteStoreError> {
        let (row, id, incarnation) = (MeterRow::of(next), id.as_str(), integer(incarnation)?);
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&id, &incarnation];
        params.extend(meter_params(&row));
        tx.execute(
            "INSERT OR REPLACE INTO keyroll_meters
             (id, incarnation, generation, tat_secs, tat_nanos, remaining, refills, anchor_secs, anchor_nanos)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params.as_slice(),
        )?;
        Ok(())
    }

    /// The limits of `owner` and its meter, as stored.
    pub(super) fn owner_row(
        conn: &Connection,
        owner: &OwnerId,
    ) -> Result<Option<(OwnerLimits, Option<StoredMeter>)>, SqliteStoreError> {
        let row = conn
            .prepare_cached(
                "SELECT version, rate_limit, rate_period_ns, rate_burst, credits, refill_amount,
                     refill_every_ns, credits_set_secs, credits_set_nanos, credits_generation,
                     generation, tat_secs, tat_nanos, remaining, refills, anchor_secs, anchor_nanos
                 FROM keyroll_owners WHERE owner = ?1",
            )?
            .query_row([owner.as_str()], |row| {
                let limits = LimitColumns {
                    rate_limit: row.get(1)?,
                    rate_period_ns: row.get(2)?,
                    rate_burst: row.get(3)?,
                    credits: row.get(4)?,
                    refill_amount: row.get(5)?,
                    refill_every_ns: row.get(6)?,
                    credits_set_secs: row.get(7)?,
                    credits_set_nanos: row.get(8)?,
                    credits_generation: row.get(9)?,
                };
                Ok((row.get::<_, i64>(0)?, limits, meter_row(row, 10)?))
            })
            .optional()?;
        let Some((version, limits, meter)) = row else {
            return Ok(None);
        };
        let limits = limits.owner_limits(owner.as_str(), version)?;
        let meter = meter.map(|m| m.load(owner.as_str())).transpose()?;
        Ok(Some((limits, meter)))
    }

    /// Stores `next` as `owner`'s meter.
    fn set_owner_meter(
        tx: &Connection,
        owner: &OwnerId,
        next: &StoredMeter,
    ) -> Result<(), SqliteStoreError> {
        let (row, owner) = (MeterRow::of(next), owner.as_str());
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&owner];
        params.extend(meter_params(&row));
        tx.execute(
            "UPDATE keyroll_owners SET generation = ?2, tat_secs = ?3, tat_nanos = ?4,
                 remaining = ?5, refills = ?6, anchor_secs = ?7, anchor_nanos = ?8
             WHERE owner = ?1",
            params.as_slice(),
        )?;
        Ok(())
    }

    /// Stores `limits` as `owner`'s if the stored ones are at `expected`,
    /// keeping its meter, and adds the events, in one immediate
    /// transaction.
    pub(super) fn set_owner_limits(
        conn: &mut Connection,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let backend = |e: SqliteStoreError| StoreError::Backend(e);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| backend(e.into()))?;
        let found = owner_row(&tx, owner)
            .map_err(backend)?
            .map_or(0, |(limits, _)| limits.version());
        StoreError::check_version(expected, found)?;
        let c = LimitColumns::of_owner(limits);
        tx.execute(
            "INSERT INTO keyroll_owners (owner, version, rate_limit, rate_period_ns, rate_burst,
                 credits, refill_amount, refill_every_ns, credits_set_secs, credits_set_nanos,
                 credits_generation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (owner) DO UPDATE SET version = excluded.version,
                 rate_limit = excluded.rate_limit, rate_period_ns = excluded.rate_period_ns,
                 rate_burst = excluded.rate_burst, credits = excluded.credits,
                 refill_amount = excluded.refill_amount, refill_every_ns = excluded.refill_every_ns,
                 credits_set_secs = excluded.credits_set_secs,
                 credits_set_nanos = excluded.credits_set_nanos,
                 credits_generation = excluded.credits_generation",
            params![
                owner.as_str(),
                integer(limits.version()).map_err(backend)?,
                c.rate_limit,
                c.rate_period_ns,
                c.rate_burst,
                c.credits,
                c.refill_amount,
                c.refill_every_ns,
                c.credits_set_secs,
                c.credits_set_nanos,
                c.credits_generation
            ],
        )
        .map_err(|e| backend(e.into()))?;
        push_events(&tx, events).map_err(backend)?;
        tx.commit().map_err(|e| backend(e.into()))?;
        Ok(())
    }

    /// The entry of an outbox row selected as `ENTRY_COLUMNS`.
    fn entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
        Ok(EntryRow {
            id: row.get(0)?,
            subject: row.get(1)?,
            state: row.get(2)?,
            attempts: row.get(3)?,
            next_at: row.get(4)?,
            last_error: row.get(5)?,
            delivered_at: row.get(6)?,
            event: row.get(7)?,
        })
    }

    const ENTRY_COLUMNS: &str =
        "id, subject, state, attempts, next_at, last_error, delivered_at, event";

    /// Claims due entries ([`EntryRow`]'s SQL), in one immediate
    /// transaction: another connection's claim waits for it.
    pub(super) fn claim_outbox(
        conn: &mut Connection,
        limit: usize,
        now: OffsetDateTime,
        hold: time::Duration,
    ) -> Result<Vec<Entry>, SqliteStoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now_us = record::micros(now);
        let rows = tx
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM keyroll_outbox o
                 WHERE o.state = 0 AND o.next_at <= ?1
                   AND NOT EXISTS (SELECT 1 FROM keyroll_outbox p WHERE p.state = 0
                       AND p.subject = o.subject AND p.id < o.id AND p.next_at > ?1)
                 ORDER BY o.id LIMIT ?2"
            ))?
            .query_map(params![now_us, limit as i64], entry)?
            .collect::<Result<Vec<_>, _>>()?;
        let until = now.saturating_add(hold);
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            tx.prepare_cached("UPDATE keyroll_outbox SET next_at = ?1 WHERE id = ?2")?
                .execute(params![record::micros(until), row.id])?;
            let mut entry = row.decode()?;
            entry.next_attempt_at = until;
            claimed.push(entry);
        }
        tx.commit()?;
        Ok(claimed)
    }

    /// Stores each entry's delivery state, in one transaction.
    pub(super) fn update_outbox(
        conn: &mut Connection,
        entries: &[Entry],
    ) -> Result<(), SqliteStoreError> {
        let tx = conn.transaction()?;
        for entry in entries {
            let row = EntryRow::delivery(entry);
            tx.prepare_cached(
                "UPDATE keyroll_outbox SET state = ?2, attempts = ?3, next_at = ?4,
                     last_error = ?5, delivered_at = ?6 WHERE id = ?1",
            )?
            .execute(params![
                row.id,
                row.state,
                row.attempts,
                row.next_at,
                row.last_error,
                row.delivered_at
            ])?;
        }
        Ok(tx.commit()?)
    }

    /// At most `limit` entries in `state` after `after`.
    pub(super) fn outbox(
        conn: &Connection,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, SqliteStoreError> {
        let after = after.map_or(0, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
        conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM keyroll_outbox WHERE state = ?1 AND id > ?2
             ORDER BY id LIMIT ?3"
        ))?
        .query_map(params![state.code(), after, limit as i64], entry)?
        .map(|row| Ok(row?.decode()?))
        .collect()
    }

    /// The entries of `subject` before `before`, newest first.
    pub(super) fn outbox_of(
        conn: &Connection,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, SqliteStoreError> {
        let before = before.map_or(i64::MAX, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
        conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM keyroll_outbox WHERE subject = ?1 AND id < ?2
             ORDER BY id DESC LIMIT ?3"
        ))?
        .query_map(params![subject, before, limit as i64], entry)?
        .map(|row| Ok(row?.decode()?))
        .collect()
    }

    /// Pending and parked entries.
    pub(super) fn outbox_counts(conn: &Connection) -> Result<OutboxCounts, SqliteStoreError> {
        let (pending, parked): (i64, i64) = conn
            .prepare_cached(
                "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 2)
                 FROM keyroll_outbox WHERE state <> 1",
            )?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(OutboxCounts::new(pending as u64, parked as u64))
    }

    /// Gives back `amount` credits of `period` to `owner`'s meter, in one
    /// immediate transaction. A void refund writes nothing.
    pub(super) fn refund_owner(
        conn: &mut Connection,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), SqliteStoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some((limits, stored)) = owner_row(&tx, owner)? else {
            return Ok(());
        };
        if let Some(next) = limits.refund(stored.as_ref(), amount, period) {
            set_owner_meter(&tx, owner, &next)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Gives back `amount` credits of `period` to key `id` of
    /// `incarnation`: the key, its meter and the new meter in one immediate
    /// transaction, as a charge. A void refund writes nothing.
    pub(super) fn refund(
        conn: &mut Connection,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), SqliteStoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(key) = get(&tx, id)?.filter(|key| key.revision().incarnation() == incarnation)
        else {
            return Ok(());
        };
        let Some(next) = key.refund(meter(&tx, id, incarnation)?.as_ref(), amount, period) else {
            return Ok(());
        };
        tx.execute(
            "UPDATE keyroll_meters SET remaining = ?3 WHERE id = ?1 AND incarnation = ?2",
            params![
                id.as_str(),
                integer(incarnation)?,
                MeterRow::of(&next).remaining
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A page of every key, or (`owner` given) of one owner's keys, read
    /// through the owners' index.
    pub(super) fn list(
        conn: &Connection,
        owner: Option<&OwnerId>,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, SqliteStoreError> {
        // TEXT compares with the BINARY collation: byte order, as KeyId's Ord.
        // One statement each, so that the owner's finds the index.
        let mut statement = conn.prepare_cached(match owner {
            None => {
                "SELECT id, incarnation, version, record FROM keyroll_keys
                 WHERE ?3 IS NULL AND (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
            }
            Some(_) => OWNED_PAGE,
        })?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let parameters = params![after.map(KeyId::as_str), limit, owner.map(OwnerId::as_str)];
        let rows = statement.query_map(parameters, |row| {
            Ok((
                row.get::<_, String>(0)?,
                KeyRow::revision(row.get(1)?, row.get(2)?),
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

impl KeyStore for SqliteStore {
    type Error = SqliteStoreError;

    async fn get(&self, id: &KeyId) -> Result<Option<ApiKey>, SqliteStoreError> {
        let id = id.clone();
        self.call(move |conn| calls::get(conn, &id)).await?
    }

    async fn insert(
        &self,
        key: &ApiKey,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let (key, events) = (key.clone(), events.to_vec());
        self.call(move |conn| calls::insert(conn, &key, &events))
            .await
            .map_err(StoreError::Backend)?
    }

    async fn update(
        &self,
        key: &ApiKey,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let (key, events) = (key.clone(), events.to_vec());
        self.call(move |conn| calls::update(conn, &key, expected, &events))
            .await
            .map_err(StoreError::Backend)?
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let (id, events) = (id.clone(), events.to_vec());
        self.call(move |conn| calls::delete(conn, &id, expected, &events))
            .await
            .map_err(StoreError::Backend)?
    }

    async fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, SqliteStoreError> {
        let after = after.cloned();
        self.call(move |conn| calls::list(conn, None, after.as_ref(), limit))
            .await?
    }

    async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, SqliteStoreError> {
        let (owner, after) = (owner.clone(), after.cloned());
        self.call(move |conn| calls::list(conn, Some(&owner), after.as_ref(), limit))
            .await?
    }

    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<SqliteStoreError>> {
        let id = id.clone();
        self.call(move |conn| calls::charge(conn, &id, incarnation, cost, now))
            .await
            .map_err(StoreError::Backend)?
    }

    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), SqliteStoreError> {
        let id = id.clone();
        self.call(move |conn| calls::refund(conn, &id, incarnation, amount, period))
            .await?
    }

    async fn meter(
        &self,
        id: &KeyId,
        incarnation: u64,
    ) -> Result<Option<StoredMeter>, SqliteStoreError> {
        let id = id.clone();
        self.call(move |conn| calls::meter(conn, &id, incarnation))
            .await?
    }

    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), SqliteStoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows.to_vec();
        self.call(move |conn| calls::add_usage(conn, &rows)).await?
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, SqliteStoreError> {
        let id = id.clone();
        self.call(move |conn| calls::usage(conn, &id, incarnation, hours))
            .await?
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, SqliteStoreError> {
        self.call(move |conn| {
            conn.execute("DELETE FROM keyroll_usage WHERE hour < ?1", [before])
                .map(|n| n as u64)
                .map_err(SqliteStoreError::from)
        })
        .await?
    }

    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, SqliteStoreError> {
        let owner = owner.clone();
        self.call(move |conn| Ok(calls::owner_row(conn, &owner)?.map(|(limits, _)| limits)))
            .await?
    }

    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<SqliteStoreError>> {
        let (owner, limits, events) = (owner.clone(), limits.clone(), events.to_vec());
        self.call(move |conn| calls::set_owner_limits(conn, &owner, &limits, expected, &events))
            .await
            .map_err(StoreError::Backend)?
    }

    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, SqliteStoreError> {
        let owner = owner.clone();
        self.call(move |conn| Ok(calls::owner_row(conn, &owner)?.and_then(|(_, meter)| meter)))
            .await?
    }

    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), SqliteStoreError> {
        let owner = owner.clone();
        self.call(move |conn| calls::refund_owner(conn, &owner, amount, period))
            .await?
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: time::Duration,
    ) -> Result<Vec<Entry>, SqliteStoreError> {
        self.call(move |conn| calls::claim_outbox(conn, limit, now, hold))
            .await?
    }

    async fn update_outbox(&self, entries: &[Entry]) -> Result<(), SqliteStoreError> {
        let entries = entries.to_vec();
        self.call(move |conn| calls::update_outbox(conn, &entries))
            .await?
    }

    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, SqliteStoreError> {
        self.call(move |conn| calls::outbox(conn, state, after, limit))
            .await?
    }

    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, SqliteStoreError> {
        let subject = subject.to_owned();
        self.call(move |conn| calls::outbox_of(conn, &subject, before, limit))
            .await?
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, SqliteStoreError> {
        self.call(|conn| calls::outbox_counts(conn)).await?
    }

    async fn prune_outbox(&self, before: OffsetDateTime) -> Result<u64, SqliteStoreError> {
        let before = record::micros(before);
        self.call(move |conn| {
            let pruned = conn
                .prepare_cached("DELETE FROM keyroll_outbox WHERE state = 1 AND delivered_at < ?1")?
                .execute([before])?;
            Ok(pruned as u64)
        })
        .await?
    }

    async fn marker(&self, name: &str) -> Result<Option<OffsetDateTime>, SqliteStoreError> {
        let name = name.to_owned();
        self.call(move |conn| {
            let at: Option<String> = conn
                .query_row(
                    "SELECT at FROM keyroll_markers WHERE name = ?1",
                    [&name],
                    |row| row.get(0),
                )
                .optional()?;
            at.map(|at| {
                OffsetDateTime::parse(&at, &Rfc3339)
                    .map_err(|e| SqliteStoreError::Marker(format!("{name:?} holds {at:?}: {e}")))
            })
            .transpose()
        })
        .await?
    }

    async fn set_marker(
        &self,
        name: &str,
        at: Option<OffsetDateTime>,
    ) -> Result<(), SqliteStoreError> {
        let name = name.to_owned();
        let at = at
            .map(|at| at.format(&Rfc3339))
            .transpose()
            .map_err(|e| SqliteStoreError::Marker(format!("{name:?}: {e}")))?;
        self.call(move |conn| {
            match at {
                Some(at) => conn.execute(
                    "INSERT INTO keyroll_markers (name, at) VALUES (?1, ?2)
                     ON CONFLICT (name) DO NOTHING",
                    [&name, &at],
                ),
                None => conn.execute("DELETE FROM keyroll_markers WHERE name = ?1", [&name]),
            }?;
            Ok(())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner's page is read through the owners' index, never by a scan
    /// of every key, and needs no sort.
    #[test]
    fn owners_pages_use_the_index() {
        // A table of keyroll 0.2, upgraded.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE keyroll_keys (id TEXT PRIMARY KEY, incarnation INTEGER NOT NULL,
                 version INTEGER NOT NULL, record TEXT NOT NULL) WITHOUT ROWID;",
        )
        .unwrap();
        upgrade_0_2(&conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {OWNED_PAGE}"))
            .unwrap()
            .query_map(params![None::<&str>, 10, "acme"], |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(
            plan.contains("USING COVERING INDEX keyroll_keys_owner")
                || plan.contains("USING INDEX keyroll_keys_owner"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
