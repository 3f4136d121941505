//! Rate limits and credits on PostgreSQL: the SQL arithmetic against
//! `Meter::charge`, exactness across replicas, and the figures of one hot
//! key (printed, never asserted: `.ci/run` shows them).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration as StdDuration, Instant};

use keyroll::meter::{Credits, Meter, RateLimit, Refill, StoredMeter};
use keyroll::record::MeterRow;
use keyroll::store::KeyStore;
use keyroll::{AuthError, KeyId, KeyManager, NewKey, OwnerId, OwnerLimits};
use keyroll_postgres::PgStore;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use time::{Duration, OffsetDateTime};

mod common;

use common::{fresh_table, migrated, pool, server_url, store};

const NANOS: i128 = 1_000_000_000;

/// One random case of the step: a configuration, a meter, a cost and an
/// instant, drawn so that the boundaries (a refill due to the nanosecond,
/// a bucket exactly full) come up often.
#[derive(Debug)]
struct Case {
    rate: Option<RateLimit>,
    credits: Option<Credits>,
    meter: MeterRow,
    cost: u32,
    now: i128,
}

fn split(ns: i128) -> (i64, i32) {
    (ns.div_euclid(NANOS) as i64, ns.rem_euclid(NANOS) as i32)
}

fn draw(rng: &mut StdRng) -> Case {
    // Mostly around now, sometimes anywhere in the years 1 to 9999.
    let base: i128 = if rng.random_bool(0.9) {
        1_780_000_000 * NANOS + rng.random_range(0..NANOS)
    } else {
        i128::from(rng.random_range(-62_000_000_000i64..253_000_000_000)) * NANOS
    };
    let rate = rng.random_bool(0.7).then(|| {
        let limit = if rng.random_bool(0.9) {
            rng.random_range(1..=100)
        } else {
            rng.random_range(1..=1_000_000_000)
        };
        let period = Duration::nanoseconds(rng.random_range(1_000_000_000i64..=3_600_000_000_000));
        let rate = RateLimit::new(limit, period).unwrap();
        let burst = rng.random_range(1..=limit.saturating_mul(2).min(1_000_000_000));
        rate.with_burst(burst).unwrap_or(rate)
    });
    let credits = (rate.is_none() || rng.random_bool(0.6)).then(|| {
        let credits = Credits::new(rng.random_range(0..=30));
        if rng.random_bool(0.6) {
            let every = Duration::seconds(rng.random_range(60..=86_400));
            credits.with_refill(Refill::new(rng.random_range(0..=30), every).unwrap())
        } else {
            credits
        }
    });
    let cost = match rng.random_range(0..10) {
        0 => 0,
        1 => rate.map_or(40, |r| r.burst() + 1),
        _ => rng.random_range(1..=rate.map_or(10, |r| r.burst().min(10))),
    };
    let span = rate.map_or(NANOS, |r| r.window().whole_nanoseconds());
    let t = rate.map_or(NANOS, |r| r.interval().whole_nanoseconds());
    let now = base;
    // The bucket: anywhere around full, or exactly at the edge for `cost`.
    let tat = match rng.random_range(0..4) {
        0 => now + span - i128::from(cost) * t + rng.random_range(-1..=1),
        _ => now + rng.random_range(-2 * span..=2 * span),
    };
    // The refills: `now` exactly on, or a nanosecond before, a refill.
    let every = credits
        .and_then(|c| c.refill().map(|r| r.every().whole_nanoseconds()))
        .unwrap_or(60 * NANOS);
    let k = rng.random_range(0..5i128);
    let anchor = match rng.random_range(0..4) {
        0 => now - k * every,
        1 => now - k * every + 1,
        2 => now + rng.random_range(0..every),
        _ => now - rng.random_range(0..10 * every),
    };
    let (tat_secs, tat_nanos) = split(tat);
    let (anchor_secs, anchor_nanos) = split(anchor);
    Case {
        rate,
        credits,
        meter: MeterRow {
            generation: 1,
            tat_secs,
            tat_nanos,
            remaining: rng.random_range(0..=30),
            refills: rng.random_range(0..=4),
            anchor_secs,
            anchor_nanos,
        },
        cost,
        now,
    }
}

/// `keyroll_meter_step`, the SQL that PostgreSQL charges with, answers as
/// `Meter::charge` on 10,000 random cases: admitted or not, and the meter
/// after, to the nanosecond.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_meter_step_is_meter_charge() {
    let url = server_url();
    let table = fresh_table("step");
    let owner = migrated(&url, &table).await;
    let client = owner.pool().get().await.unwrap();
    let step = client
        .prepare(
            "SELECT admitted, new_tat::text, new_remaining::bigint, new_refills::bigint \
             FROM keyroll_meter_step($1::bigint, $2::bigint, $3::bigint, $4, $5::bigint, \
                 $6::bigint, $7::bigint * 1000000000::numeric + $8::integer, $9::bigint, \
                 $10::bigint, $11::bigint * 1000000000::numeric + $12::integer, $13::bigint, \
                 $14::bigint * 1000000000::numeric + $15::integer)",
        )
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(26);
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..10_000 {
        let case = draw(&mut rng);
        let stored = case.meter.load("step").unwrap();
        let mut meter: Meter = stored.meter().clone();
        let now = OffsetDateTime::from_unix_timestamp_nanos(case.now).unwrap();
        let ours = meter.charge(case.rate.as_ref(), case.credits.as_ref(), case.cost, now);
        let nanos = |d: Duration| d.whole_nanoseconds() as i64;
        let refill = case.credits.and_then(|c| c.refill().copied());
        let (now_secs, now_nanos) = split(case.now);
        let row = client
            .query_one(
                &step,
                &[
                    &case.rate.map(|r| i64::from(r.limit())),
                    &case.rate.map(|r| nanos(r.period())),
                    &case.rate.map(|r| i64::from(r.burst())),
                    &case.credits.is_some(),
                    &refill.map(|r| r.amount() as i64),
                    &refill.map(|r| nanos(r.every())),
                    &case.meter.tat_secs,
                    &case.meter.tat_nanos,
                    &case.meter.remaining,
                    &case.meter.refills,
                    &case.meter.anchor_secs,
                    &case.meter.anchor_nanos,
                    &i64::from(case.cost),
                    &now_secs,
                    &now_nanos,
                ],
            )
            .await
            .unwrap();
        let theirs_admitted: bool = row.get(0);
        assert_eq!(theirs_admitted, ours.is_ok(), "{case:?}: {ours:?}");
        let after = MeterRow::of(&StoredMeter::new(1, meter));
        let (tat_secs, tat_nanos) = split(row.get::<_, &str>(1).parse().unwrap());
        let theirs = MeterRow {
            tat_secs,
            tat_nanos,
            remaining: row.get(2),
            refills: row.get(3),
            ..case.meter
        };
        assert_eq!(theirs, after, "{case:?}");
        if ours.is_ok() {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    // Both branches were exercised, plenty.
    assert!(
        admitted > 2_000 && refused > 2_000,
        "{admitted} / {refused}"
    );
    drop(client);
    owner.drop_table().await.unwrap();
}

/// Three stores (three pools: three replicas) on one database, eight tasks
/// each, authenticating with one key of 500 credits: exactly 500 admitted,
/// and the meter says none is left.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_charging_one_key_admit_exactly_its_credits() {
    let url = server_url();
    let table = fresh_table("credits");
    let owner = migrated(&url, &table).await;
    let now = OffsetDateTime::now_utc();
    let id = KeyId::new("shared").unwrap();
    let (token, _) = KeyManager::new(store(&url, &table).await)
        .create_key(
            NewKey::new(id.clone()).credits(Credits::new(500)),
            now,
            &mut StdRng::seed_from_u64(5),
        )
        .await
        .unwrap();
    let token = Arc::new(token);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let manager = Arc::new(KeyManager::new(store(&url, &table).await));
        for _ in 0..8 {
            let (manager, token) = (manager.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let (mut admitted, mut exceeded) = (0u32, 0u32);
                for _ in 0..30 {
                    match manager.authenticate(token.expose_secret(), now).await {
                        Ok(_) => admitted += 1,
                        Err(AuthError::UsageExceeded { .. }) => exceeded += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (admitted, exceeded)
            }));
        }
    }
    let (mut admitted, mut exceeded) = (0, 0);
    for task in tasks {
        let (a, e) = task.await.unwrap();
        admitted += a;
        exceeded += e;
    }
    assert_eq!((admitted, exceeded), (500, 720 - 500));
    let key = owner.get(&id).await.unwrap().unwrap();
    let stored = owner
        .meter(&id, key.revision().incarnation())
        .await
        .unwrap();
    assert_eq!(
        key.allowance(stored.as_ref(), now).credits_remaining(),
        Some(0)
    );
    owner.drop_table().await.unwrap();
}

/// Creates the key `new` describes in `table`: its incarnation.
async fn created(url: &str, table: &str, new: NewKey) -> u64 {
    let keys = KeyManager::new(store(url, table).await);
    let id = new.id().clone();
    let now = OffsetDateTime::now_utc();
    keys.create_key(new, now, &mut StdRng::seed_from_u64(1))
        .await
        .unwrap();
    let key = keys.get(&id).await.unwrap().unwrap();
    key.revision().incarnation()
}

/// What `tasks` tasks calling `call` in a loop for `time` achieve: calls,
/// calls a second, and the 99th percentile latency.
async fn hammer<F, Fut>(tasks: usize, time: StdDuration, call: F) -> (usize, f64, StdDuration)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while start.elapsed() < time {
                let begun = Instant::now();
                call().await;
                latencies.push(begun.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    (latencies.len(), latencies.len() as f64 / elapsed, p99)
}

/// Connections (and the pools' size) of the hot-key figures.
const CONNECTIONS: usize = 8;
/// How long each round of the hot-key figures lasts.
const ROUND: StdDuration = StdDuration::from_secs(2);

/// `hammer` of `CONNECTIONS` for a `ROUND` charging 1 to `keys` in turn
/// (each admitted).
async fn charging(
    charges: Arc<PgStore>,
    keys: Arc<Vec<(KeyId, u64)>>,
) -> (usize, f64, StdDuration) {
    let next = Arc::new(AtomicUsize::new(0));
    hammer(CONNECTIONS, ROUND, move || {
        let (charges, keys) = (charges.clone(), keys.clone());
        let (id, incarnation) = keys[next.fetch_add(1, Ordering::Relaxed) % keys.len()].clone();
        async move {
            let now = OffsetDateTime::now_utc();
            let charged = charges.charge(&id, incarnation, 1, now).await.unwrap();
            charged.expect("admitted");
        }
    })
    .await
}

/// The figures of one hot key with 8 connections, printed beside the
/// server's own ceiling for the same work: a bare `UPDATE ... SET n = n +
/// 1 ... RETURNING n` of one row through the same pool size, in the same
/// run, alternating twice. Nothing is asserted about speed.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_charges_on_one_hot_key() {
    let url = server_url();
    let table = fresh_table("hot");
    let owner = migrated(&url, &table).await;
    let id = KeyId::new("hot").unwrap();
    let rate = RateLimit::new(1_000_000_000, Duration::SECOND).unwrap();
    let credits = Credits::new(1 << 60);
    let new = NewKey::new(id.clone()).rate_limit(rate).credits(credits);
    let incarnation = created(&url, &table, new).await;
    // One hot owner: three keys, each with limits of its own too, so that
    // each charge locks two meters.
    let acme = OwnerId::new("acme").unwrap();
    let mut owned = Vec::new();
    for name in ["a", "b", "c"] {
        let key = KeyId::new(name).unwrap();
        let new = NewKey::new(key.clone())
            .rate_limit(rate)
            .credits(credits)
            .owner(acme.clone());
        owned.push((key, created(&url, &table, new).await));
    }
    let limits = OwnerLimits::new().rate_limit(rate).credits(credits);
    let now = OffsetDateTime::now_utc();
    KeyManager::new(store(&url, &table).await)
        .set_owner_limits(&acme, limits, now)
        .await
        .unwrap();
    let owned = Arc::new(owned);
    let hot = Arc::new(vec![(id.clone(), incarnation)]);
    let ceiling_table = format!("{table}_ceiling");
    let setup = owner.pool().get().await.unwrap();
    setup
        .batch_execute(&format!(
            "CREATE TABLE {ceiling_table} (id TEXT PRIMARY KEY, n BIGINT NOT NULL); \
             INSERT INTO {ceiling_table} VALUES ('hot', 0);"
        ))
        .await
        .unwrap();
    drop(setup);
    // The same pool size as the store's: 8 connections each.
    let charges = Arc::new(store(&url, &table).await);
    let bare = pool(&common::plain(&url), CONNECTIONS);
    let increment = Arc::new(format!(
        "UPDATE {ceiling_table} SET n = n + 1 WHERE id = $1 RETURNING n"
    ));
    let (mut ours, mut ceiling, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let (bare, increment) = (bare.clone(), increment.clone());
        ceiling.push(
            hammer(CONNECTIONS, ROUND, move || {
                let (bare, increment) = (bare.clone(), increment.clone());
                async move {
                    let client = bare.get().await.unwrap();
                    let statement = client.prepare_cached(&increment).await.unwrap();
                    client.query_one(&statement, &[&"hot"]).await.unwrap();
                }
            })
            .await,
        );
        ours.push(charging(charges.clone(), hot.clone()).await);
        shared.push(charging(charges.clone(), owned.clone()).await);
    }
    let total = |runs: &[(usize, f64, StdDuration)]| {
        let calls: usize = runs.iter().map(|r| r.0).sum();
        let rate = runs.iter().map(|r| r.1).sum::<f64>() / runs.len() as f64;
        let p99 = runs.iter().map(|r| r.2).max().unwrap();
        (calls, rate, p99)
    };
    let (calls, rate, p99) = total(&ours);
    let (bare_calls, bare_rate, bare_p99) = total(&ceiling);
    let (owner_calls, owner_rate, owner_p99) = total(&shared);
    println!(
        "charges on one hot key: {rate:.0}/s, p99 {:.2} ms over {calls} charges",
        p99.as_secs_f64() * 1e3
    );
    println!(
        "charges on one hot owner across 3 keys (two meters each): {owner_rate:.0}/s, \
         p99 {:.2} ms over {owner_calls} charges; owner / one key {:.2}",
        owner_p99.as_secs_f64() * 1e3,
        owner_rate / rate
    );
    println!(
        "the server's ceiling (UPDATE ... SET n = n + 1 ... RETURNING n, one row, {CONNECTIONS} connections): \
         {bare_rate:.0}/s, p99 {:.2} ms over {bare_calls} updates; charges / ceiling {:.2}",
        bare_p99.as_secs_f64() * 1e3,
        rate / bare_rate
    );
    // Every charge was counted: none lost, none doubled.
    let stored = owner.meter(&id, incarnation).await.unwrap().unwrap();
    let key = owner.get(&id).await.unwrap().unwrap();
    let left = key
        .allowance(Some(&stored), OffsetDateTime::now_utc())
        .credits_remaining();
    assert_eq!(left, Some((1 << 60) - calls as u64));
    let allowance = KeyManager::new(store(&url, &table).await)
        .owner_allowance(&acme, OffsetDateTime::now_utc())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        allowance.credits_remaining(),
        Some((1 << 60) - owner_calls as u64)
    );
    let client = owner.pool().get().await.unwrap();
    client
        .batch_execute(&format!("DROP TABLE {ceiling_table}"))
        .await
        .unwrap();
    drop(client);
    owner.drop_table().await.unwrap();
}

/// One clock for every replica: the server's. A replica one hour ahead
/// charges a key; another, at the true time two minutes later, is
/// admitted. (Charged at the callers' clocks, the first would have set the
/// bucket an hour ahead, refusing the second; the store made for tests
/// shows it.)
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_charges_at_the_servers_clock_whatever_a_replica_says() {
    let url = server_url();
    let table = fresh_table("skew");
    let owner = migrated(&url, &table).await;
    let now = OffsetDateTime::now_utc();
    // 10 a minute, bursts of 10: T = 6 s.
    let limit = RateLimit::new(10, Duration::minutes(1)).unwrap();
    let mut incarnations = Vec::new();
    for (n, id) in ["server-clock", "callers-clock"].into_iter().enumerate() {
        let (key, _, _) = keyroll::ApiKey::issue(
            NewKey::new(KeyId::new(id).unwrap()).rate_limit(limit),
            now,
            &mut StdRng::seed_from_u64(n as u64),
        )
        .unwrap();
        owner.insert(&key, &[]).await.unwrap();
        incarnations.push((key.id().clone(), key.revision().incarnation()));
    }
    let ahead = now + Duration::HOUR;
    let later = now + Duration::minutes(2);

    let (id, incarnation) = &incarnations[0];
    let replica = store(&url, &table).await;
    assert!(
        replica
            .charge(id, *incarnation, 1, ahead)
            .await
            .unwrap()
            .is_ok()
    );
    let admitted = replica.charge(id, *incarnation, 1, later).await.unwrap();
    assert!(admitted.is_ok(), "at the server's clock: {admitted:?}");

    let (id, incarnation) = &incarnations[1];
    let skewed = store(&url, &table).await.charging_at_callers_clock();
    assert!(
        skewed
            .charge(id, *incarnation, 1, ahead)
            .await
            .unwrap()
            .is_ok()
    );
    let refused = skewed.charge(id, *incarnation, 1, later).await.unwrap();
    assert!(refused.is_err(), "at the callers' clocks: {refused:?}");
    owner.drop_table().await.unwrap();
}

/// A service's charges keep running while another service migrates its
/// own tables in the same schema, or a replica migrates this one: the
/// functions every table shares are replaced in place, never dropped
/// under a charge ("cache lookup failed for function" in 0.4's first
/// draft, seen once in CI; this test met it about one run in two with
/// 100 rounds).
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_charges_run_through_migrations_beside_them() {
    let url = server_url();
    let table = fresh_table("migrating");
    let charges = Arc::new(migrated(&url, &table).await);
    let id = KeyId::new("busy").unwrap();
    let rate = RateLimit::new(1_000_000_000, Duration::SECOND).unwrap();
    let new = NewKey::new(id.clone()).rate_limit(rate);
    let incarnation = created(&url, &table, new.credits(Credits::new(1 << 40))).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut chargers = Vec::new();
    for _ in 0..4 {
        let (charges, id, done) = (charges.clone(), id.clone(), done.clone());
        chargers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = OffsetDateTime::now_utc();
                charges
                    .charge(&id, incarnation, 1, now)
                    .await
                    .expect("a charge beside a migration")
                    .expect("admitted");
                n += 1;
            }
            n
        }));
    }
    // Another table of the same schema made, and this one migrated again.
    let other = fresh_table("migrating_other");
    for _ in 0..40 {
        migrated(&url, &other).await.drop_table().await.unwrap();
        migrated(&url, &table).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for charger in chargers {
        total += charger.await.unwrap();
    }
    assert!(total > 0);
    charges.drop_table().await.unwrap();
}

/// Charges queued on one key's row lock are charged at the instant they
/// get it: 16 connections charging a key of a billion a second, in bursts
/// of about a millisecond's worth, are never rate limited (each charge
/// read the server's clock before waiting for the lock, and one that
/// waited longer than the burst's span found the bucket "ahead" of it).
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_charge_waiting_for_the_lock_is_charged_when_it_gets_it() {
    let url = server_url();
    let table = fresh_table("queued");
    let owner = migrated(&url, &table).await;
    let id = KeyId::new("queued").unwrap();
    let rate = RateLimit::new(1_000_000_000, Duration::SECOND)
        .and_then(|r| r.with_burst(1 << 20))
        .unwrap();
    let incarnation = created(&url, &table, NewKey::new(id.clone()).rate_limit(rate)).await;
    let charges = Arc::new(store(&url, &table).await);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (charges2, id2, refused2) = (charges.clone(), id.clone(), refused.clone());
    let (calls, ..) = hammer(16, StdDuration::from_secs(1), move || {
        let (charges, id, refused) = (charges2.clone(), id2.clone(), refused2.clone());
        async move {
            let now = OffsetDateTime::now_utc();
            if charges
                .charge(&id, incarnation, 1, now)
                .await
                .unwrap()
                .is_err()
            {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await;
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 0, "{refused} of {calls} charges refused");
    owner.drop_table().await.unwrap();
}
