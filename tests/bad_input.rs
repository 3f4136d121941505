//! Bad input is refused at the call, with a typed error that names it, and
//! nothing changes: no public call builds a key that cannot be stored and
//! loaded back.
#![cfg(feature = "serde")]

mod common;

use common::{issue, renewing, rng, t0};
use keyroll::{
    ApiKey, Decision, KeyId, NewKey, OldTokenDeletion, Policy, RenewalState, TokenMatch,
    TransitionError,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use time::macros::datetime;
use time::{Duration, OffsetDateTime, UtcOffset};

fn new_key() -> NewKey {
    NewKey::new(KeyId::new("k").unwrap())
}

fn issue_error(new: NewKey, now: OffsetDateTime) -> TransitionError {
    ApiKey::issue(new, now, &mut rng()).expect_err("issue should refuse this input")
}

#[test]
fn labels_that_cannot_be_shown_are_refused_and_quoted() {
    let long = issue_error(new_key().label("é".repeat(129)), t0());
    assert!(matches!(long, TransitionError::InvalidLabel(_)), "{long:?}");
    let message = long.to_string();
    assert!(message.contains("258 bytes"), "{message}");
    assert!(
        message.contains(&format!("\"{}…\"", "é".repeat(32))),
        "{message}"
    );

    let control = issue_error(new_key().label("ops\u{7}team"), t0());
    assert_eq!(
        control.to_string(),
        "invalid label \"ops\\u{7}team\": it holds the control character '\\u{7}'"
    );
    assert!(ApiKey::issue(new_key().label("x".repeat(256)), t0(), &mut rng()).is_ok());
}

#[test]
fn policies_a_key_cannot_live_by_are_refused() {
    for period in [Duration::ZERO, Duration::seconds(-1), Duration::MIN] {
        let policy = Policy {
            renewal_period: period,
            ..Policy::default()
        };
        let error = issue_error(new_key().policy(policy), t0());
        assert!(
            matches!(error, TransitionError::InvalidPolicy { field: "renewal_period", value, .. } if value == period),
            "{error:?}"
        );
    }
    let policy = Policy {
        usage_resolution: Duration::seconds(-60),
        ..Policy::default()
    };
    let error = issue_error(new_key().policy(policy), t0());
    assert_eq!(
        error.to_string(),
        "invalid policy: usage_resolution is -1m, and it must be zero or positive"
    );
    let zero = Policy {
        usage_resolution: Duration::ZERO,
        ..Policy::default()
    };
    assert!(ApiKey::issue(new_key().policy(zero), t0(), &mut rng()).is_ok());
}

/// Instants a key cannot keep: outside the years 1 to 9999, counted in UTC.
fn out_of_range() -> [OffsetDateTime; 4] {
    [
        datetime!(9999-12-31 23:59:59 -00:00:01), // 10000-01-01T00:00:00Z
        datetime!(9999-12-31 23:00 -05:00),       // year 10000 in UTC
        datetime!(0000-12-31 23:59 UTC),
        datetime!(-5000-01-01 00:00 UTC),
    ]
}

#[test]
fn instants_outside_years_1_to_9999_are_refused() {
    for at in out_of_range() {
        let error = issue_error(new_key(), at);
        assert_eq!(
            error,
            TransitionError::TimeOutOfRange {
                what: "the time given",
                at
            }
        );
        assert!(error.to_string().contains("outside the years 1 to 9999"));
    }
    // In range, but the first token's due date would not be.
    let late = datetime!(9999-12-01 00:00 UTC);
    assert!(matches!(
        issue_error(new_key(), late),
        TransitionError::TimeOutOfRange { at, .. } if at == late
    ));
    // Instants are kept in UTC, whatever offset they came with.
    let (key, _, _) =
        ApiKey::issue(new_key(), datetime!(2026-01-01 05:30 +05:30), &mut rng()).unwrap();
    assert_eq!(key.created_at().offset(), UtcOffset::UTC);
    assert_eq!(key.created_at(), t0());
}

#[test]
fn refused_transitions_change_nothing() {
    let (key, _, _) = renewing();
    let grace = Duration::seconds(-100_000_000_000);
    let mut k = key.clone();
    assert_eq!(
        k.finalize(OldTokenDeletion::AfterNewTokenUse { grace }, t0()),
        Err(TransitionError::InvalidGrace { grace })
    );
    assert_eq!(k, key);
    for at in out_of_range() {
        let mut k = key.clone();
        assert!(matches!(
            k.finalize(OldTokenDeletion::At(at), t0()),
            Err(TransitionError::TimeOutOfRange {
                what: "the deletion time",
                ..
            })
        ));
        let refusals = [
            k.finalize(OldTokenDeletion::Later, at).map(|_| ()),
            k.renew(at, &mut rng()).map(|_| ()),
            k.delete_old(at).map(|_| ()),
            k.undo_renewal(at).map(|_| ()),
            k.deactivate(at).map(|_| ()),
            k.delete_old_if_idle(Duration::ZERO, at).map(|_| ()),
            k.clone().delete(at).map(|_| ()),
        ];
        for refusal in refusals {
            assert_eq!(
                refusal,
                Err(TransitionError::TimeOutOfRange {
                    what: "the time given",
                    at
                })
            );
        }
        // Calls that cannot fail do nothing with such a clock.
        assert!(!k.record_use(TokenMatch::Current, at));
        assert_eq!(k.housekeep(at), None);
        assert_eq!(k, key);
    }
    let (mut single, _) = issue(Policy::default());
    single.deactivate(t0()).unwrap();
    let before = single.clone();
    assert!(single.activate(out_of_range()[0]).is_err());
    assert_eq!(single, before);
}

#[test]
fn a_huge_grace_saturates_at_the_end_of_year_9999() {
    let (mut key, _, _) = renewing();
    key.finalize(
        OldTokenDeletion::AfterNewTokenUse {
            grace: Duration::MAX,
        },
        t0(),
    )
    .unwrap();
    assert!(key.record_use(TokenMatch::Current, t0()));
    let RenewalState::Renewing {
        decision: Decision::Scheduled { at },
    } = key.state()
    else {
        panic!("{:?}", key.state());
    };
    assert_eq!(at, datetime!(9999-12-31 23:59:59.999_999_999 UTC));
    let back: ApiKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
    assert_eq!(back, key);
}

/// One public call with any clock and any duration.
#[derive(Debug, Clone)]
enum Call {
    Renew,
    Finalize(OldTokenDeletion),
    DeleteOld,
    DeleteOldIfIdle(Duration),
    Undo,
    Activate,
    Deactivate,
    Use(TokenMatch),
    Housekeep,
}

/// Instants across time's whole default range (years -9999 to 9999), with
/// offsets.
fn any_instant() -> impl Strategy<Value = OffsetDateTime> {
    let min = datetime!(-9999-01-02 00:00 UTC).unix_timestamp();
    let max = datetime!(9999-12-30 00:00 UTC).unix_timestamp();
    prop_oneof![
        (min..max).prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap()),
        (1_700_000_000i64..1_900_000_000)
            .prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap()),
    ]
    .prop_flat_map(|at| (Just(at), -86_399i32..86_400))
    .prop_map(|(at, offset)| at.to_offset(UtcOffset::from_whole_seconds(offset).unwrap()))
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<i64>().prop_map(Duration::seconds),
        (-100_000i64..100_000).prop_map(Duration::seconds),
        Just(Duration::MAX),
        Just(Duration::MIN),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let deletion = prop_oneof![
        Just(OldTokenDeletion::Now),
        Just(OldTokenDeletion::Later),
        any_instant().prop_map(OldTokenDeletion::At),
        any_duration().prop_map(|grace| OldTokenDeletion::AfterNewTokenUse { grace }),
    ];
    prop_oneof![
        Just(Call::Renew),
        deletion.prop_map(Call::Finalize),
        Just(Call::DeleteOld),
        any_duration().prop_map(Call::DeleteOldIfIdle),
        Just(Call::Undo),
        Just(Call::Activate),
        Just(Call::Deactivate),
        prop_oneof![Just(TokenMatch::Current), Just(TokenMatch::Old)].prop_map(Call::Use),
        Just(Call::Housekeep),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/bad_input.txt"))),
        ..ProptestConfig::default()
    })]

    /// Whatever the clock and durations given, every key that public calls
    /// produce serializes and loads back equal; a refused call changes
    /// nothing.
    #[test]
    fn every_key_public_calls_make_can_be_stored(
        issued in any_instant(),
        period in any_duration(),
        resolution in any_duration(),
        calls in proptest::collection::vec((call(), any_instant()), 0..24),
    ) {
        let policy = Policy { renewal_period: period, usage_resolution: resolution, ..Policy::default() };
        let mut rng = rng();
        let Ok((mut key, _, _)) = ApiKey::issue(new_key().policy(policy), issued, &mut rng) else {
            return Ok(());
        };
        for (call, now) in calls {
            let before = key.clone();
            let refused = match call {
                Call::Renew => key.renew(now, &mut rng).is_err(),
                Call::Finalize(deletion) => key.finalize(deletion, now).is_err(),
                Call::DeleteOld => key.delete_old(now).is_err(),
                Call::DeleteOldIfIdle(idle) => key.delete_old_if_idle(idle, now).is_err(),
                Call::Undo => key.undo_renewal(now).is_err(),
                Call::Activate => key.activate(now).is_err(),
                Call::Deactivate => key.deactivate(now).is_err(),
                Call::Use(matched) => !key.record_use(matched, now),
                Call::Housekeep => key.housekeep(now).is_none(),
            };
            if refused {
                prop_assert_eq!(&key, &before);
            }
            let json = serde_json::to_string(&key).expect("every key serializes");
            let back: ApiKey = serde_json::from_str(&json).expect("and loads back");
            prop_assert_eq!(&back, &key);
        }
    }
}
