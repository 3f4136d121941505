//! [`Revision`]: what a store compares before it overwrites or deletes a key.

use std::fmt;

/// Which stored state of which key a write expects to replace: the key's
/// *incarnation* and its *version*.
///
/// The version counts the key's transitions and restarts at 1 when an id is
/// deleted and created again. The incarnation is drawn at random when a key
/// is issued (below 2<sup>63</sup>, so it fits a signed 64-bit column) and
/// kept for the key's life, so a copy loaded before a delete and re-create
/// of its id never matches the new key: a stale writer gets
/// [`StoreError::Conflict`](crate::store::StoreError::Conflict) instead of bringing
/// the deleted key back.
///
/// Displayed as `{version}@{incarnation in 16 hex digits}`.
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, KeyId};
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::now_utc();
/// let (mut key, _token, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
/// let before = key.revision();
/// key.deactivate(now)?;
/// assert_eq!(key.revision().version(), before.version() + 1);
/// assert_eq!(key.revision().incarnation(), before.incarnation());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Revision {
    incarnation: u64,
    version: u64,
}

impl Revision {
    /// The revision `version` of the key incarnation `incarnation`.
    pub const fn new(incarnation: u64, version: u64) -> Revision {
        Revision {
            incarnation,
            version,
        }
    }

    /// The key's incarnation: random, fixed at issue.
    pub const fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The key's version: 1 after issue, one more per transition.
    pub const fn version(&self) -> u64 {
        self.version
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:016x}", self.version, self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_version_then_incarnation() {
        assert_eq!(Revision::new(0xab, 3).to_string(), "3@00000000000000ab");
        assert_ne!(Revision::new(1, 2), Revision::new(2, 2));
        assert_ne!(Revision::new(1, 2), Revision::new(1, 3));
    }
}
