//! The SQLite store: the whole conformance suite (sync and async) on a
//! file-backed database, two managers on two connections racing on one
//! file, an owner's credits spent exactly across connections, tampered rows, file modes and durability settings, tables of
//! keyroll 0.1, and a writer killed with SIGKILL.

use std::sync::atomic::{AtomicU64, Ordering};

use keyroll::meter::{Credits, Subject};
use keyroll::store::KeyStore;
use keyroll::{
    AuthError, KeyId, KeyManager, LeasePolicy, NewKey, OwnerId, OwnerLimits, conformance,
};
use keyroll_sqlite::{SqliteStore, SqliteStoreError};
use pollster::block_on;
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::OffsetDateTime;

/// The suite under a plain `block_on` (SQLite's calls wait on its own
/// thread, not on a runtime), and under tokio.
#[test]
fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    block_on(conformance::run_all(|| {
        n += 1;
        let store = SqliteStore::open(dir.path().join(format!("keys-{n}.db"))).unwrap();
        async { store }
    }));
    block_on(conformance::run_all(|| async {
        SqliteStore::open_in_memory().unwrap()
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite_under_tokio() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let store = SqliteStore::open(dir.path().join(format!("async-{n}.db"))).unwrap();
        async { store }
    })
    .await;
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
        block_on(a.create_key(NewKey::new(id.clone()).label("race"), now, &mut rand::rng()))
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
                    let renewed = block_on(manager.renew(&ids[k], now, &mut rng)).is_ok();
                    let undone = block_on(manager.undo_renewal(&ids[k], now)).is_ok();
                    successes[k]
                        .fetch_add(u64::from(renewed) + u64::from(undone), Ordering::SeqCst);
                }
            });
        }
    });
    for (id, count) in ids.iter().zip(&successes) {
        let through_a = block_on(a.get(id)).unwrap().unwrap();
        let through_b = block_on(b.get(id)).unwrap().unwrap();
        assert_eq!(through_a, through_b);
        assert_eq!(
            through_a.version(),
            1 + count.load(Ordering::SeqCst),
            "{id}"
        );
        assert!(count.load(Ordering::SeqCst) > 0);
    }
}

/// One owner's 500 credits, shared by 3 keys, spent by 3 connections to
/// one file × 4 threads each, with leases off and on: exactly 500
/// admitted (after release), never more, each refusal the owner's.
#[test]
fn sqlite_an_owners_credits_are_exact_across_connections() {
    const CREDITS: u64 = 500;
    for max_lag in [0, 50] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owned.db");
        let policy = LeasePolicy::new(time::Duration::milliseconds(max_lag)).unwrap();
        let managers: Vec<_> = (0..3)
            .map(|_| KeyManager::new(SqliteStore::open(&path).unwrap()).with_leases(policy))
            .collect();
        let (acme, now) = (OwnerId::new("acme").unwrap(), OffsetDateTime::now_utc());
        let limits = OwnerLimits::new().credits(Credits::new(CREDITS));
        block_on(managers[0].set_owner_limits(&acme, limits, now)).unwrap();
        let tokens: Vec<String> = ["prod", "staging", "ci"]
            .into_iter()
            .map(|id| {
                let new = NewKey::new(KeyId::new(id).unwrap()).owner(acme.clone());
                let (token, _) =
                    block_on(managers[0].create_key(new, now, &mut rand::rng())).unwrap();
                token.expose_secret().to_owned()
            })
            .collect();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for thread in 0..12usize {
                let (manager, token) = (&managers[thread % 3], &tokens[thread / 3 % 3]);
                let admitted = &admitted;
                scope.spawn(move || {
                    loop {
                        match block_on(
                            manager.authenticate(token.as_str(), OffsetDateTime::now_utc()),
                        ) {
                            Ok(_) => _ = admitted.fetch_add(1, Ordering::SeqCst),
                            Err(AuthError::UsageExceeded {
                                subject: Subject::Owner,
                                ..
                            }) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                });
            }
        });
        for manager in &managers {
            block_on(manager.release_leases()).unwrap();
        }
        let admitted = admitted.load(Ordering::SeqCst);
        let allowance = block_on(managers[0].owner_allowance(&acme, OffsetDateTime::now_utc()));
        let left = allowance.unwrap().unwrap().credits_remaining().unwrap();
        assert!(
            admitted <= CREDITS,
            "max_lag {max_lag}: {admitted} admitted"
        );
        assert_eq!(admitted + left, CREDITS, "max_lag {max_lag}");
        if max_lag == 0 {
            assert_eq!(admitted, CREDITS);
        }
    }
}

#[test]
fn sqlite_corrupt_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO keyroll_keys (id, incarnation, version, record) VALUES ('bad', 1, 1, '{\"schema\": 9}')",
        [],
    )
    .unwrap();
    let err = block_on(store.get(&KeyId::new("bad").unwrap())).unwrap_err();
    assert!(
        matches!(
            err,
            SqliteStoreError::Record(keyroll::record::RecordError::Corrupt { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bad"), "{err}");
    assert!(block_on(store.list(None, 10)).is_err());
}

/// A record copied into another key's row must not make the first key's
/// token authenticate as the second; a record whose revision differs from
/// its row's columns is refused too.
#[test]
fn sqlite_refuses_a_record_that_does_not_match_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered.db");
    let manager = KeyManager::new(SqliteStore::open(&path).unwrap());
    let now = OffsetDateTime::now_utc();
    let (a, b) = (KeyId::new("key-a").unwrap(), KeyId::new("key-b").unwrap());
    let (token_a, _) = block_on(manager.create_key(a.clone(), now, &mut rand::rng())).unwrap();
    block_on(manager.create_key(b.clone(), now, &mut rand::rng())).unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE keyroll_keys SET record = (SELECT record FROM keyroll_keys WHERE id = 'key-a') WHERE id = 'key-b'",
        [],
    )
    .unwrap();
    let err = block_on(manager.store().get(&b)).unwrap_err();
    assert!(
        matches!(
            err,
            SqliteStoreError::Record(keyroll::record::RecordError::Mismatch { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("key-a"), "{err}");
    let presented = keyroll::PresentedToken::parse(token_a.expose_secret()).unwrap();
    assert!(block_on(manager.store().verify(&b, &presented, now)).is_err());
    assert!(block_on(manager.store().list(None, 10)).is_err());

    // The right record, but its version column says otherwise.
    conn.execute(
        "UPDATE keyroll_keys SET version = version + 1 WHERE id = 'key-a'",
        [],
    )
    .unwrap();
    let err = block_on(manager.store().get(&a)).unwrap_err();
    assert!(err.to_string().contains("revision"), "{err}");
}

#[test]
fn sqlite_files_are_private_and_writes_are_durable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.db");
    let manager = KeyManager::new(SqliteStore::open(&path).unwrap());
    let now = OffsetDateTime::now_utc();
    block_on(manager.create_key(KeyId::new("k").unwrap(), now, &mut rand::rng())).unwrap();
    // synchronous=FULL (2): with WAL, NORMAL can lose a committed write.
    assert_eq!(
        block_on(manager.store().pragma("synchronous")).unwrap(),
        "2"
    );
    assert_eq!(
        block_on(manager.store().pragma("journal_mode")).unwrap(),
        "wal"
    );
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("private.db{suffix}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
}

/// A database written by keyroll 0.1 (no incarnation column, schema-1
/// records) opens, loads and takes updates.
#[test]
fn sqlite_upgrades_a_table_of_keyroll_0_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let record = include_str!("../../../tests/fixtures/schema-1/later.json");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE keyroll_keys (id TEXT PRIMARY KEY, version INTEGER NOT NULL, record TEXT NOT NULL) WITHOUT ROWID;",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO keyroll_keys (id, version, record) VALUES ('later', 3, ?1)",
        [record],
    )
    .unwrap();
    drop(conn);
    let manager = KeyManager::new(SqliteStore::open(&path).unwrap());
    let id = KeyId::new("later").unwrap();
    let key = block_on(manager.get(&id)).unwrap().unwrap();
    assert_eq!(key, serde_json::from_str(record).unwrap());
    block_on(manager.delete_old(&id, OffsetDateTime::now_utc())).unwrap();
    assert_eq!(block_on(manager.get(&id)).unwrap().unwrap().version(), 4);
    // Opening it again changes nothing.
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(block_on(again.get(&id)).unwrap().unwrap().version(), 4);
}

#[test]
fn sqlite_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db");
    std::fs::write(&path, vec![0x42u8; 4096]).unwrap();
    assert!(SqliteStore::open(&path).is_err());
}
