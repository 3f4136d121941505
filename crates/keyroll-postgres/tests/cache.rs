//! Caches in front of PostgreSQL, kept in step by `PgStore::listen`: how
//! fast a revocation on one replica reaches another, what happens when
//! the listener's connection is killed, and the conformance suite through
//! a cache. Against the server in `KEYROLL_PG_URL` (`.ci/run` starts one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyroll::store::CachedStore;
use keyroll::{AuthError, KeyId, KeyManager, NewKey, OwnerId, OwnerLimits, Token, conformance};
use keyroll_postgres::{ListenerState, PgStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::OffsetDateTime;

mod common;

use common::{fresh_table, migrated, plain, pool, server_url, store};

type Replica = KeyManager<Arc<CachedStore<PgStore>>>;

/// A replica: its own pool, its own cache, and a listener on `table`.
async fn replica(
    url: &str,
    table: &str,
    max_staleness: Duration,
) -> (Replica, keyroll_postgres::Listener) {
    let store = PgStore::connect(&plain(url))
        .await
        .unwrap()
        .in_table(table)
        .unwrap();
    store.migrate().await.unwrap();
    let cache = Arc::new(CachedStore::new(store, 10_000, max_staleness));
    let mut listener = cache.inner().listen(cache.clone());
    listener.listening(1).await;
    (KeyManager::new(cache), listener)
}

/// Authenticates `token` on `replica` until it is refused; how long that
/// took, or `None` if it was still accepted after `limit`.
async fn time_until_refused(replica: &Replica, token: &Token, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let answer = replica
            .authenticate(token.expose_secret(), OffsetDateTime::now_utc())
            .await;
        match answer {
            Err(AuthError::Verify(_) | AuthError::UnknownKey) => return Some(start.elapsed()),
            Err(e @ AuthError::Store(_)) => panic!("store failed: {e}"),
            Err(e) => panic!("unexpected: {e}"),
            Ok(_) if start.elapsed() > limit => return None,
            Ok(_) => tokio::task::yield_now().await,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_another_replica_within_milliseconds() {
    let url = server_url();
    let table = fresh_table("replicas");
    // A long max_staleness: only the notifications can make this fast.
    let staleness = Duration::from_secs(60);
    let (a, _listening_a) = replica(&url, &table, staleness).await;
    let (b, _listening_b) = replica(&url, &table, staleness).await;
    let mut rng = StdRng::seed_from_u64(15);
    let now = OffsetDateTime::now_utc();
    const TRIALS: usize = 200;
    let mut times = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let id = KeyId::new(format!("replica-{trial}")).unwrap();
        let (old, _) = a.create_key(id.clone(), now, &mut rng).await.unwrap();
        let (new, _) = a.renew(&id, now, &mut rng).await.unwrap();
        // B has the key cached, with both tokens good.
        assert!(b.authenticate(old.expose_secret(), now).await.is_ok());
        assert!(b.authenticate(new.expose_secret(), now).await.is_ok());
        let refused = match trial % 3 {
            0 => {
                a.revoke_token(new.expose_secret(), now)
                    .await
                    .unwrap()
                    .unwrap();
                &new
            }
            1 => {
                a.delete_old(&id, now).await.unwrap();
                &old
            }
            _ => {
                a.apply(&id, keyroll::Change::Deactivate, now)
                    .await
                    .unwrap();
                &new
            }
        };
        let took = time_until_refused(&b, refused, staleness)
            .await
            .unwrap_or_else(|| panic!("trial {trial}: still accepted after {staleness:?}"));
        times.push(took);
    }
    times.sort();
    let p50 = times[TRIALS / 2];
    let p99 = times[TRIALS * 99 / 100];
    println!(
        "revocation visible across replicas: p50 {:.2} ms, p99 {:.2} ms over {TRIALS} trials",
        ms(p50),
        ms(p99)
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
    a.store().inner().drop_table().await.unwrap();
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_never_lets_a_revoked_token_outlive_max_staleness() {
    let url = server_url();
    let table = fresh_table("killed");
    let staleness = Duration::from_secs(1);
    let (a, _listening_a) = replica(&url, &table, staleness).await;
    let (b, mut listener) = replica(&url, &table, staleness).await;
    let admin = pool(&url, 1).get().await.unwrap();
    let mut rng = StdRng::seed_from_u64(16);
    let now = OffsetDateTime::now_utc();
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        let id = KeyId::new(format!("killed-{round}")).unwrap();
        let (token, _) = a.create_key(id.clone(), now, &mut rng).await.unwrap();
        assert!(b.authenticate(token.expose_secret(), now).await.is_ok());
        if round % 4 == 1 {
            // Kill B's listener's backend (once it is back from the last
            // kill), then revoke at once, while it is down or reconnecting.
            listener.listening(round / 4 + 1).await;
            let killed = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&format!("keyroll-listener:{table}")],
                )
                .await
                .unwrap();
            assert!(!killed.is_empty(), "B's listener was found");
        }
        a.revoke_token(token.expose_secret(), now)
            .await
            .unwrap()
            .unwrap();
        let took = time_until_refused(&b, &token, staleness * 3)
            .await
            .unwrap_or_else(|| panic!("round {round}: a revoked token served for 3 s"));
        assert!(
            took <= staleness,
            "round {round}: served {took:?} after its revocation"
        );
        worst = worst.max(took);
    }
    // The listener came back after each of its 5 deaths, and works.
    listener.listening(6).await;
    assert!(matches!(listener.state(), ListenerState::Listening { connects } if connects >= 6));
    let id = KeyId::new("after-recovery").unwrap();
    let (token, _) = a.create_key(id.clone(), now, &mut rng).await.unwrap();
    assert!(b.authenticate(token.expose_secret(), now).await.is_ok());
    a.revoke_token(token.expose_secret(), now)
        .await
        .unwrap()
        .unwrap();
    let took = time_until_refused(&b, &token, staleness).await.unwrap();
    assert!(
        took < Duration::from_millis(100),
        "after recovery: {took:?}"
    );
    println!(
        "listener killed 5 times: a revoked token was served at most {:.2} ms after its revocation",
        ms(worst)
    );
    a.store().inner().drop_table().await.unwrap();
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_anyone_are_notified() {
    let url = server_url();
    let table = fresh_table("plainsql");
    let (b, _listening) = replica(&url, &table, Duration::from_secs(60)).await;
    let (token, _) = b
        .create_key(
            KeyId::new("acme").unwrap(),
            OffsetDateTime::now_utc(),
            &mut StdRng::seed_from_u64(1),
        )
        .await
        .unwrap();
    assert!(
        b.authenticate(token.expose_secret(), OffsetDateTime::now_utc())
            .await
            .is_ok()
    );
    // Not through keyroll at all.
    let admin = pool(&url, 1).get().await.unwrap();
    admin
        .execute(&format!("DELETE FROM {table} WHERE id = 'acme'"), &[])
        .await
        .unwrap();
    let took = time_until_refused(&b, &token, Duration::from_secs(5)).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "{took:?}");
    b.store().inner().drop_table().await.unwrap();
}

/// Owner limits set on one replica reach another's cache within
/// milliseconds, though it read them as none a moment before and keeps
/// them for a minute: the key without limits of its own is then charged
/// to its owner's. An owner's charges notify nothing.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_limits_reach_another_replica_within_milliseconds() {
    let url = server_url();
    let table = fresh_table("owners");
    let staleness = Duration::from_secs(60);
    let (a, _listening_a) = replica(&url, &table, staleness).await;
    let (b, _listening_b) = replica(&url, &table, staleness).await;
    let acme = OwnerId::new("acme").unwrap();
    let now = OffsetDateTime::now_utc();
    let new = NewKey::new(KeyId::new("shared").unwrap()).owner(acme.clone());
    let (token, _) = a
        .create_key(new, now, &mut StdRng::seed_from_u64(3))
        .await
        .unwrap();
    // B reads the owner's limits (none) and keeps them.
    for _ in 0..3 {
        assert!(b.authenticate(token.expose_secret(), now).await.is_ok());
    }
    let credits = OwnerLimits::new().credits(keyroll::meter::Credits::new(2));
    a.set_owner_limits(&acme, credits, now).await.unwrap();
    let start = Instant::now();
    let refused = loop {
        match b
            .authenticate(token.expose_secret(), OffsetDateTime::now_utc())
            .await
        {
            Err(AuthError::UsageExceeded { .. }) => break start.elapsed(),
            Ok(_) if start.elapsed() < Duration::from_secs(5) => tokio::task::yield_now().await,
            other => panic!("after {:?}: {other:?}", start.elapsed()),
        }
    };
    println!(
        "owner limits visible across replicas: {:.2} ms",
        ms(refused)
    );
    assert!(refused < Duration::from_secs(1), "{refused:?}");
    a.store().inner().drop_table().await.unwrap();
}

/// A `TRUNCATE` fires no row trigger: a statement trigger notifies it, and
/// listeners forget every key at once rather than after `max_staleness`.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_is_notified() {
    let url = server_url();
    let table = fresh_table("truncate");
    let (b, _listening) = replica(&url, &table, Duration::from_secs(3600)).await;
    let now = OffsetDateTime::now_utc();
    let mut rng = StdRng::seed_from_u64(2);
    let mut tokens = Vec::new();
    for id in ["one", "two"] {
        let (token, _) = b
            .create_key(KeyId::new(id).unwrap(), now, &mut rng)
            .await
            .unwrap();
        assert!(b.authenticate(token.expose_secret(), now).await.is_ok());
        tokens.push(token);
    }
    let admin = pool(&url, 1).get().await.unwrap();
    admin
        .batch_execute(&format!("TRUNCATE {table}"))
        .await
        .unwrap();
    for token in &tokens {
        let took = time_until_refused(&b, token, Duration::from_secs(5)).await;
        assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "{took:?}");
    }
    b.store().inner().drop_table().await.unwrap();
}

#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_in_front_of_postgres_passes_the_conformance_suite() {
    let url = server_url();
    let mut tables = Vec::new();
    conformance::run_all(|| {
        let table = fresh_table("cachedconf");
        tables.push(table.clone());
        let url = url.clone();
        async move {
            let store = migrated(&url, &table).await.charging_at_callers_clock();
            CachedStore::new(store, 1000, Duration::from_secs(60))
        }
    })
    .await;
    for table in tables {
        store(&url, &table).await.drop_table().await.unwrap();
    }
}
