//! Deliveries end to end: keyroll's outbox, a `Dispatcher`, a
//! `WebhookSink`, and receivers. Every delivery to the Python receiver is
//! checked by the `standardwebhooks` package (its `Webhook.verify`), a
//! verifier nobody here wrote; the Rust receivers fail, hang and recover
//! on cue.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use keyroll::outbox::{Dispatcher, EntryState};
use keyroll::store::{InMemoryStore, KeyStore};
use keyroll::{Change, KeyId, KeyManager};
use keyroll_webhooks::{Signer, WebhookSecret, WebhookSink};
use time::{Duration, OffsetDateTime};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A Python receiver holding `secret`: it verifies each delivery with
/// `standardwebhooks`, answers 204 if it verifies and 400 if not, and
/// tells its log at `GET /log`. Killed when dropped.
struct PythonReceiver {
    child: Child,
    url: String,
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The receiver (`receiver.py`), run by `python3 -c`.
const RECEIVER: &str = include_str!("receiver.py");

impl PythonReceiver {
    fn start(secret: &str) -> PythonReceiver {
        let python = std::env::var("KEYROLL_STANDARDWEBHOOKS").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .args(["-c", RECEIVER, secret])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let url = format!("http://127.0.0.1:{}/hooks", port.trim());
        PythonReceiver { child, url }
    }

    async fn log(&self) -> Vec<serde_json::Value> {
        let url = self.url.replace("/hooks", "/log");
        tokio::task::spawn_blocking(move || {
            let output = Command::new("python3")
                .args([
                    "-c",
                    "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                    &url,
                ])
                .output()
                .unwrap();
            serde_json::from_slice(&output.stdout).unwrap()
        })
        .await
        .unwrap()
    }
}

fn secret(text: &str) -> WebhookSecret {
    text.parse().unwrap()
}

/// A manager writing to the outbox, with `n` keys created and the first
/// renewed and relabelled: `n + 2` events.
async fn keys_with_events(n: usize) -> KeyManager<Arc<InMemoryStore>> {
    let keys = KeyManager::new(Arc::new(InMemoryStore::new())).with_outbox();
    let now = OffsetDateTime::now_utc();
    for i in 0..n {
        let id = KeyId::new(format!("key-{i}")).unwrap();
        keys.create_key(id, now, &mut rand::rng()).await.unwrap();
    }
    let first = KeyId::new("key-0").unwrap();
    keys.renew(&first, now, &mut rand::rng()).await.unwrap();
    keys.apply(&first, Change::Label("renamed".into()), now)
        .await
        .unwrap();
    keys
}

/// A manager writing to the outbox, with one key created: one event.
async fn one_event() -> KeyManager<Arc<InMemoryStore>> {
    let keys = KeyManager::new(Arc::new(InMemoryStore::new())).with_outbox();
    let id = KeyId::new("acme").unwrap();
    keys.create_key(id, OffsetDateTime::now_utc(), &mut rand::rng())
        .await
        .unwrap();
    keys
}

/// A receiver of our own: answers each request as `script` says for its
/// number (from 0), counting them.
async fn scripted(
    script: impl Fn(usize) -> (StatusCode, StdDuration) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let script = Arc::new(script);
    let app = Router::new().route(
        "/hooks",
        post(move || {
            let (calls, script) = (counted.clone(), script.clone());
            async move {
                let (status, delay) = script(calls.fetch_add(1, Ordering::SeqCst));
                tokio::time::sleep(delay).await;
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test]
async fn every_delivery_verifies_with_standardwebhooks_during_a_rotation() {
    // The receiver still holds the previous secret; the sink signs with
    // the new one and the previous one.
    let receiver = PythonReceiver::start(SECRET);
    let keys = keys_with_events(5).await;
    let signer = Signer::rotating(secret(NEW_SECRET), secret(SECRET));
    let sink = WebhookSink::new(&receiver.url, signer).unwrap();
    let dispatcher = Dispatcher::new(keys.store().clone(), sink).batch(3);
    let pending = keys
        .store()
        .outbox(EntryState::Pending, None, 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 7);
    let now = OffsetDateTime::now_utc();
    while dispatcher.dispatch(now).await.unwrap().claimed > 0 {}

    let log = receiver.log().await;
    let ids: Vec<String> = pending.iter().map(|e| e.id.to_string()).collect();
    let received: Vec<&str> = log.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(received, ids, "each entry once, in order");
    assert!(log.iter().all(|d| d["verified"] == true), "{log:?}");
    let types: Vec<&str> = log.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert_eq!(&types[5..], ["token_renewed", "label_changed"]);
    assert_eq!(log[5]["key"], "key-0");
    let counts = keys.store().outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.parked), (0, 0));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_receiver_and_retried() {
    let receiver = PythonReceiver::start(SECRET);
    let keys = keys_with_events(1).await;
    let sink = WebhookSink::new(&receiver.url, Signer::new(secret(NEW_SECRET))).unwrap();
    let dispatcher = Dispatcher::new(keys.store().clone(), sink);
    let round = dispatcher
        .dispatch(OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!((round.delivered, round.retrying), (0, 1));
    let log = receiver.log().await;
    assert_eq!(log[0]["verified"], false);
    assert_eq!(log[0]["error"], "WebhookVerificationError");
    let failed = keys
        .store()
        .outbox(EntryState::Pending, None, 1)
        .await
        .unwrap();
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("answered 400 Bad Request"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_event_and_the_delay_grows() {
    let (url, calls) = scripted(|n| match n {
        0..=2 => (StatusCode::INTERNAL_SERVER_ERROR, StdDuration::ZERO),
        _ => (StatusCode::NO_CONTENT, StdDuration::ZERO),
    })
    .await;
    let keys = one_event().await;
    let mut now = OffsetDateTime::now_utc();
    let sink = WebhookSink::new(&url, Signer::new(secret(SECRET))).unwrap();
    let dispatcher =
        Dispatcher::new(keys.store().clone(), sink).backoff(Duration::SECOND, Duration::HOUR);
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let round = dispatcher.dispatch(now).await.unwrap();
        assert_eq!(round.retrying, 1, "attempt {attempt}");
        // Not due before its retry time.
        assert_eq!(dispatcher.dispatch(now).await.unwrap().claimed, 0);
        let entry = &keys
            .store()
            .outbox(EntryState::Pending, None, 1)
            .await
            .unwrap()[0];
        assert_eq!(entry.attempts, attempt);
        delays.push(entry.next_attempt_at - now);
        now = entry.next_attempt_at;
    }
    let round = dispatcher.dispatch(now).await.unwrap();
    assert_eq!(round.delivered, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // Exponential, with jitter: 1 s, 2 s, 4 s, each less up to its half.
    for (k, delay) in delays.iter().enumerate() {
        let step = Duration::SECOND * 2_i32.pow(k as u32);
        assert!(*delay <= step && *delay >= step / 2, "delay {k}: {delay}");
    }
    assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
}

#[tokio::test]
async fn a_receiver_that_always_fails_leaves_the_entry_parked_until_retried() {
    let (url, calls) = scripted(|_| (StatusCode::SERVICE_UNAVAILABLE, StdDuration::ZERO)).await;
    let keys = one_event().await;
    let mut now = OffsetDateTime::now_utc();
    let sink = WebhookSink::new(&url, Signer::new(secret(SECRET))).unwrap();
    let dispatcher = Dispatcher::new(keys.store().clone(), sink).max_attempts(3);
    for _ in 0..3 {
        dispatcher.dispatch(now).await.unwrap();
        now += Duration::HOUR;
    }
    let round = dispatcher.dispatch(now).await.unwrap();
    assert_eq!(
        (round.claimed, round.counts.pending, round.counts.parked),
        (0, 0, 1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let parked = keys
        .store()
        .outbox(EntryState::Parked, None, 10)
        .await
        .unwrap();
    assert_eq!(parked[0].attempts, 3);
    assert!(parked[0].last_error.as_deref().unwrap().contains("503"));
    assert!(keys.retry_parked(parked[0].id, now).await.unwrap());
    assert!(
        !keys.retry_parked(parked[0].id, now).await.unwrap(),
        "pending now"
    );
    assert_eq!(dispatcher.dispatch(now).await.unwrap().retrying, 1);
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_off_by_the_timeout_and_retried() {
    let (url, calls) = scripted(|n| match n {
        0 => (StatusCode::NO_CONTENT, StdDuration::from_secs(600)),
        _ => (StatusCode::NO_CONTENT, StdDuration::ZERO),
    })
    .await;
    let keys = one_event().await;
    let now = OffsetDateTime::now_utc();
    let sink = WebhookSink::new(&url, Signer::new(secret(SECRET)))
        .unwrap()
        .timeout(StdDuration::from_secs(2));
    let dispatcher = Dispatcher::new(keys.store().clone(), sink);
    let started = std::time::Instant::now();
    let round = dispatcher.dispatch(now).await.unwrap();
    assert!(started.elapsed() < StdDuration::from_secs(60), "cut off");
    assert_eq!(round.retrying, 1);
    let entry = &keys
        .store()
        .outbox(EntryState::Pending, None, 1)
        .await
        .unwrap()[0];
    let error = entry.last_error.as_deref().unwrap();
    assert!(error.contains("no answer within 2s"), "{error}");
    let round = dispatcher.dispatch(entry.next_attempt_at).await.unwrap();
    assert_eq!(round.delivered, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
