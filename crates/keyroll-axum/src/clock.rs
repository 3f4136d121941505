//! The time a request is authenticated at: the system clock, as
//! `OffsetDateTime::now_utc` reads it, made a date and time more cheaply.
//!
//! `now_utc` computes the calendar date and time of the clock's reading on
//! every call: about 70 of the 3,500 instructions that authenticating a
//! request from memory adds (SHA-256 aside). Within one second only the
//! nanoseconds change, so each thread keeps the last second it converted
//! and sets the nanoseconds of a reading in the same second. The answer is
//! `now_utc`'s, exactly.

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

/// A second since the epoch, and its start as a date and time.
type Second = Cell<(u64, OffsetDateTime)>;

thread_local! {
    /// The last second converted on this thread.
    static LAST: Second = const { Cell::new((u64::MAX, OffsetDateTime::UNIX_EPOCH)) };
}

/// The current time (UTC): `OffsetDateTime::now_utc()`.
pub(crate) fn now() -> OffsetDateTime {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => LAST.with(|last| at(last, since)),
        // A clock set before 1970: not worth a cache.
        Err(_) => OffsetDateTime::now_utc(),
    }
}

/// The time `since` the epoch, the start of its second taken from `last`
/// when it is that second, else converted and kept there.
fn at(last: &Second, since: Duration) -> OffsetDateTime {
    let (second, nanosecond) = (since.as_secs(), since.subsec_nanos());
    let start = match last.get() {
        (kept, start) if kept == second => start,
        _ => {
            let start = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(second);
            last.set((second, start));
            start
        }
    };
    start
        .replace_nanosecond(nanosecond)
        .unwrap_or_else(|_| unreachable!("subsec_nanos is below one second"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_convert_as_now_utc_converts_them() {
        let last = Second::new((u64::MAX, OffsetDateTime::UNIX_EPOCH));
        // Within a second, across seconds, back in time, at the epoch, and
        // far out: every answer is the direct conversion's.
        let readings = [
            (1_764_460_800, 0),
            (1_764_460_800, 999_999_999),
            (1_764_460_800, 123_456_789),
            (1_764_460_801, 5),
            (1_764_460_800, 7),
            (0, 0),
            (0, 1),
            (253_402_300_799, 999_999_999), // 9999-12-31T23:59:59.999999999Z
            (86_399, 500),
        ];
        for (secs, nanos) in readings {
            let since = Duration::new(secs, nanos);
            let direct = OffsetDateTime::from(SystemTime::UNIX_EPOCH + since);
            assert_eq!(at(&last, since), direct, "{secs}.{nanos:09}");
            assert_eq!(at(&last, since), direct, "{secs}.{nanos:09}, kept");
        }
    }

    #[test]
    fn now_reads_the_system_clock() {
        let before = OffsetDateTime::now_utc();
        let now = now();
        let after = OffsetDateTime::now_utc();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }
}
