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
//! Four tables, created by [`PgStore::migrate`] (idempotent), an explicit
//! step run by a role that may create tables; the service's own role needs
//! only `SELECT`, `INSERT`, `UPDATE` and `DELETE` on them, which
//! [`PgStore::grants`] writes out (and `keyctl migrate` prints):
//!
//! ```sql
//! GRANT SELECT, INSERT, UPDATE, DELETE
//!     ON keyroll_keys, keyroll_keys_meters, keyroll_keys_usage, keyroll_keys_markers
//!     TO keyroll;
//! ```
//!
//! A role without them gets [`PgStoreError::PermissionDenied`], which
//! names the role, the table and that `GRANT`.
//!
//! ```sql
//! CREATE TABLE keyroll_keys (
//!     id          TEXT COLLATE "C" PRIMARY KEY,  -- byte order, as KeyId's Ord
//!     incarnation BIGINT NOT NULL,
//!     version     BIGINT NOT NULL,
//!     record      JSONB NOT NULL,                -- the ApiKey: hashes only, no secret
//!     updated_at  TIMESTAMPTZ NOT NULL,
//!     rate_limit  BIGINT, ...,                   -- the key's limits, as record::LimitColumns
//!     owner       TEXT COLLATE "C"               -- indexed (owner, id): list_owned
//! );
//! CREATE TABLE keyroll_keys_meters (             -- the moving state of the keys' limits
//!     id TEXT COLLATE "C", incarnation BIGINT,   -- the key's
//!     generation BIGINT, tat_secs BIGINT, ...,   -- as record::MeterRow
//!     PRIMARY KEY (id, incarnation)
//! );
//! CREATE TABLE keyroll_keys_usage (              -- usage counts by key and UTC hour
//!     id TEXT COLLATE "C", incarnation BIGINT, hour BIGINT,
//!     accepted BIGINT, rate_limited BIGINT, usage_exceeded BIGINT, refused BIGINT,
//!     PRIMARY KEY (id, incarnation, hour)
//! );
//! CREATE TABLE keyroll_keys_markers (            -- facts about the store, e.g. the
//!     name TEXT PRIMARY KEY,                     -- admin bootstrap's retirement
//!     at_secs BIGINT, at_nanos INTEGER
//! );
//! ```
//!
//! A batch of usage counts ([`KeyStore::add_usage`]) is one statement: the
//! rows as arrays, `unnest`ed and added with `ON CONFLICT ... DO UPDATE`.
//!
//! **Charges** ([`KeyStore::charge`]) are one call of a PL/pgSQL function
//! that `migrate` creates per table: it reads the key's limit columns,
//! locks the key's meter row, does the arithmetic of `Meter::charge` in SQL
//! (`keyroll_meter_step`, on `numeric`) and stores the meter if admitted,
//! so that the row's lock is held for no round trip, and several replicas
//! on one database admit exactly what one would. Each answer is checked
//! against `Meter::charge` ([`PgStoreError::ChargeMismatch`] if they ever
//! disagree). A charge writes no key row, so it notifies no listener.
//! Deleting a key deletes its meter in the same statement.
//!
//! A charge is made at the **database server's clock**, whatever `now` the
//! caller gives, so that replicas agree: a replica whose clock runs ahead
//! can neither set a key's bucket ahead for the others nor refill early.
//! Tests that freeze or move time use
//! [`PgStore::charging_at_callers_clock`]. Every function `migrate` creates
//! pins its `search_path` (`pg_catalog`, then the tables' schema) and names
//! its objects by schema.
//!
//! Writes are single statements (the key's limit columns written with its
//! record); `update` and `delete` are a compare-and-swap
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

use std::ops::Range;
use std::sync::Arc;

use deadpool_postgres::{Pool, PoolError};
use keyroll::ApiKey;
use keyroll::meter::{Allowance, CreditsPeriod, Refusal, StoredMeter};
use keyroll::outbox::{Entry, EntryId, EntryState, OutboxCounts};
use keyroll::record::{self, EntryRow, KeyRow, LimitColumns, MeterRow, RecordError};
use keyroll::store::{CachedStore, KeyStore, Revision, StoreError, UsageRow};
use keyroll::{Event, KeyId, OwnerId, OwnerLimits};
use time::OffsetDateTime;
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
    #[error("postgres{}: {}", code.as_ref().map(|c| format!(" (SQLSTATE {})", c.code())).unwrap_or_default(), chain(source))]
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
    /// The server declined TLS, or the TLS handshake failed (a
    /// certificate the roots do not vouch for, say).
    #[error(
        "cannot connect over TLS: {detail}; turn TLS on at the server, give the roots that \
         signed its certificate (connect_with_roots), or put sslmode=disable in the URL to \
         connect in the clear (never across a network you do not control)"
    )]
    Tls {
        /// The driver's words.
        detail: String,
    },
    /// The service's role lacks a privilege on the store's tables
    /// (SQLSTATE 42501).
    #[error("permission denied to role {role}: {detail}; as the tables' owner, run: {grants}")]
    PermissionDenied {
        /// The role the store connects as.
        role: String,
        /// The server's words, which name the table.
        detail: String,
        /// The `GRANT` statement that gives the role what it needs
        /// ([`PgStore::grants`]).
        grants: String,
    },
    /// A marker's stored instant is out of range (the row was written by
    /// hand).
    #[error("marker {0}")]
    Marker(String),
    /// The store's table does not exist: [`PgStore::migrate`] has not run.
    #[error(
        "table {table} does not exist: create it with PgStore::migrate (keyctl migrate), as a role that may"
    )]
    NotMigrated {
        /// The table's name.
        table: String,
    },
    /// The database's charge (its SQL function) and keyroll's
    /// `Meter::charge` disagree: a bug, or a table whose limit columns were
    /// written by hand. The charge may have been stored.
    #[error("the database's charge of key {id} disagrees with keyroll's; please report this")]
    ChargeMismatch {
        /// The key charged.
        id: String,
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
    /// Whether charges use the caller's `now` (tests) rather than the
    /// server's clock.
    callers_clock: bool,
}

/// The statements, written once for the table's name.
struct Statements {
    get: String,
    insert: String,
    update: String,
    delete: String,
    revision: String,
    list: String,
    list_owned: String,
    add_usage: String,
    usage: String,
    prune_usage: String,
    charge: String,
    refund: String,
    meter: String,
    marker: String,
    set_marker: String,
    clear_marker: String,
    owner: String,
    owner_for_update: String,
    insert_owner: String,
    update_owner: String,
    set_owner_meter: String,
    claim_outbox: String,
    update_outbox: String,
    outbox: String,
    outbox_of: String,
    outbox_counts: String,
    prune_outbox: String,
}

/// An outbox row's columns, as [`EntryRow`] names them.
const ENTRY_COLUMNS: &str = "id, subject, state, attempts, next_at, last_error, delivered_at, \
     event::text";

/// A write with its events queued in the outbox by the same statement,
/// so in the same transaction. `writes` are common table expressions, the
/// first named `written` (a statement `RETURNING` a row per row written);
/// parameters `$n`, `$n+1` and `$n+2` are the events' subjects, due times
/// and JSON, in order. It answers how many rows `written` wrote.
fn with_events(table: &str, writes: &str, n: usize) -> String {
    format!(
        "WITH {writes}, \
         queued AS (INSERT INTO {table}_outbox (subject, next_at, event) \
             SELECT e.subject, e.next_at, e.event::jsonb FROM written, \
                 unnest(${n}::text[], ${}::bigint[], ${}::text[]) WITH ORDINALITY \
                 AS e(subject, next_at, event, n) \
             ORDER BY e.n) \
         SELECT count(*) FROM written",
        n + 1,
        n + 2
    )
}

/// Events as the three arrays [`with_events`] takes.
struct Queued {
    subjects: Vec<String>,
    due: Vec<i64>,
    events: Vec<String>,
}

impl Queued {
    fn of(events: &[Event]) -> Result<Queued, PgStoreError> {
        let mut queued = Queued {
            subjects: Vec::with_capacity(events.len()),
            due: Vec::with_capacity(events.len()),
            events: Vec::with_capacity(events.len()),
        };
        for event in events {
            let row = EntryRow::pending(event)?;
            queued.subjects.push(row.subject);
            queued.due.push(row.next_at);
            queued.events.push(row.event);
        }
        Ok(queued)
    }

    fn params(&self) -> [Param<'_>; 3] {
        [&self.subjects, &self.due, &self.events]
    }
}

/// An outbox row selected as [`ENTRY_COLUMNS`].
fn entry_of(row: &tokio_postgres::Row) -> Result<Entry, PgStoreError> {
    Ok(EntryRow {
        id: row.get(0),
        subject: row.get(1),
        state: row.get(2),
        attempts: row.get(3),
        next_at: row.get(4),
        last_error: row.get(5),
        delivered_at: row.get(6),
        event: row.get(7),
    }
    .decode()?)
}

/// An owner's row: its version, its [`LIMIT_COLUMNS`] and its meter.
const OWNER_COLUMNS: &str = "version, rate_limit, rate_period_ns, rate_burst, credits, \
     refill_amount, refill_every_ns, credits_set_secs, credits_set_nanos, credits_generation, \
     generation, tat_secs, tat_nanos, remaining, refills, anchor_secs, anchor_nanos";

/// The key's limits as columns beside its record ([`LimitColumns`]), which
/// the charge function reads.
const LIMIT_COLUMNS: &str = "rate_limit, rate_period_ns, rate_burst, credits, refill_amount, \
     refill_every_ns, credits_set_secs, credits_set_nanos, credits_generation";

/// The arithmetic of [`Meter::charge`](keyroll::meter::Meter::charge) in
/// SQL, on numeric nanoseconds: admitted, and the meter after the charge
/// (unchanged when refused). Shared by every keyroll table of `schema` (a
/// quoted identifier); a property test checks it against `Meter::charge`
/// on the server. Like every function keyroll creates, it pins its
/// `search_path`, so that no object of another schema can stand in for
/// one it uses.
fn meter_step(schema: &str) -> String {
    let create = format!(
        "
CREATE OR REPLACE FUNCTION {schema}.keyroll_meter_step(
    rate_limit numeric, period numeric, burst numeric,
    has_credits boolean, amount numeric, every numeric,
    tat numeric, remaining numeric, refills numeric, anchor numeric,
    cost numeric, now numeric,
    OUT admitted boolean, OUT new_tat numeric, OUT new_remaining numeric,
    OUT new_refills numeric)
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, {schema} AS $$
DECLARE
    -- T = ceil(period / limit)
    t numeric := div(period + rate_limit - 1, rate_limit);
    due numeric;
    next_tat numeric;
BEGIN
    admitted := false;
    new_tat := tat;
    new_remaining := remaining;
    new_refills := refills;
    IF cost < 1 OR cost > coalesce(burst, 4294967295) THEN
        RETURN;
    END IF;
    IF has_credits THEN
        -- The latest refill due, if not applied yet.
        IF every IS NOT NULL AND now >= anchor THEN
            due := least(div(now - anchor, every), 9223372036854775807);
            IF due > new_refills THEN
                new_refills := due;
                new_remaining := amount;
            END IF;
        END IF;
        IF cost > new_remaining THEN
            new_remaining := remaining;
            new_refills := refills;
            RETURN;
        END IF;
        new_remaining := new_remaining - cost;
    END IF;
    IF t IS NOT NULL THEN
        next_tat := greatest(tat, now) + cost * t;
        IF next_tat - now - burst * t > 0 THEN
            new_remaining := remaining;
            new_refills := refills;
            RETURN;
        END IF;
        new_tat := next_tat;
    END IF;
    admitted := true;
END $$;"
    );
    replace_function(
        &format!(
            "{schema}.keyroll_meter_step(numeric, numeric, numeric, boolean, numeric, numeric, \
             numeric, numeric, numeric, numeric, numeric, numeric)"
        ),
        &create,
    )
}

/// `create` (a `CREATE OR REPLACE FUNCTION` of `signature`) in a form that
/// replaces the function in place, so that a call running in another
/// session keeps finding it, and drops it first only when the replacement
/// changes the columns it returns, which no replacement may.
fn replace_function(signature: &str, create: &str) -> String {
    format!(
        "DO $replace$ BEGIN
             EXECUTE $create${create}$create$;
         EXCEPTION WHEN invalid_function_definition THEN
             DROP FUNCTION {signature};
             EXECUTE $create${create}$create$;
         END $replace$;"
    )
}

/// A meter charged in SQL, shared by every keyroll table of `schema`:
/// brings the meter as stored (`m_found` false: none yet) to the setting
/// of the credits the limit columns hold (a meter of another setting
/// starts over), runs `keyroll_meter_step`, and answers whether it
/// admitted and the meter to store (NULLs when refused). The charge
/// function runs it on a key's meter and on its owner's.
fn meter_charge(schema: &str) -> String {
    let create = format!(
        "
CREATE OR REPLACE FUNCTION {schema}.keyroll_meter_charge(
    rate_limit bigint, rate_period_ns bigint, rate_burst bigint, credits bigint,
    refill_amount bigint, refill_every_ns bigint, credits_set_secs bigint,
    credits_set_nanos integer, credits_generation bigint,
    m_found boolean, m_generation bigint, m_tat_secs bigint, m_tat_nanos integer,
    m_remaining bigint, m_refills bigint, m_anchor_secs bigint, m_anchor_nanos integer,
    cost bigint, now numeric,
    OUT admitted boolean,
    OUT n_generation bigint, OUT n_tat_secs bigint, OUT n_tat_nanos integer,
    OUT n_remaining bigint, OUT n_refills bigint, OUT n_anchor_secs bigint,
    OUT n_anchor_nanos integer)
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, {schema} AS $$
DECLARE
    gen bigint := coalesce(credits_generation, 0);
    set_at numeric := coalesce(credits_set_secs * 1000000000::numeric + credits_set_nanos, now);
    tat numeric := set_at;
    remaining numeric := coalesce(credits, 0);
    refills numeric := 0;
    anchor numeric := set_at;
    step record;
BEGIN
    IF m_found THEN
        tat := m_tat_secs * 1000000000::numeric + m_tat_nanos;
        -- A meter of another setting of the credits starts its balance over.
        IF m_generation = gen THEN
            remaining := m_remaining;
            refills := m_refills;
            anchor := m_anchor_secs * 1000000000::numeric + m_anchor_nanos;
        END IF;
    END IF;
    step := {schema}.keyroll_meter_step(rate_limit, rate_period_ns, rate_burst, credits IS NOT NULL,
        refill_amount, refill_every_ns, tat, remaining, refills, anchor, cost, now);
    admitted := step.admitted;
    IF NOT admitted THEN
        RETURN;
    END IF;
    -- Seconds and nanoseconds, the nanoseconds 0 to 10^9 - 1 (mod is exact;
    -- a division would round).
    n_tat_nanos := mod(mod(step.new_tat, 1000000000) + 1000000000, 1000000000);
    n_tat_secs := (step.new_tat - n_tat_nanos) / 1000000000;
    n_anchor_nanos := mod(mod(anchor, 1000000000) + 1000000000, 1000000000);
    n_anchor_secs := (anchor - n_anchor_nanos) / 1000000000;
    n_generation := gen;
    n_remaining := step.new_remaining;
    n_refills := step.new_refills;
END $$;"
    );
    replace_function(
        &format!(
            "{schema}.keyroll_meter_charge(bigint, bigint, bigint, bigint, bigint, bigint, bigint, \
             integer, bigint, boolean, bigint, bigint, integer, bigint, bigint, bigint, integer, \
             bigint, numeric)"
        ),
        &create,
    )
}

/// The charge of one key of `{schema}.{table}`, and of its owner's limits
/// if it has an owner with limits, in one call, at the server's clock
/// unless the caller gives its `now`
/// ([`PgStore::charging_at_callers_clock`]): reads the key's limit
/// columns and owner, locks the key's meter (a first charge of a key takes
/// a transaction lock of its id and incarnation instead, as there is no
/// row to lock yet), then the owner's row (always in that order, so no
/// two charges wait on each other), reads the clock, runs
/// `keyroll_meter_charge` on the key's meter and then on the owner's, and
/// stores both if both admitted, else neither. Answers no row for a
/// missing key; else the key's limit columns, its meter as it was and as
/// the step left it (NULLs: none, or refused), the instant it charged at,
/// and the same for the owner (`o_version` NULL: no owner limits), which
/// the caller checks against `LimitColumns::charge` and
/// `OwnerLimits::charge`.
fn charge_function(schema: &str, table: &str) -> String {
    let create = format!(
        "
CREATE OR REPLACE FUNCTION {schema}.{table}_charge(
    p_id text, p_incarnation bigint, p_cost bigint, p_now_secs bigint, p_now_nanos integer)
RETURNS TABLE (
    admitted boolean,
    rate_limit bigint, rate_period_ns bigint, rate_burst bigint, credits bigint,
    refill_amount bigint, refill_every_ns bigint, credits_set_secs bigint,
    credits_set_nanos integer, credits_generation bigint,
    m_generation bigint, m_tat_secs bigint, m_tat_nanos integer, m_remaining bigint,
    m_refills bigint, m_anchor_secs bigint, m_anchor_nanos integer,
    n_generation bigint, n_tat_secs bigint, n_tat_nanos integer, n_remaining bigint,
    n_refills bigint, n_anchor_secs bigint, n_anchor_nanos integer,
    used_now_secs bigint, used_now_nanos integer,
    o_owner text, o_version bigint,
    o_rate_limit bigint, o_rate_period_ns bigint, o_rate_burst bigint, o_credits bigint,
    o_refill_amount bigint, o_refill_every_ns bigint, o_credits_set_secs bigint,
    o_credits_set_nanos integer, o_credits_generation bigint,
    om_generation bigint, om_tat_secs bigint, om_tat_nanos integer, om_remaining bigint,
    om_refills bigint, om_anchor_secs bigint, om_anchor_nanos integer,
    on_generation bigint, on_tat_secs bigint, on_tat_nanos integer, on_remaining bigint,
    on_refills bigint, on_anchor_secs bigint, on_anchor_nanos integer)
LANGUAGE plpgsql SET search_path = pg_catalog, {schema} AS $$
#variable_conflict use_column
DECLARE
    m {schema}.{table}_meters%ROWTYPE;
    o {schema}.{table}_owners%ROWTYPE;
    now numeric;
    key_metered boolean;
    owner_metered boolean := false;
    c record;
BEGIN
    SELECT k.rate_limit, k.rate_period_ns, k.rate_burst, k.credits, k.refill_amount,
           k.refill_every_ns, k.credits_set_secs, k.credits_set_nanos, k.credits_generation,
           k.owner
      INTO rate_limit, rate_period_ns, rate_burst, credits, refill_amount,
           refill_every_ns, credits_set_secs, credits_set_nanos, credits_generation, o_owner
      FROM {schema}.{table} k WHERE k.id = p_id AND k.incarnation = p_incarnation;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    admitted := false;
    key_metered := rate_limit IS NOT NULL OR credits IS NOT NULL;
    IF key_metered THEN
        SELECT * INTO m FROM {schema}.{table}_meters s
         WHERE s.id = p_id AND s.incarnation = p_incarnation FOR UPDATE;
        IF NOT FOUND THEN
            PERFORM pg_advisory_xact_lock(hashtextextended('{table}_meters:' || p_id, p_incarnation));
            SELECT * INTO m FROM {schema}.{table}_meters s
             WHERE s.id = p_id AND s.incarnation = p_incarnation FOR UPDATE;
        END IF;
    END IF;
    IF o_owner IS NOT NULL THEN
        SELECT * INTO o FROM {schema}.{table}_owners s WHERE s.owner = o_owner FOR UPDATE;
        owner_metered := FOUND AND (o.rate_limit IS NOT NULL OR o.credits IS NOT NULL);
    END IF;
    IF NOT key_metered AND NOT owner_metered THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- The server's clock once the meters are ours: a charge that waited for
    -- a lock must not find the bucket ahead of an instant it read before
    -- (it was refused as rate limited by as much as it waited).
    now := coalesce(p_now_secs * 1000000000::numeric + p_now_nanos,
        floor(extract(epoch FROM clock_timestamp()) * 1000000) * 1000);
    used_now_nanos := mod(mod(now, 1000000000) + 1000000000, 1000000000);
    used_now_secs := (now - used_now_nanos) / 1000000000;
    IF key_metered THEN
        IF m.id IS NOT NULL THEN
            m_generation := m.generation;
            m_tat_secs := m.tat_secs;
            m_tat_nanos := m.tat_nanos;
            m_remaining := m.remaining;
            m_refills := m.refills;
            m_anchor_secs := m.anchor_secs;
            m_anchor_nanos := m.anchor_nanos;
        END IF;
        c := {schema}.keyroll_meter_charge(rate_limit, rate_period_ns, rate_burst, credits,
            refill_amount, refill_every_ns, credits_set_secs, credits_set_nanos,
            credits_generation, m.id IS NOT NULL, m.generation, m.tat_secs, m.tat_nanos,
            m.remaining, m.refills, m.anchor_secs, m.anchor_nanos, p_cost, now);
        IF NOT c.admitted THEN
            RETURN NEXT;
            RETURN;
        END IF;
        n_generation := c.n_generation;
        n_tat_secs := c.n_tat_secs;
        n_tat_nanos := c.n_tat_nanos;
        n_remaining := c.n_remaining;
        n_refills := c.n_refills;
        n_anchor_secs := c.n_anchor_secs;
        n_anchor_nanos := c.n_anchor_nanos;
    END IF;
    IF owner_metered THEN
        o_version := o.version;
        o_rate_limit := o.rate_limit;
        o_rate_period_ns := o.rate_period_ns;
        o_rate_burst := o.rate_burst;
        o_credits := o.credits;
        o_refill_amount := o.refill_amount;
        o_refill_every_ns := o.refill_every_ns;
        o_credits_set_secs := o.credits_set_secs;
        o_credits_set_nanos := o.credits_set_nanos;
        o_credits_generation := o.credits_generation;
        om_generation := o.generation;
        om_tat_secs := o.tat_secs;
        om_tat_nanos := o.tat_nanos;
        om_remaining := o.remaining;
        om_refills := o.refills;
        om_anchor_secs := o.anchor_secs;
        om_anchor_nanos := o.anchor_nanos;
        c := {schema}.keyroll_meter_charge(o.rate_limit, o.rate_period_ns, o.rate_burst,
            o.credits, o.refill_amount, o.refill_every_ns, o.credits_set_secs,
            o.credits_set_nanos, o.credits_generation, o.generation IS NOT NULL, o.generation,
            o.tat_secs, o.tat_nanos, o.remaining, o.refills, o.anchor_secs, o.anchor_nanos,
            p_cost, now);
        IF NOT c.admitted THEN
            RETURN NEXT;
            RETURN;
        END IF;
        on_generation := c.n_generation;
        on_tat_secs := c.n_tat_secs;
        on_tat_nanos := c.n_tat_nanos;
        on_remaining := c.n_remaining;
        on_refills := c.n_refills;
        on_anchor_secs := c.n_anchor_secs;
        on_anchor_nanos := c.n_anchor_nanos;
        UPDATE {schema}.{table}_owners s SET generation = on_generation, tat_secs = on_tat_secs,
            tat_nanos = on_tat_nanos, remaining = on_remaining, refills = on_refills,
            anchor_secs = on_anchor_secs, anchor_nanos = on_anchor_nanos
         WHERE s.owner = o_owner;
    END IF;
    IF key_metered AND m.id IS NULL THEN
        INSERT INTO {schema}.{table}_meters
            (id, incarnation, generation, tat_secs, tat_nanos, remaining, refills,
             anchor_secs, anchor_nanos)
        VALUES (p_id, p_incarnation, n_generation, n_tat_secs, n_tat_nanos, n_remaining,
            n_refills, n_anchor_secs, n_anchor_nanos);
    ELSIF key_metered THEN
        UPDATE {schema}.{table}_meters s SET generation = n_generation, tat_secs = n_tat_secs,
            tat_nanos = n_tat_nanos, remaining = n_remaining, refills = n_refills,
            anchor_secs = n_anchor_secs, anchor_nanos = n_anchor_nanos
         WHERE s.id = p_id AND s.incarnation = p_incarnation;
    END IF;
    admitted := true;
    RETURN NEXT;
END $$;"
    );
    replace_function(
        &format!("{schema}.{table}_charge(text, bigint, bigint, bigint, integer)"),
        &create,
    )
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
            insert: with_events(
                &table,
                &format!(
                    "written AS (INSERT INTO {table} \
                         (id, incarnation, version, record, updated_at, {LIMIT_COLUMNS}, owner) \
                     VALUES ($1, $2, $3, $4::text::jsonb, now(), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     RETURNING 1)"
                ),
                15,
            ),
            // $5 is the new record's incarnation: a key of another
            // incarnation never replaces the stored one.
            update: with_events(
                &table,
                &format!(
                    "written AS (UPDATE {table} SET version = $4, record = $6::text::jsonb, \
                         updated_at = now(), \
                         ({LIMIT_COLUMNS}) = ($7, $8, $9, $10, $11, $12, $13, $14, $15), owner = $16 \
                     WHERE id = $1 AND incarnation = $2 AND version = $3 AND incarnation = $5 \
                     RETURNING 1)"
                ),
                17,
            ),
            // The key, its meters and counts, and its events, in one
            // statement.
            delete: with_events(
                &table,
                &format!(
                    "written AS (DELETE FROM {table} \
                         WHERE id = $1 AND incarnation = $2 AND version = $3 RETURNING id), \
                     meters AS (DELETE FROM {table}_meters m USING written WHERE m.id = written.id), \
                     counts AS (DELETE FROM {table}_usage u USING written WHERE u.id = written.id)"
                ),
                4,
            ),
            revision: format!("SELECT incarnation, version FROM {table} WHERE id = $1"),
            list: format!(
                "SELECT id, incarnation, version, record::text FROM {table} \
                 WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
            ),
            // A batch in one statement: the rows as arrays, each added to
            // its key's, incarnation's and hour's (a batch holds each once).
            add_usage: format!(
                "INSERT INTO {table}_usage AS u \
                 (id, incarnation, hour, accepted, rate_limited, usage_exceeded, refused) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], \
                     $5::bigint[], $6::bigint[], $7::bigint[]) \
                 ON CONFLICT (id, incarnation, hour) DO UPDATE SET \
                     accepted = u.accepted + EXCLUDED.accepted, \
                     rate_limited = u.rate_limited + EXCLUDED.rate_limited, \
                     usage_exceeded = u.usage_exceeded + EXCLUDED.usage_exceeded, \
                     refused = u.refused + EXCLUDED.refused"
            ),
            usage: format!(
                "SELECT hour, accepted, rate_limited, usage_exceeded, refused FROM {table}_usage \
                 WHERE id = $1 AND incarnation = $2 AND hour >= $3 AND hour < $4 ORDER BY hour"
            ),
            prune_usage: format!("DELETE FROM {table}_usage WHERE hour < $1"),
            // Through the owners' index.
            list_owned: format!(
                "SELECT id, incarnation, version, record::text FROM {table} \
                 WHERE owner = $3 AND ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
            ),
            charge: format!("SELECT * FROM {table}_charge($1, $2, $3, $4, $5)"),
            // `ApiKey::refund` in SQL: into the same setting of the
            // credits and the same refill only, never above what the
            // period started with; the row lock orders it with charges.
            refund: format!(
                "UPDATE {table}_meters m SET remaining = least(m.remaining::numeric + $3::bigint, \
                     CASE WHEN m.refills > 0 AND k.refill_amount IS NOT NULL \
                          THEN k.refill_amount ELSE k.credits END)::bigint \
                 FROM {table} k \
                 WHERE m.id = $1 AND m.incarnation = $2 AND k.id = m.id \
                   AND k.incarnation = m.incarnation AND k.credits IS NOT NULL \
                   AND m.generation = $4 AND k.credits_generation = $4 AND m.refills = $5"
            ),
            marker: format!("SELECT at_secs, at_nanos FROM {table}_markers WHERE name = $1"),
            set_marker: format!(
                "INSERT INTO {table}_markers (name, at_secs, at_nanos) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING"
            ),
            clear_marker: format!("DELETE FROM {table}_markers WHERE name = $1"),
            owner: format!("SELECT {OWNER_COLUMNS} FROM {table}_owners WHERE owner = $1"),
            owner_for_update: format!(
                "SELECT {OWNER_COLUMNS} FROM {table}_owners WHERE owner = $1 FOR UPDATE"
            ),
            insert_owner: with_events(
                &table,
                &format!(
                    "written AS (INSERT INTO {table}_owners (owner, version, {LIMIT_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (owner) DO NOTHING RETURNING 1)"
                ),
                12,
            ),
            update_owner: with_events(
                &table,
                &format!(
                    "written AS (UPDATE {table}_owners SET version = $2, rate_limit = $3, \
                         rate_period_ns = $4, rate_burst = $5, credits = $6, refill_amount = $7, \
                         refill_every_ns = $8, credits_set_secs = $9, credits_set_nanos = $10, \
                         credits_generation = $11 \
                     WHERE owner = $1 AND version = $15 RETURNING 1)"
                ),
                12,
            ),
            // Under the claim lock (`claim_outbox`): due pending entries
            // none of whose subject's earlier pending ones waits.
            claim_outbox: format!(
                "UPDATE {table}_outbox SET next_at = $3 WHERE id IN ( \
                     SELECT o.id FROM {table}_outbox o \
                     WHERE o.state = 0 AND o.next_at <= $1 \
                       AND NOT EXISTS (SELECT 1 FROM {table}_outbox p WHERE p.state = 0 \
                           AND p.subject = o.subject AND p.id < o.id AND p.next_at > $1) \
                     ORDER BY o.id LIMIT $2) \
                 RETURNING {ENTRY_COLUMNS}"
            ),
            update_outbox: format!(
                "UPDATE {table}_outbox o SET state = u.state, attempts = u.attempts, \
                     next_at = u.next_at, last_error = u.last_error, delivered_at = u.delivered_at \
                 FROM unnest($1::bigint[], $2::smallint[], $3::integer[], $4::bigint[], \
                     $5::text[], $6::bigint[]) \
                     AS u(id, state, attempts, next_at, last_error, delivered_at) \
                 WHERE o.id = u.id"
            ),
            outbox: format!(
                "SELECT {ENTRY_COLUMNS} FROM {table}_outbox WHERE state = $1 AND id > $2 \
                 ORDER BY id LIMIT $3"
            ),
            outbox_of: format!(
                "SELECT {ENTRY_COLUMNS} FROM {table}_outbox WHERE subject = $1 AND id < $2 \
                 ORDER BY id DESC LIMIT $3"
            ),
            outbox_counts: format!(
                "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 2) \
                 FROM {table}_outbox WHERE state <> 1"
            ),
            prune_outbox: format!(
                "DELETE FROM {table}_outbox WHERE state = 1 AND delivered_at < $1"
            ),
            set_owner_meter: format!(
                "UPDATE {table}_owners SET generation = $2, tat_secs = $3, tat_nanos = $4, \
                     remaining = $5, refills = $6, anchor_secs = $7, anchor_nanos = $8 \
                 WHERE owner = $1"
            ),
            meter: format!(
                "SELECT generation, tat_secs, tat_nanos, remaining, refills, anchor_secs, anchor_nanos \
                 FROM {table}_meters WHERE id = $1 AND incarnation = $2"
            ),
        };
        PgStore {
            pool,
            table,
            sql,
            connector,
            callers_clock: false,
        }
    }

    /// The same store, charging at the `now` each call is given instead of
    /// the database server's clock: **for tests only**, which freeze or
    /// move time (the conformance suite does). Replicas sharing a table
    /// must charge at one clock, the server's: a replica whose clock runs
    /// ahead would otherwise set a key's bucket ahead for every replica,
    /// and one behind would refill early.
    pub fn charging_at_callers_clock(mut self) -> Self {
        self.callers_clock = true;
        self
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
    /// `keyroll_keys` (its meters in `{table}_meters`): the one way to name
    /// a table. `table` must be a plain lower-case SQL identifier
    /// (`[a-z_][a-z0-9_]*`, at most 56 bytes, so that the meters' table
    /// name fits PostgreSQL's 63), since it is spliced into SQL.
    ///
    /// # Errors
    ///
    /// [`PgStoreError::Config`] for any other name.
    pub fn in_table(self, table: &str) -> Result<Self, PgStoreError> {
        let plain = table.len() <= 56
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !plain {
            return Err(PgStoreError::Config(format!(
                "not a plain lower-case SQL identifier: {table:?}"
            )));
        }
        let callers_clock = self.callers_clock;
        Ok(PgStore {
            callers_clock,
            ..PgStore::in_named_table(self.pool, self.connector, table.to_owned())
        })
    }

    /// Creates the table if it does not exist, and upgrades a table written
    /// by keyroll 0.1 (adds and fills the incarnation column); creates the
    /// meters' table `{table}_meters` beside it (keyroll 0.3), the owners'
    /// `{table}_owners` (0.4); installs the triggers that notify every
    /// write (the functions `keyroll_notify()` and
    /// `keyroll_notify_owner()`; on the table, the triggers
    /// `keyroll_notify` for each row written and `keyroll_notify_truncate`
    /// for a `TRUNCATE`, and on the owners' table `keyroll_notify_owner`
    /// for each setting of limits: see [`listen`](PgStore::listen)).
    /// Idempotent, and safe to run from many
    /// replicas at once.
    ///
    /// It is an explicit step, run by a role that may create tables (a
    /// deployment step, `keyctl migrate`, or the demo service's
    /// `--migrate`). No other method runs it: the service itself needs
    /// only `SELECT`, `INSERT`, `UPDATE` and `DELETE` on the six tables ([`PgStore::grants`]), so it
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
        // The schema the tables are made in, which keyroll's functions
        // name their objects by.
        let schema: String = tx
            .query_one("SELECT quote_ident(current_schema())", &[])
            .await?
            .try_get(0)
            .map_err(|_| {
                PgStoreError::Config(
                    "no schema to create the tables in: set the role's search_path".into(),
                )
            })?;
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
            "ALTER TABLE {table} ALTER COLUMN incarnation SET NOT NULL;
             -- The moving state of the keys' limits: no trigger, so a charge
             -- notifies no one. A key's delete deletes its meters.
             CREATE TABLE IF NOT EXISTS {table}_meters (
                 id TEXT COLLATE \"C\" NOT NULL,
                 incarnation BIGINT NOT NULL,
                 generation BIGINT NOT NULL,
                 tat_secs BIGINT NOT NULL,
                 tat_nanos INTEGER NOT NULL,
                 remaining BIGINT NOT NULL,
                 refills BIGINT NOT NULL,
                 anchor_secs BIGINT NOT NULL,
                 anchor_nanos INTEGER NOT NULL,
                 PRIMARY KEY (id, incarnation)
             );
             -- The key's limits beside its record (keyroll 0.3), for the
             -- charge function; NULL: none, as in every older record.
             ALTER TABLE {table}
                 ADD COLUMN IF NOT EXISTS rate_limit BIGINT,
                 ADD COLUMN IF NOT EXISTS rate_period_ns BIGINT,
                 ADD COLUMN IF NOT EXISTS rate_burst BIGINT,
                 ADD COLUMN IF NOT EXISTS credits BIGINT,
                 ADD COLUMN IF NOT EXISTS refill_amount BIGINT,
                 ADD COLUMN IF NOT EXISTS refill_every_ns BIGINT,
                 ADD COLUMN IF NOT EXISTS credits_set_secs BIGINT,
                 ADD COLUMN IF NOT EXISTS credits_set_nanos INTEGER,
                 ADD COLUMN IF NOT EXISTS credits_generation BIGINT,
                 -- The key's owner, indexed for listing (keyroll 0.3).
                 ADD COLUMN IF NOT EXISTS owner TEXT COLLATE \"C\";
             CREATE INDEX IF NOT EXISTS {table}_owner ON {table} (owner, id)
                 WHERE owner IS NOT NULL;
             -- Usage counts by key, incarnation and UTC hour (keyroll 0.3).
             CREATE TABLE IF NOT EXISTS {table}_usage (
                 id TEXT COLLATE \"C\" NOT NULL,
                 incarnation BIGINT NOT NULL,
                 hour BIGINT NOT NULL,
                 accepted BIGINT NOT NULL,
                 rate_limited BIGINT NOT NULL,
                 usage_exceeded BIGINT NOT NULL,
                 refused BIGINT NOT NULL,
                 PRIMARY KEY (id, incarnation, hour)
             );
             CREATE INDEX IF NOT EXISTS {table}_usage_hour ON {table}_usage (hour);
             -- Markers: facts about the whole store (keyroll 0.4).
             CREATE TABLE IF NOT EXISTS {table}_markers (
                 name TEXT COLLATE \"C\" PRIMARY KEY,
                 at_secs BIGINT NOT NULL,
                 at_nanos INTEGER NOT NULL
             );
             -- Owner limits, as record::LimitColumns, and the owner's meter
             -- (NULL until its first charge) in the same row (keyroll 0.4).
             CREATE TABLE IF NOT EXISTS {table}_owners (
                 owner TEXT COLLATE \"C\" PRIMARY KEY,
                 version BIGINT NOT NULL,
                 rate_limit BIGINT, rate_period_ns BIGINT, rate_burst BIGINT,
                 credits BIGINT, refill_amount BIGINT, refill_every_ns BIGINT,
                 credits_set_secs BIGINT, credits_set_nanos INTEGER, credits_generation BIGINT,
                 generation BIGINT, tat_secs BIGINT, tat_nanos INTEGER, remaining BIGINT,
                 refills BIGINT, anchor_secs BIGINT, anchor_nanos INTEGER
             );
             -- The outbox: each write's events, in its transaction; instants
             -- in microseconds since the epoch, as record::EntryRow
             -- (keyroll 0.4).
             CREATE TABLE IF NOT EXISTS {table}_outbox (
                 id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 subject TEXT COLLATE \"C\" NOT NULL,
                 state SMALLINT NOT NULL DEFAULT 0,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 next_at BIGINT NOT NULL,
                 last_error TEXT,
                 delivered_at BIGINT,
                 event JSONB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS {table}_outbox_pending
                 ON {table}_outbox (subject, id) WHERE state = 0;
             CREATE INDEX IF NOT EXISTS {table}_outbox_state ON {table}_outbox (state, id);
             CREATE INDEX IF NOT EXISTS {table}_outbox_subject ON {table}_outbox (subject, id);"
        ))
        .await?;
        tx.batch_execute(&charge_function(&schema, table)).await?;
        // Every write notifies the id on the channel named after the table,
        // in the writing transaction (for `listen`). The function is shared
        // by every keyroll table: serialize its replacement too.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('keyroll_notify()'))",
            &[],
        )
        .await?;
        tx.batch_execute(&meter_step(&schema)).await?;
        tx.batch_execute(&meter_charge(&schema)).await?;
        tx.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION {schema}.keyroll_notify() RETURNS trigger
                 LANGUAGE plpgsql SET search_path = pg_catalog, {schema} AS $$
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
             CREATE OR REPLACE FUNCTION {schema}.keyroll_notify_owner() RETURNS trigger
                 LANGUAGE plpgsql SET search_path = pg_catalog, {schema} AS $$
             BEGIN
                 IF TG_OP = 'DELETE' THEN
                     PERFORM pg_notify(TG_ARGV[0], '/' || OLD.owner);
                 ELSE
                     PERFORM pg_notify(TG_ARGV[0], '/' || NEW.owner);
                 END IF;
                 RETURN NULL;
             END $$;
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'keyroll_notify' AND tgrelid = '{schema}.{table}'::regclass) THEN
                     CREATE TRIGGER keyroll_notify AFTER INSERT OR UPDATE OR DELETE ON {schema}.{table}
                         FOR EACH ROW EXECUTE FUNCTION {schema}.keyroll_notify();
                 END IF;
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'keyroll_notify_truncate' AND tgrelid = '{schema}.{table}'::regclass) THEN
                     CREATE TRIGGER keyroll_notify_truncate AFTER TRUNCATE ON {schema}.{table}
                         FOR EACH STATEMENT EXECUTE FUNCTION {schema}.keyroll_notify();
                 END IF;
                 -- An owner's limits set (its version written), not its
                 -- meter charged: '/' and the owner, on the keys' channel.
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'keyroll_notify_owner' AND tgrelid = '{schema}.{table}_owners'::regclass) THEN
                     CREATE TRIGGER keyroll_notify_owner AFTER INSERT OR UPDATE OF version OR DELETE
                         ON {schema}.{table}_owners
                         FOR EACH ROW EXECUTE FUNCTION {schema}.keyroll_notify_owner('{table}');
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

    /// Drops the table and the five beside it (meters, usage counts,
    /// markers, owners, outbox): for tests.
    ///
    /// # Errors
    ///
    /// The server's.
    pub async fn drop_table(&self) -> Result<(), PgStoreError> {
        let client = self.pool.get().await?;
        let table = &self.table;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_meters; \
                 DROP TABLE IF EXISTS {table}_usage; DROP TABLE IF EXISTS {table}_markers; \
                 DROP TABLE IF EXISTS {table}_owners; DROP TABLE IF EXISTS {table}_outbox"
            ))
            .await?;
        Ok(())
    }

    /// A pooled connection, or the error that says how to get one.
    async fn client(&self) -> Result<deadpool_postgres::Object, PgStoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) if is_tls(&e) => PgStoreError::Tls { detail: chain(&e) },
            PoolError::Backend(e) => self.error(e),
            e => e.into(),
        })
    }

    /// The driver's error, or the one that names the way out:
    /// [`PgStoreError::NotMigrated`] when the table does not exist,
    /// [`PgStoreError::PermissionDenied`] when the role may not use it.
    fn error(&self, e: tokio_postgres::Error) -> PgStoreError {
        match e.code() {
            Some(&SqlState::UNDEFINED_TABLE) => PgStoreError::NotMigrated {
                table: self.table.clone(),
            },
            Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                let role = self.connector.role().to_owned();
                PgStoreError::PermissionDenied {
                    detail: e
                        .as_db_error()
                        .map_or_else(|| chain(&e), |db| db.message().to_owned()),
                    grants: self.grants(&role),
                    role,
                }
            }
            _ => e.into(),
        }
    }

    /// The `GRANT` that gives `role` what a service needs on this store's
    /// six tables, and no more: `SELECT`, `INSERT`, `UPDATE` and `DELETE`
    /// (no DDL, so it can drop neither a table nor the triggers that keep
    /// caches in step). `keyctl migrate` prints it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyroll_postgres::PgStoreError> {
    /// let store = keyroll_postgres::PgStore::connect("postgres://admin@db.internal/keys").await?;
    /// assert_eq!(
    ///     store.grants("keyroll"),
    ///     "GRANT SELECT, INSERT, UPDATE, DELETE ON keyroll_keys, keyroll_keys_meters, \
    ///      keyroll_keys_usage, keyroll_keys_markers, keyroll_keys_owners, keyroll_keys_outbox \
    ///      TO \"keyroll\";"
    /// );
    /// # Ok(()) }
    /// ```
    pub fn grants(&self, role: &str) -> String {
        let table = &self.table;
        let role = role.replace('"', "\"\"");
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, {table}_meters, {table}_usage, \
             {table}_markers, {table}_owners, {table}_outbox TO \"{role}\";"
        )
    }

    /// `owner`'s row: its limits and its meter.
    async fn owner_row(
        &self,
        owner: &OwnerId,
    ) -> Result<Option<(OwnerLimits, Option<StoredMeter>)>, PgStoreError> {
        let client = self.client().await?;
        let owner_id = owner.as_str();
        let row = self
            .query_opt(&client, &self.sql.owner, &[&owner_id])
            .await?;
        row.map(|row| owner_of(&row, owner)).transpose()
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
                found: KeyRow::revision(row.get(0), row.get(1)),
            },
            Err(e) => StoreError::Backend(e),
        }
    }
}

/// Whether the driver's error is a failed or declined TLS handshake.
fn is_tls(e: &tokio_postgres::Error) -> bool {
    let text = chain(e);
    text.contains("TLS") || text.contains("tls") || text.contains("certificate")
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A statement's parameter.
type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

fn bigint(n: u64) -> Result<i64, PgStoreError> {
    i64::try_from(n).map_err(|_| PgStoreError::OutOfRange(n))
}

/// The [`LIMIT_COLUMNS`] of `key`, ready to bind.
fn limit_params(limits: &LimitColumns) -> [Param<'_>; 9] {
    [
        &limits.rate_limit,
        &limits.rate_period_ns,
        &limits.rate_burst,
        &limits.credits,
        &limits.refill_amount,
        &limits.refill_every_ns,
        &limits.credits_set_secs,
        &limits.credits_set_nanos,
        &limits.credits_generation,
    ]
}

/// Loads a row (id, incarnation, version, record), refusing a record that
/// names another id or revision.
fn decode(row: &tokio_postgres::Row) -> Result<ApiKey, PgStoreError> {
    let id: &str = row.get(0);
    Ok(record::decode_row(
        row.get(3),
        id,
        KeyRow::revision(row.get(1), row.get(2)),
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

    async fn insert(&self, key: &ApiKey, events: &[Event]) -> Result<(), StoreError<PgStoreError>> {
        let queued = Queued::of(events).map_err(StoreError::Backend)?;
        let KeyRow {
            incarnation,
            version,
            record,
        } = KeyRow::of(key).map_err(|e| StoreError::Backend(e.into()))?;
        let limits = LimitColumns::of(key);
        let client = self.client().await.map_err(StoreError::Backend)?;
        let id = key.id().as_str();
        let owner = key.owner().map(OwnerId::as_str);
        let row: [Param; 4] = [&id, &incarnation, &version, &record];
        let params: Vec<Param> = row
            .into_iter()
            .chain(limit_params(&limits))
            .chain([&owner as Param])
            .chain(queued.params())
            .collect();
        let inserted = self.execute(&client, &self.sql.insert, &params).await;
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
        events: &[Event],
    ) -> Result<(), StoreError<PgStoreError>> {
        let queued = Queued::of(events).map_err(StoreError::Backend)?;
        let KeyRow {
            incarnation,
            version,
            record,
        } = KeyRow::of(key).map_err(|e| StoreError::Backend(e.into()))?;
        let expected_incarnation = bigint(expected.incarnation()).map_err(StoreError::Backend)?;
        let expected_version = bigint(expected.version()).map_err(StoreError::Backend)?;
        let limits = LimitColumns::of(key);
        let client = self.client().await.map_err(StoreError::Backend)?;
        let id = key.id().as_str();
        let row: [Param; 6] = [
            &id,
            &expected_incarnation,
            &expected_version,
            &version,
            &incarnation,
            &record,
        ];
        let owner = key.owner().map(OwnerId::as_str);
        let params: Vec<Param> = row
            .into_iter()
            .chain(limit_params(&limits))
            .chain([&owner as Param])
            .chain(queued.params())
            .collect();
        let changed: i64 = self
            .query_opt(&client, &self.sql.update, &params)
            .await
            .map_err(StoreError::Backend)?
            .map_or(0, |row| row.get(0));
        if changed == 1 {
            Ok(())
        } else {
            Err(self.refusal(&client, key.id(), expected).await)
        }
    }

    async fn delete(
        &self,
        id: &KeyId,
        expected: Revision,
        events: &[Event],
    ) -> Result<(), StoreError<PgStoreError>> {
        let queued = Queued::of(events).map_err(StoreError::Backend)?;
        let incarnation = bigint(expected.incarnation()).map_err(StoreError::Backend)?;
        let version = bigint(expected.version()).map_err(StoreError::Backend)?;
        let client = self.client().await.map_err(StoreError::Backend)?;
        let row: [Param; 3] = [&id.as_str(), &incarnation, &version];
        let params: Vec<Param> = row.into_iter().chain(queued.params()).collect();
        let deleted: i64 = self
            .query_opt(&client, &self.sql.delete, &params)
            .await
            .map_err(StoreError::Backend)?
            .map_or(0, |row| row.get(0));
        if deleted == 1 {
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

    async fn list_owned(
        &self,
        owner: &OwnerId,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, PgStoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                self.sql.list_owned.as_str(),
                &[&after.map(KeyId::as_str), &limit, &owner.as_str()],
            )
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(decode).collect()
    }

    async fn charge(
        &self,
        id: &KeyId,
        incarnation: u64,
        cost: u32,
        now: OffsetDateTime,
    ) -> Result<Result<Allowance, Refusal>, StoreError<PgStoreError>> {
        let backend = StoreError::Backend;
        let incarnation = bigint(incarnation).map_err(backend)?;
        let (now_secs, now_nanos) = match self.callers_clock {
            true => (Some(now.unix_timestamp()), Some(now.nanosecond() as i32)),
            false => (None, None),
        };
        let client = self.client().await.map_err(backend)?;
        let row = self
            .query_opt(
                &client,
                &self.sql.charge,
                &[
                    &id.as_str(),
                    &incarnation,
                    &i64::from(cost),
                    &now_secs,
                    &now_nanos,
                ],
            )
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        let admitted: bool = row.get(0);
        let limits = limit_columns(&row, 1);
        let owner_version: Option<i64> = row.get(27);
        if !limits.is_metered() && owner_version.is_none() {
            return Ok(Ok(Allowance::default()));
        }
        let mismatch = || backend(PgStoreError::ChargeMismatch { id: id.to_string() });
        // The instant the function charged at: the server's clock, or ours.
        let now = OffsetDateTime::from_unix_timestamp(row.get(24))
            .and_then(|at| at.replace_nanosecond(row.get::<_, i32>(25) as u32))
            .map_err(|_| mismatch())?;
        // The function's answer must be `Meter::charge`'s, key and owner,
        // which also makes the allowance or the refusal.
        let charged = |ours: Result<(StoredMeter, Allowance), Refusal>,
                       theirs: Option<MeterRow>| {
            match (ours, theirs) {
                (Ok((next, allowance)), Some(theirs)) if MeterRow::of(&next) == theirs => {
                    Ok(Ok(allowance))
                }
                (Err(refusal), None) => Ok(Err(refusal)),
                _ => Err(mismatch()),
            }
        };
        let mut answer = Ok(Allowance::default());
        if limits.is_metered() {
            let stored = meter_row(&row, 10)
                .map(|before| before.load(id.as_str()))
                .transpose()
                .map_err(|e| backend(e.into()))?;
            let ours = limits
                .charge(id.as_str(), stored.as_ref(), cost, now)
                .map_err(|e| backend(e.into()))?;
            answer = charged(ours, meter_row(&row, 17))?;
        }
        if let (Ok(allowance), Some(version)) = (&answer, owner_version) {
            let owner: &str = row.get(26);
            let record = |e: RecordError| backend(e.into());
            let limits = limit_columns(&row, 28)
                .owner_limits(owner, version)
                .map_err(record)?;
            let stored = meter_row(&row, 37)
                .map(|before| before.load(owner))
                .transpose()
                .map_err(record)?;
            let owner = OwnerId::existing(owner).map_err(|_| mismatch())?;
            let ours = limits.charge(&owner, stored.as_ref(), allowance.clone(), cost, now);
            answer = charged(ours, meter_row(&row, 44))?;
        }
        match answer.is_ok() == admitted {
            true => Ok(answer),
            false => Err(mismatch()),
        }
    }

    async fn refund(
        &self,
        id: &KeyId,
        incarnation: u64,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), PgStoreError> {
        let params = [
            bigint(incarnation)?,
            bigint(amount)?,
            bigint(period.generation())?,
            bigint(period.refills())?,
        ];
        let client = self.client().await?;
        self.execute(
            &client,
            &self.sql.refund,
            &[&id.as_str(), &params[0], &params[1], &params[2], &params[3]],
        )
        .await?;
        Ok(())
    }

    async fn meter(
        &self,
        id: &KeyId,
        incarnation: u64,
    ) -> Result<Option<StoredMeter>, PgStoreError> {
        let incarnation = bigint(incarnation)?;
        let client = self.client().await?;
        let row = self
            .query_opt(&client, &self.sql.meter, &[&id.as_str(), &incarnation])
            .await?;
        row.map(|row| meter_of(&row, id)).transpose()
    }

    async fn owner_limits(&self, owner: &OwnerId) -> Result<Option<OwnerLimits>, PgStoreError> {
        Ok(self.owner_row(owner).await?.map(|(limits, _)| limits))
    }

    async fn set_owner_limits(
        &self,
        owner: &OwnerId,
        limits: &OwnerLimits,
        expected: u64,
        events: &[Event],
    ) -> Result<(), StoreError<PgStoreError>> {
        let backend = StoreError::Backend;
        let queued = Queued::of(events).map_err(backend)?;
        let columns = LimitColumns::of_owner(limits);
        let [version, expected_param] =
            [bigint(limits.version()), bigint(expected)].map(|n| n.map_err(backend));
        let (version, expected_param) = (version?, expected_param?);
        let owner_id = owner.as_str();
        let mut params: Vec<Param<'_>> = vec![&owner_id, &version];
        params.extend(limit_params(&columns));
        params.extend(queued.params());
        let client = self.client().await.map_err(backend)?;
        let written = match expected {
            0 => {
                self.query_opt(&client, &self.sql.insert_owner, &params)
                    .await
            }
            _ => {
                params.push(&expected_param);
                self.query_opt(&client, &self.sql.update_owner, &params)
                    .await
            }
        };
        if written
            .map_err(backend)?
            .is_some_and(|row| row.get::<_, i64>(0) == 1)
        {
            return Ok(());
        }
        let found = self
            .query_opt(&client, &self.sql.owner, &[&owner.as_str()])
            .await
            .map_err(backend)?
            .map_or(0, |row| row.get::<_, i64>(0));
        StoreError::check_version(expected, u64::try_from(found).unwrap_or(0))
    }

    async fn owner_meter(&self, owner: &OwnerId) -> Result<Option<StoredMeter>, PgStoreError> {
        Ok(self.owner_row(owner).await?.and_then(|(_, meter)| meter))
    }

    /// In a transaction of its own: the owner's row locked, the kit's
    /// [`OwnerLimits::refund`], the meter written (refunds are rare: a
    /// lease's end).
    async fn refund_owner(
        &self,
        owner: &OwnerId,
        amount: u64,
        period: CreditsPeriod,
    ) -> Result<(), PgStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        let statement = tx.prepare_cached(&self.sql.owner_for_update).await;
        let row = tx
            .query_opt(&statement.map_err(|e| self.error(e))?, &[&owner.as_str()])
            .await
            .map_err(|e| self.error(e))?;
        let Some((limits, stored)) = row.map(|row| owner_of(&row, owner)).transpose()? else {
            return Ok(());
        };
        let Some(next) = limits.refund(stored.as_ref(), amount, period) else {
            return Ok(());
        };
        let m = MeterRow::of(&next);
        let statement = tx.prepare_cached(&self.sql.set_owner_meter).await;
        tx.execute(
            &statement.map_err(|e| self.error(e))?,
            &[
                &owner.as_str(),
                &m.generation,
                &m.tat_secs,
                &m.tat_nanos,
                &m.remaining,
                &m.refills,
                &m.anchor_secs,
                &m.anchor_nanos,
            ],
        )
        .await
        .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), PgStoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let incarnations = rows
            .iter()
            .map(|r| bigint(r.incarnation))
            .collect::<Result<Vec<_>, _>>()?;
        let hours: Vec<i64> = rows.iter().map(|r| r.hour).collect();
        let column = |f: fn(&UsageRow) -> u64| rows.iter().map(|r| count(f(r))).collect::<Vec<_>>();
        let (accepted, rate_limited) = (column(|r| r.accepted), column(|r| r.rate_limited));
        let (usage_exceeded, refused) = (column(|r| r.usage_exceeded), column(|r| r.refused));
        let client = self.client().await?;
        self.execute(
            &client,
            &self.sql.add_usage,
            &[
                &ids,
                &incarnations,
                &hours,
                &accepted,
                &rate_limited,
                &usage_exceeded,
                &refused,
            ],
        )
        .await?;
        Ok(())
    }

    async fn usage(
        &self,
        id: &KeyId,
        incarnation: u64,
        hours: Range<i64>,
    ) -> Result<Vec<UsageRow>, PgStoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.usage)
            .await
            .map_err(|e| self.error(e))?;
        let rows = client
            .query(
                &statement,
                &[
                    &id.as_str(),
                    &bigint(incarnation)?,
                    &hours.start,
                    &hours.end,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        let counted = |row: &tokio_postgres::Row, i| row.get::<_, i64>(i).max(0) as u64;
        Ok(rows
            .iter()
            .map(|row| UsageRow {
                id: id.clone(),
                incarnation,
                hour: row.get(0),
                accepted: counted(row, 1),
                rate_limited: counted(row, 2),
                usage_exceeded: counted(row, 3),
                refused: counted(row, 4),
            })
            .collect())
    }

    async fn prune_usage(&self, before: i64) -> Result<u64, PgStoreError> {
        let client = self.client().await?;
        self.execute(&client, &self.sql.prune_usage, &[&before])
            .await
    }

    /// In a transaction of its own, under an advisory lock that
    /// serialises the claims of every replica on this table.
    async fn claim_outbox(
        &self,
        limit: usize,
        now: OffsetDateTime,
        hold: time::Duration,
    ) -> Result<Vec<Entry>, PgStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        let lock = format!("{}_outbox", self.table);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock])
            .await
            .map_err(|e| self.error(e))?;
        let until = record::micros(now.saturating_add(hold));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                &self.sql.claim_outbox,
                &[&record::micros(now), &limit, &until],
            )
            .await
            .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        let mut claimed = rows.iter().map(entry_of).collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|entry| entry.id);
        Ok(claimed)
    }

    async fn update_outbox(&self, entries: &[Entry]) -> Result<(), PgStoreError> {
        let rows: Vec<EntryRow> = entries.iter().map(EntryRow::delivery).collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let states: Vec<i16> = rows.iter().map(|r| r.state).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        let due: Vec<i64> = rows.iter().map(|r| r.next_at).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
        let delivered: Vec<Option<i64>> = rows.iter().map(|r| r.delivered_at).collect();
        let client = self.client().await?;
        self.execute(
            &client,
            &self.sql.update_outbox,
            &[&ids, &states, &attempts, &due, &errors, &delivered],
        )
        .await?;
        Ok(())
    }

    async fn outbox(
        &self,
        state: EntryState,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, PgStoreError> {
        let after = after.map_or(0, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.outbox)
            .await
            .map_err(|e| self.error(e))?;
        let rows = client
            .query(&statement, &[&state.code(), &after, &limit])
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(entry_of).collect()
    }

    async fn outbox_of(
        &self,
        subject: &str,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<Entry>, PgStoreError> {
        let before = before.map_or(i64::MAX, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.outbox_of)
            .await
            .map_err(|e| self.error(e))?;
        let rows = client
            .query(&statement, &[&subject, &before, &limit])
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(entry_of).collect()
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts, PgStoreError> {
        let client = self.client().await?;
        let row = self
            .query_opt(&client, &self.sql.outbox_counts, &[])
            .await?;
        let (pending, parked) =
            row.map_or((0, 0), |row| (row.get::<_, i64>(0), row.get::<_, i64>(1)));
        Ok(OutboxCounts::new(pending as u64, parked as u64))
    }

    async fn prune_outbox(&self, before: OffsetDateTime) -> Result<u64, PgStoreError> {
        let client = self.client().await?;
        self.execute(&client, &self.sql.prune_outbox, &[&record::micros(before)])
            .await
    }

    async fn marker(&self, name: &str) -> Result<Option<OffsetDateTime>, PgStoreError> {
        let client = self.client().await?;
        let Some(row) = self.query_opt(&client, &self.sql.marker, &[&name]).await? else {
            return Ok(None);
        };
        OffsetDateTime::from_unix_timestamp(row.get(0))
            .and_then(|at| at.replace_nanosecond(row.get::<_, i32>(1) as u32))
            .map(Some)
            .map_err(|e| PgStoreError::Marker(format!("{name:?} holds no instant: {e}")))
    }

    async fn set_marker(&self, name: &str, at: Option<OffsetDateTime>) -> Result<(), PgStoreError> {
        let client = self.client().await?;
        match at {
            Some(at) => {
                let (secs, nanos) = (at.unix_timestamp(), at.nanosecond() as i32);
                self.execute(&client, &self.sql.set_marker, &[&name, &secs, &nanos])
                    .await?
            }
            None => {
                self.execute(&client, &self.sql.clear_marker, &[&name])
                    .await?
            }
        };
        Ok(())
    }
}

/// The meter in the seven columns of `row` from `first` on (generation,
/// tat, remaining, refills, anchor), if they are not NULL.
fn meter_row(row: &tokio_postgres::Row, first: usize) -> Option<MeterRow> {
    Some(MeterRow {
        generation: row.get::<_, Option<i64>>(first)?,
        tat_secs: row.get(first + 1),
        tat_nanos: row.get(first + 2),
        remaining: row.get(first + 3),
        refills: row.get(first + 4),
        anchor_secs: row.get(first + 5),
        anchor_nanos: row.get(first + 6),
    })
}

/// The [`LIMIT_COLUMNS`] of a row, from column `first` on.
fn limit_columns(row: &tokio_postgres::Row, first: usize) -> LimitColumns {
    LimitColumns {
        rate_limit: row.get(first),
        rate_period_ns: row.get(first + 1),
        rate_burst: row.get(first + 2),
        credits: row.get(first + 3),
        refill_amount: row.get(first + 4),
        refill_every_ns: row.get(first + 5),
        credits_set_secs: row.get(first + 6),
        credits_set_nanos: row.get(first + 7),
        credits_generation: row.get(first + 8),
    }
}

/// An owner's row ([`OWNER_COLUMNS`]): its limits and its meter.
fn owner_of(
    row: &tokio_postgres::Row,
    owner: &OwnerId,
) -> Result<(OwnerLimits, Option<StoredMeter>), PgStoreError> {
    let version = row.get::<_, i64>(0);
    let limits = limit_columns(row, 1).owner_limits(owner.as_str(), version)?;
    let meter = meter_row(row, 10)
        .map(|m| m.load(owner.as_str()))
        .transpose()?;
    Ok((limits, meter))
}

/// The meter in a row of the meters' table.
fn meter_of(row: &tokio_postgres::Row, id: &KeyId) -> Result<StoredMeter, PgStoreError> {
    let row = meter_row(row, 0).expect("the meters' generation is NOT NULL");
    Ok(row.load(id.as_str())?)
}
