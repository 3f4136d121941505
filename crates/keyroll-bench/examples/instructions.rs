//! The hot paths as plain loops, for counting instructions under callgrind
//! (`bash benches/instructions.sh`), which the noise of a shared machine
//! does not move: `verify N` verifies a renewing key's current token N
//! times; `auth N` authenticates N times over 1,000 in-memory keys;
//! `limited N` the same with keys that each carry a rate limit (never
//! reached), so every authentication is also charged; `recorded N` the
//! same as `auth` with usage recording on (after the first round, each
//! key's use already noted and its hour already counted: the common path);
//! `first N` the same with each authentication the first of its key since
//! the last flush (N at most 11,000).
use keyroll::store::InMemoryStore;
use keyroll::{ApiKey, Credentials, KeyId, KeyManager, NewKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::hint::black_box;
use time::OffsetDateTime;

/// The output of `future`, which completes at its first poll.
fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory store's futures complete at once"),
    }
}

fn main() {
    let what = std::env::args()
        .nth(1)
        .expect("verify, auth, limited, recorded, limited_recorded or first");
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("a count");
    let mut rng = StdRng::seed_from_u64(1);
    let now = OffsetDateTime::UNIX_EPOCH;
    match what.as_str() {
        "verify" => {
            let (mut key, _, _) = ApiKey::issue(
                NewKey::new(KeyId::new("acme-orders").unwrap()),
                now,
                &mut rng,
            )
            .unwrap();
            let (current, _) = key.renew(now, &mut rng).unwrap();
            for _ in 0..n {
                black_box(key.verify(black_box(current.expose_secret()), now).unwrap());
            }
        }
        "auth" | "limited" | "recorded" | "limited_recorded" | "first" => {
            let recording = matches!(what.as_str(), "recorded" | "limited_recorded" | "first");
            let m = KeyManager::new(InMemoryStore::new()).with_usage_recording(recording);
            // `first`: every authentication the first of its key since the
            // last flush (a key each), so its use and count are new entries.
            let count = if what == "first" { 11_000 } else { 1000 };
            let mut keys = Vec::new();
            for i in 0..count {
                let id = KeyId::new(format!("key-{i:07}")).unwrap();
                let mut new = NewKey::new(id.clone());
                if what.starts_with("limited") {
                    new = new.rate_limit(
                        keyroll::meter::RateLimit::new(1_000_000_000, time::Duration::SECOND)
                            .unwrap(),
                    );
                }
                let (t, _) = at_once(m.create_key(new, now, &mut rng)).unwrap();
                keys.push((id, t));
            }
            for i in 0..n {
                let (id, t) = &keys[i % count];
                black_box(
                    at_once(
                        m.authenticate(Credentials::bearer(t.expose_secret()).with_id(id), now),
                    )
                    .unwrap(),
                );
            }
        }
        other => panic!("not verify, auth, limited, recorded or first: {other}"),
    }
}
