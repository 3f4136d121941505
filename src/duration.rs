//! The JSON form of a `time::Duration`: `{"secs": i64, "nanos": i32}`,
//! `nanos` omitted when 0. For `#[serde(with = "crate::duration")]` in the
//! types a record holds (policies, decisions, rate limits, refills); it sits
//! below them all, so that none of them imports the record codec.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use time::Duration;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Parts {
    secs: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    nanos: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    Parts {
        secs: d.whole_seconds(),
        nanos: d.subsec_nanoseconds(),
    }
    .serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let Parts { secs, nanos } = Parts::deserialize(d)?;
    let same_sign = secs == 0 || nanos == 0 || (secs < 0) == (nanos < 0);
    if nanos.unsigned_abs() >= 1_000_000_000 || !same_sign {
        return Err(D::Error::custom("invalid duration: nanos out of range"));
    }
    Ok(Duration::new(secs, nanos))
}
