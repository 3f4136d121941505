//! The outbox's cost on a write, in memory: `KeyManager::apply` (a label
//! change: load, change, compare-and-swap) with the outbox on and off.
//! The entries a run queues are delivered and pruned outside the timed
//! part, every 4,096 writes, so that the outbox stays as small as a
//! drained one.
//!
//! Also a key's 20 latest events (`outbox_of`, the console's key page)
//! among the entries of 1,000 keys, in memory, where it scans the
//! entries under the store's outbox lock, which writes wait for.
//!
//! `cargo bench -p keyroll-bench --bench outbox`

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keyroll::outbox::EntryState;
use keyroll::store::{InMemoryStore, KeyStore};
use keyroll::{Change, KeyId, KeyManager};
use time::OffsetDateTime;

/// Marks every pending entry delivered and prunes it.
fn drain(store: &InMemoryStore, now: OffsetDateTime) {
    pollster::block_on(async {
        loop {
            let mut batch = store
                .claim_outbox(4096, now, time::Duration::ZERO)
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for entry in &mut batch {
                entry.state = EntryState::Delivered;
                entry.delivered_at = Some(now);
            }
            store.update_outbox(&batch).await.unwrap();
        }
        store
            .prune_outbox(now + time::Duration::SECOND)
            .await
            .unwrap();
    });
}

fn bench_outbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox");
    let now = OffsetDateTime::now_utc();
    let labels: Vec<Change> = (0..64)
        .map(|n| Change::Label(format!("label {n}")))
        .collect();
    for (name, outbox) in [("apply_without_outbox", false), ("apply_with_outbox", true)] {
        let manager = KeyManager::new(InMemoryStore::new());
        let manager = if outbox {
            manager.with_outbox()
        } else {
            manager
        };
        let ids: Vec<KeyId> = (0..1024)
            .map(|n| KeyId::new(format!("key-{n}")).unwrap())
            .collect();
        for id in &ids {
            pollster::block_on(manager.create_key(id.clone(), now, &mut rand::rng())).unwrap();
        }
        drain(manager.store(), now);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut i = 0usize;
                while (i as u64) < iters {
                    let batch = (iters - i as u64).min(4096) as usize;
                    let start = Instant::now();
                    for n in i..i + batch {
                        let change = labels[n % labels.len()].clone();
                        pollster::block_on(manager.apply(&ids[n % ids.len()], change, now))
                            .unwrap();
                    }
                    timed += start.elapsed();
                    drain(manager.store(), now);
                    i += batch;
                }
                timed
            })
        });
    }
    group.finish();
}

fn bench_outbox_of(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_of");
    let now = OffsetDateTime::now_utc();
    for per_key in [10, 100] {
        let manager = KeyManager::new(InMemoryStore::new()).with_outbox();
        for n in 0..1000 {
            let id = KeyId::new(format!("key-{n}")).unwrap();
            pollster::block_on(manager.create_key(id.clone(), now, &mut rand::rng())).unwrap();
            let labels = (1..per_key)
                .map(|l| Change::Label(format!("v{l}")))
                .collect();
            pollster::block_on(manager.apply_all(&id, labels, now)).unwrap();
        }
        let store = manager.store();
        group.bench_function(format!("latest_20_among_{}_entries", 1000 * per_key), |b| {
            b.iter(|| pollster::block_on(store.outbox_of("key-500", None, 20)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_outbox, bench_outbox_of);
criterion_main!(benches);
