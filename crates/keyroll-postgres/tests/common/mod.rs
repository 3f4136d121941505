//! What the PostgreSQL tests share.
//!
//! A test that needs the server carries
//! `#[cfg_attr(not(keyroll_pg), ignore = "...")]`: the crate's build script
//! sets `keyroll_pg` when `KEYROLL_PG_URL` (or `CI`) is set, so without a
//! server `cargo test` lists those tests as ignored, with the reason.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use deadpool_postgres::{Config, Pool, PoolConfig, Runtime};
use keyroll_postgres::PgStore;
use tokio_postgres::NoTls;

/// The server to test against, from `KEYROLL_PG_URL`.
///
/// # Panics
///
/// When it is not set: in CI, where a missing server is a failure, or
/// when an ignored test is run by hand.
pub fn server_url() -> String {
    std::env::var("KEYROLL_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("KEYROLL_PG_URL must be set: `bash .ci/run` starts a server and sets it")
}

/// `url` with `sslmode=disable`: the tests' server uses a CA of its own.
pub fn plain(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

pub fn pool(url: &str, size: usize) -> Pool {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(PoolConfig::new(size));
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .expect("a valid pool configuration")
}

/// A store in `table` of the server at `url`, in the clear.
pub async fn store(url: &str, table: &str) -> PgStore {
    PgStore::connect(&plain(url))
        .await
        .unwrap()
        .in_table(table)
        .unwrap()
}

/// [`store`], its table created by `migrate`.
pub async fn migrated(url: &str, table: &str) -> PgStore {
    let store = store(url, table).await;
    store.migrate().await.unwrap();
    store
}

/// A table name no other test (or test run) uses.
pub fn fresh_table(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "kr_{what}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}
