//! A key's limits on `ApiKey` itself: the charge a store runs, through
//! changes of the key's limits.

use keyroll::meter::{Credits, RateLimit, Refusal, Subject};
use keyroll::{ApiKey, KeyId, NewKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use time::{Duration, OffsetDateTime};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap()
}

/// A store keeps whatever meter `charge` hands back: a key whose limits
/// were removed hands back its meter unchanged, so a limit set again finds
/// its bucket as it was.
#[test]
fn a_key_without_limits_hands_back_its_meter_unchanged() {
    let one_a_minute = RateLimit::new(1, Duration::MINUTE).unwrap();
    let new = NewKey::new(KeyId::new("k").unwrap()).rate_limit(one_a_minute);
    let (mut key, _, _) = ApiKey::issue(new, t0(), &mut StdRng::seed_from_u64(1)).unwrap();
    let (meter, _) = key.charge(None, 1, t0()).unwrap();
    key.set_rate_limit(None, t0()).unwrap();
    // No limits: anything is admitted, even a cost of 0, and nothing moves.
    let (unchanged, allowance) = key.charge(Some(&meter), 0, t0()).unwrap();
    assert_eq!(unchanged, meter);
    assert_eq!(allowance.rate_remaining(), None);
    key.set_rate_limit(Some(one_a_minute), t0()).unwrap();
    assert!(matches!(
        key.charge(Some(&unchanged), 1, t0()),
        Err(Refusal::RateLimited { .. })
    ));
    // Credits set again start over, the bucket is kept.
    key.set_credits(Some(Credits::new(1)), t0()).unwrap();
    let later = t0() + Duration::MINUTE;
    let (spent, allowance) = key.charge(Some(&unchanged), 1, later).unwrap();
    assert_eq!(allowance.credits_remaining(), Some(0));
    assert!(matches!(
        key.charge(Some(&spent), 1, later + Duration::MINUTE),
        Err(Refusal::UsageExceeded {
            refill_at: None,
            subject: Subject::Key,
            ..
        })
    ));
}
