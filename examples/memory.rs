//! Memory per key: fills an `InMemoryStore` with 1,000,000 keys, a quarter of
//! them renewing, and prints the growth of the process's resident memory.
//! With `attributes`, every key also has 3 scopes and 2 metadata entries.
//!
//! ```text
//! cargo run --release --example memory [KEYS] [attributes]
//! ```

use std::error::Error;

use keyroll::store::{InMemoryStore, KeyStore};
use keyroll::{ApiKey, KeyId, Metadata, NewKey, Scopes};
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
    let attributes = std::env::args().nth(2).as_deref() == Some("attributes");
    let mut rng = StdRng::seed_from_u64(1);
    let now = OffsetDateTime::now_utc();
    let store = InMemoryStore::new();

    let before = resident_bytes()?;
    for i in 0..keys {
        let id = KeyId::new(format!("key-{i:07}"))?;
        let mut new = NewKey::new(id).label(format!("service {i}"));
        if attributes {
            new = new
                .scopes(Scopes::new([
                    "orders:read",
                    "orders:write",
                    "billing:read",
                ])?)
                .metadata(Metadata::new([
                    ("tenant", format!("t-{i}")),
                    ("owner", "ops".into()),
                ])?);
        }
        let (mut key, _token, _) = ApiKey::issue(new, now, &mut rng)?;
        if i % 4 == 0 {
            key.renew(now, &mut rng)?;
        }
        // The in-memory store's futures complete at once.
        pollster::block_on(store.insert(&key, &[])).map_err(|e| format!("{e}"))?;
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
