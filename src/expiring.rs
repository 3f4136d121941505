//! Keys about to expire or fall due for renewal: [`Expiring`], what
//! [`KeyManager::expiring`](crate::KeyManager::expiring) lists.

use time::{Duration, OffsetDateTime};

use crate::key::ApiKey;

/// A key that expires, or whose current token falls due for renewal,
/// soon: the key, the date, and which of the two it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expiring {
    /// The key, as stored.
    pub key: ApiKey,
    /// The date: the sooner of the two when both come within the window.
    pub at: OffsetDateTime,
    /// Which date it is.
    pub reason: ExpiringReason,
}

/// Why a key is [`Expiring`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExpiringReason {
    /// The key's hard expiry: from then on it verifies nothing.
    KeyExpires,
    /// The current token's renewal due date (already past for an overdue
    /// token: under an enforced policy it no longer verifies).
    RenewalDue,
}

impl Expiring {
    /// `key` if it expires after `now` and by `now + within`, or its
    /// current token is due by `now + within` (overdue included: the key
    /// still needs renewing); an expired key is not listed.
    pub(crate) fn of(key: &ApiKey, within: Duration, now: OffsetDateTime) -> Option<Expiring> {
        if key.is_expired(now) {
            return None;
        }
        let until = now.saturating_add(within);
        let expiry = key
            .expires_at()
            .filter(|&at| at <= until)
            .map(|at| (at, ExpiringReason::KeyExpires));
        let due = key.current_token().due_at();
        let renewal = (due <= until).then_some((due, ExpiringReason::RenewalDue));
        let (at, reason) = match (expiry, renewal) {
            (Some(e), Some(r)) => {
                if r.0 < e.0 {
                    r
                } else {
                    e
                }
            }
            (e, r) => e.or(r)?,
        };
        Some(Expiring {
            key: key.clone(),
            at,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyId, NewKey};

    fn key(expires_in_days: Option<i64>, now: OffsetDateTime) -> ApiKey {
        let mut new = NewKey::new(KeyId::new("k").unwrap());
        if let Some(days) = expires_in_days {
            new = new.expires_at(now + Duration::days(days));
        }
        ApiKey::issue(new, now, &mut rand::rng()).unwrap().0
    }

    #[test]
    fn the_sooner_date_within_the_window_is_told() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        // Issued at t0: due for renewal after 90 days.
        let due = t0 + Duration::days(90);
        let window = Duration::days(14);
        assert_eq!(Expiring::of(&key(None, t0), window, t0), None);
        let soon = Expiring::of(&key(Some(3), t0), window, t0).unwrap();
        assert_eq!(
            (soon.at, soon.reason),
            (t0 + Duration::days(3), ExpiringReason::KeyExpires)
        );
        // 80 days on: due in 10 days, expiring in 20: the renewal comes first.
        let later = t0 + Duration::days(80);
        let both = Expiring::of(&key(Some(100), t0), window, later).unwrap();
        assert_eq!((both.at, both.reason), (due, ExpiringReason::RenewalDue));
        // Overdue tokens stay listed; expired keys are not.
        let overdue = Expiring::of(&key(None, t0), window, t0 + Duration::days(200)).unwrap();
        assert_eq!(
            (overdue.at, overdue.reason),
            (due, ExpiringReason::RenewalDue)
        );
        assert_eq!(
            Expiring::of(&key(Some(3), t0), window, t0 + Duration::days(4)),
            None
        );
        // The window's end is included.
        assert!(Expiring::of(&key(Some(14), t0), window, t0).is_some());
        assert!(Expiring::of(&key(Some(15), t0), window, t0).is_none());
    }
}
