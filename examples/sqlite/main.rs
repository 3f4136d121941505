//! Keys in SQLite: a renewal through `KeyManager` over the example store.
//!
//! ```text
//! cargo run --example sqlite [PATH]
//! ```
//!
//! Without `PATH`, the database lives in memory. The store itself is in
//! `store.rs` beside this file, ready to copy into a service.

mod store;

use std::error::Error;

use keyroll::{KeyId, KeyManager, NewKey, OldTokenDeletion};
use store::SqliteStore;
use time::OffsetDateTime;

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let store = match &path {
        Some(path) => SqliteStore::open(path)?,
        None => SqliteStore::open_in_memory()?,
    };
    println!(
        "journal_mode={} synchronous={} (2 = FULL)",
        store.pragma("journal_mode")?,
        store.pragma("synchronous")?
    );
    let manager = KeyManager::new(store);
    let mut rng = rand::rng();
    let now = OffsetDateTime::now_utc();

    let id = KeyId::generate(&mut rng);
    let (first, event) =
        manager.create_key(NewKey::new(id.clone()).label("sqlite demo"), now, &mut rng)?;
    println!("{}", serde_json::to_string(&event)?);
    let (second, event) = manager.renew(&id, now, &mut rng)?;
    println!("{}", serde_json::to_string(&event)?);
    println!(
        "old token: {:?}",
        manager
            .authenticate_key(&id, first.expose_secret(), now)
            .map(|a| a.matched)?
    );
    println!(
        "new token: {:?}",
        manager
            .authenticate_key(&id, second.expose_secret(), now)
            .map(|a| a.matched)?
    );
    let event = manager.finalize(&id, OldTokenDeletion::Now, now)?;
    println!("{}", serde_json::to_string(&event)?);
    println!(
        "old token after finalize(Now): {:?}",
        manager
            .authenticate_key(&id, first.expose_secret(), now)
            .map(|a| a.matched)
            .err()
    );
    if let Some(path) = path {
        println!("stored in {}", path.display());
    }
    Ok(())
}
