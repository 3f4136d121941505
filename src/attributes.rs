//! What a key may do and whose it is: [`Scope`], [`Scopes`] and
//! [`Metadata`].
//!
//! They live on the key, survive every renewal and come back from
//! authentication, so no second table has to be kept in step. Both sets are
//! validated when built, kept sorted, and shared behind an `Arc`: handing
//! them out on every request costs a reference count, not a copy.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::errors::{InvalidMetadata, InvalidScope, quote};

/// The longest scope, in bytes.
const SCOPE_MAX_LEN: usize = 64;
/// The most scopes a key holds.
const SCOPES_MAX: usize = 64;
/// The most metadata entries a key holds.
const METADATA_MAX: usize = 32;
/// The longest metadata key, in bytes.
const METADATA_KEY_MAX_LEN: usize = 64;
/// The longest metadata value, in bytes.
const METADATA_VALUE_MAX_LEN: usize = 512;

/// One permission a key holds, such as `orders:read`: 1 to 64 characters
/// of `[A-Za-z0-9:._/-]`. What a scope allows is the service's to decide.
///
/// # Example
///
/// ```
/// use keyroll::Scope;
///
/// let scope = Scope::new("orders:read")?;
/// assert_eq!(scope.as_str(), "orders:read");
/// let error = Scope::new("has space").unwrap_err();
/// assert!(error.to_string().starts_with("invalid scope \"has space\""));
/// # Ok::<(), keyroll::error::InvalidScope>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(Box<str>);

impl Scope {
    /// Checks and wraps a scope.
    ///
    /// # Errors
    ///
    /// [`InvalidScope`] when `scope` is empty, longer than 64 bytes or holds
    /// a character outside `[A-Za-z0-9:._/-]`.
    pub fn new(scope: &str) -> Result<Scope, InvalidScope> {
        let problem = if scope.is_empty() {
            "it is empty"
        } else if scope.len() > SCOPE_MAX_LEN {
            "it is longer than 64 bytes"
        } else if !scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'/' | b'-'))
        {
            "it holds a character outside A-Z, a-z, 0-9, ':', '.', '_', '/' and '-'"
        } else {
            return Ok(Scope(scope.into()));
        };
        Err(InvalidScope(format!(
            "invalid scope {}: {problem}",
            quote(scope)
        )))
    }

    /// The scope as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", &*self.0)
    }
}

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::new(s)
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The scopes of a key: a set of at most 64 [`Scope`]s, sorted, cheap to
/// clone (duplicates collapse). The default is empty.
///
/// # Example
///
/// ```
/// use keyroll::Scopes;
///
/// let scopes = Scopes::new(["orders:write", "orders:read", "orders:read"])?;
/// assert_eq!(scopes.len(), 2);
/// assert!(scopes.contains("orders:read"));
/// assert!(!scopes.contains("orders"));
/// let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
/// assert_eq!(names, ["orders:read", "orders:write"]);
/// # Ok::<(), keyroll::error::InvalidScope>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Scopes(Option<Arc<[Scope]>>);

impl Scopes {
    /// Checks every scope and builds the set.
    ///
    /// # Errors
    ///
    /// [`InvalidScope`] naming the first bad scope, or when more than 64
    /// distinct scopes are given.
    pub fn new<I>(scopes: I) -> Result<Scopes, InvalidScope>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut all = scopes
            .into_iter()
            .map(|scope| Scope::new(scope.as_ref()))
            .collect::<Result<Vec<Scope>, _>>()?;
        all.sort_unstable();
        all.dedup();
        if all.len() > SCOPES_MAX {
            return Err(InvalidScope(format!(
                "too many scopes: {}, and a key holds at most {SCOPES_MAX}",
                all.len()
            )));
        }
        Ok(Scopes((!all.is_empty()).then(|| all.into())))
    }

    /// Whether the set holds `scope` (exactly: scopes have no hierarchy).
    pub fn contains(&self, scope: &str) -> bool {
        self.as_slice()
            .binary_search_by(|held| held.as_str().cmp(scope))
            .is_ok()
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.as_slice().iter()
    }

    /// How many scopes the set holds.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn as_slice(&self) -> &[Scope] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Scope::as_str))
            .finish()
    }
}

impl<'a> IntoIterator for &'a Scopes {
    type Item = &'a Scope;
    type IntoIter = std::slice::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Free-form facts about a key, such as its owner or tenant: a map of at
/// most 32 entries, sorted by key, cheap to clone. Keys are 1 to 64
/// characters of `[A-Za-z0-9._-]` and unique; values are at most 512 bytes
/// of UTF-8. The default is empty.
///
/// # Example
///
/// ```
/// use keyroll::Metadata;
///
/// let metadata = Metadata::new([("tenant", "acme"), ("owner", "billing-team")])?;
/// assert_eq!(metadata.get("tenant"), Some("acme"));
/// let keys: Vec<&str> = metadata.iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["owner", "tenant"]);
/// assert!(Metadata::new([("tenant", "a"), ("tenant", "b")]).is_err());
/// # Ok::<(), keyroll::error::InvalidMetadata>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Metadata(Option<Arc<[Entry]>>);

/// One metadata entry: key, value.
type Entry = (Box<str>, Box<str>);

impl Metadata {
    /// Checks every entry and builds the map.
    ///
    /// # Errors
    ///
    /// [`InvalidMetadata`] naming the first bad entry: an empty, too long or
    /// ill-formed key, a value over 512 bytes, a key given twice, or more
    /// than 32 entries.
    pub fn new<I, K, V>(entries: I) -> Result<Metadata, InvalidMetadata>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut all = Vec::new();
        for (key, value) in entries {
            let (key, value) = (key.as_ref(), value.as_ref());
            let problem = if key.is_empty() {
                Some("the key is empty")
            } else if key.len() > METADATA_KEY_MAX_LEN {
                Some("the key is longer than 64 bytes")
            } else if !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                Some("the key holds a character outside A-Z, a-z, 0-9, '.', '_' and '-'")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(InvalidMetadata(format!(
                    "invalid metadata key {}: {problem}",
                    quote(key)
                )));
            }
            if value.len() > METADATA_VALUE_MAX_LEN {
                return Err(InvalidMetadata(format!(
                    "invalid metadata value {} for key {}: it is {} bytes long, and a value holds at most {METADATA_VALUE_MAX_LEN}",
                    quote(value),
                    quote(key),
                    value.len()
                )));
            }
            all.push((Box::<str>::from(key), Box::<str>::from(value)));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = all.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(InvalidMetadata(format!(
                "invalid metadata: the key {} is given twice",
                quote(&pair[0].0)
            )));
        }
        if all.len() > METADATA_MAX {
            return Err(InvalidMetadata(format!(
                "too many metadata entries: {}, and a key holds at most {METADATA_MAX}",
                all.len()
            )));
        }
        Ok(Metadata((!all.is_empty()).then(|| all.into())))
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let entries = self.as_slice();
        entries
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*entries[i].1)
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.as_slice().iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many entries the map holds.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn as_slice(&self) -> &[Entry] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    use super::{Metadata, Scope, Scopes};

    impl Serialize for Scope {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.as_str())
        }
    }

    impl<'de> Deserialize<'de> for Scope {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Scope::new(&s).map_err(D::Error::custom)
        }
    }

    /// An array of strings.
    impl Serialize for Scopes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.iter())
        }
    }

    impl<'de> Deserialize<'de> for Scopes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let all = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
            Scopes::new(all).map_err(D::Error::custom)
        }
    }

    /// An object of strings, sorted by key.
    impl Serialize for Metadata {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.iter())
        }
    }

    impl<'de> Deserialize<'de> for Metadata {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Entries;
            impl<'de> serde::de::Visitor<'de> for Entries {
                type Value = Metadata;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object of strings")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Metadata, A::Error> {
                    // Entries are collected as given, so that a key given
                    // twice is refused rather than silently overwritten.
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry::<String, String>()? {
                        entries.push(entry);
                    }
                    Metadata::new(entries).map_err(A::Error::custom)
                }
            }
            d.deserialize_map(Entries)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_refuse_bad_input_naming_it() {
        for (bad, problem) in [
            ("", "empty"),
            ("has space", "outside"),
            ("orders:read!", "outside"),
            ("é", "outside"),
        ] {
            let error = Scopes::new(["ok", bad]).unwrap_err().to_string();
            assert!(error.contains(&quote(bad)), "{error}");
            assert!(error.contains(problem), "{error}");
        }
        let long = "x".repeat(65);
        assert!(
            Scope::new(&long)
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        let error = Scopes::new(&many).unwrap_err().to_string();
        assert_eq!(error, "too many scopes: 65, and a key holds at most 64");
        assert_eq!(Scopes::new(&many[..64]).unwrap().len(), 64);
        // Duplicates collapse before counting.
        assert_eq!(Scopes::new(vec!["a"; 100]).unwrap().len(), 1);
    }

    #[test]
    fn metadata_refuses_bad_input_naming_it() {
        let error = |entries: Vec<(&str, &str)>| Metadata::new(entries).unwrap_err().to_string();
        assert_eq!(
            error(vec![("", "x")]),
            "invalid metadata key \"\": the key is empty"
        );
        assert!(error(vec![("a b", "x")]).contains("\"a b\""));
        assert_eq!(
            error(vec![("tenant", "a"), ("tenant", "b")]),
            "invalid metadata: the key \"tenant\" is given twice"
        );
        let long = "v".repeat(513);
        let message = error(vec![("note", &long)]);
        assert!(message.contains("513 bytes"), "{message}");
        assert!(message.contains("for key \"note\""), "{message}");
        assert!(message.contains('…'), "the value is truncated: {message}");
        assert!(Metadata::new([("note", "v".repeat(512))]).is_ok());
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Metadata::new(many).unwrap_err().to_string().contains("33"));
    }

    #[test]
    fn clones_share_their_entries() {
        let scopes = Scopes::new(["a", "b", "c"]).unwrap();
        let clone = scopes.clone();
        assert!(std::ptr::eq(scopes.as_slice(), clone.as_slice()));
        assert!(Scopes::default().is_empty());
        assert!(Metadata::default().is_empty());
        assert_eq!(Metadata::default().get("x"), None);
    }
}
