//! Leases (`KeyManager::with_leases`): several replicas (managers, each
//! with its own leases) over one store. Credits are never over-spent and
//! come back exactly on release; the rate bound of `LeasePolicy` holds over
//! random arrivals, on a key's limits or an owner's shared by 3 keys;
//! `max_lag = 0` is the exact path; a dropped replica
//! strands at most what it reported; verification still decides.

mod common;

use std::sync::{Arc, Mutex};

use common::t0;
use keyroll::meter::{Credits, RateLimit};
use keyroll::store::{Action, Call, InMemoryStore, Intercept, KeyStore};
use keyroll::{
    AuthError, Change, KeyId, KeyManager, LeasePolicy, NewKey, OwnerId, OwnerLimits, Token,
};
use pollster::block_on;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::{Duration, OffsetDateTime};

fn id() -> KeyId {
    KeyId::new("leased").unwrap()
}

/// `replicas` managers leasing with `max_lag` over one store holding a key
/// made with `new`; its token.
fn replicas<S: KeyStore + Clone>(
    store: S,
    new: NewKey,
    n: usize,
    max_lag: Duration,
) -> (Vec<KeyManager<S>>, Token) {
    let policy = LeasePolicy::new(max_lag).unwrap();
    let managers: Vec<_> = (0..n)
        .map(|_| KeyManager::new(store.clone()).with_leases(policy))
        .collect();
    let (token, _) =
        block_on(managers[0].create_key(new, t0(), &mut StdRng::seed_from_u64(1))).unwrap();
    (managers, token)
}

/// The credits the store says are left at `now`.
fn remaining<S: KeyStore>(manager: &KeyManager<S>, now: OffsetDateTime) -> u64 {
    let allowance = block_on(manager.allowance(&id(), now)).unwrap();
    allowance.credits_remaining().unwrap()
}

#[test]
fn leases_spare_the_store_and_credits_come_back_exactly_on_release() {
    let store = Arc::new(Intercept::new(InMemoryStore::new()));
    let rate = RateLimit::new(1_000_000, Duration::SECOND)
        .and_then(|r| r.with_burst(4096))
        .unwrap();
    let new = NewKey::new(id())
        .rate_limit(rate)
        .credits(Credits::new(100_000));
    let (managers, token) = replicas(store.clone(), new, 3, Duration::seconds(10));
    let (mut admitted, mut charges) = (0u64, 0);
    for n in 0..120_000 {
        // One a microsecond, the rate limit's pace.
        let at = t0() + Duration::microseconds(n as i64);
        match block_on(managers[n % 3].authenticate(token.expose_secret(), at)) {
            Ok(_) => {
                admitted += 1;
                charges = store.count(Call::Charge);
            }
            // Each refusal is a store call: a refill may have come.
            Err(AuthError::UsageExceeded { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(admitted <= 100_000, "over-spent: {admitted}");
    // Near exhaustion every charge is exact: almost nothing is stranded.
    let held: u64 = managers
        .iter()
        .flat_map(|m| m.leases())
        .map(|l| u64::from(l.units))
        .sum();
    let end = t0() + Duration::milliseconds(120);
    assert_eq!(admitted + held + remaining(&managers[0], end), 100_000);
    for manager in &managers {
        block_on(manager.release_leases()).unwrap();
        assert!(manager.leases().is_empty());
    }
    assert_eq!(admitted + remaining(&managers[0], end), 100_000);
    // One store call per many requests, until the credits ran out.
    println!("{charges} store charges for {admitted} admitted requests over 3 replicas");
    assert!(
        charges * 16 <= admitted,
        "{charges} store charges for {admitted} requests"
    );
}

/// The gauge `keyroll_lease_units` tells what a replica's leases hold once
/// a lease is taken, and none once they are released.
#[test]
fn the_units_leases_hold_are_told_to_the_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let gauge = || {
        let values: Vec<f64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "keyroll_lease_units")
            .map(|(.., value)| match value {
                DebugValue::Gauge(units) => units.into_inner(),
                other => panic!("{other:?}"),
            })
            .collect();
        values
    };
    let new = NewKey::new(id()).credits(Credits::new(1000));
    metrics::with_local_recorder(&recorder, || {
        let store = Arc::new(InMemoryStore::new());
        let (managers, token) = replicas(store, new, 1, Duration::seconds(10));
        // A lease grows while the key is hot: some units stay held.
        for n in 0..64 {
            let at = t0() + Duration::milliseconds(n);
            block_on(managers[0].authenticate(token.expose_secret(), at)).unwrap();
        }
        let held: u64 = managers[0]
            .leases()
            .iter()
            .map(|l| u64::from(l.units))
            .sum();
        assert!(held > 0);
        assert!(
            gauge().first().is_some_and(|&units| units > 0.0),
            "{:?}",
            gauge()
        );
        block_on(managers[0].release_leases()).unwrap();
    });
    assert_eq!(gauge(), [0.0]);
}

#[test]
fn a_dropped_replica_strands_at_most_what_it_reported() {
    let store = Arc::new(InMemoryStore::new());
    let new = NewKey::new(id()).credits(Credits::new(10_000));
    let (mut managers, token) = replicas(store, new, 3, Duration::seconds(10));
    let mut admitted = 0;
    for n in 0..3_000 {
        if block_on(managers[n % 3].authenticate(token.expose_secret(), t0())).is_ok() {
            admitted += 1;
        }
    }
    let dropped = managers.pop().unwrap();
    let stranded: u64 = dropped.leases().iter().map(|l| u64::from(l.units)).sum();
    assert!(
        stranded > 0,
        "the dropped replica held nothing: test nothing"
    );
    drop(dropped);
    for manager in &managers {
        block_on(manager.release_leases()).unwrap();
    }
    let left = remaining(&managers[0], t0());
    assert_eq!(admitted + left + stranded, 10_000);
}

#[test]
fn verification_decides_whatever_a_lease_holds_and_limits_apply_at_the_next_lease() {
    let store = Arc::new(InMemoryStore::new());
    let new = NewKey::new(id()).credits(Credits::new(1_000));
    let (managers, token) = replicas(store, new, 1, Duration::seconds(10));
    let keys = &managers[0];
    for _ in 0..64 {
        block_on(keys.authenticate(token.expose_secret(), t0())).unwrap();
    }
    assert!(keys.leases()[0].units > 0, "{:?}", keys.leases());
    block_on(keys.apply(&id(), Change::Deactivate, t0())).unwrap();
    let refused = block_on(keys.authenticate(token.expose_secret(), t0())).unwrap_err();
    assert!(matches!(refused, AuthError::Verify(_)), "{refused}");
    // Credits set again: the lease of the old setting ends, its credits
    // are not given to the new one.
    block_on(keys.apply(&id(), Change::Activate, t0())).unwrap();
    block_on(keys.apply(&id(), Change::Credits(Some(Credits::new(3))), t0())).unwrap();
    let later = t0() + Duration::seconds(11);
    let mut admitted = 0;
    for _ in 0..10 {
        if block_on(keys.authenticate(token.expose_secret(), later)).is_ok() {
            admitted += 1;
        }
    }
    block_on(keys.release_leases()).unwrap();
    assert_eq!((admitted, remaining(keys, later)), (3, 0));
}

#[test]
fn a_lease_taken_ahead_ends_max_lag_after_it_was_sent_spent_or_not() {
    let store = Arc::new(Intercept::new(InMemoryStore::new()));
    let max_lag = Duration::seconds(10);
    let policy = LeasePolicy::new(max_lag).unwrap();
    // Each lease ahead is taken as soon as it is asked for.
    let keys = KeyManager::new(store.clone()).with_leases_ahead(policy, block_on);
    let new = NewKey::new(id()).credits(Credits::new(1_000_000));
    let (token, _) = block_on(keys.create_key(new, t0(), &mut StdRng::seed_from_u64(1))).unwrap();
    // Until a request served from a half-spent lease has taken the next
    // one ahead (the fourth lease or later): two leases are held.
    let mut admitted = 0;
    loop {
        let before = store.count(Call::Charge);
        block_on(keys.authenticate(token.expose_secret(), t0())).unwrap();
        admitted += 1;
        if store.count(Call::Charge) > before && before >= 3 {
            break;
        }
    }
    let held: u64 = keys.leases().iter().map(|l| u64::from(l.units)).sum();
    assert!(held > 1, "{held}");
    // max_lag later both have ended: this request takes a new lease, and
    // what they held goes back.
    let later = t0() + max_lag;
    let charges = store.count(Call::Charge);
    block_on(keys.authenticate(token.expose_secret(), later)).unwrap();
    admitted += 1;
    assert!(
        store.count(Call::Charge) > charges,
        "served from an ended lease"
    );
    block_on(keys.release_leases()).unwrap();
    assert_eq!(remaining(&keys, later), 1_000_000 - admitted);
}

#[test]
fn a_request_cancelled_while_its_lease_is_in_flight_leaves_the_key_leasing() {
    // Every charge answers at the second poll, as a store doing I/O.
    let store = Arc::new(Intercept::new(InMemoryStore::new()).on(Call::Charge, |_| Action::Yield));
    let new = NewKey::new(id()).credits(Credits::new(1_000));
    let (managers, token) = replicas(store.clone(), new, 1, Duration::seconds(10));
    let keys = &managers[0];
    // Polled once, while its lease is in flight, then dropped (a client
    // gone: hyper drops the request's future).
    {
        let request = keys.authenticate(token.expose_secret(), t0());
        let mut request = std::pin::pin!(request);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(request.as_mut().poll(&mut cx).is_pending());
    }
    let before = store.count(Call::Charge);
    for _ in 0..100 {
        block_on(keys.authenticate(token.expose_secret(), t0())).unwrap();
    }
    // Leases again, not a store call each.
    let charges = store.count(Call::Charge) - before;
    assert!(charges <= 10, "{charges} store charges for 100 requests");
    block_on(keys.release_leases()).unwrap();
    assert_eq!(remaining(keys, t0()), 1_000 - 100);
}

#[test]
fn a_release_gives_back_a_lease_that_lands_after_it_and_waits_for_it() {
    let store = Arc::new(InMemoryStore::new());
    let policy = LeasePolicy::new(Duration::seconds(10)).unwrap();
    // Leases ahead wait here until the test runs them.
    let in_flight: Arc<Mutex<Vec<Task>>> = Arc::default();
    let queue = in_flight.clone();
    let keys = KeyManager::new(store)
        .with_leases_ahead(policy, move |task| queue.lock().unwrap().push(task));
    let new = NewKey::new(id()).credits(Credits::new(1_000));
    let (token, _) = block_on(keys.create_key(new, t0(), &mut StdRng::seed_from_u64(1))).unwrap();
    let mut admitted = 0;
    while in_flight.lock().unwrap().is_empty() {
        block_on(keys.authenticate(token.expose_secret(), t0())).unwrap();
        admitted += 1;
    }
    // The lease ahead is in flight: counted as held, at its size.
    let held: u32 = keys.leases().iter().map(|l| l.units).sum();
    assert!(held > 0);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let release = keys.release_leases();
    let mut release = std::pin::pin!(release);
    // The release gave back what was held, and waits for the lease in flight.
    assert!(release.as_mut().poll(&mut cx).is_pending());
    for task in std::mem::take(&mut *in_flight.lock().unwrap()) {
        block_on(task);
    }
    assert!(release.as_mut().poll(&mut cx).is_ready());
    // It landed after the release: given back, not kept.
    assert!(keys.leases().is_empty(), "{:?}", keys.leases());
    assert_eq!(remaining(&keys, t0()), 1_000 - admitted);
}

#[test]
fn bad_lease_policies_are_refused_quoting_them() {
    for max_lag in [Duration::milliseconds(-1), Duration::seconds(11)] {
        let error = LeasePolicy::new(max_lag).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("invalid lease policy: max_lag {max_lag} must be 0 (leases off) to 10 s")
        );
    }
    assert!(LeasePolicy::new(Duration::ZERO).is_ok());
    assert!(LeasePolicy::new(Duration::seconds(10)).is_ok());
}

/// 10 a second (T = 100 ms) in bursts of 20, and 10,000 credits.
const BURST: i64 = 20;
const T_MS: i64 = 100;
const CREDITS: u64 = 10_000;

/// Each request: the replica that serves it, the milliseconds since the
/// one before (in bursts, so leases grow, between pauses, so a replica's
/// lease outlives its requests), and whether the leases taken ahead so far
/// arrive before it (else they stay in flight).
fn arrivals() -> impl Strategy<Value = Vec<(usize, i64, bool)>> {
    let gap = prop_oneof![8 => 0i64..10, 1 => 100i64..3000];
    proptest::collection::vec((0usize..3, gap, any::<bool>()), 1..200)
}

/// How the replicas charge.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Every charge a store call.
    Exact,
    /// Through leases, the next taken when the current one is spent.
    Leases,
    /// Through leases, the next taken ahead in the background.
    Ahead,
}

/// A background task: a lease taken ahead.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The instants admitted by 3 replicas charging as `mode` says with
/// `max_lag`, in order, and the credits the store holds once every replica
/// released. `shared`: the limits are an owner's, shared by 3 keys without
/// limits of their own, which the requests use in turn.
fn run(
    arrivals: &[(usize, i64, bool)],
    max_lag: Duration,
    mode: Mode,
    shared: bool,
) -> (Vec<i64>, u64) {
    let rate = RateLimit::new(10, Duration::SECOND)
        .and_then(|r| r.with_burst(BURST as u32))
        .unwrap();
    let credits = Credits::new(CREDITS);
    let owner = OwnerId::new("acme").unwrap();
    let new = match shared {
        false => NewKey::new(id()).rate_limit(rate).credits(credits),
        true => NewKey::new(id()).owner(owner.clone()),
    };
    let store = Arc::new(InMemoryStore::new());
    let (managers, token) = replicas(store, new, 3, max_lag);
    let mut tokens = vec![token];
    if shared {
        let limits = OwnerLimits::new().rate_limit(rate).credits(credits);
        block_on(managers[0].set_owner_limits(&owner, limits, t0())).unwrap();
        for n in 1..3 {
            let new = NewKey::new(KeyId::new(format!("k{n}")).unwrap()).owner(owner.clone());
            let rng = &mut StdRng::seed_from_u64(n);
            tokens.push(block_on(managers[0].create_key(new, t0(), rng)).unwrap().0);
        }
    }
    let in_flight: Arc<Mutex<Vec<Task>>> = Arc::default();
    let policy = LeasePolicy::new(max_lag).unwrap();
    let managers: Vec<_> = managers
        .into_iter()
        .map(|m| match mode {
            Mode::Exact => m.with_leases(LeasePolicy::new(Duration::ZERO).unwrap()),
            Mode::Leases => m,
            Mode::Ahead => {
                let in_flight = in_flight.clone();
                m.with_leases_ahead(policy, move |task| in_flight.lock().unwrap().push(task))
            }
        })
        .collect();
    let arrive = || {
        let tasks = std::mem::take(&mut *in_flight.lock().unwrap());
        tasks.into_iter().for_each(block_on);
    };
    let mut now = 0;
    let mut admitted = Vec::new();
    for (n, &(replica, gap, land)) in arrivals.iter().enumerate() {
        now += gap;
        if land {
            arrive();
        }
        let at = t0() + Duration::milliseconds(now);
        let token = &tokens[n % tokens.len()];
        if block_on(managers[replica].authenticate(token.expose_secret(), at)).is_ok() {
            admitted.push(now);
        }
    }
    arrive();
    let end = t0() + Duration::milliseconds(now);
    for manager in &managers {
        block_on(manager.release_leases()).unwrap();
    }
    let left = match shared {
        false => remaining(&managers[0], end),
        true => {
            let allowance = block_on(managers[0].owner_allowance(&owner, end)).unwrap();
            allowance.unwrap().credits_remaining().unwrap()
        }
    };
    (admitted, left)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/leases.txt"))),
        ..ProptestConfig::default()
    })]

    /// Over any interval of `d` ms the replicas admit at most
    /// `burst + floor((d + max_lag) / T)`; credits are never over-spent and
    /// come back exactly: a key's, or an owner's shared by 3 keys.
    #[test]
    fn replicas_keep_the_rate_bound_and_exact_credits(
        arrivals in arrivals(),
        max_lag_ms in prop_oneof![Just(0i64), Just(50), Just(300), Just(1000)],
        mode in prop_oneof![Just(Mode::Leases), Just(Mode::Ahead)],
        shared in any::<bool>(),
    ) {
        let (admitted, left) = run(&arrivals, Duration::milliseconds(max_lag_ms), mode, shared);
        prop_assert_eq!(admitted.len() as u64 + left, CREDITS);
        for (i, &from) in admitted.iter().enumerate() {
            for (j, &to) in admitted.iter().enumerate().skip(i) {
                let bound = BURST + (to - from + max_lag_ms) / T_MS;
                prop_assert!(
                    (j - i + 1) as i64 <= bound,
                    "{} admitted within {} ms (bound {})", j - i + 1, to - from, bound
                );
            }
        }
    }

    /// With `max_lag = 0` leasing is off: every decision is the exact
    /// path's.
    #[test]
    fn no_lag_is_the_exact_path(arrivals in arrivals(), shared in any::<bool>()) {
        let exact = run(&arrivals, Duration::milliseconds(50), Mode::Exact, shared);
        prop_assert_eq!(run(&arrivals, Duration::ZERO, Mode::Leases, shared), exact.clone());
        prop_assert_eq!(run(&arrivals, Duration::ZERO, Mode::Ahead, shared), exact);
    }
}
