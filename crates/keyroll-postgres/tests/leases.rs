//! Leases against a real PostgreSQL: replicas are `KeyManager`s on pools
//! of their own, each verifying from a `CachedStore` and leasing with
//! `max_lag` 50 ms. Credits exact after release, a dropped replica's
//! shortfall, a deactivation seen by every replica, and the figure line
//! of one hot key (printed, never asserted: `.ci/run` shows it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration as StdDuration, Instant};

use keyroll::meter::{Credits, RateLimit};
use keyroll::store::{CachedStore, Call, Intercept};
use keyroll::{
    AuthError, Change, KeyId, KeyManager, LeasePolicy, NewKey, OwnerId, OwnerLimits, Token,
};
use keyroll_postgres::PgStore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::{Duration, OffsetDateTime};

mod common;

use common::{fresh_table, migrated, pool, server_url, store};

type Replica = KeyManager<Arc<Intercept<CachedStore<PgStore>>>>;

const MAX_STALENESS: StdDuration = StdDuration::from_millis(200);

/// `n` replicas of `table`, leasing with `max_lag` (0: off), the next
/// lease taken ahead on a tokio task if `ahead`.
async fn replicas(
    url: &str,
    table: &str,
    n: usize,
    max_lag: Duration,
    ahead: bool,
) -> Vec<Replica> {
    let policy = LeasePolicy::new(max_lag).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..n {
        let cached = CachedStore::new(store(url, table).await, 1000, MAX_STALENESS);
        let manager = KeyManager::new(Arc::new(Intercept::new(cached)));
        replicas.push(match ahead {
            true => manager.with_leases_ahead(policy, |task| {
                tokio::spawn(task);
            }),
            false => manager.with_leases(policy),
        });
    }
    replicas
}

fn id() -> KeyId {
    KeyId::new("hot").unwrap()
}

/// A key `hot` in `table` with `new`'s limits: its token.
async fn hot_key(url: &str, table: &str, new: NewKey) -> Token {
    let now = OffsetDateTime::now_utc();
    let manager = KeyManager::new(store(url, table).await);
    let rng = &mut StdRng::seed_from_u64(7);
    manager.create_key(new, now, rng).await.unwrap().0
}

/// The credits the store holds for the key.
async fn remaining(replica: &Replica) -> u64 {
    let (id, now) = (id(), OffsetDateTime::now_utc());
    let allowance = replica.allowance(&id, now).await.unwrap();
    allowance.credits_remaining().unwrap()
}

/// `tasks` tasks a replica authenticating with `tokens` (task `i` with
/// token `i` modulo their number) until `stop` says so or the credits
/// are spent: requests admitted, admitted a second, the 99th and 99.9th
/// percentile latencies, and requests rate limited.
async fn hammer(
    replicas: &[Replica],
    tasks: usize,
    tokens: &[Token],
    stop: impl Fn(u64, StdDuration) -> bool + Send + Sync + 'static,
) -> (u64, f64, [StdDuration; 2], u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(stop);
    let start = Instant::now();
    let mut handles = Vec::new();
    for replica in replicas {
        for task in 0..tasks {
            let token = tokens[task % tokens.len()].expose_secret().to_owned();
            let replica = replica.clone();
            let (admitted, limited, stop) = (admitted.clone(), limited.clone(), stop.clone());
            handles.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop(admitted.load(Ordering::Relaxed), start.elapsed()) {
                    let begun = Instant::now();
                    match replica
                        .authenticate(token.as_str(), OffsetDateTime::now_utc())
                        .await
                    {
                        Ok(_) => _ = admitted.fetch_add(1, Ordering::Relaxed),
                        Err(AuthError::UsageExceeded { .. }) => break,
                        // Cells held in other replicas' leases.
                        Err(AuthError::RateLimited { .. }) => {
                            limited.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                    latencies.push(begun.elapsed());
                    // A server's request task yields on its socket; one
                    // served from a lease does no I/O, and would otherwise
                    // keep its worker from the tasks that take leases ahead.
                    if latencies.len() % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                latencies
            }));
        }
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: usize| {
        let at = latencies.len() * p / 1000;
        latencies.get(at).copied().unwrap_or_default()
    };
    let p99 = [percentile(990), percentile(999)];
    let admitted = admitted.load(Ordering::Relaxed);
    let limited = limited.load(Ordering::Relaxed);
    (admitted, admitted as f64 / elapsed, p99, limited)
}

/// Store charges made by `replicas`.
fn charges(replicas: &[Replica]) -> u64 {
    replicas.iter().map(|r| r.store().count(Call::Charge)).sum()
}

async fn release(replicas: &[Replica]) {
    for replica in replicas {
        replica.release_leases().await.unwrap();
    }
}

/// 100,000 credits spent by 3 replicas × 8 tasks: never more admitted;
/// after every replica released, admitted + remaining is 100,000 exactly.
/// Then, on a new key, one replica dropped without release: the shortfall
/// is what `leases()` reported for it.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_keep_credits_exact_across_replicas() {
    const CREDITS: u64 = 100_000;
    let url = server_url();
    let table = fresh_table("leases");
    let owner = migrated(&url, &table).await;
    let new = || NewKey::new(id()).credits(Credits::new(CREDITS));
    let admin = KeyManager::new(store(&url, &table).await);
    for ahead in [false, true] {
        let token = hot_key(&url, &table, new()).await;
        let fleet = replicas(&url, &table, 3, Duration::milliseconds(50), ahead).await;
        let (admitted, ..) = hammer(&fleet, 8, std::slice::from_ref(&token), |_, _| false).await;
        assert!(admitted <= CREDITS, "over-spent: {admitted}");
        release(&fleet).await;
        assert_eq!(
            admitted + remaining(&fleet[0]).await,
            CREDITS,
            "ahead: {ahead}"
        );
        let now = OffsetDateTime::now_utc();
        admin.delete_key(&id(), now).await.unwrap();

        // A replica dropped without release.
        let token = hot_key(&url, &table, new()).await;
        let mut fleet = replicas(&url, &table, 3, Duration::seconds(10), ahead).await;
        let (admitted, ..) = hammer(&fleet, 8, std::slice::from_ref(&token), |n, _| {
            n >= CREDITS / 2
        })
        .await;
        let dropped = fleet.pop().unwrap();
        let reported: u64 = dropped.leases().iter().map(|l| u64::from(l.units)).sum();
        drop(dropped);
        release(&fleet).await;
        let shortfall = CREDITS - admitted - remaining(&fleet[0]).await;
        println!(
            "a dropped replica (the next lease taken ahead: {ahead}): {shortfall} credits \
             stranded, {reported} reported held by it"
        );
        assert!(shortfall <= reported, "{shortfall} > {reported}");
        admin.delete_key(&id(), now).await.unwrap();
    }
    owner.drop_table().await.unwrap();
}

/// 3 replicas × 8 tasks on 3 keys of one owner sharing 500 credits (the
/// keys have none of their own): exactly 500 admitted with leases off; at
/// most 500 with leases on (taken ahead or not), and exactly 500 admitted
/// and left after release. Every refusal is the owner's.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_owner_credits_are_exact_across_replicas_and_keys() {
    const CREDITS: u64 = 500;
    let url = server_url();
    let table = fresh_table("owned");
    let migrator = migrated(&url, &table).await;
    let admin = KeyManager::new(store(&url, &table).await);
    let acme = OwnerId::new("acme").unwrap();
    let rng = &mut StdRng::seed_from_u64(8);
    let now = OffsetDateTime::now_utc();
    let mut tokens = Vec::new();
    for name in ["prod", "staging", "ci"] {
        let new = NewKey::new(KeyId::new(name).unwrap()).owner(acme.clone());
        tokens.push(admin.create_key(new, now, rng).await.unwrap().0);
    }
    for (max_lag, ahead) in [(0, false), (50, false), (50, true)] {
        let credits = OwnerLimits::new().credits(Credits::new(CREDITS));
        // Other credits than before start the balance over: alternate.
        let cleared = OwnerLimits::new();
        admin.set_owner_limits(&acme, cleared, now).await.unwrap();
        admin.set_owner_limits(&acme, credits, now).await.unwrap();
        let fleet = replicas(&url, &table, 3, Duration::milliseconds(max_lag), ahead).await;
        let (admitted, ..) = hammer(&fleet, 8, &tokens, |_, _| false).await;
        assert!(admitted <= CREDITS, "over-spent: {admitted}");
        if max_lag == 0 {
            assert_eq!(admitted, CREDITS, "leases off");
        }
        release(&fleet).await;
        let at = OffsetDateTime::now_utc();
        let allowance = admin.owner_allowance(&acme, at).await.unwrap().unwrap();
        let left = allowance.credits_remaining().unwrap();
        println!(
            "one owner's {CREDITS} credits over 3 keys, 3 replicas × 8 tasks, max_lag {max_lag} ms \
             (ahead: {ahead}): {admitted} admitted, {left} left after release"
        );
        assert_eq!(
            admitted + left,
            CREDITS,
            "max_lag {max_lag} ms, ahead: {ahead}"
        );
    }
    migrator.drop_table().await.unwrap();
}

/// A key deactivated through one replica is refused by every replica
/// within the cache's staleness bound, whatever their leases hold.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_deactivated_key_is_refused_by_every_leasing_replica() {
    let url = server_url();
    let table = fresh_table("leases_off");
    let owner = migrated(&url, &table).await;
    let token = hot_key(
        &url,
        &table,
        NewKey::new(id()).credits(Credits::new(1 << 40)),
    )
    .await;
    let fleet = replicas(&url, &table, 3, Duration::seconds(10), false).await;
    hammer(&fleet, 2, std::slice::from_ref(&token), |n, _| n >= 3_000).await;
    assert!(fleet.iter().any(|r| !r.leases().is_empty()));
    let now = OffsetDateTime::now_utc();
    fleet[0]
        .apply(&id(), Change::Deactivate, now)
        .await
        .unwrap();
    tokio::time::sleep(MAX_STALENESS + StdDuration::from_millis(50)).await;
    for replica in &fleet {
        let refused = replica.authenticate(token.expose_secret(), OffsetDateTime::now_utc());
        assert!(matches!(refused.await, Err(AuthError::Verify(_))));
    }
    owner.drop_table().await.unwrap();
}

/// The figure line: one hot key, 3 replicas × 8 tasks, leases of 50 ms,
/// beside the server's ceiling (a bare one-row `UPDATE` through 8
/// connections) and the 0.3 path (leases off) in the same run; then the
/// ratio with 1 and 6 replicas.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leased_charges_on_one_hot_key() {
    const ROUND: StdDuration = StdDuration::from_secs(2);
    const CREDITS: u64 = 1 << 40;
    let url = server_url();
    let table = fresh_table("leased_hot");
    let owner = migrated(&url, &table).await;
    let rate = RateLimit::new(1_000_000_000, Duration::SECOND)
        .and_then(|r| r.with_burst(1 << 20))
        .unwrap();
    let new = NewKey::new(id())
        .rate_limit(rate)
        .credits(Credits::new(CREDITS));
    let token = hot_key(&url, &table, new).await;

    // The server's ceiling, as in the 0.3 figure.
    let ceiling_table = format!("{table}_ceiling");
    let bare = pool(&common::plain(&url), 8);
    let setup = bare.get().await.unwrap();
    setup
        .batch_execute(&format!(
            "CREATE TABLE {ceiling_table} (id TEXT PRIMARY KEY, n BIGINT NOT NULL); \
             INSERT INTO {ceiling_table} VALUES ('hot', 0);"
        ))
        .await
        .unwrap();
    drop(setup);
    let increment = format!("UPDATE {ceiling_table} SET n = n + 1 WHERE id = $1 RETURNING n");
    let ceiling = {
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (bare, increment, done) = (bare.clone(), increment.clone(), done.clone());
            handles.push(tokio::spawn(async move {
                while start.elapsed() < ROUND {
                    let client = bare.get().await.unwrap();
                    let statement = client.prepare_cached(&increment).await.unwrap();
                    client.query_one(&statement, &[&"hot"]).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    };

    let mut admitted_total = 0;
    let mut figures = Vec::new();
    let lag = Duration::milliseconds(50);
    for (n, max_lag, ahead) in [
        (3, Duration::ZERO, false),
        (3, lag, true),
        (3, lag, false),
        (1, lag, true),
        (6, lag, true),
    ] {
        let fleet = replicas(&url, &table, n, max_lag, ahead).await;
        let (admitted, rate, [p99, p999], limited) =
            hammer(&fleet, 8, std::slice::from_ref(&token), |_, t| t >= ROUND).await;
        let calls = charges(&fleet);
        release(&fleet).await;
        admitted_total += admitted;
        let per_request = calls as f64 / (admitted + limited) as f64;
        figures.push((n, max_lag, ahead, rate, p99, p999, per_request, limited));
    }
    // Credits made out of nothing, if any: admitted + remaining - initial.
    let probe = replicas(&url, &table, 1, Duration::ZERO, false).await;
    let over = (admitted_total + remaining(&probe[0]).await).saturating_sub(CREDITS);
    let (_, _, _, rate, p99, _, calls, _) = figures[1];
    println!(
        "leased charges on one hot key: {rate:.0}/s admitted over 3 replicas, p99 {} µs; \
         server ceiling {ceiling:.0}/s (one-row UPDATE, same run); ratio {:.1}; \
         store calls per admitted request 1/{:.0}; over-admits {over}",
        p99.as_micros(),
        rate / ceiling,
        1.0 / calls
    );
    for (n, max_lag, ahead, rate, p99, p999, calls, limited) in figures {
        let leases = match (max_lag == Duration::ZERO, ahead) {
            (true, _) => "leases off (0.3)",
            (false, true) => "leases of 50 ms, the next taken ahead",
            (false, false) => "leases of 50 ms, none taken ahead",
        };
        println!(
            "  {n} replica(s), {leases}: {rate:.0}/s, p99 {} µs, p99.9 {} µs, ratio {:.2}, store calls per request {calls:.4}, rate limited {limited}",
            p99.as_micros(),
            p999.as_micros(),
            rate / ceiling
        );
    }
    let client = bare.get().await.unwrap();
    client
        .batch_execute(&format!("DROP TABLE {ceiling_table}"))
        .await
        .unwrap();
    drop(client);
    owner.drop_table().await.unwrap();
}
