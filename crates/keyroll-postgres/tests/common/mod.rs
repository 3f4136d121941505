//! What the PostgreSQL tests share.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use deadpool_postgres::{Config, Pool, PoolConfig, Runtime};
use tokio_postgres::NoTls;

/// The server to test against, or `None` (with one line saying so) when
/// none is configured. Under CI a missing server is a failure, not a skip.
pub fn server_url() -> Option<String> {
    match std::env::var("KEYROLL_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!("KEYROLL_PG_URL must be set in CI"),
        _ => {
            eprintln!(
                "skipped: KEYROLL_PG_URL is not set; `bash .ci/run` starts a server and sets it"
            );
            None
        }
    }
}

pub fn pool(url: &str, size: usize) -> Pool {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(PoolConfig::new(size));
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .expect("a valid pool configuration")
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
