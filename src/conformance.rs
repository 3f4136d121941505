//! A conformance suite for [`KeyStore`] backends (feature `conformance`).
//!
//! Each public function checks one behaviour of the store contract (see
//! [`KeyStore`]) on a fresh, empty store and panics, naming the behaviour and
//! what it saw, on a violation. [`run_all`] runs them all, each on a new
//! store that `make` resolves to.
//!
//! The suite spawns nothing: its races join concurrent futures, so it runs
//! under any executor, a plain `block_on` included. Races between threads
//! are each store's own tests to prove.
//!
//! # Example
//!
//! ```
//! use keyroll::store::InMemoryStore;
//!
//! pollster::block_on(keyroll::conformance::run_all(|| async { InMemoryStore::new() }));
//! ```
//!
//! A store whose making waits (a table to create) makes it in `make`:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_store_conforms() {
//!     keyroll::conformance::run_all(|| MyStore::connect_to_a_fresh_table()).await;
//! }
//! ```
//!
//! The suite is not covered by semver: a release may add behaviours (that
//! a store which kept the contract already has) or tighten one, and a store
//! that passed may then fail. Pin keyroll's version in your backend's
//! dev-dependencies and read the CHANGELOG when you move it.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use rand::SeedableRng;
use rand::rngs::StdRng;
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::entry::{Entry, EntryState};
use crate::meter::{Allowance, Credits, RateLimit, Refill, Refusal, Subject};
use crate::store::{KeyStore, Revision, StoreError, UsageRow, Verification};
use crate::{
    ApiKey, Change, KeyId, NewKey, OldTokenDeletion, OwnerId, OwnerLimits, Policy, PresentedToken,
    RenewalEnforcement, Token, TokenFormat,
};

/// Panics naming the behaviour that was violated.
fn violated(behaviour: &str, what: impl std::fmt::Display) -> ! {
    panic!("store conformance: {behaviour}: {what}")
}

fn ok<T, E: Debug>(behaviour: &str, call: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| violated(behaviour, format_args!("{call} failed: {e:?}")))
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn key_id(id: &str) -> KeyId {
    KeyId::new(id).unwrap_or_else(|e| unreachable!("test id {id:?}: {e}"))
}

fn issue_new(new: NewKey, at: OffsetDateTime, seed: u64) -> (ApiKey, Token) {
    let (key, token, _) =
        ApiKey::issue(new, at, &mut rng(seed)).unwrap_or_else(|e| unreachable!("{e}"));
    (key, token)
}

fn issue(id: &str, seed: u64) -> (ApiKey, Token) {
    issue_new(
        NewKey::new(key_id(id)).label(format!("label of {id}")),
        t0(),
        seed,
    )
}

/// Keys in every state and shape, with tokens and how each verified.
fn sample_keys() -> Vec<(ApiKey, Vec<Token>)> {
    let mut out = Vec::new();
    let (key, token) = issue("single", 1);
    out.push((key, vec![token]));

    let (mut key, old) = issue("renewing", 2);
    let (new, _) = key
        .renew(t0() + Duration::days(3), &mut rng(3))
        .unwrap_or_else(|e| unreachable!("{e}"));
    out.push((key, vec![old, new]));

    let (mut key, old) = issue("renewing-later-inactive", 4);
    let later = t0() + Duration::days(5);
    let (new, _) = key
        .renew(later, &mut rng(5))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let _ = key.finalize(OldTokenDeletion::Later, later);
    let _ = key.apply(Change::Deactivate, later);
    out.push((key, vec![old, new]));

    // Used by its old token, which is then deleted: the key keeps the use.
    let (mut key, old) = issue("used-then-deleted", 7);
    let used = t0() + Duration::days(2);
    let (new, _) = key
        .renew(t0() + Duration::days(1), &mut rng(8))
        .unwrap_or_else(|e| unreachable!("{e}"));
    key.record_use(crate::TokenMatch::Old, used);
    let _ = key.delete_old(used);
    drop(old);
    out.push((key, vec![new]));

    let policy = Policy {
        token_format: TokenFormat::new("acme9").unwrap_or_else(|e| unreachable!("{e}")),
        renewal_period: Duration::new(86_399, 999_999_999),
        enforcement: RenewalEnforcement::Enforced,
        usage_resolution: Duration::milliseconds(1500),
    };
    let odd_time = (t0() + Duration::nanoseconds(123_456_789))
        .to_offset(UtcOffset::from_hms(5, 30, 0).unwrap_or(UtcOffset::UTC));
    let long_id = "x".repeat(64);
    let new = NewKey::new(key_id(&long_id))
        .label("ünïcødé \"quotes\" \\ 🔑")
        .policy(policy);
    let (key, token) = issue_new(new, odd_time, 6);
    out.push((key, vec![token]));
    out
}

/// Polls all `futures` concurrently until every one is done.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Checks that the stored copy of `expected` is equal to it.
async fn assert_stored<S: KeyStore>(store: &S, behaviour: &str, expected: &ApiKey) {
    let stored = ok(behaviour, "get", store.get(expected.id()).await);
    match stored {
        Some(stored) if stored == *expected => {}
        Some(stored) => violated(
            behaviour,
            format_args!(
                "get({}) returned version {} ({:?}), expected version {} ({:?})",
                expected.id(),
                stored.version(),
                stored.state(),
                expected.version(),
                expected.state()
            ),
        ),
        None => violated(
            behaviour,
            format_args!(
                "get({}) returned None after a successful write",
                expected.id()
            ),
        ),
    }
}

/// The store's `verify` of `presented` (a well-formed token).
async fn store_verify<S: KeyStore>(
    store: &S,
    behaviour: &str,
    id: &KeyId,
    presented: &str,
    now: OffsetDateTime,
) -> Verification {
    let token = PresentedToken::parse(presented)
        .unwrap_or_else(|e| violated(behaviour, format_args!("a sample token: {e}")));
    ok(behaviour, "verify", store.verify(id, &token, now).await)
}

/// What the key answers to `presented`, as a store should.
fn expected(key: &ApiKey, presented: &str, now: OffsetDateTime) -> Verification {
    let token = PresentedToken::parse(presented).unwrap_or_else(|e| unreachable!("{e}"));
    Verification::of(Some(key), &token, now)
}

async fn get_missing_returns_none_body<S: KeyStore>(store: S) {
    const B: &str = "get_missing_returns_none";
    let found = ok(B, "get", store.get(&key_id("nobody")).await);
    if let Some(key) = found {
        violated(
            B,
            format_args!("get of a key never stored returned {}", key.id()),
        );
    }
    let (_, token) = issue("nobody", 0);
    let verified = store_verify(&store, B, &key_id("nobody"), token.expose_secret(), t0()).await;
    if verified != Verification::UnknownKey {
        violated(
            B,
            format_args!("verify of a key never stored gave {verified:?}, not UnknownKey"),
        );
    }
}

async fn insert_then_get_round_trips_body<S: KeyStore>(store: S) {
    const B: &str = "insert_then_get_round_trips";
    for (key, tokens) in sample_keys() {
        ok(B, "insert", store.insert(&key, &[]).await);
        assert_stored(&store, B, &key).await;
        let reloaded =
            ok(B, "get", store.get(key.id()).await).unwrap_or_else(|| violated(B, "key vanished"));
        for token in &tokens {
            for now in [t0(), t0() + Duration::days(5)] {
                let expected = expected(&key, token.expose_secret(), now);
                let verified = key.verify(token.expose_secret(), now);
                let seen = reloaded.verify(token.expose_secret(), now);
                if seen != verified {
                    violated(
                        B,
                        format_args!(
                            "a token of {} verified {seen:?} after reload, {verified:?} before",
                            key.id()
                        ),
                    );
                }
                let via_store = store_verify(&store, B, key.id(), token.expose_secret(), now).await;
                if via_store != expected {
                    violated(
                        B,
                        format_args!(
                            "store verify of {} gave {via_store:?}, the key gave {expected:?}",
                            key.id()
                        ),
                    );
                }
            }
        }
    }
}

async fn insert_existing_is_refused_body<S: KeyStore>(store: S) {
    const B: &str = "insert_existing_is_refused";
    let (original, _) = issue("taken", 10);
    ok(B, "insert", store.insert(&original, &[]).await);
    let (mut other, _) = issue("taken", 11);
    let _ = other.apply(Change::Deactivate, t0());
    match store.insert(&other, &[]).await {
        Err(StoreError::AlreadyExists) => {}
        Ok(()) => violated(
            B,
            "a second insert of the same id succeeded (it must be AlreadyExists)",
        ),
        Err(e) => violated(
            B,
            format_args!("a second insert of the same id gave {e:?}, not AlreadyExists"),
        ),
    }
    assert_stored(&store, B, &original).await;
}

async fn update_persists_body<S: KeyStore>(store: S) {
    const B: &str = "update_persists";
    let (mut key, first) = issue("updated", 20);
    ok(B, "insert", store.insert(&key, &[]).await);
    let mut r = rng(21);
    for step in 0..12u32 {
        let now = t0() + Duration::hours(i64::from(step));
        let loaded = key.revision();
        let changed = match step % 6 {
            0 => key.renew(now, &mut r).map(|_| ()),
            1 => key.finalize(OldTokenDeletion::Later, now).map(|_| ()),
            2 => key.apply(Change::Deactivate, now).map(|_| ()),
            3 => key.undo_renewal(now).map(|_| ()),
            4 => key.apply(Change::Activate, now).map(|_| ()),
            _ => key
                .renew(now, &mut r)
                .and_then(|_| key.delete_old(now))
                .map(|_| ()),
        };
        if changed.is_err() {
            unreachable!("the sequence is valid");
        }
        ok(B, "update", store.update(&key, loaded, &[]).await);
        assert_stored(&store, B, &key).await;
        // The first token's fate follows the key's (current, old, refused).
        let expected = expected(&key, first.expose_secret(), now);
        let seen = store_verify(&store, B, key.id(), first.expose_secret(), now).await;
        if seen != expected {
            violated(
                B,
                format_args!(
                    "after update {step}, verify gave {seen:?}, the key gives {expected:?}"
                ),
            );
        }
    }
}

/// Checks that `result`, a write expecting `expected`, was refused with
/// `Conflict { expected, found }`.
fn expect_conflict<E: Debug>(
    behaviour: &str,
    what: impl std::fmt::Display,
    result: Result<(), StoreError<E>>,
    expected: Revision,
    found: Revision,
) {
    match result {
        Err(StoreError::Conflict {
            expected: e,
            found: f,
        }) if e == expected && f == found => {}
        Err(StoreError::Conflict {
            expected: e,
            found: f,
        }) => violated(
            behaviour,
            format_args!(
                "{what} reported Conflict {{ expected: {e}, found: {f} }}, not {{ expected: {expected}, found: {found} }}"
            ),
        ),
        Ok(()) => violated(behaviour, format_args!("{what} succeeded")),
        Err(e) => violated(behaviour, format_args!("{what} gave {e:?}, not Conflict")),
    }
}

/// Revisions a write must not accept when the stored key is at `stored`:
/// other versions of it, and its version in other incarnations.
fn wrong_revisions(stored: Revision) -> [Revision; 5] {
    let (incarnation, version) = (stored.incarnation(), stored.version());
    [
        Revision::new(incarnation, version - 1),
        Revision::new(incarnation, version + 1),
        Revision::new(incarnation, 0),
        Revision::new(incarnation ^ 1, version),
        Revision::new(0, version),
    ]
}

async fn update_checks_the_revision_body<S: KeyStore>(store: S) {
    const B: &str = "update_checks_the_revision";
    let (mut key, _) = issue("versioned", 30);
    ok(B, "insert", store.insert(&key, &[]).await);
    let issued = key.revision();
    let _ = key.apply(Change::Deactivate, t0());
    ok(B, "update", store.update(&key, issued, &[]).await);
    let stored = key.clone();
    let _ = key.apply(Change::Activate, t0());
    for wrong in wrong_revisions(stored.revision()) {
        let result = store.update(&key, wrong, &[]).await;
        expect_conflict(
            B,
            format_args!(
                "update expecting {wrong} over revision {}",
                stored.revision()
            ),
            result,
            wrong,
            stored.revision(),
        );
        assert_stored(&store, B, &stored).await;
    }
    // A key of another incarnation (another key under the same id) never
    // replaces this one, even when it names the stored revision.
    let (mut impostor, _) = issue("versioned", 31);
    let _ = impostor.apply(Change::Deactivate, t0());
    let _ = impostor.apply(Change::Activate, t0());
    let result = store.update(&impostor, stored.revision(), &[]).await;
    expect_conflict(
        B,
        "update of a key of another incarnation, expecting the stored revision,",
        result,
        stored.revision(),
        stored.revision(),
    );
    assert_stored(&store, B, &stored).await;
}

async fn update_missing_is_not_found_body<S: KeyStore>(store: S) {
    const B: &str = "update_missing_is_not_found";
    let (key, _) = issue("ghost", 40);
    match store.update(&key, key.revision(), &[]).await {
        Err(StoreError::NotFound) => {}
        other => violated(
            B,
            format_args!("update of a key never stored gave {other:?}, not NotFound"),
        ),
    }
    if ok(B, "get", store.get(key.id()).await).is_some() {
        violated(B, "update of a missing key created it");
    }
}

async fn delete_removes_the_key_body<S: KeyStore>(store: S) {
    const B: &str = "delete_removes_the_key";
    let (key, token) = issue("doomed", 50);
    let (neighbour, _) = issue("neighbour", 51);
    ok(B, "insert", store.insert(&key, &[]).await);
    ok(B, "insert", store.insert(&neighbour, &[]).await);
    ok(
        B,
        "delete",
        store.delete(key.id(), key.revision(), &[]).await,
    );
    if ok(B, "get", store.get(key.id()).await).is_some() {
        violated(B, "get returned a deleted key");
    }
    let seen = store_verify(&store, B, key.id(), token.expose_secret(), t0()).await;
    if seen != Verification::UnknownKey {
        violated(
            B,
            format_args!("verify of a deleted key gave {seen:?}, not UnknownKey"),
        );
    }
    if ok(B, "list", store.list(None, 100).await)
        .iter()
        .any(|k| k.id() == key.id())
    {
        violated(B, "list returned a deleted key");
    }
    assert_stored(&store, B, &neighbour).await;
    match store.delete(key.id(), key.revision(), &[]).await {
        Err(StoreError::NotFound) => {}
        other => violated(
            B,
            format_args!("a second delete gave {other:?}, not NotFound"),
        ),
    }
    match store.update(&key, key.revision(), &[]).await {
        Err(StoreError::NotFound) => {}
        other => violated(
            B,
            format_args!("update of a deleted key gave {other:?}, not NotFound"),
        ),
    }
    ok(B, "insert after delete", store.insert(&key, &[]).await);
    assert_stored(&store, B, &key).await;
}

async fn delete_checks_the_revision_body<S: KeyStore>(store: S) {
    const B: &str = "delete_checks_the_revision";
    let (mut key, _) = issue("guarded", 60);
    ok(B, "insert", store.insert(&key, &[]).await);
    let issued = key.revision();
    let _ = key.apply(Change::Deactivate, t0());
    ok(B, "update", store.update(&key, issued, &[]).await);
    for wrong in wrong_revisions(key.revision()) {
        let result = store.delete(key.id(), wrong, &[]).await;
        expect_conflict(
            B,
            format_args!("delete expecting {wrong} over revision {}", key.revision()),
            result,
            wrong,
            key.revision(),
        );
        assert_stored(&store, B, &key).await;
    }
}

/// A key, a changed copy of it as a writer that loaded it would hold, and
/// the same id issued again after the key was deleted (another
/// incarnation, back at version 1).
async fn deleted_and_recreated<S: KeyStore>(
    store: &S,
    behaviour: &str,
    id: &str,
) -> (ApiKey, ApiKey) {
    let (original, _) = issue(id, 90);
    ok(behaviour, "insert", store.insert(&original, &[]).await);
    let mut stale = original.clone();
    let _ = stale.record_use(crate::TokenMatch::Current, t0());
    ok(
        behaviour,
        "delete",
        store.delete(original.id(), original.revision(), &[]).await,
    );
    match store.update(&stale, original.revision(), &[]).await {
        Err(StoreError::NotFound) => {}
        other => violated(
            behaviour,
            format_args!("update of a deleted key gave {other:?}, not NotFound"),
        ),
    }
    let (recreated, _) = issue(id, 91);
    if recreated.revision().incarnation() == original.revision().incarnation() {
        unreachable!("seeds 90 and 91 draw different incarnations");
    }
    ok(behaviour, "insert", store.insert(&recreated, &[]).await);
    (stale, recreated)
}

async fn stale_update_after_recreate_is_refused_body<S: KeyStore>(store: S) {
    const B: &str = "stale_update_after_recreate_is_refused";
    let (stale, recreated) = deleted_and_recreated(&store, B, "reborn").await;
    // The stale writer expects the revision it loaded: version 1 of the old
    // incarnation. Versions alone would match the new key's.
    let loaded = Revision::new(stale.revision().incarnation(), 1);
    let result = store.update(&stale, loaded, &[]).await;
    expect_conflict(
        B,
        format_args!(
            "a stale update expecting {loaded}, after the id was deleted and created again,"
        ),
        result,
        loaded,
        recreated.revision(),
    );
    assert_stored(&store, B, &recreated).await;
}

async fn stale_delete_after_recreate_is_refused_body<S: KeyStore>(store: S) {
    const B: &str = "stale_delete_after_recreate_is_refused";
    let (stale, recreated) = deleted_and_recreated(&store, B, "reborn").await;
    let loaded = Revision::new(stale.revision().incarnation(), 1);
    let result = store.delete(recreated.id(), loaded, &[]).await;
    expect_conflict(
        B,
        format_args!(
            "a stale delete expecting {loaded}, after the id was deleted and created again,"
        ),
        result,
        loaded,
        recreated.revision(),
    );
    assert_stored(&store, B, &recreated).await;
}

async fn list_is_ordered_after_and_limited_body<S: KeyStore>(store: S) {
    const B: &str = "list_is_ordered_after_and_limited";
    // Byte order, which a locale-aware collation gets wrong (ids start
    // with a letter or digit; the punctuation comes second).
    let mut sorted = [
        "0", "9", "A", "B", "Z", "a", "a-", "a.", "a_", "a-b", "aa", "ab", "b", "z", "zz",
    ];
    let shuffled = [
        "ab", "Z", "a-", "zz", "a", "9", "a_", "B", "aa", "a.", "z", "0", "b", "A", "a-b",
    ];
    for (i, id) in shuffled.iter().enumerate() {
        ok(
            B,
            "insert",
            store.insert(&issue(id, 70 + i as u64).0, &[]).await,
        );
    }
    sorted.sort_unstable();
    let ids = |keys: Vec<ApiKey>| keys.iter().map(|k| k.id().to_string()).collect::<Vec<_>>();
    let expect = |seen: Vec<String>, want: &[&str], call: &str| {
        if seen != want {
            violated(
                B,
                format_args!("{call} returned {seen:?}, expected {want:?}"),
            );
        }
    };

    expect(
        ids(ok(B, "list", store.list(None, 100).await)),
        &sorted,
        "list(None, 100)",
    );
    expect(
        ids(ok(B, "list", store.list(None, 3).await)),
        &sorted[..3],
        "list(None, 3)",
    );
    expect(
        ids(ok(B, "list", store.list(None, 0).await)),
        &[],
        "list(None, 0)",
    );
    expect(
        ids(ok(B, "list", store.list(Some(&key_id("a")), 3).await)),
        &["a-", "a-b", "a."],
        "list(Some(\"a\"), 3)",
    );
    expect(
        ids(ok(B, "list", store.list(Some(&key_id("ac")), 100).await)),
        &["b", "z", "zz"],
        "list(Some(\"ac\"), 100)",
    );
    expect(
        ids(ok(B, "list", store.list(Some(&key_id("zz")), 100).await)),
        &[],
        "list(Some(\"zz\"), 100)",
    );

    let mut paged = Vec::new();
    let mut after: Option<KeyId> = None;
    loop {
        let page = ok(B, "list", store.list(after.as_ref(), 4).await);
        if page.len() > 4 {
            violated(
                B,
                format_args!("list with limit 4 returned {} keys", page.len()),
            );
        }
        let Some(last) = page.last() else { break };
        after = Some(last.id().clone());
        paged.extend(ids(page));
    }
    expect(paged, &sorted, "paging with limit 4");

    for listed in ok(B, "list", store.list(None, 100).await) {
        assert_stored(&store, B, &listed).await;
    }
}

/// What racing writes returned, one result per racer.
type RaceResults<E> = Vec<Result<(), StoreError<E>>>;

/// Checks the outcome of racing writes: exactly one success, the rest
/// `expected_loser`, and the stored key equal to the winner's.
async fn check_race<S: KeyStore>(
    store: &S,
    behaviour: &str,
    results: RaceResults<S::Error>,
    candidates: &[ApiKey],
) {
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    if winners.len() != 1 {
        violated(
            behaviour,
            format_args!(
                "{} of {} racing writes succeeded; exactly one must",
                winners.len(),
                results.len()
            ),
        );
    }
    for result in &results {
        if let Err(e) = result
            && !matches!(e, StoreError::Conflict { .. } | StoreError::AlreadyExists)
        {
            violated(
                behaviour,
                format_args!("a losing racer got {e:?}, not Conflict or AlreadyExists"),
            );
        }
    }
    assert_stored(store, behaviour, &candidates[winners[0]]).await;
}

const RACERS: usize = 8;
const ROUNDS: u64 = 16;

/// Candidate keys for a race: each a different successor of `key`.
fn successors(key: &ApiKey, round: u64) -> Vec<ApiKey> {
    (0..RACERS as u64)
        .map(|i| {
            let mut next = key.clone();
            let _ = next
                .renew(t0(), &mut rng(round * 100 + i))
                .and_then(|_| next.delete_old(t0()));
            next
        })
        .collect()
}

/// Racing `update`s from one version: exactly one wins (`race` runs them).
async fn updates_race_body<S, F>(store: &S, race: F)
where
    S: KeyStore,
    F: AsyncFn(&S, &[ApiKey], Revision) -> RaceResults<S::Error>,
{
    const B: &str = "concurrent_updates_have_one_winner";
    let (mut key, _) = issue("contended", 80);
    ok(B, "insert", store.insert(&key, &[]).await);
    for round in 0..ROUNDS {
        let candidates = successors(&key, round);
        let results = race(store, &candidates, key.revision()).await;
        check_race(store, B, results, &candidates).await;
        key =
            ok(B, "get", store.get(key.id()).await).unwrap_or_else(|| violated(B, "key vanished"));
    }
}

/// Racing `insert`s of one id: exactly one wins (`race` runs them).
async fn inserts_race_body<S, F>(store: &S, race: F)
where
    S: KeyStore,
    F: AsyncFn(&S, &[ApiKey], Revision) -> RaceResults<S::Error>,
{
    const B: &str = "concurrent_inserts_have_one_winner";
    for round in 0..ROUNDS {
        let id = format!("born-{round}");
        let candidates: Vec<ApiKey> = (0..RACERS as u64)
            .map(|i| issue(&id, round * 100 + i).0)
            .collect();
        let results = race(store, &candidates, Revision::new(0, 0)).await;
        check_race(store, B, results, &candidates).await;
    }
}

/// Async racers: concurrent futures.
async fn future_race<S: KeyStore>(
    store: &S,
    candidates: &[ApiKey],
    expected: Revision,
    insert: bool,
) -> RaceResults<S::Error> {
    join_all(
        candidates
            .iter()
            .map(|key| async move {
                if insert {
                    store.insert(key, &[]).await
                } else {
                    store.update(key, expected, &[]).await
                }
            })
            .collect(),
    )
    .await
}

/// Declares each behaviour's public entry point.
macro_rules! behaviours {
    ($($(#[$doc:meta])* $name:ident => $body:ident;)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Panics
            ///
            /// On a violation, naming the behaviour and what was seen.
            pub async fn $name<S: KeyStore>(store: S) {
                $body(store).await;
            }
        )*

        /// Runs every behaviour, each on a fresh store that `make` resolves
        /// to (making one may wait: create a table, say).
        ///
        /// # Panics
        ///
        /// At the first violation, naming the behaviour and what was seen.
        pub async fn run_all<S, F>(mut make: impl FnMut() -> F)
        where
            S: KeyStore,
            F: Future<Output = S>,
        {
            $($name(make().await).await;)*
            concurrent_updates_have_one_winner(make().await).await;
            concurrent_inserts_have_one_winner(make().await).await;
        }
    };
}

behaviours! {
    /// `get` and `verify` of an id never stored return `None` and
    /// `UnknownKey`.
    get_missing_returns_none => get_missing_returns_none_body;
    /// Keys in every state (renewing, decided, inactive, enforced, custom
    /// prefix, sub-second dates, non-UTC offsets, long ids, unicode labels)
    /// load back equal, and their tokens verify as before, also through the
    /// store's own `verify`.
    insert_then_get_round_trips => insert_then_get_round_trips_body;
    /// `insert` of a taken id is `AlreadyExists` and leaves the stored key alone.
    insert_existing_is_refused => insert_existing_is_refused_body;
    /// Each `update` with the loaded version is persisted and read back at
    /// once, and `verify` follows it.
    update_persists => update_persists_body;
    /// `update` expecting any other revision (another version, or another
    /// incarnation), or of a key of another incarnation, is
    /// `Conflict { expected, found }` and changes nothing.
    update_checks_the_revision => update_checks_the_revision_body;
    /// `update` of a missing key is `NotFound` and creates nothing.
    update_missing_is_not_found => update_missing_is_not_found_body;
    /// `delete` removes the key from `get`, `list` and `verify`, then
    /// `NotFound`; the id can be reused.
    delete_removes_the_key => delete_removes_the_key_body;
    /// `delete` expecting another revision is `Conflict` and keeps the key.
    delete_checks_the_revision => delete_checks_the_revision_body;
    /// After a key is deleted and its id issued again (versions restart at
    /// 1), an `update` from a copy loaded before the delete is `Conflict`,
    /// and the new key stays; before the re-create it is `NotFound`.
    stale_update_after_recreate_is_refused => stale_update_after_recreate_is_refused_body;
    /// The same for a `delete` expecting the old key's revision.
    stale_delete_after_recreate_is_refused => stale_delete_after_recreate_is_refused_body;
    /// `list` orders by id bytes, starts strictly after `after`, returns at
    /// most `limit`, and pages through every key once.
    list_is_ordered_after_and_limited => list_is_ordered_after_and_limited_body;
    /// Concurrent charges on one key admit exactly `min(credits, attempts)`,
    /// and never leave a negative balance; with a frozen `now`, exactly
    /// `burst`.
    concurrent_charges_are_exact => concurrent_charges_are_exact_body;
    /// A charge changes neither the key nor its revision; a refused one
    /// changes nothing; `update` keeps the meter (also through a write that
    /// removes every limit, so a rate limit set again finds its bucket as
    /// it was), and credits set again start the balance over; a key
    /// without limits admits anything.
    charges_leave_the_key_alone => charges_leave_the_key_alone_body;
    /// `charge` of a missing key, or of another incarnation, is `NotFound`;
    /// a key deleted and created again starts with a full meter.
    meters_follow_the_key => meters_follow_the_key_body;
    /// `list_owned` returns one owner's keys, in id order, after `after`, at
    /// most `limit`; it follows an owner set, changed or removed by
    /// `update`, and a `delete`.
    owners_are_listed => owners_are_listed_body;
    /// `add_usage` adds each row's counts to its key's, incarnation's and
    /// hour's (never replaces them); `usage` reads one incarnation's hours
    /// in a half-open range, in order; `delete` drops the key's counts;
    /// `prune_usage(before)` drops exactly the hours before `before`.
    usage_counts_add_up => usage_counts_add_up_body;
    /// Through a [`KeyManager`](crate::KeyManager) with usage recording:
    /// after a flush, each key's counts of accepted, rate-limited,
    /// usage-exceeded and refused authentications are exactly the requests
    /// made; an unknown key's and a malformed token's are not counted.
    counted_outcomes_are_exact_after_a_flush => counted_outcomes_are_exact_after_a_flush_body;
    /// A marker set reads back to the microsecond, and setting it again
    /// keeps the first instant; clearing it reads `None`; markers are kept
    /// apart by name, and keys do not touch them.
    markers_are_kept => markers_are_kept_body;
    /// A key's networks load back as set, and through a
    /// [`KeyManager`](crate::KeyManager) over the store (its `verify`
    /// answering with them) a valid token is refused from outside them or
    /// without an address, `NetworkNotAllowed`, charging nothing, and
    /// admitted from inside them.
    networks_are_enforced => networks_are_enforced_body;
    /// `refund` gives credits a charge took back into the refill period
    /// it took them in, up to what the period started with; a refund of
    /// an earlier period (a refill came since), of credits set again since,
    /// or of a key that is not stored, changes nothing.
    refunds_stay_in_their_period => refunds_stay_in_their_period_body;
    /// Owner limits are stored beside the keys: `owner_limits` reads back
    /// what `set_owner_limits` stored, which refuses any other `expected`
    /// version with `Conflict`. A charge of an owned key charges the key's
    /// meter and the owner's, both or neither: a refusal by either changes
    /// neither meter and names its subject; a key without limits of its
    /// own is charged to its owner's alone, and `verify` marks it metered;
    /// an admitted charge's allowance has the owner's part.
    owner_meters_are_both_or_neither => owner_meters_are_both_or_neither_body;
    /// Concurrent charges of three keys of one owner admit exactly the
    /// owner's credits.
    owner_charges_are_exact => owner_charges_are_exact_body;
    /// Owner limits outlive the owner's keys: a key deleted and created
    /// again under the owner finds the owner's meter as it was. Cleared
    /// limits (empty, the next version) charge no owner meter, and
    /// `verify` no longer marks a key without limits of its own as
    /// metered. `refund_owner` gives credits back into their period.
    owner_limits_outlive_keys_and_clear => owner_limits_outlive_keys_and_clear_body;
    /// Each write stores its events as pending outbox entries, in order,
    /// with unique ids growing per key: `insert`, `update`, `delete` and
    /// `set_owner_limits` that succeed leave one entry per event, and
    /// those refused (a taken id, a stale revision, a stale owner limits
    /// version) leave none.
    outbox_keeps_each_write_s_events => outbox_keeps_each_write_s_events_body;
    /// `claim_outbox` returns due pending entries in id order, holds them
    /// (a second claim before the hold ends takes none of them), and skips
    /// an entry while an earlier pending one of its key is held or backing
    /// off; `update_outbox` stores delivery, retries and parking;
    /// `outbox` lists by state after an id; `outbox_counts` counts
    /// pending and parked entries; `prune_outbox` drops entries delivered
    /// before the instant, and nothing else.
    outbox_claims_hold_and_keep_order => outbox_claims_hold_and_keep_order_body;
    /// `outbox_of` lists one subject's entries (a key's, or `owner:` and
    /// an owner's), newest first, delivered or not, before an id and
    /// limited, and no other subject's.
    outbox_lists_a_subject_s_entries => outbox_lists_a_subject_s_entries_body;
}

/// The events of a fresh key `id` (issued at `t0() + n`): issued, then a
/// label change, for writes that carry events.
fn events_of(key: &mut ApiKey, n: i64) -> crate::Event {
    key.apply(
        Change::Label(format!("label {n}")),
        t0() + Duration::seconds(n),
    )
    .unwrap_or_else(|e| unreachable!("{e}"))
}

/// Owner `acme`'s first limits (5 credits), and the event of setting them.
fn acme_limits() -> (OwnerId, crate::OwnerLimits, crate::Event) {
    let acme = owner("acme");
    let changed = crate::Event::OwnerLimitsChanged {
        owner: acme.clone(),
        at: t0(),
        version: 1,
        rate_limit: None,
        credits: Some(Credits::new(5)),
    };
    let limits = OwnerLimits::new()
        .credits(Credits::new(5))
        .stamped(None, t0());
    (acme, limits, changed)
}

async fn outbox_keeps_each_write_s_events_body<S: KeyStore>(store: S) {
    const B: &str = "outbox_keeps_each_write_s_events";
    let (mut key, _, issued) = ApiKey::issue(key_id("outboxed"), t0(), &mut rng(1))
        .unwrap_or_else(|e| unreachable!("{e}"));
    ok(
        B,
        "insert",
        store.insert(&key, std::slice::from_ref(&issued)).await,
    );
    let (twin, _, twin_issued) = ApiKey::issue(key_id("outboxed"), t0(), &mut rng(2))
        .unwrap_or_else(|e| unreachable!("{e}"));
    if store.insert(&twin, &[twin_issued]).await.is_ok() {
        violated(B, "insert of a taken id succeeded");
    }
    let loaded = key.revision();
    let labelled = events_of(&mut key, 1);
    ok(
        B,
        "update",
        store
            .update(&key, loaded, std::slice::from_ref(&labelled))
            .await,
    );
    let mut stale = key.clone();
    let refused = events_of(&mut stale, 2);
    if store.update(&stale, loaded, &[refused]).await.is_ok() {
        violated(B, "update from a stale revision succeeded");
    }
    let deleted = key
        .clone()
        .delete(t0() + Duration::seconds(3))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let stale_delete = store
        .delete(key.id(), loaded, std::slice::from_ref(&deleted))
        .await;
    if stale_delete.is_ok() {
        violated(B, "delete from a stale revision succeeded");
    }
    ok(
        B,
        "delete",
        store
            .delete(key.id(), key.revision(), std::slice::from_ref(&deleted))
            .await,
    );
    let (acme, limits, changed) = acme_limits();
    let set = store.set_owner_limits(&acme, &limits, 0, std::slice::from_ref(&changed));
    ok(B, "set_owner_limits", set.await);
    let again = store.set_owner_limits(&acme, &limits, 0, std::slice::from_ref(&changed));
    if again.await.is_ok() {
        violated(B, "set_owner_limits expecting a stale version succeeded");
    }
    let pending = ok(
        B,
        "outbox",
        store.outbox(EntryState::Pending, None, 100).await,
    );
    let events: Vec<&crate::Event> = pending.iter().map(|entry| &entry.event).collect();
    let expected = [&issued, &labelled, &deleted, &changed];
    if events != expected {
        violated(
            B,
            format_args!("the outbox holds {events:?}, expected the written events {expected:?}"),
        );
    }
    if !pending.windows(2).all(|pair| pair[0].id < pair[1].id) {
        violated(B, "entry ids do not grow with the writes");
    }
    if let Some(entry) = pending.iter().find(|entry| {
        entry.attempts != 0
            || entry.delivered_at.is_some()
            || entry.next_attempt_at > entry.event.at()
    }) {
        violated(
            B,
            format_args!("a new entry is not fresh and due: {entry:?}"),
        );
    }
    let counts = ok(B, "outbox_counts", store.outbox_counts().await);
    if (counts.pending, counts.parked) != (4, 0) {
        violated(
            B,
            format_args!("outbox_counts says {counts:?} for 4 pending entries"),
        );
    }
}

async fn outbox_lists_a_subject_s_entries_body<S: KeyStore>(store: S) {
    const B: &str = "outbox_lists_a_subject_s_entries";
    let mut written = Vec::new();
    for (name, seed) in [("listed-a", 1), ("listed-b", 2)] {
        let (mut key, _, issued) = ApiKey::issue(key_id(name), t0(), &mut rng(seed))
            .unwrap_or_else(|e| unreachable!("{e}"));
        ok(
            B,
            "insert",
            store.insert(&key, std::slice::from_ref(&issued)).await,
        );
        let loaded = key.revision();
        let labelled = events_of(&mut key, seed as i64);
        let update = store.update(&key, loaded, std::slice::from_ref(&labelled));
        ok(B, "update", update.await);
        written.push([issued, labelled]);
    }
    let (acme, limits, changed) = acme_limits();
    let set = store.set_owner_limits(&acme, &limits, 0, std::slice::from_ref(&changed));
    ok(B, "set_owner_limits", set.await);
    // The first entry delivered: listed all the same.
    let mut claimed = ok(
        B,
        "claim_outbox",
        store
            .claim_outbox(1, t0() + Duration::minutes(1), Duration::minutes(1))
            .await,
    );
    for entry in &mut claimed {
        entry.state = EntryState::Delivered;
        entry.delivered_at = Some(t0() + Duration::minutes(1));
    }
    ok(B, "update_outbox", store.update_outbox(&claimed).await);

    let events = |entries: &[crate::outbox::Entry]| -> Vec<crate::Event> {
        entries.iter().map(|entry| entry.event.clone()).collect()
    };
    let [issued, labelled] = &written[0];
    let all = ok(B, "outbox_of", store.outbox_of("listed-a", None, 10).await);
    let newest_first = vec![labelled.clone(), issued.clone()];
    if events(&all) != newest_first {
        violated(
            B,
            format_args!(
                "outbox_of(listed-a) lists {:?}, expected its events newest first, the delivered one too: {newest_first:?}",
                events(&all)
            ),
        );
    }
    let first = ok(B, "outbox_of", store.outbox_of("listed-a", None, 1).await);
    if events(&first) != [labelled.clone()] {
        violated(
            B,
            "outbox_of with limit 1 does not list the newest entry alone",
        );
    }
    let before = store.outbox_of("listed-a", Some(all[0].id), 10).await;
    if events(&ok(B, "outbox_of", before)) != [issued.clone()] {
        violated(
            B,
            "outbox_of before the newest entry's id does not list the older one alone",
        );
    }
    let owned = ok(
        B,
        "outbox_of",
        store.outbox_of("owner:acme", None, 10).await,
    );
    if events(&owned) != [changed] {
        violated(
            B,
            format_args!("outbox_of(owner:acme) lists {:?}", events(&owned)),
        );
    }
    let none = ok(B, "outbox_of", store.outbox_of("listed-c", None, 10).await);
    if !none.is_empty() {
        violated(
            B,
            format_args!("outbox_of a key with no writes lists {none:?}"),
        );
    }
}

async fn outbox_claims_hold_and_keep_order_body<S: KeyStore>(store: S) {
    const B: &str = "outbox_claims_hold_and_keep_order";
    let hold = Duration::minutes(1);
    // Key a: issued, then labelled; key b: issued.
    let (mut a, _, a_issued) =
        ApiKey::issue(key_id("a"), t0(), &mut rng(1)).unwrap_or_else(|e| unreachable!("{e}"));
    ok(B, "insert", store.insert(&a, &[a_issued]).await);
    let (b, _, b_issued) =
        ApiKey::issue(key_id("b"), t0(), &mut rng(2)).unwrap_or_else(|e| unreachable!("{e}"));
    ok(B, "insert", store.insert(&b, &[b_issued]).await);
    let loaded = a.revision();
    let a_labelled = events_of(&mut a, 1);
    ok(B, "update", store.update(&a, loaded, &[a_labelled]).await);
    let now = t0() + Duration::seconds(10);
    let names = |entries: &[Entry]| -> Vec<String> {
        entries
            .iter()
            .map(|entry| format!("{}:{}", Entry::subject(&entry.event), entry.event.name()))
            .collect()
    };

    let first = ok(B, "claim_outbox", store.claim_outbox(1, now, hold).await);
    if names(&first) != ["a:key_issued"] {
        violated(
            B,
            format_args!("a claim of 1 took {:?}, not a's first entry", names(&first)),
        );
    }
    if first[0].next_attempt_at < now + hold - Duration::milliseconds(1) {
        violated(
            B,
            format_args!("a claimed entry is not held: {:?}", first[0]),
        );
    }
    // a's next entry waits behind its held first; b's does not.
    let second = ok(B, "claim_outbox", store.claim_outbox(10, now, hold).await);
    if names(&second) != ["b:key_issued"] {
        violated(
            B,
            format_args!(
                "with a's first entry held, a claim took {:?}: expected b's entry only, \
                 never an entry of a held key nor one held already",
                names(&second)
            ),
        );
    }
    let none = ok(B, "claim_outbox", store.claim_outbox(10, now, hold).await);
    if !none.is_empty() {
        violated(
            B,
            format_args!("held entries were claimed again: {:?}", names(&none)),
        );
    }

    // a's first delivered: its next one is claimed.
    let mut delivered = first[0].clone();
    delivered.state = EntryState::Delivered;
    delivered.delivered_at = Some(now);
    ok(
        B,
        "update_outbox",
        store.update_outbox(std::slice::from_ref(&delivered)).await,
    );
    let third = ok(B, "claim_outbox", store.claim_outbox(10, now, hold).await);
    if names(&third) != ["a:label_changed"] {
        violated(
            B,
            format_args!(
                "after a's first was delivered, a claim took {:?}",
                names(&third)
            ),
        );
    }
    // It fails: retried later, then parked.
    let mut failed = third[0].clone();
    failed.attempts = 1;
    failed.last_error = Some("503 from the receiver".into());
    failed.next_attempt_at = now + Duration::minutes(5);
    ok(
        B,
        "update_outbox",
        store.update_outbox(std::slice::from_ref(&failed)).await,
    );
    let later = now + Duration::minutes(2);
    let early = ok(
        B,
        "claim_outbox",
        store.claim_outbox(10, later, Duration::ZERO).await,
    );
    if names(&early) != ["b:key_issued"] {
        violated(
            B,
            format_args!("before a's retry was due, a claim took {:?}", names(&early)),
        );
    }
    let due = ok(
        B,
        "claim_outbox",
        store
            .claim_outbox(10, now + Duration::minutes(6), hold)
            .await,
    );
    if due.len() != 2
        || due[1].attempts != 1
        || due[1].last_error.as_deref() != Some("503 from the receiver")
    {
        violated(B, format_args!("a retry due was claimed as {due:?}"));
    }
    let mut parked = due[1].clone();
    parked.state = EntryState::Parked;
    parked.attempts = 2;
    ok(
        B,
        "update_outbox",
        store.update_outbox(&[parked.clone()]).await,
    );
    let counts = ok(B, "outbox_counts", store.outbox_counts().await);
    if (counts.pending, counts.parked) != (1, 1) {
        violated(
            B,
            format_args!("outbox_counts says {counts:?}, expected 1 pending, 1 parked"),
        );
    }
    let listed = ok(
        B,
        "outbox",
        store.outbox(EntryState::Parked, None, 10).await,
    );
    if listed.len() != 1 || listed[0].id != parked.id || listed[0].attempts != 2 {
        violated(B, format_args!("the parked entries listed are {listed:?}"));
    }
    let after = ok(
        B,
        "outbox",
        store.outbox(EntryState::Parked, Some(parked.id), 10).await,
    );
    if !after.is_empty() {
        violated(
            B,
            format_args!("`outbox` after the last parked id listed {after:?}"),
        );
    }
    let delivered_list = ok(
        B,
        "outbox",
        store.outbox(EntryState::Delivered, None, 10).await,
    );
    if delivered_list.len() != 1 || delivered_list[0].delivered_at.is_none() {
        violated(
            B,
            format_args!("the delivered entries listed are {delivered_list:?}"),
        );
    }

    // Pruning drops what was delivered before the instant only.
    let kept = ok(B, "prune_outbox", store.prune_outbox(now).await);
    let dropped = ok(
        B,
        "prune_outbox",
        store.prune_outbox(now + Duration::SECOND).await,
    );
    if (kept, dropped) != (0, 1) {
        violated(
            B,
            format_args!(
                "prune_outbox dropped {kept} then {dropped}, expected 0 then the 1 delivered"
            ),
        );
    }
    let counts = ok(B, "outbox_counts", store.outbox_counts().await);
    if (counts.pending, counts.parked) != (1, 1) {
        violated(
            B,
            format_args!("pruning touched undelivered entries: {counts:?}"),
        );
    }
}

fn owner(id: &str) -> OwnerId {
    OwnerId::new(id).unwrap_or_else(|e| unreachable!("test owner {id:?}: {e}"))
}

/// Stores `limits` as `owner`'s next setting at `at`; the stored setting.
async fn set_owner<S: KeyStore>(
    store: &S,
    behaviour: &str,
    owner: &OwnerId,
    limits: OwnerLimits,
    at: OffsetDateTime,
) -> OwnerLimits {
    let before = ok(behaviour, "owner_limits", store.owner_limits(owner).await);
    let expected = before.as_ref().map_or(0, OwnerLimits::version);
    let stamped = limits.stamped(before.as_ref(), at);
    let set = store.set_owner_limits(owner, &stamped, expected, &[]).await;
    ok(behaviour, "set_owner_limits", set);
    let read = ok(behaviour, "owner_limits", store.owner_limits(owner).await);
    if read.as_ref() != Some(&stamped) {
        violated(
            behaviour,
            format_args!("owner_limits read {read:?} after storing {stamped:?}"),
        );
    }
    stamped
}

/// A key `id` of `owner` with `credits` of its own (or none), stored; and
/// its token.
async fn stored_owned<S: KeyStore>(
    store: &S,
    behaviour: &str,
    id: &str,
    owner: &OwnerId,
    credits: Option<Credits>,
    seed: u64,
) -> (ApiKey, Token) {
    let mut new = NewKey::new(key_id(id)).owner(owner.clone());
    if let Some(credits) = credits {
        new = new.credits(credits);
    }
    let (key, token) = issue_new(new, t0(), seed);
    ok(behaviour, "insert", store.insert(&key, &[]).await);
    (key, token)
}

/// The credits left on `owner`'s meter at `t0`.
async fn owner_credits_left<S: KeyStore>(store: &S, behaviour: &str, owner: &OwnerId) -> u64 {
    let limits = ok(behaviour, "owner_limits", store.owner_limits(owner).await)
        .unwrap_or_else(|| violated(behaviour, "owner limits vanished"));
    let meter = ok(behaviour, "owner_meter", store.owner_meter(owner).await);
    limits
        .allowance(meter.as_ref(), t0())
        .credits_remaining()
        .unwrap_or_else(|| violated(behaviour, "the owner's credits vanished"))
}

async fn owner_meters_are_both_or_neither_body<S: KeyStore>(store: S) {
    const B: &str = "owner_meters_are_both_or_neither";
    let acme = owner("acme");
    let limits = OwnerLimits::new().credits(Credits::new(5));
    let stored = set_owner(&store, B, &acme, limits.clone(), t0()).await;
    let stale = store.set_owner_limits(&acme, &stored, 0, &[]).await;
    if !matches!(stale, Err(StoreError::Conflict { .. })) {
        violated(
            B,
            format_args!("set_owner_limits expecting version 0 over version 1 answered {stale:?}"),
        );
    }
    let (own, _) = stored_owned(&store, B, "own-credits", &acme, Some(Credits::new(3)), 150).await;
    let (shared, token) = stored_owned(&store, B, "shared-only", &acme, None, 151).await;
    let charge = |key: &ApiKey| {
        let (store, id, inc) = (&store, key.id().clone(), key.revision().incarnation());
        async move { ok(B, "charge", store.charge(&id, inc, 1, t0()).await) }
    };
    match store_verify(&store, B, shared.id(), token.expose_secret(), t0()).await {
        Verification::Accepted(accepted) if accepted.metered => {}
        other => violated(
            B,
            format_args!(
                "verify of a key whose owner has limits, none of its own, gave {other:?}, not metered"
            ),
        ),
    }
    for n in 1..=3 {
        match charge(&own).await {
            Ok(allowance) if allowance.owner_id().as_ref() == Some(&acme) => {
                let owner_left = allowance.owner().and_then(Allowance::credits_remaining);
                if (allowance.credits_remaining(), owner_left) != (Some(3 - n), Some(5 - n)) {
                    violated(
                        B,
                        format_args!(
                            "charge {n}: the allowance left {:?} of the key's and {owner_left:?} of the owner's",
                            allowance.credits_remaining()
                        ),
                    );
                }
            }
            other => violated(
                B,
                format_args!(
                    "charge {n} of 3 key credits under 5 owner credits: {other:?} (no owner part?)"
                ),
            ),
        }
    }
    match charge(&own).await {
        Err(Refusal::UsageExceeded {
            subject: Subject::Key,
            ..
        }) => {}
        other => violated(
            B,
            format_args!("a 4th charge of 3 key credits answered {other:?}"),
        ),
    }
    if owner_credits_left(&store, B, &acme).await != 2 {
        violated(
            B,
            "a charge the key's limits refused spent the owner's credits",
        );
    }
    for n in 1..=2 {
        if let Err(refusal) = charge(&shared).await {
            violated(
                B,
                format_args!("charge {n} of a key charged to its owner alone: {refusal}"),
            );
        }
    }
    match charge(&shared).await {
        Err(Refusal::UsageExceeded {
            subject: Subject::Owner,
            ..
        }) => {}
        other => violated(
            B,
            format_args!("a charge past the owner's 5 credits answered {other:?}"),
        ),
    }
    // The owner refuses: the key's own meter is not charged either.
    let (fresh, _) = stored_owned(&store, B, "fresh", &acme, Some(Credits::new(4)), 152).await;
    if !matches!(
        charge(&fresh).await,
        Err(Refusal::UsageExceeded {
            subject: Subject::Owner,
            ..
        })
    ) {
        violated(B, "a charge past the owner's credits was admitted");
    }
    let meter = ok(
        B,
        "meter",
        store
            .meter(fresh.id(), fresh.revision().incarnation())
            .await,
    );
    let left = fresh.allowance(meter.as_ref(), t0()).credits_remaining();
    if left != Some(4) {
        violated(
            B,
            format_args!("a charge the owner refused left {left:?} of the key's 4 credits"),
        );
    }
    // Another owner's keys, and keys of no owner, are not charged to it.
    let (other, _) = stored_owned(&store, B, "other", &owner("other"), None, 153).await;
    if let Err(refusal) = charge(&other).await {
        violated(
            B,
            format_args!("a key of an owner without limits: {refusal}"),
        );
    }
}

async fn owner_charges_are_exact_body<S: KeyStore>(store: S) {
    const B: &str = "owner_charges_are_exact";
    let acme = owner("acme");
    set_owner(
        &store,
        B,
        &acme,
        OwnerLimits::new().credits(Credits::new(10)),
        t0(),
    )
    .await;
    let mut keys = Vec::new();
    for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
        keys.push(
            stored_owned(&store, B, id, &acme, None, 160 + n as u64)
                .await
                .0,
        );
    }
    let charges = (0..30)
        .map(|n| {
            let (store, key) = (&store, &keys[n % 3]);
            async move {
                let inc = key.revision().incarnation();
                ok(B, "charge", store.charge(key.id(), inc, 1, t0()).await)
            }
        })
        .collect();
    let mut admitted = 0;
    for result in join_all(charges).await {
        match result {
            Ok(_) => admitted += 1,
            Err(Refusal::UsageExceeded {
                subject: Subject::Owner,
                ..
            }) => {}
            Err(other) => violated(B, format_args!("a charge was refused with {other}")),
        }
    }
    let left = owner_credits_left(&store, B, &acme).await;
    if (admitted, left) != (10, 0) {
        violated(
            B,
            format_args!(
                "{admitted} of 30 charges on 3 keys sharing 10 credits admitted, {left} left"
            ),
        );
    }
}

async fn owner_limits_outlive_keys_and_clear_body<S: KeyStore>(store: S) {
    const B: &str = "owner_limits_outlive_keys_and_clear";
    let acme = owner("acme");
    set_owner(
        &store,
        B,
        &acme,
        OwnerLimits::new().credits(Credits::new(5)),
        t0(),
    )
    .await;
    let (key, _) = stored_owned(&store, B, "only", &acme, None, 170).await;
    let charge = |key: &ApiKey, cost| {
        let (store, id, inc) = (&store, key.id().clone(), key.revision().incarnation());
        async move { ok(B, "charge", store.charge(&id, inc, cost, t0()).await) }
    };
    let period = match charge(&key, 3).await {
        Ok(allowance) => allowance
            .owner()
            .and_then(Allowance::credits_period)
            .unwrap_or_else(|| violated(B, "an owner charge tells no credits period")),
        Err(refusal) => violated(B, format_args!("3 of the owner's 5 credits: {refusal}")),
    };
    ok(
        B,
        "refund_owner",
        store.refund_owner(&acme, 1, period).await,
    );
    if owner_credits_left(&store, B, &acme).await != 3 {
        violated(B, "refund_owner of 1 credit did not give it back");
    }
    ok(
        B,
        "delete",
        store.delete(key.id(), key.revision(), &[]).await,
    );
    let (again, token) = stored_owned(&store, B, "only", &acme, None, 171).await;
    if owner_credits_left(&store, B, &acme).await != 3 {
        violated(B, "deleting the owner's only key touched the owner's meter");
    }
    if !matches!(
        charge(&again, 4).await,
        Err(Refusal::UsageExceeded {
            subject: Subject::Owner,
            ..
        })
    ) {
        violated(
            B,
            "a key created again under its owner was charged past the owner's credits",
        );
    }
    let cleared = set_owner(&store, B, &acme, OwnerLimits::new(), t0()).await;
    if cleared.version() != 2 || !cleared.is_empty() {
        violated(B, format_args!("cleared limits were stored as {cleared:?}"));
    }
    match store_verify(&store, B, again.id(), token.expose_secret(), t0()).await {
        Verification::Accepted(accepted) if !accepted.metered => {}
        other => violated(
            B,
            format_args!("verify of a key whose owner's limits were cleared gave {other:?}"),
        ),
    }
    match charge(&again, 4).await {
        Ok(allowance) if allowance.owner().is_none() => {}
        other => violated(
            B,
            format_args!("a charge after the owner's limits were cleared answered {other:?}"),
        ),
    }
}

async fn refunds_stay_in_their_period_body<S: KeyStore>(store: S) {
    const B: &str = "refunds_stay_in_their_period";
    let refill = Refill::new(10, Duration::HOUR).unwrap_or_else(|e| unreachable!("{e}"));
    let new = NewKey::new(key_id("refunded")).credits(Credits::new(10).with_refill(refill));
    let (mut key, _) = issue_new(new, t0(), 140);
    ok(B, "insert", store.insert(&key, &[]).await);
    let (id, inc) = (key.id().clone(), key.revision().incarnation());
    let charge = |cost, at| {
        let (store, id) = (&store, &id);
        async move {
            match ok(B, "charge", store.charge(id, inc, cost, at).await) {
                Ok(allowance) => allowance.credits_period().unwrap_or_else(|| {
                    violated(B, "a charge of a key with credits tells no period")
                }),
                Err(refusal) => violated(B, format_args!("a charge of {cost} refused: {refusal}")),
            }
        }
    };
    let refund = |amount, period| {
        let (store, id) = (&store, &id);
        async move { ok(B, "refund", store.refund(id, inc, amount, period).await) }
    };
    let expect = |key: &ApiKey, want: u64, at, what: &'static str| {
        let (store, key) = (&store, key.clone());
        async move {
            let meter = ok(B, "meter", store.meter(key.id(), inc).await);
            let left = key.allowance(meter.as_ref(), at).credits_remaining();
            if left != Some(want) {
                violated(
                    B,
                    format_args!("{what}: {left:?} credits left, expected {want}"),
                );
            }
        }
    };
    let first = charge(4, t0()).await;
    refund(3, first).await;
    expect(&key, 9, t0(), "4 taken, 3 given back").await;
    refund(100, first).await;
    expect(
        &key,
        10,
        t0(),
        "more given back than the period started with",
    )
    .await;
    // The next period: the refill sets 10, a charge takes 1.
    let later = t0() + Duration::HOUR + Duration::SECOND;
    let second = charge(1, later).await;
    if second == first {
        violated(B, "the period after a refill is the same as before it");
    }
    refund(5, first).await;
    expect(
        &key,
        9,
        later,
        "given back into the period before the refill",
    )
    .await;
    refund(1, second).await;
    expect(&key, 10, later, "1 given back after the refill").await;
    // Credits set again: the old period's refunds are void.
    let _ = charge(6, later).await;
    if let Err(e) = key.apply(Change::Credits(Some(Credits::new(5))), later) {
        unreachable!("{e}")
    }
    let before = Revision::new(inc, key.version() - 1);
    ok(B, "update", store.update(&key, before, &[]).await);
    refund(3, second).await;
    expect(
        &key,
        5,
        later,
        "given back after the credits were set again",
    )
    .await;
    // A key that is not stored: nothing, and no meter made.
    let nobody = key_id("refunded-nobody");
    ok(B, "refund", store.refund(&nobody, inc, 3, second).await);
    if let Some(meter) = ok(B, "meter", store.meter(&nobody, inc).await) {
        violated(
            B,
            format_args!("a refund of a missing key made a meter: {meter:?}"),
        );
    }
}

async fn networks_are_enforced_body<S: KeyStore>(store: S) {
    const B: &str = "networks_are_enforced";
    let networks: crate::Networks = "10.0.0.0/8,2001:db8::/32"
        .parse()
        .unwrap_or_else(|e| unreachable!("{e}"));
    let new = NewKey::new(key_id("fenced"))
        .credits(Credits::new(1))
        .with(Change::Networks(Some(networks.clone())))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let manager = crate::KeyManager::new(store);
    let (token, _) = ok(
        B,
        "create_key",
        manager.create_key(new, t0(), &mut rng(130)).await,
    );
    let loaded = ok(B, "get", manager.store().get(&key_id("fenced")).await);
    if loaded.as_ref().and_then(ApiKey::networks) != Some(&networks) {
        violated(
            B,
            format_args!("networks {networks} loaded back as {loaded:?}"),
        );
    }
    let bearer = || crate::Credentials::bearer(token.expose_secret());
    let inside: std::net::IpAddr = "2001:db8::7"
        .parse()
        .unwrap_or_else(|e| unreachable!("{e}"));
    let outside: std::net::IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| unreachable!("{e}"));
    for (what, credentials) in [
        ("from outside its networks", bearer().from_ip(outside)),
        ("without an address", bearer()),
    ] {
        match manager.authenticate(credentials, t0()).await {
            Err(crate::AuthError::Verify(crate::VerifyError::NetworkNotAllowed)) => {}
            other => violated(B, format_args!("a request {what} answered {other:?}")),
        }
    }
    // The one credit is still there: the refusals charged nothing.
    match manager.authenticate(bearer().from_ip(inside), t0()).await {
        Ok(who) if who.networks.as_ref() == Some(&networks) => {}
        other => violated(B, format_args!("a request from inside answered {other:?}")),
    }
}

async fn markers_are_kept_body<S: KeyStore>(store: S) {
    const B: &str = "markers_are_kept";
    const NAME: &str = "bootstrap-retired";
    let first = t0() + Duration::microseconds(123_456);
    let store = &store;
    let set = |at| async move { ok(B, "set_marker", store.set_marker(NAME, at).await) };
    let expect = |want: Option<OffsetDateTime>, what: &'static str| async move {
        let got = ok(B, "marker", store.marker(NAME).await);
        if got != want {
            violated(B, format_args!("{what}: read {got:?}, expected {want:?}"));
        }
    };
    expect(None, "never set").await;
    set(Some(first)).await;
    set(Some(first + Duration::DAY)).await;
    expect(Some(first), "set twice").await;
    if let Some(other) = ok(B, "marker", store.marker("other").await) {
        violated(B, format_args!("another name read {other:?}"));
    }
    let (key, _) = issue("marked", 120);
    ok(B, "insert", store.insert(&key, &[]).await);
    ok(
        B,
        "delete",
        store.delete(key.id(), key.revision(), &[]).await,
    );
    expect(Some(first), "after a key's insert and delete").await;
    set(None).await;
    expect(None, "cleared").await;
    set(None).await;
    set(Some(first + Duration::DAY)).await;
    expect(Some(first + Duration::DAY), "set again after a clear").await;
}

async fn owners_are_listed_body<S: KeyStore>(store: S) {
    const B: &str = "owners_are_listed";
    let owner = |o: &str| OwnerId::new(o).unwrap_or_else(|e| unreachable!("{e}"));
    let (acme, zeta) = (owner("acme"), owner("zeta"));
    // Keys of owners listed on either side of `acme`, and one of none.
    let owned = [
        ("k3", Some(&acme)),
        ("k1", Some(&acme)),
        ("k2", Some(&zeta)),
        ("k0", None),
        ("k4", Some(&acme)),
        ("a", Some(&owner("acm"))),
        ("z", Some(&owner("acmf"))),
    ];
    let mut keys = Vec::new();
    for (i, (id, owner)) in owned.into_iter().enumerate() {
        let mut new = NewKey::new(key_id(id));
        if let Some(owner) = owner {
            new = new.owner(owner.clone());
        }
        let (key, _) = issue_new(new, t0(), 100 + i as u64);
        ok(B, "insert", store.insert(&key, &[]).await);
        keys.push(key);
    }
    let ids = |keys: Vec<ApiKey>| keys.iter().map(|k| k.id().to_string()).collect::<Vec<_>>();
    let listed = |seen: Vec<ApiKey>, want: &[&str], call: &str| {
        let seen = ids(seen);
        if seen != want {
            violated(
                B,
                format_args!("{call} returned {seen:?}, expected {want:?}"),
            );
        }
    };
    listed(
        ok(B, "list_owned", store.list_owned(&acme, None, 10).await),
        &["k1", "k3", "k4"],
        "list_owned(acme, None, 10)",
    );
    listed(
        ok(B, "list_owned", store.list_owned(&acme, None, 2).await),
        &["k1", "k3"],
        "list_owned(acme, None, 2)",
    );
    listed(
        ok(
            B,
            "list_owned",
            store.list_owned(&acme, Some(&key_id("k3")), 2).await,
        ),
        &["k4"],
        "list_owned(acme, Some(\"k3\"), 2)",
    );
    listed(
        ok(
            B,
            "list_owned",
            store.list_owned(&owner("nobody"), None, 10).await,
        ),
        &[],
        "list_owned(nobody, None, 10)",
    );
    // k3 moves to zeta, k1 loses its owner, k4 is deleted.
    let mut k3 = keys[0].clone();
    let expected = k3.revision();
    if let Err(e) = k3.apply(Change::Owner(Some(zeta.clone())), t0()) {
        unreachable!("{e}");
    }
    ok(B, "update", store.update(&k3, expected, &[]).await);
    let mut k1 = keys[1].clone();
    let expected = k1.revision();
    if let Err(e) = k1.apply(Change::Owner(None), t0()) {
        unreachable!("{e}");
    }
    ok(B, "update", store.update(&k1, expected, &[]).await);
    ok(
        B,
        "delete",
        store.delete(keys[4].id(), keys[4].revision(), &[]).await,
    );
    listed(
        ok(B, "list_owned", store.list_owned(&acme, None, 10).await),
        &[],
        "list_owned(acme, None, 10) after the changes",
    );
    let zetas = ok(B, "list_owned", store.list_owned(&zeta, None, 10).await);
    if zetas.iter().any(|key| key.owner() != Some(&zeta)) {
        violated(B, "list_owned returned a key of another owner");
    }
    listed(
        zetas,
        &["k2", "k3"],
        "list_owned(zeta, None, 10) after the changes",
    );
}

fn usage_row(id: &KeyId, incarnation: u64, hour: i64, counts: [u64; 4]) -> UsageRow {
    let [accepted, rate_limited, usage_exceeded, refused] = counts;
    UsageRow {
        id: id.clone(),
        incarnation,
        hour,
        accepted,
        rate_limited,
        usage_exceeded,
        refused,
    }
}

async fn usage_counts_add_up_body<S: KeyStore>(store: S) {
    const B: &str = "usage_counts_add_up";
    let (key, _) = issue("counted", 110);
    ok(B, "insert", store.insert(&key, &[]).await);
    let (other, _) = issue("counted-too", 111);
    ok(B, "insert", store.insert(&other, &[]).await);
    let (id, incarnation) = (key.id().clone(), key.revision().incarnation());
    // Hours around the epoch and far from it; another incarnation; another key.
    let h = 480_000;
    let batch = [
        usage_row(&id, incarnation, h, [3, 1, 0, 2]),
        usage_row(&id, incarnation, h + 1, [5, 0, 0, 0]),
        usage_row(&id, incarnation, h - 48, [1, 0, 0, 0]),
        usage_row(&id, incarnation ^ 1, h, [100, 0, 0, 0]),
        usage_row(other.id(), other.revision().incarnation(), h, [7, 7, 7, 7]),
    ];
    ok(B, "add_usage", store.add_usage(&batch).await);
    ok(
        B,
        "add_usage",
        store
            .add_usage(&[usage_row(&id, incarnation, h, [10, 0, 4, 0])])
            .await,
    );
    ok(B, "add_usage", store.add_usage(&[]).await);
    let read = |hours: std::ops::Range<i64>| {
        let store = &store;
        let id = id.clone();
        async move { ok(B, "usage", store.usage(&id, incarnation, hours).await) }
    };
    let seen = read(h - 100..h + 100).await;
    let want = vec![
        usage_row(&id, incarnation, h - 48, [1, 0, 0, 0]),
        usage_row(&id, incarnation, h, [13, 1, 4, 2]),
        usage_row(&id, incarnation, h + 1, [5, 0, 0, 0]),
    ];
    if seen != want {
        violated(B, format_args!("usage read {seen:?}, expected {want:?}"));
    }
    let seen = read(h..h + 1).await;
    if seen != want[1..2] {
        violated(
            B,
            format_args!("usage(h..h+1) read {seen:?}: the range is half-open"),
        );
    }
    if !read(h + 2..h + 2).await.is_empty() {
        violated(B, "an empty range read counts");
    }
    // Pruning drops exactly the hours before `before`, of every key.
    let pruned = ok(B, "prune_usage", store.prune_usage(h).await);
    if pruned != 1 {
        violated(
            B,
            format_args!("prune_usage({h}) dropped {pruned} rows, expected 1"),
        );
    }
    let seen = read(h - 100..h + 100).await;
    if seen != want[1..] {
        violated(B, format_args!("after pruning, usage read {seen:?}"));
    }
    // A deleted key's counts go with it; its id created again has none.
    ok(B, "delete", store.delete(&id, key.revision(), &[]).await);
    let (again, _) = issue("counted", 112);
    ok(B, "insert", store.insert(&again, &[]).await);
    let seen = ok(
        B,
        "usage",
        store
            .usage(&id, again.revision().incarnation(), h - 100..h + 100)
            .await,
    );
    if !seen.is_empty() {
        violated(B, format_args!("a key created again has counts {seen:?}"));
    }
    let seen = read(h - 100..h + 100).await;
    if !seen.is_empty() {
        violated(B, format_args!("a deleted key's counts stayed: {seen:?}"));
    }
    let theirs = ok(
        B,
        "usage",
        store
            .usage(other.id(), other.revision().incarnation(), h..h + 1)
            .await,
    );
    if theirs
        != [usage_row(
            other.id(),
            other.revision().incarnation(),
            h,
            [7, 7, 7, 7],
        )]
    {
        violated(B, format_args!("another key's counts changed: {theirs:?}"));
    }
}

async fn counted_outcomes_are_exact_after_a_flush_body<S: KeyStore>(store: S) {
    const B: &str = "counted_outcomes_are_exact_after_a_flush";
    let manager = crate::KeyManager::new(store).with_usage_recording(true);
    let now = t0();
    let rate = RateLimit::new(3, Duration::HOUR).unwrap_or_else(|e| unreachable!("{e}"));
    let create = |new: NewKey, seed| {
        let manager = &manager;
        async move {
            ok(
                B,
                "create_key",
                manager.create_key(new, now, &mut rng(seed)).await,
            )
            .0
        }
    };
    let rated = create(NewKey::new(key_id("counted-rate")).rate_limit(rate), 120).await;
    let spent = create(
        NewKey::new(key_id("counted-credits")).credits(Credits::new(2)),
        121,
    )
    .await;
    // Well-formed tokens naming the keys, with secrets they never issued.
    let (_, wrong_rated) = issue("counted-rate", 122);
    let (_, wrong_spent) = issue("counted-credits", 123);
    let (_, unknown) = issue("counted-nobody", 124);
    let mut attempts = Vec::new();
    for _ in 0..5 {
        attempts.push(rated.expose_secret()); // 3 accepted, 2 rate limited
        attempts.push(spent.expose_secret()); // 2 accepted, 3 usage exceeded
    }
    for _ in 0..4 {
        attempts.push(wrong_rated.expose_secret()); // refused
        attempts.push(wrong_spent.expose_secret()); // refused
        attempts.push(unknown.expose_secret()); // not counted: no such key
        attempts.push("kr_not_a_token"); // not counted: malformed
    }
    for token in attempts {
        let _ = manager.authenticate(token, now).await;
    }
    if let Err(e) = manager.flush_usage(now).await {
        violated(B, format_args!("flush_usage failed: {e}"));
    }
    for (id, want) in [
        ("counted-rate", [3, 2, 0, 4]),
        ("counted-credits", [2, 0, 3, 4]),
    ] {
        let rows = ok(
            B,
            "usage",
            manager
                .usage(&key_id(id), now - Duration::HOUR, now + Duration::HOUR)
                .await,
        );
        let seen: Vec<[u64; 4]> = rows
            .iter()
            .map(|r| [r.accepted, r.rate_limited, r.usage_exceeded, r.refused])
            .collect();
        if seen != [want] || rows[0].hour != UsageRow::hour_of(now) {
            violated(
                B,
                format_args!(
                    "{id}: counted {seen:?} (accepted, rate limited, usage exceeded, refused), expected [{want:?}]"
                ),
            );
        }
    }
    // A second flush adds what was counted since, once.
    let _ = manager.authenticate(rated.expose_secret(), now).await;
    if let Err(e) = manager.flush_usage(now).await {
        violated(B, format_args!("flush_usage failed: {e}"));
    }
    if let Err(e) = manager.flush_usage(now).await {
        violated(B, format_args!("flush_usage failed: {e}"));
    }
    let rows = ok(
        B,
        "usage",
        manager
            .usage(&key_id("counted-rate"), now, now + Duration::HOUR)
            .await,
    );
    if rows.len() != 1 || rows[0].rate_limited != 3 || rows[0].accepted != 3 {
        violated(
            B,
            format_args!("after another request and two flushes: {rows:?}"),
        );
    }
}

/// A key with `credits` and `rate`, stored.
async fn stored_metered<S: KeyStore>(
    store: &S,
    behaviour: &str,
    id: &str,
    credits: Option<Credits>,
    rate: Option<RateLimit>,
    seed: u64,
) -> ApiKey {
    let mut new = NewKey::new(key_id(id));
    if let Some(credits) = credits {
        new = new.credits(credits);
    }
    if let Some(rate) = rate {
        new = new.rate_limit(rate);
    }
    let (key, _) = issue_new(new, t0(), seed);
    ok(behaviour, "insert", store.insert(&key, &[]).await);
    key
}

/// `attempts` charges of cost 1 joined at one instant; how many were
/// admitted, after checking every refusal is `expected`.
async fn race_charges<S: KeyStore>(
    store: &S,
    behaviour: &str,
    key: &ApiKey,
    attempts: usize,
    expected: fn(&Refusal) -> bool,
) -> usize {
    let incarnation = key.revision().incarnation();
    let results = join_all(
        (0..attempts)
            .map(|_| store.charge(key.id(), incarnation, 1, t0()))
            .collect(),
    )
    .await;
    let mut admitted = 0;
    for result in results {
        match ok(behaviour, "charge", result) {
            Ok(_) => admitted += 1,
            Err(refusal) if expected(&refusal) => {}
            Err(refusal) => violated(
                behaviour,
                format_args!("a charge was refused with {refusal:?}"),
            ),
        }
    }
    admitted
}

async fn concurrent_charges_are_exact_body<S: KeyStore>(store: S) {
    const B: &str = "concurrent_charges_are_exact";
    let credited = stored_metered(&store, B, "credited", Some(Credits::new(10)), None, 90).await;
    let admitted = race_charges(&store, B, &credited, 25, |r| {
        matches!(r, Refusal::UsageExceeded { .. })
    })
    .await;
    if admitted != 10 {
        violated(
            B,
            format_args!("{admitted} of 25 charges on 10 credits were admitted"),
        );
    }
    let meter = ok(
        B,
        "meter",
        store
            .meter(credited.id(), credited.revision().incarnation())
            .await,
    );
    let left = credited.allowance(meter.as_ref(), t0()).credits_remaining();
    if left != Some(0) {
        violated(
            B,
            format_args!("{left:?} credits left after spending all 10"),
        );
    }

    let rate = RateLimit::new(1, Duration::HOUR)
        .and_then(|r| r.with_burst(7))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let limited = stored_metered(&store, B, "limited", None, Some(rate), 91).await;
    let admitted = race_charges(&store, B, &limited, 20, |r| {
        matches!(r, Refusal::RateLimited { .. })
    })
    .await;
    if admitted != 7 {
        violated(
            B,
            format_args!("{admitted} of 20 charges at one instant admitted by a burst of 7"),
        );
    }
}

async fn charges_leave_the_key_alone_body<S: KeyStore>(store: S) {
    const B: &str = "charges_leave_the_key_alone";
    let key = stored_metered(&store, B, "metered", Some(Credits::new(5)), None, 92).await;
    let incarnation = key.revision().incarnation();
    let charge = |cost: u32| store.charge(key.id(), incarnation, cost, t0());
    let admitted = ok(B, "charge", charge(2).await);
    if admitted.as_ref().map(|a| a.credits_remaining()) != Ok(Some(3)) {
        violated(
            B,
            format_args!("charging 2 of 5 credits answered {admitted:?}"),
        );
    }
    assert_stored(&store, B, &key).await;

    let before = ok(B, "meter", store.meter(key.id(), incarnation).await);
    let refused = ok(B, "charge", charge(4).await);
    if !matches!(refused, Err(Refusal::UsageExceeded { .. })) {
        violated(
            B,
            format_args!("charging 4 of 3 credits answered {refused:?}"),
        );
    }
    let after = ok(B, "meter", store.meter(key.id(), incarnation).await);
    if after != before {
        violated(
            B,
            format_args!("a refused charge changed the meter from {before:?} to {after:?}"),
        );
    }

    // A write of the key keeps its meter.
    let mut relabelled = key.clone();
    let _ = relabelled.apply(Change::Label("relabelled".into()), t0());
    ok(
        B,
        "update",
        store.update(&relabelled, key.revision(), &[]).await,
    );
    let admitted = ok(B, "charge", charge(1).await);
    if admitted.as_ref().map(|a| a.credits_remaining()) != Ok(Some(2)) {
        violated(
            B,
            format_args!("after an update, charging 1 of 3 credits answered {admitted:?}"),
        );
    }
    // Credits set again start over.
    let mut reset = relabelled.clone();
    let _ = reset.apply(Change::Credits(Some(Credits::new(5))), t0());
    ok(
        B,
        "update",
        store.update(&reset, relabelled.revision(), &[]).await,
    );
    let admitted = ok(B, "charge", charge(1).await);
    if admitted.as_ref().map(|a| a.credits_remaining()) != Ok(Some(4)) {
        violated(
            B,
            format_args!("after credits were set to 5 again, charging 1 answered {admitted:?}"),
        );
    }
    assert_stored(&store, B, &reset).await;

    let (plain, _) = issue("plain", 93);
    ok(B, "insert", store.insert(&plain, &[]).await);
    let charged = ok(
        B,
        "charge",
        store
            .charge(plain.id(), plain.revision().incarnation(), 1, t0())
            .await,
    );
    if charged != Ok(Allowance::default()) {
        violated(
            B,
            format_args!("a key without limits was charged {charged:?}"),
        );
    }
    buckets_outlive_removed_limits(&store, B).await;
}

async fn meters_follow_the_key_body<S: KeyStore>(store: S) {
    const B: &str = "meters_follow_the_key";
    let missing = store.charge(&key_id("missing"), 1, 1, t0()).await;
    if !matches!(missing, Err(StoreError::NotFound)) {
        violated(
            B,
            format_args!("charging a missing key answered {missing:?}"),
        );
    }
    let key = stored_metered(&store, B, "reborn", Some(Credits::new(1)), None, 94).await;
    let incarnation = key.revision().incarnation();
    let other = store.charge(key.id(), incarnation ^ 1, 1, t0()).await;
    if !matches!(other, Err(StoreError::NotFound)) {
        violated(
            B,
            format_args!("charging another incarnation answered {other:?}"),
        );
    }
    let spent = ok(
        B,
        "charge",
        store.charge(key.id(), incarnation, 1, t0()).await,
    );
    if spent.is_err() {
        violated(B, format_args!("charging 1 of 1 credit answered {spent:?}"));
    }
    ok(
        B,
        "delete",
        store.delete(key.id(), key.revision(), &[]).await,
    );
    if !matches!(
        store.charge(key.id(), incarnation, 1, t0()).await,
        Err(StoreError::NotFound)
    ) {
        violated(B, "a deleted key was charged");
    }
    let again = stored_metered(&store, B, "reborn", Some(Credits::new(1)), None, 95).await;
    let fresh = ok(
        B,
        "meter",
        store
            .meter(again.id(), again.revision().incarnation())
            .await,
    );
    if fresh.is_some() {
        violated(
            B,
            format_args!("a key created again has the old key's meter {fresh:?}"),
        );
    }
    let charged = ok(
        B,
        "charge",
        store
            .charge(again.id(), again.revision().incarnation(), 1, t0())
            .await,
    );
    if charged.is_err() {
        violated(
            B,
            format_args!("a key created again did not start full: {charged:?}"),
        );
    }
}

/// A key whose bucket is empty keeps it through writes that remove its
/// rate limit and set it again.
async fn buckets_outlive_removed_limits<S: KeyStore>(store: &S, behaviour: &str) {
    let rate = RateLimit::new(1, Duration::MINUTE).unwrap_or_else(|e| unreachable!("{e}"));
    let mut key = stored_metered(store, behaviour, "emptied", None, Some(rate), 96).await;
    let incarnation = key.revision().incarnation();
    let first = ok(
        behaviour,
        "charge",
        store.charge(key.id(), incarnation, 1, t0()).await,
    );
    if first.is_err() {
        violated(behaviour, format_args!("a full bucket refused: {first:?}"));
    }
    for limit in [None, Some(rate)] {
        let expected = key.revision();
        if let Err(e) = key.apply(Change::RateLimit(limit), t0()) {
            unreachable!("{e}");
        }
        ok(behaviour, "update", store.update(&key, expected, &[]).await);
    }
    let again = ok(
        behaviour,
        "charge",
        store.charge(key.id(), incarnation, 1, t0()).await,
    );
    if again.is_ok() {
        violated(
            behaviour,
            "a rate limit removed and set again found a full bucket: the meter was dropped",
        );
    }
}

/// Of 8 concurrent futures updating one key from the same version, exactly
/// one succeeds and the others get `Conflict`; repeated 16 times. The
/// futures are joined, not spawned: the suite runs under any executor, and
/// a store whose futures never wait is raced at their polls only (its own
/// tests race threads).
///
/// # Panics
///
/// On a violation, naming the behaviour and what was seen.
pub async fn concurrent_updates_have_one_winner<S: KeyStore>(store: S) {
    updates_race_body(&store, async |s: &S, c: &[ApiKey], v| {
        future_race(s, c, v, false).await
    })
    .await;
}

/// Of 8 concurrent futures inserting the same id, exactly one succeeds and
/// the others get `AlreadyExists`; repeated 16 times.
///
/// # Panics
///
/// On a violation, naming the behaviour and what was seen.
pub async fn concurrent_inserts_have_one_winner<S: KeyStore>(store: S) {
    inserts_race_body(&store, async |s: &S, c: &[ApiKey], v| {
        future_race(s, c, v, true).await
    })
    .await;
}
