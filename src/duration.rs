//! The JSON form of a `time::Duration`: `{"secs": i64, "nanos": i32}`,
//! `nanos` omitted when 0. For `#[serde(with = "crate::duration")]` in the
//! types a record holds (policies, decisions, rate limits, refills); it sits
//! below them all, so that none of them imports the record codec. It also
//! reads what people write: a string of whole numbers of days, hours,
//! minutes and seconds (`"30d"`, `"1h 30m"`, `"90s"`).

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
    d.deserialize_any(Form)
}

/// Reads either form.
struct Form;

impl<'de> serde::de::Visitor<'de> for Form {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"a duration: {"secs": 60} or "60s", "1m", "2h", "30d""#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Duration, A::Error> {
        let Parts { secs, nanos } =
            Parts::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        let same_sign = secs == 0 || nanos == 0 || (secs < 0) == (nanos < 0);
        if nanos.unsigned_abs() >= 1_000_000_000 || !same_sign {
            return Err(A::Error::custom("invalid duration: nanos out of range"));
        }
        Ok(Duration::new(secs, nanos))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).ok_or_else(|| {
            E::custom(format_args!(
                "invalid duration {}: use whole days, hours, minutes or seconds, e.g. 90s, 1m, 2h 30m, 30d",
                crate::errors::quote(text)
            ))
        })
    }
}

/// `text` as whole numbers of days, hours, minutes and seconds (`1d 2h`,
/// `90s`), each at most once, in that order; `None` otherwise.
fn parse(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut units: &[(char, Duration)] = &[
        ('d', Duration::DAY),
        ('h', Duration::HOUR),
        ('m', Duration::MINUTE),
        ('s', Duration::SECOND),
    ];
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: i64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        let at = units.iter().position(|&(u, _)| u == unit)?;
        total = total.checked_add(units[at].1.checked_mul(i32::try_from(n).ok()?)?)?;
        units = &units[at + 1..];
        rest = rest[digits + 1..].trim_start();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_parts_or_as_text() {
        let read = |json: &str| {
            serde_json::from_str::<serde_json::Value>(json)
                .and_then(deserialize)
                .map_err(|e| e.to_string())
        };
        assert_eq!(read(r#"{"secs": 60}"#), Ok(Duration::MINUTE));
        assert_eq!(read(r#""60s""#), Ok(Duration::MINUTE));
        assert_eq!(read(r#""1m""#), Ok(Duration::MINUTE));
        assert_eq!(read(r#""1d 2h 3m 4s""#), Ok(Duration::new(93_784, 0)));
        assert_eq!(read(r#""30d""#), Ok(Duration::days(30)));
        for bad in ["", "1", "m", "1x", "1m 1h", "1m1m", "-1m", "99999999999d"] {
            let error = read(&format!("{bad:?}")).unwrap_err();
            assert!(error.contains("invalid duration"), "{bad:?}: {error}");
        }
    }
}
