//! The SQLite example store: the whole conformance suite on a file-backed
//! database, and two managers on two connections racing on one file.

#[path = "../examples/sqlite/store.rs"]
mod store;

use std::sync::atomic::{AtomicU64, Ordering};

use keyroll::{KeyId, KeyManager, KeyStore, Policy, conformance};
use rand::SeedableRng;
use rand::rngs::StdRng;
use store::{SqliteStore, SqliteStoreError};
use time::OffsetDateTime;

#[test]
fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        SqliteStore::open(dir.path().join(format!("keys-{n}.db"))).unwrap()
    });
}

#[test]
fn sqlite_in_memory_store_passes_the_conformance_suite() {
    conformance::run_all(|| SqliteStore::open_in_memory().unwrap());
}

#[test]
fn sqlite_two_connections_racing_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = KeyManager::new(SqliteStore::open(&path).unwrap());
    let b = KeyManager::new(SqliteStore::open(&path).unwrap()).with_max_retries(64);
    let a = a.with_max_retries(64);
    let now = OffsetDateTime::now_utc();
    let ids: Vec<KeyId> = (0..3)
        .map(|i| KeyId::new(format!("key-{i}")).unwrap())
        .collect();
    for id in &ids {
        a.create_key(id.clone(), "race", Policy::default(), now, &mut rand::rng())
            .unwrap();
    }
    let successes: Vec<AtomicU64> = ids.iter().map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|scope| {
        for thread in 0..6u64 {
            let manager = if thread % 2 == 0 { &a } else { &b };
            let (ids, successes) = (&ids, &successes);
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread);
                for i in 0..100u64 {
                    let k = ((thread + i) % 3) as usize;
                    let renewed = manager.renew(&ids[k], now, &mut rng).is_ok();
                    let undone = manager.undo_renewal(&ids[k], now).is_ok();
                    successes[k]
                        .fetch_add(u64::from(renewed) + u64::from(undone), Ordering::SeqCst);
                }
            });
        }
    });
    for (id, count) in ids.iter().zip(&successes) {
        let through_a = a.get(id).unwrap().unwrap();
        let through_b = b.get(id).unwrap().unwrap();
        assert_eq!(through_a, through_b);
        assert_eq!(
            through_a.version(),
            1 + count.load(Ordering::SeqCst),
            "{id}"
        );
        assert!(count.load(Ordering::SeqCst) > 0);
    }
}

#[test]
fn sqlite_corrupt_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO keyroll_keys (id, version, record) VALUES ('bad', 1, '{\"schema\": 9}')",
        [],
    )
    .unwrap();
    let err = store.get(&KeyId::new("bad").unwrap()).unwrap_err();
    assert!(matches!(err, SqliteStoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("bad"), "{err}");
    assert!(store.list(None, 10).is_err());
}

#[test]
fn sqlite_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db");
    std::fs::write(&path, vec![0x42u8; 4096]).unwrap();
    assert!(SqliteStore::open(&path).is_err());
}
