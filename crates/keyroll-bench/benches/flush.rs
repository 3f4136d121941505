//! Flushing usage counts to PostgreSQL: 1,000,000 authentications counted
//! across 10,000 keys (through a `CachedStore<PgStore>`, so that counting
//! is all that touches the database), then `flush_usage`, timed. Twice:
//! the first flush also writes each key's last use (one compare-and-swap a
//! key); the second, in the same hour, finds the last uses current and
//! adds the counts only. Prints the times, the rows written and the counts
//! read back. A one-shot measurement, not a criterion bench.
//!
//! `KEYROLL_PG_URL=postgres://...?sslmode=disable cargo bench -p keyroll-bench --bench flush`

use std::time::{Duration, Instant};

use keyroll::store::{CachedStore, KeyStore};
use keyroll::{ApiKey, Credentials, KeyId, KeyManager};
use keyroll_postgres::PgStore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::OffsetDateTime;

const KEYS: usize = 10_000;
const REQUESTS: usize = 1_000_000;
const TABLE: &str = "keyroll_bench_flush";

fn main() {
    let Ok(url) = std::env::var("KEYROLL_PG_URL") else {
        eprintln!("flush: set KEYROLL_PG_URL to run it");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(&url));
}

async fn run(url: &str) {
    let store = PgStore::connect(url)
        .await
        .expect("a valid URL")
        .in_table(TABLE)
        .expect("a plain name");
    store.drop_table().await.expect("a fresh table");
    store.migrate().await.expect("migrate");
    let now = OffsetDateTime::now_utc();
    let mut rng = StdRng::seed_from_u64(27);
    let mut tokens = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let id = KeyId::new(format!("flush-{i:05}")).expect("valid id");
        let (key, token, _) = ApiKey::issue(id.clone(), now, &mut rng).expect("valid key");
        store.insert(&key, &[]).await.expect("insert");
        tokens.push((id, token));
    }
    let cache = CachedStore::new(store, 2 * KEYS, Duration::from_secs(600));
    let manager = KeyManager::new(cache).with_usage_recording(true);
    for round in ["first", "second"] {
        let started = Instant::now();
        for i in 0..REQUESTS {
            let (id, token) = &tokens[i % KEYS];
            let credentials = Credentials::bearer(token.expose_secret()).with_id(id);
            manager
                .authenticate(credentials, now)
                .await
                .expect("authenticated");
        }
        let counting = started.elapsed();
        let started = Instant::now();
        let written = manager.flush_usage(now).await.expect("flushed");
        let flushing = started.elapsed();
        let client = manager
            .store()
            .inner()
            .pool()
            .get()
            .await
            .expect("a connection");
        let row = client
            .query_one(
                &format!("SELECT count(*), sum(accepted)::bigint FROM {TABLE}_usage"),
                &[],
            )
            .await
            .expect("the counts");
        let (rows, accepted): (i64, i64) = (row.get(0), row.get(1));
        println!(
            "flush ({round}): {REQUESTS} requests over {KEYS} keys counted in {:.2} s; \
             flush_usage took {:.3} s ({written} last uses written); \
             {rows} usage rows hold {accepted} accepted",
            counting.as_secs_f64(),
            flushing.as_secs_f64(),
        );
    }
    // The counts' part alone: the same rows, added in the flush's batches.
    let hour = keyroll::store::UsageRow::hour_of(now);
    let rows: Vec<keyroll::store::UsageRow> = tokens
        .iter()
        .map(|(id, _)| keyroll::store::UsageRow {
            id: id.clone(),
            incarnation: 1,
            hour,
            accepted: 100,
            rate_limited: 0,
            usage_exceeded: 0,
            refused: 0,
        })
        .collect();
    let started = Instant::now();
    for batch in rows.chunks(1_000) {
        manager.store().add_usage(batch).await.expect("added");
    }
    println!(
        "flush (counts alone): {} usage rows added in batches of 1000 in {:.3} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    manager.store().inner().drop_table().await.expect("drop");
}
