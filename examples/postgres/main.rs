//! Keys in PostgreSQL, shared by replicas.
//!
//! ```text
//! cargo run --example postgres -- --url postgres://user@localhost/db            # a short demo
//! cargo run --example postgres -- --url URL race --keys a,b --ops 200 --seed 1   # one racing replica
//! ```
//!
//! `race` plays one replica of a service: it applies `--ops` random
//! transitions (renew, undo, finalize, delete-old) to the given keys, which
//! must exist, and prints how many succeeded per key, as `id successes` lines.
//! The PostgreSQL tests run two of these at once. The store itself is in
//! `store.rs` beside this file.

#[allow(dead_code)] // a module to copy: the demo uses part of it
mod store;

use std::error::Error;

use clap::{Parser, Subcommand};
use deadpool_postgres::{Config, Pool, PoolConfig, Runtime};
use keyroll::{AsyncKeyManager, KeyId, NewKey, OldTokenDeletion};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use store::PgStore;
use time::OffsetDateTime;
use tokio_postgres::NoTls;

#[derive(Parser)]
struct Cli {
    /// The server, e.g. postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long, env = "KEYROLL_PG_URL")]
    url: String,
    /// The table.
    #[arg(long, default_value = "keyroll_keys")]
    table: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Race random transitions against other replicas.
    Race {
        /// Comma-separated ids of existing keys.
        #[arg(long, value_delimiter = ',')]
        keys: Vec<KeyId>,
        /// How many transitions to try.
        #[arg(long, default_value_t = 200)]
        ops: u32,
        /// Seed of the random choices.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// A small pool: a replica's connections.
fn pool(url: &str, size: usize) -> Result<Pool, Box<dyn Error>> {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(PoolConfig::new(size));
    Ok(config.create_pool(Some(Runtime::Tokio1), NoTls)?)
}

async fn demo(manager: &AsyncKeyManager<PgStore>) -> Result<(), Box<dyn Error>> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let now = OffsetDateTime::now_utc();
    let id = KeyId::generate(&mut rng);
    let (first, event) = manager
        .create_key(
            NewKey::new(id.clone()).label("postgres demo"),
            now,
            &mut rng,
        )
        .await?;
    println!("{}", serde_json::to_string(&event)?);
    let (second, event) = manager.renew(&id, now, &mut rng).await?;
    println!("{}", serde_json::to_string(&event)?);
    println!(
        "old token: {:?}",
        manager
            .authenticate_key(&id, first.expose_secret(), now)
            .await
            .map(|a| a.matched)?
    );
    println!(
        "new token: {:?}",
        manager
            .authenticate_key(&id, second.expose_secret(), now)
            .await
            .map(|a| a.matched)?
    );
    println!(
        "{}",
        serde_json::to_string(&manager.finalize(&id, OldTokenDeletion::Now, now).await?)?
    );
    println!(
        "{}",
        serde_json::to_string(&manager.delete_key(&id, now).await?)?
    );
    Ok(())
}

/// One random transition on one of `keys`; whether it succeeded.
async fn random_transition(
    manager: &AsyncKeyManager<PgStore>,
    id: &KeyId,
    rng: &mut StdRng,
) -> Result<bool, Box<dyn Error + Send + Sync>> {
    let now = OffsetDateTime::now_utc();
    let result = match rng.random_range(0..4) {
        0 => manager.renew(id, now, rng).await.map(|_| ()),
        1 => manager.undo_renewal(id, now).await.map(|_| ()),
        2 => manager
            .finalize(id, OldTokenDeletion::Later, now)
            .await
            .map(|_| ()),
        _ => manager.delete_old(id, now).await.map(|_| ()),
    };
    match result {
        Ok(()) => Ok(true),
        Err(keyroll::ManagerError::Transition(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
    let store = PgStore::with_table(pool(&cli.url, 4)?, &cli.table);
    let manager = AsyncKeyManager::new(store).with_max_retries(64);
    match cli.command {
        None => demo(&manager).await?,
        Some(Command::Race { keys, ops, seed }) => {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut successes = vec![0u32; keys.len()];
            for _ in 0..ops {
                let k = rng.random_range(0..keys.len());
                if random_transition(&manager, &keys[k], &mut rng)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    successes[k] += 1;
                }
            }
            for (id, n) in keys.iter().zip(successes) {
                println!("{id} {n}");
            }
        }
    }
    Ok(())
}
