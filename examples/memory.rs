//! Memory per key: fills an `InMemoryStore` with 1,000,000 keys, a quarter of
//! them renewing, and prints the growth of the process's resident memory.
//!
//! ```text
//! cargo run --release --example memory [KEYS]
//! ```

use std::error::Error;

use keyroll::{ApiKey, InMemoryStore, KeyId, KeyStore, NewKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::OffsetDateTime;

/// Resident set size in bytes, from /proc/self/statm (Linux).
fn resident_bytes() -> Result<u64, Box<dyn Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("statm has no resident field")?
        .parse()?;
    // The page size is 4 KiB on every Linux target this runs on in practice.
    Ok(pages * 4096)
}

fn main() -> Result<(), Box<dyn Error>> {
    let keys: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |n| n.parse())?;
    let mut rng = StdRng::seed_from_u64(1);
    let now = OffsetDateTime::now_utc();
    let store = InMemoryStore::new();

    let before = resident_bytes()?;
    for i in 0..keys {
        let id = KeyId::new(format!("key-{i:07}"))?;
        let (mut key, _token, _) =
            ApiKey::issue(NewKey::new(id).label(format!("service {i}")), now, &mut rng)?;
        if i % 4 == 0 {
            key.renew(now, &mut rng)?;
        }
        store.insert(&key).map_err(|e| format!("{e}"))?;
    }
    let after = resident_bytes()?;

    println!("keys: {}", store.len());
    println!(
        "resident before: {} MiB, after: {} MiB",
        before >> 20,
        after >> 20
    );
    println!("bytes per key: {}", (after - before) / keys as u64);
    Ok(())
}
