//! The PostgreSQL store against a real server, read from `KEYROLL_PG_URL`
//! (`.ci/run` starts one): the conformance suite, two replicas racing in one
//! process and in two, read-your-writes across replicas, tampered rows,
//! tables of keyroll 0.1, and TLS with certificate verification.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keyroll::store::KeyStore;
use keyroll::store::StoreError;
use keyroll::{
    AuthError, Credentials, KeyId, KeyManager, NewKey, OldTokenDeletion, Token, TokenMatch,
    VerifyError, conformance,
};
use keyroll_postgres::{PgStore, PgStoreError};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;

mod common;

use common::{fresh_table, migrated, plain, pool, server_url, store};

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    let url = server_url();
    let tables = Mutex::new(Vec::new());
    conformance::run_all(|| {
        let table = fresh_table("conformance");
        tables.lock().unwrap().push(table.clone());
        let url = url.clone();
        // The suite freezes and moves time: it charges at its own clock.
        async move { migrated(&url, &table).await.charging_at_callers_clock() }
    })
    .await;
    for table in tables.into_inner().unwrap() {
        store(&url, &table).await.drop_table().await.unwrap();
    }
}

/// Creates `n` keys through `manager`; returns their ids and first tokens.
async fn create_keys(manager: &KeyManager<PgStore>, n: usize) -> (Vec<KeyId>, Vec<Token>) {
    let mut rng = StdRng::seed_from_u64(99);
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..n {
        let id = KeyId::new(format!("replicated-{i}")).unwrap();
        let (token, _) = manager
            .create_key(NewKey::new(id.clone()).label("race"), now, &mut rng)
            .await
            .unwrap();
        ids.push(id);
        tokens.push(token);
    }
    (ids, tokens)
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_racing_lose_nothing() {
    let url = server_url();
    let table = fresh_table("race");
    // Two replicas: separate pools, separate managers, one table.
    let a = Arc::new(KeyManager::new(migrated(&url, &table).await).with_max_retries(64));
    let b = Arc::new(KeyManager::new(migrated(&url, &table).await).with_max_retries(64));
    let (ids, first_tokens) = create_keys(&a, 3).await;
    let ids = Arc::new(ids);
    let successes: Arc<Vec<AtomicU64>> = Arc::new(ids.iter().map(|_| AtomicU64::new(0)).collect());
    let issued: Arc<Mutex<Vec<Token>>> = Arc::new(Mutex::new(first_tokens));

    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let manager = if task % 2 == 0 { a.clone() } else { b.clone() };
        let (ids, successes, issued) = (ids.clone(), successes.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(task);
            for _ in 0..200 {
                let k = rng.random_range(0..ids.len());
                let now = OffsetDateTime::now_utc();
                let ok = match rng.random_range(0..4) {
                    0 => match manager.renew(&ids[k], now, &mut rng).await {
                        Ok((token, _)) => {
                            issued.lock().unwrap().push(token);
                            true
                        }
                        Err(_) => false,
                    },
                    1 => manager.undo_renewal(&ids[k], now).await.is_ok(),
                    2 => manager
                        .finalize(&ids[k], OldTokenDeletion::Later, now)
                        .await
                        .is_ok(),
                    _ => manager.delete_old(&ids[k], now).await.is_ok(),
                };
                successes[k].fetch_add(u64::from(ok), Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let issued = std::mem::take(&mut *issued.lock().unwrap());
    let by_id: HashMap<_, _> = issued.iter().map(|t| (t.id(), t)).collect();
    let now = OffsetDateTime::now_utc();
    for (k, id) in ids.iter().enumerate() {
        let through_a = a.get(id).await.unwrap().unwrap();
        let through_b = b.get(id).await.unwrap().unwrap();
        assert_eq!(through_a, through_b);
        let count = successes[k].load(Ordering::SeqCst);
        assert_eq!(
            through_a.version(),
            1 + count,
            "{id}: version vs successful transitions"
        );
        // The current token was handed out by one replica; it verifies through both.
        let current = by_id[&through_a.current_token().id()];
        assert_eq!(
            a.authenticate(
                Credentials::bearer(current.expose_secret()).with_id(id),
                now
            )
            .await
            .map(|a| a.matched)
            .unwrap(),
            TokenMatch::Current
        );
        assert_eq!(
            b.authenticate(
                Credentials::bearer(current.expose_secret()).with_id(id),
                now
            )
            .await
            .map(|a| a.matched)
            .unwrap(),
            TokenMatch::Current
        );
    }
    a.store().drop_table().await.unwrap();
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_renewal_through_one_replica_authenticates_through_the_other_at_once() {
    let url = server_url();
    let table = fresh_table("visible");
    let a = KeyManager::new(migrated(&url, &table).await);
    let b = KeyManager::new(migrated(&url, &table).await);
    let (ids, first) = create_keys(&a, 1).await;
    let (id, first) = (&ids[0], &first[0]);
    let now = OffsetDateTime::now_utc();
    let mut rng = StdRng::seed_from_u64(5);

    let (second, _) = a.renew(id, now, &mut rng).await.unwrap();
    assert_eq!(
        b.authenticate(Credentials::bearer(second.expose_secret()).with_id(id), now)
            .await
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Current
    );
    assert_eq!(
        b.authenticate(Credentials::bearer(first.expose_secret()).with_id(id), now)
            .await
            .map(|a| a.matched)
            .unwrap(),
        TokenMatch::Old
    );
    b.finalize(id, OldTokenDeletion::Now, now).await.unwrap();
    assert!(matches!(
        a.authenticate(Credentials::bearer(first.expose_secret()).with_id(id), now)
            .await
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::Mismatch))
    ));
    b.apply(id, keyroll::Change::Deactivate, now).await.unwrap();
    assert!(matches!(
        a.authenticate(Credentials::bearer(second.expose_secret()).with_id(id), now)
            .await
            .map(|a| a.matched),
        Err(AuthError::Verify(VerifyError::KeyInactive))
    ));
    a.delete_key(id, now).await.unwrap();
    assert!(matches!(
        b.authenticate(Credentials::bearer(second.expose_secret()).with_id(id), now)
            .await
            .map(|a| a.matched),
        Err(AuthError::UnknownKey)
    ));
    a.store().drop_table().await.unwrap();
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_racing_lose_nothing() {
    let url = server_url();
    let table = fresh_table("processes");
    let manager = KeyManager::new(migrated(&url, &table).await);
    let (ids, _) = create_keys(&manager, 3).await;
    let keys = ids.iter().map(KeyId::as_str).collect::<Vec<_>>().join(",");

    let children: Vec<_> = (0..2)
        .map(|seed| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "race_child", "--nocapture", "--test-threads=1"])
                .env(RACE_CHILD, format!("{table} {keys} {seed}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut successes: HashMap<String, u64> = HashMap::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "replica failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The harness prints lines of its own around the child's.
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let Some((id, n)) = line.strip_prefix("RACE ").and_then(|l| l.split_once(' ')) else {
                continue;
            };
            *successes.entry(id.to_owned()).or_default() += n.parse::<u64>().unwrap();
        }
    }
    for id in &ids {
        let key = manager.get(id).await.unwrap().unwrap();
        let count = successes[id.as_str()];
        assert!(count > 0, "{id}: the race did something");
        assert_eq!(
            key.version(),
            1 + count,
            "{id}: version vs successful transitions of both processes"
        );
    }
    manager.store().drop_table().await.unwrap();
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_keep_the_sql_state() {
    let url = server_url();
    let table = fresh_table("broken");
    let store = migrated(&url, &table).await;
    let pool = store.pool().clone();
    store.migrate().await.unwrap(); // idempotent
    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!("ALTER TABLE {table} DROP COLUMN updated_at"))
        .await
        .unwrap();
    let (key, _, _) = keyroll::ApiKey::issue(
        KeyId::new("k").unwrap(),
        OffsetDateTime::now_utc(),
        &mut rand::rng(),
    )
    .unwrap();
    match store.insert(&key, &[]).await {
        Err(StoreError::Backend(e)) => {
            assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e}");
            assert!(e.to_string().contains("42703"), "{e}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ADD COLUMN updated_at TIMESTAMPTZ; \
             INSERT INTO {table} (id, incarnation, version, record, updated_at) \
             VALUES ('bad', 1, 1, '{{\"schema\": 7}}', now())"
        ))
        .await
        .unwrap();
    let err = store.get(&KeyId::new("bad").unwrap()).await.unwrap_err();
    assert!(
        matches!(
            err,
            PgStoreError::Record(keyroll::record::RecordError::Corrupt { .. })
        ),
        "{err}"
    );
    store.drop_table().await.unwrap();
}

/// A record copied into another key's row never authenticates as that key,
/// and a record at another revision than its row is refused.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_record_that_does_not_match_its_row() {
    let url = server_url();
    let pool = pool(&url, 2);
    let table = fresh_table("tampered");
    let manager = KeyManager::new(migrated(&url, &table).await);
    let now = OffsetDateTime::now_utc();
    let (a, b) = (KeyId::new("key-a").unwrap(), KeyId::new("key-b").unwrap());
    let mut rng = StdRng::seed_from_u64(5);
    let (token_a, _) = manager.create_key(a.clone(), now, &mut rng).await.unwrap();
    manager.create_key(b.clone(), now, &mut rng).await.unwrap();
    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!(
            "UPDATE {table} SET record = (SELECT record FROM {table} WHERE id = 'key-a') WHERE id = 'key-b'"
        ))
        .await
        .unwrap();
    let err = manager.store().get(&b).await.unwrap_err();
    assert!(
        matches!(
            err,
            PgStoreError::Record(keyroll::record::RecordError::Mismatch { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("key-a"), "{err}");
    // The store itself refuses the row (the manager already refuses a
    // token that names another key before reading any).
    assert!(
        manager
            .store()
            .verify(
                &b,
                &keyroll::PresentedToken::parse(token_a.expose_secret()).unwrap(),
                now
            )
            .await
            .is_err()
    );
    client
        .batch_execute(&format!(
            "UPDATE {table} SET incarnation = incarnation # 1 WHERE id = 'key-a'"
        ))
        .await
        .unwrap();
    let err = manager.store().get(&a).await.unwrap_err();
    assert!(err.to_string().contains("revision"), "{err}");
    manager.store().drop_table().await.unwrap();
}

/// A table written by keyroll 0.1 (no incarnation column, schema-1 records)
/// is upgraded by `migrate`, and its keys load and take updates.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_upgrades_a_table_of_keyroll_0_1() {
    let url = server_url();
    let pool = pool(&url, 2);
    let table = fresh_table("old");
    let record = include_str!("../../../tests/fixtures/schema-1/later.json");
    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id TEXT COLLATE \"C\" PRIMARY KEY, version BIGINT NOT NULL, \
             record JSONB NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
        ))
        .await
        .unwrap();
    client
        .execute(
            &format!("INSERT INTO {table} VALUES ('later', 3, $1::text::jsonb, now())"),
            &[&record],
        )
        .await
        .unwrap();
    let manager = KeyManager::new(migrated(&url, &table).await);
    let id = KeyId::new("later").unwrap();
    let key = manager.get(&id).await.unwrap().unwrap();
    assert_eq!(key, serde_json::from_str(record).unwrap());
    manager
        .delete_old(&id, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let again = store(&url, &table).await;
    again.migrate().await.unwrap();
    assert_eq!(again.get(&id).await.unwrap().unwrap().version(), 4);
    again.drop_table().await.unwrap();
}

/// Set to `TABLE KEY,KEY.. SEED` when this test binary runs as one racing
/// replica of `postgres_two_processes_racing_lose_nothing`.
const RACE_CHILD: &str = "KEYROLL_PG_RACE_CHILD";

/// One replica in its own process (a no-op unless run as the child): 200
/// random transitions on the keys, then one `RACE id successes` line per
/// key.
#[tokio::test(flavor = "current_thread")]
async fn race_child() {
    let Ok(spec) = std::env::var(RACE_CHILD) else {
        return;
    };
    let url = server_url();
    let mut parts = spec.split(' ');
    let (table, keys, seed) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let keys: Vec<KeyId> = keys.split(',').map(|k| KeyId::new(k).unwrap()).collect();
    let manager = KeyManager::new(store(&url, table).await).with_max_retries(64);
    let mut rng = StdRng::seed_from_u64(seed.parse().unwrap());
    let mut successes = vec![0u32; keys.len()];
    for _ in 0..200 {
        let k = rng.random_range(0..keys.len());
        let id = &keys[k];
        let now = OffsetDateTime::now_utc();
        let result = match rng.random_range(0..4) {
            0 => manager.renew(id, now, &mut rng).await.map(|_| ()),
            1 => manager.undo_renewal(id, now).await.map(|_| ()),
            2 => manager
                .finalize(id, OldTokenDeletion::Later, now)
                .await
                .map(|_| ()),
            _ => manager.delete_old(id, now).await.map(|_| ()),
        };
        match result {
            Ok(()) => successes[k] += 1,
            Err(keyroll::ManagerError::Transition(_)) => {}
            Err(e) => panic!("replica failed: {e}"),
        }
    }
    // The harness has printed "test race_child ... " with no newline.
    println!();
    for (id, n) in keys.iter().zip(successes) {
        println!("RACE {id} {n}");
    }
}

/// Roots holding the certificates of the PEM file named by `var`.
fn roots_from(var: &str) -> Option<keyroll_postgres::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = std::env::var(var).ok()?;
    let mut roots = keyroll_postgres::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).expect("a PEM file") {
        roots
            .add(cert.expect("a certificate"))
            .expect("a usable CA");
    }
    Some(roots)
}

/// TLS through rustls: with the CA that signed the server's certificate the
/// connection is encrypted; with another CA it is refused.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_verifies_the_server_certificate() {
    let url = server_url();
    let (Some(ca), Some(wrong)) = (
        roots_from("KEYROLL_PG_CA"),
        roots_from("KEYROLL_PG_WRONG_CA"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "KEYROLL_PG_CA and KEYROLL_PG_WRONG_CA must be set in CI"
        );
        eprintln!("skipped: KEYROLL_PG_CA is not set; `bash .ci/run` makes a CA and sets it");
        return;
    };
    let tls_url = format!("{url}?sslmode=require");

    let store = PgStore::connect_with_roots(&tls_url, ca).await.unwrap();
    store.migrate().await.unwrap();
    let client = store.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the connection is encrypted");
    drop(client);
    let manager = KeyManager::new(store);
    let now = OffsetDateTime::now_utc();
    let id = KeyId::new(format!("tls-{}", std::process::id())).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let (token, _) = manager.create_key(id.clone(), now, &mut rng).await.unwrap();
    assert!(
        manager
            .authenticate(token.expose_secret(), now)
            .await
            .is_ok()
    );
    manager.delete_key(&id, now).await.unwrap();

    let refused = PgStore::connect_with_roots(&tls_url, wrong).await.unwrap();
    let error = refused.migrate().await.unwrap_err();
    // The whole chain of causes: the pool's, the driver's, rustls's.
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.contains("UnknownIssuer"), "{chain}");
}

/// Until `migrate` has run, every call says so, and names the table.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_calls_before_migrate_say_to_migrate() {
    let url = server_url();
    let table = fresh_table("unmigrated");
    let store = store(&url, &table).await;
    let id = KeyId::new("k").unwrap();
    let error = store.get(&id).await.unwrap_err();
    assert!(
        matches!(&error, PgStoreError::NotMigrated { table: t } if *t == table),
        "{error:?}"
    );
    assert!(error.to_string().contains("migrate"), "{error}");
    // Nothing was created behind the caller's back.
    let client = store.pool().get().await.unwrap();
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
}

/// The service's role needs no DDL: with only SELECT, INSERT, UPDATE and
/// DELETE on the table (migrated by another role), it creates, renews,
/// authenticates, deletes and listens; and it cannot migrate.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_role_with_only_dml_runs_the_service() {
    let url = server_url();
    let table = fresh_table("dml");
    let role = format!("{table}_role");
    let owner = migrated(&url, &table).await;
    let admin = owner.pool().get().await.unwrap();
    // The grants of keyroll 0.3, which lack the markers' table.
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, {table}_meters, {table}_usage TO {role};"
        ))
        .await
        .unwrap();
    // The same server, as that role.
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("a TCP host, not {other:?}"),
    };
    let as_role = format!(
        "postgres://{role}@{host}:{}/{}?sslmode=disable",
        config.get_ports()[0],
        config.get_dbname().unwrap_or("postgres")
    );
    let store = PgStore::connect(&as_role)
        .await
        .unwrap()
        .in_table(&table)
        .unwrap();
    let cache = std::sync::Arc::new(keyroll::store::CachedStore::new(
        store,
        100,
        std::time::Duration::from_secs(60),
    ));
    // A missing privilege names the role, the table and the GRANT.
    let denied = cache.inner().marker("bootstrap-retired").await.unwrap_err();
    let message = denied.to_string();
    for needed in [
        format!("role {role}"),
        format!("{table}_markers"),
        owner.grants(&role),
    ] {
        assert!(message.contains(&needed), "{needed:?} in {message}");
    }
    admin.batch_execute(&owner.grants(&role)).await.unwrap();
    assert_eq!(
        cache.inner().marker("bootstrap-retired").await.unwrap(),
        None
    );
    let mut listener = cache.inner().listen(cache.clone());
    if tokio::time::timeout(std::time::Duration::from_secs(5), listener.listening(1))
        .await
        .is_err()
    {
        panic!("listener: {:?}", listener.state());
    }
    // Its outbox too: each write's events go in, and a dispatcher claims
    // and settles them.
    let manager = KeyManager::new(cache.clone()).with_outbox();
    let now = OffsetDateTime::now_utc();
    let mut rng = StdRng::seed_from_u64(8);
    let id = KeyId::new("dml").unwrap();
    let (first, _) = manager.create_key(id.clone(), now, &mut rng).await.unwrap();
    let (second, _) = manager.renew(&id, now, &mut rng).await.unwrap();
    manager.delete_old(&id, now).await.unwrap();
    assert!(
        manager
            .authenticate(first.expose_secret(), now)
            .await
            .is_err()
    );
    assert!(
        manager
            .authenticate(second.expose_secret(), now)
            .await
            .is_ok()
    );
    manager.delete_key(&id, now).await.unwrap();
    let dispatcher = keyroll::outbox::Dispatcher::new(cache.clone(), keyroll::outbox::TracingSink);
    let round = dispatcher.dispatch(now).await.unwrap();
    assert_eq!((round.delivered, round.counts.pending), (4, 0));
    let refused = cache.inner().migrate().await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );
    drop((manager, listener, cache));
    owner.drop_table().await.unwrap();
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

/// A server with `ssl=off` (`KEYROLL_PG_PLAIN_URL`; `.ci/run` starts one):
/// refused without `sslmode`, or with `prefer`; used with `sslmode=disable`.
#[cfg_attr(
    not(keyroll_pg_plain),
    ignore = "needs a PostgreSQL with ssl=off: set KEYROLL_PG_PLAIN_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_server_without_tls_is_refused_unless_sslmode_disable() {
    let url = std::env::var("KEYROLL_PG_PLAIN_URL")
        .expect("KEYROLL_PG_PLAIN_URL must be set: `bash .ci/run` starts a server and sets it");
    let id = KeyId::new("probe").unwrap();
    for refused in [url.clone(), format!("{url}?sslmode=prefer")] {
        let store = PgStore::connect(&refused).await.unwrap();
        let error = store.get(&id).await.unwrap_err();
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            chain.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(chain.contains("TLS"), "{refused}: {chain}");
        let message = error.to_string();
        assert!(
            message.contains("sslmode=disable"),
            "the way out: {message}"
        );
    }
    let store = PgStore::connect(&plain(&url)).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.get(&id).await.unwrap(), None);
}

/// An owner's page can be read through the owners' index (`migrate`
/// creates it), in id order, not by a scan of every key: with sequential
/// and bitmap scans ruled out (an empty table's statistics favour them),
/// the plan of the store's query names the index and sorts nothing.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_owners_are_listed_through_an_index() {
    let url = server_url();
    let table = fresh_table("owners");
    let store = migrated(&url, &table).await;
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN SELECT id, incarnation, version, record::text FROM {table} \
                 WHERE owner = 'acme' AND (NULL::text IS NULL OR id > NULL) ORDER BY id LIMIT 10"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains(&format!("{table}_owner")), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
    client
        .batch_execute("RESET enable_seqscan; RESET enable_bitmapscan")
        .await
        .unwrap();
    drop(client);
    store.drop_table().await.unwrap();
}

/// Every function `migrate` creates pins its `search_path` (`pg_catalog`
/// first, then the tables' schema), so that no object of another schema
/// can stand in for one it uses.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_functions_pin_their_search_path() {
    let url = server_url();
    let table = fresh_table("pinned");
    let store = migrated(&url, &table).await;
    let client = store.pool().get().await.unwrap();
    let rows = client
        .query(
            "SELECT p.proname, array_to_string(p.proconfig, ';') FROM pg_proc p \
             WHERE p.proname IN ($1, 'keyroll_meter_step', 'keyroll_notify')",
            &[&format!("{table}_charge")],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "the three functions");
    for row in rows {
        let (name, config): (String, Option<String>) = (row.get(0), row.get(1));
        assert_eq!(
            config.as_deref(),
            Some("search_path=pg_catalog, public"),
            "{name}"
        );
    }
    drop(client);
    store.drop_table().await.unwrap();
}
