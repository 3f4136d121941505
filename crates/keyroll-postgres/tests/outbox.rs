//! The outbox on PostgreSQL: notices claimed once however many replicas
//! sweep, and the figures of the outbox (printed, never asserted: `.ci/run`
//! shows them): what it adds to a write, how fast a dispatcher delivers,
//! and the lag from a write to its delivery.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use keyroll::meter::Credits;
use keyroll::outbox::{Dispatcher, EntryState};
use keyroll::store::KeyStore;
use keyroll::{Change, Event, KeyId, KeyManager, NewKey};
use keyroll_postgres::PgStore;
use keyroll_webhooks::{Signer, WebhookSink};
use time::{Duration, OffsetDateTime};

mod common;

use common::{fresh_table, migrated, server_url, store};

/// Three replicas (each its own pool) sweep the same crossings at once:
/// each notice results once, in the outbox as in the sweeps' answers.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_replicas_sweeping_claim_each_notice_once() {
    let url = server_url();
    let table = fresh_table("notices");
    let owner = migrated(&url, &table).await;
    let now = OffsetDateTime::now_utc();
    let first = KeyManager::new(store(&url, &table).await).with_outbox();
    // 12 keys expiring in 5 days; 4 of them also with credits nearly spent.
    for n in 0..12 {
        let mut new = NewKey::new(KeyId::new(format!("k{n:02}")).unwrap())
            .expires_at(now + Duration::days(5));
        if n < 4 {
            new = new.credits(Credits::new(20));
        }
        first.create_key(new, now, &mut rand::rng()).await.unwrap();
        if n < 4 {
            let id = KeyId::new(format!("k{n:02}")).unwrap();
            let incarnation = first
                .get(&id)
                .await
                .unwrap()
                .unwrap()
                .revision()
                .incarnation();
            for _ in 0..19 {
                let charged = first.store().charge(&id, incarnation, 1, now).await;
                assert!(charged.unwrap().is_ok());
            }
        }
    }
    let replicas = [
        KeyManager::new(store(&url, &table).await).with_outbox(),
        KeyManager::new(store(&url, &table).await).with_outbox(),
        KeyManager::new(store(&url, &table).await).with_outbox(),
    ];
    // Twice: 7 days ahead of the expiry (and the credits low), then 1 day.
    for (at, expected) in [(now, 12 + 4), (now + Duration::days(4), 12)] {
        let (a, b, c) = tokio::join!(
            replicas[0].sweep_notices(at),
            replicas[1].sweep_notices(at),
            replicas[2].sweep_notices(at)
        );
        let swept: Vec<Event> = [a, b, c].into_iter().flat_map(Result::unwrap).collect();
        assert_eq!(swept.len(), expected, "{swept:?}");
        for replica in &replicas {
            assert!(replica.sweep_notices(at).await.unwrap().is_empty());
        }
    }
    let entries = owner.outbox(EntryState::Pending, None, 1000).await.unwrap();
    let mut notices = BTreeMap::<(String, String), usize>::new();
    for entry in &entries {
        let what = match &entry.event {
            Event::KeyExpiring { within, .. } => format!("expiring within {within}"),
            Event::CreditsLow { remaining, of, .. } => format!("credits low {remaining}/{of}"),
            Event::KeyIssued { .. } => continue,
            other => panic!("unexpected {other:?}"),
        };
        *notices
            .entry((entry.event.key_id().unwrap().to_string(), what))
            .or_default() += 1;
    }
    assert_eq!(notices.len(), 12 * 2 + 4, "{notices:?}");
    assert!(notices.values().all(|n| *n == 1), "{notices:?}");
    assert_eq!(notices[&("k00".into(), "credits low 1/20".into())], 1);
    owner.drop_table().await.unwrap();
}

/// A receiver that answers 204 and notes, for each delivery, the time
/// from its event to its arrival.
async fn receiver() -> (String, Arc<Mutex<Vec<f64>>>) {
    let lags = Arc::new(Mutex::new(Vec::new()));
    let noted = lags.clone();
    let app = Router::new().route(
        "/hooks",
        post(move |body: Bytes| {
            let noted = noted.clone();
            async move {
                let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let at = OffsetDateTime::parse(
                    payload["timestamp"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap();
                let lag = (OffsetDateTime::now_utc() - at).as_seconds_f64();
                noted.lock().unwrap().push(lag);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, lags)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `n` label changes of `keys` keys, each a write of the key (and, with
/// the outbox on, of its event), one after another: the seconds taken.
async fn applies(manager: &KeyManager<PgStore>, keys: &[KeyId], n: usize) -> f64 {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    for i in 0..n {
        let id = &keys[i % keys.len()];
        manager
            .apply(id, Change::Label(format!("label {i}")), now)
            .await
            .unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// The outbox's figures, in one run: the cost it adds to a write (the
/// same changes with it and without, alternated), the throughput of one
/// dispatcher delivering to a local receiver, and the lag from a write to
/// its delivery under a steady stream of writes.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_figures() {
    let url = server_url();
    let table = fresh_table("outbox");
    let owner = migrated(&url, &table).await;
    let without = KeyManager::new(store(&url, &table).await);
    let with = KeyManager::new(store(&url, &table).await).with_outbox();
    let now = OffsetDateTime::now_utc();
    let keys: Vec<KeyId> = (0..32)
        .map(|n| KeyId::new(format!("w{n}")).unwrap())
        .collect();
    for id in &keys {
        without
            .create_key(id.clone(), now, &mut rand::rng())
            .await
            .unwrap();
    }
    // The cost on a write: blocks of 500 changes, alternated 6 times.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    applies(&with, &keys, 200).await; // warm both pools
    applies(&without, &keys, 200).await;
    for _ in 0..6 {
        off.push(applies(&without, &keys, 500).await);
        on.push(applies(&with, &keys, 500).await);
    }
    on.sort_by(f64::total_cmp);
    off.sort_by(f64::total_cmp);
    let (on, off) = (on[3], off[3]);
    println!(
        "outbox cost on a write (PostgreSQL, apply, one connection at a time): \
         {:.0} µs with ÷ {:.0} µs without = {:.2}",
        on / 500.0 * 1e6,
        off / 500.0 * 1e6,
        on / off
    );

    // Throughput: one dispatcher drains what the writes above queued.
    let (hooks, lags) = receiver().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
    let sink = WebhookSink::new(&hooks, Signer::new(secret)).unwrap();
    let dispatcher = Dispatcher::new(store(&url, &table).await, sink).batch(100);
    let queued = owner.outbox_counts().await.unwrap().pending;
    let started = Instant::now();
    while dispatcher
        .dispatch(OffsetDateTime::now_utc())
        .await
        .unwrap()
        .claimed
        > 0
    {}
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(owner.outbox_counts().await.unwrap().pending, 0);
    println!(
        "outbox delivery: {queued} events to a local receiver in {elapsed:.2} s = {:.0} events/s \
         (one dispatcher, batches of 100, one POST each)",
        queued as f64 / elapsed
    );

    // Lag: 200 writes a second for 5 s, a dispatcher polling every 10 ms.
    lags.lock().unwrap().clear();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                // Read before the round: a round begun after the last
                // write finds it.
                let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
                let round = dispatcher
                    .dispatch(OffsetDateTime::now_utc())
                    .await
                    .unwrap();
                if round.claimed == 0 {
                    if stopping {
                        break;
                    }
                    tokio::time::sleep(StdDuration::from_millis(10)).await;
                }
            }
        })
    };
    let mut ticks = tokio::time::interval(StdDuration::from_millis(5));
    let writes = 1000;
    for i in 0..writes {
        ticks.tick().await;
        let id = &keys[i % keys.len()];
        with.apply(
            id,
            Change::Label(format!("lag {i}")),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    polling.await.unwrap();
    let mut lags = lags.lock().unwrap().clone();
    assert_eq!(lags.len(), writes, "deliveries");
    lags.sort_by(f64::total_cmp);
    println!(
        "outbox lag from write to delivery (200 writes/s, polling every 10 ms): \
         p50 {:.1} ms, p99 {:.1} ms",
        quantile(&lags, 0.5) * 1e3,
        quantile(&lags, 0.99) * 1e3
    );
    owner.drop_table().await.unwrap();
}
