//! What public calls refuse before they change a key: labels, instants,
//! policies and graces that could not be stored or loaded back.
//!
//! Every instant a key keeps is in UTC and within the years 1 to 9999, the
//! range RFC 3339 records can hold. Sums of an instant and a duration that
//! are not refused (a use plus a grace) saturate inside that range.

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::errors::{InvalidLabel, TransitionError};
use crate::id::{KeyId, OwnerId};
use crate::policy::Policy;

/// `Ok` if a new key may have `id`: not one that only
/// [`KeyId::existing`] takes.
pub(crate) fn check_new_id(id: &KeyId) -> Result<(), TransitionError> {
    KeyId::new(id.as_str())?;
    Ok(())
}

/// `Ok` if a key's owner may be set to `owner`: not one that only
/// [`OwnerId::existing`] takes.
pub(crate) fn check_new_owner(owner: &OwnerId) -> Result<(), TransitionError> {
    OwnerId::new(owner.as_str())?;
    Ok(())
}

/// The longest label, in bytes.
pub(crate) const LABEL_MAX_LEN: usize = 256;

/// The earliest instant a key keeps: 0001-01-01T00:00:00Z.
fn earliest() -> OffsetDateTime {
    let date = Date::from_calendar_date(1, Month::January, 1)
        .unwrap_or_else(|_| unreachable!("year 1 is in time's range"));
    PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc()
}

/// The latest instant a key keeps: 9999-12-31T23:59:59.999999999Z.
fn latest() -> OffsetDateTime {
    let date = Date::from_calendar_date(9999, Month::December, 31)
        .unwrap_or_else(|_| unreachable!("year 9999 is in time's range"));
    let time = Time::from_hms_nano(23, 59, 59, 999_999_999)
        .unwrap_or_else(|_| unreachable!("a valid time of day"));
    PrimitiveDateTime::new(date, time).assume_utc()
}

/// `at` in UTC, if it is within the years 1 to 9999.
pub(crate) fn in_range(at: OffsetDateTime) -> Option<OffsetDateTime> {
    let utc = at.checked_to_offset(UtcOffset::UTC)?;
    (earliest()..=latest()).contains(&utc).then_some(utc)
}

/// `at` in UTC, or [`TransitionError::TimeOutOfRange`] naming it as `what`.
pub(crate) fn instant(
    at: OffsetDateTime,
    what: &'static str,
) -> Result<OffsetDateTime, TransitionError> {
    in_range(at).ok_or(TransitionError::TimeOutOfRange { what, at })
}

/// `at` in UTC, clamped into the years 1 to 9999.
pub(crate) fn clamp(at: OffsetDateTime) -> OffsetDateTime {
    in_range(at).unwrap_or_else(|| if at > latest() { latest() } else { earliest() })
}

/// `at + d`, saturated inside the years 1 to 9999 (UTC).
pub(crate) fn saturating_add(at: OffsetDateTime, d: Duration) -> OffsetDateTime {
    match at.checked_add(d).and_then(in_range) {
        Some(sum) => sum,
        None if d.is_negative() => earliest(),
        None => latest(),
    }
}

/// The due date of a token created at `now` under `policy`, refused when it
/// falls outside the years 1 to 9999.
pub(crate) fn due_date(
    now: OffsetDateTime,
    policy: &Policy,
) -> Result<OffsetDateTime, TransitionError> {
    now.checked_add(policy.renewal_period)
        .and_then(in_range)
        .ok_or(TransitionError::TimeOutOfRange {
            what: "the due date of a token created at",
            at: now,
        })
}

/// Refuses a policy a key could not live by.
pub(crate) fn check_policy(policy: &Policy) -> Result<(), TransitionError> {
    if !policy.renewal_period.is_positive() {
        return Err(TransitionError::InvalidPolicy {
            field: "renewal_period",
            value: policy.renewal_period,
            rule: "positive",
        });
    }
    if policy.usage_resolution.is_negative() {
        return Err(TransitionError::InvalidPolicy {
            field: "usage_resolution",
            value: policy.usage_resolution,
            rule: "zero or positive",
        });
    }
    Ok(())
}

/// `label`, refused if it is longer than 256 bytes or holds a control
/// character.
pub(crate) fn check_label(label: String) -> Result<Box<str>, InvalidLabel> {
    if label.len() > LABEL_MAX_LEN {
        return Err(InvalidLabel::too_long(&label, LABEL_MAX_LEN));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(InvalidLabel::control_character(&label, c));
    }
    Ok(label.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(check_label("orders service ünï 🔑".into()).is_ok());
        assert!(check_label("x".repeat(256)).is_ok());
        let long = check_label("x".repeat(257)).unwrap_err().to_string();
        assert!(long.contains("257 bytes"), "{long}");
        let control = check_label("a\nb".into()).unwrap_err().to_string();
        assert_eq!(
            control,
            "invalid label \"a\\nb\": it holds the control character '\\n'"
        );
    }

    #[test]
    fn the_range_is_years_1_to_9999_in_utc() {
        let ok = time::macros::datetime!(9999-12-31 23:00 UTC);
        assert_eq!(in_range(ok), Some(ok));
        // The same local date, but in UTC it is year 10000.
        let east_of_range = time::macros::datetime!(9999-12-31 23:00 -05:00);
        assert_eq!(in_range(east_of_range), None);
        assert_eq!(
            in_range(time::macros::datetime!(0000-12-31 23:59 UTC)),
            None
        );
        let shifted = in_range(time::macros::datetime!(2026-01-01 05:30 +05:30)).unwrap();
        assert_eq!(shifted.offset(), UtcOffset::UTC);
        assert_eq!(saturating_add(ok, Duration::days(1)), latest());
        assert_eq!(saturating_add(earliest(), -Duration::days(1)), earliest());
        assert_eq!(saturating_add(ok, Duration::MAX), latest());
    }
}
