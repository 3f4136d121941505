//! Public identifiers: [`KeyId`] for a key, [`TokenId`] for one of its
//! tokens, [`OwnerId`] for whoever the key belongs to.

use std::fmt;
use std::str::FromStr;

use smol_str::SmolStr;

use crate::base62;
use crate::errors::{InvalidKeyId, InvalidTokenId, quote};

/// The public, stable id of an API key (the product's `appKey`).
///
/// 1 to 64 characters of `[A-Za-z0-9._-]`, the first an ASCII letter or
/// digit. It never changes across renewals and is not a secret: it is sent
/// with every request beside the token.
///
/// An id is a URL path segment in the admin API and the console, and a
/// browser collapses the segments `.` and `..`: so no id may start with
/// `.`, `_` or `-`. Versions before 0.4 allowed that; their keys still load
/// and authenticate, and [`KeyId::existing`] names them, to read, delete or
/// rename them (a rename is a new key with the same settings, its token
/// handed to the clients, then the old key deleted).
///
/// # Example
///
/// ```
/// use keyroll::KeyId;
///
/// let id = KeyId::new("acme-orders")?;
/// assert_eq!(id.as_str(), "acme-orders");
/// assert!(KeyId::new("no spaces").is_err());
///
/// let generated = KeyId::generate(&mut rand::rng());
/// assert_eq!(generated.as_str().len(), 16);
/// # Ok::<(), keyroll::error::InvalidKeyId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(SmolStr);

/// The longest [`KeyId`], in bytes.
const KEY_ID_MAX_LEN: usize = 64;
/// The length of a [`KeyId::generate`]d id.
const GENERATED_LEN: usize = 16;

impl KeyId {
    /// Checks and wraps a key id.
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] when `id` is empty, longer than 64 bytes, holds a
    /// character outside `[A-Za-z0-9._-]`, or starts with one that is not
    /// an ASCII letter or digit.
    pub fn new(id: impl Into<String>) -> Result<KeyId, InvalidKeyId> {
        checked(id.into(), "key id", Rule::New).map(KeyId)
    }

    /// Checks and wraps the id of a key that may already be stored: the
    /// rule of versions before 0.4, where any character of the alphabet
    /// may come first (`.x`, `_x`, even `..`). Use it to name such a key
    /// (to read, delete or rename it); [`ApiKey::issue`](crate::ApiKey::issue)
    /// refuses to create one. Deserializing a `KeyId` (a stored record, an
    /// event) follows this rule.
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] when `id` is empty, longer than 64 bytes, or holds
    /// a character outside `[A-Za-z0-9._-]`.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::KeyId;
    ///
    /// assert!(KeyId::new("..").is_err());
    /// let stored = KeyId::existing("..")?;
    /// assert!(!stored.is_valid_for_new_keys());
    /// # Ok::<(), keyroll::error::InvalidKeyId>(())
    /// ```
    pub fn existing(id: impl Into<String>) -> Result<KeyId, InvalidKeyId> {
        checked(id.into(), "key id", Rule::Existing).map(KeyId)
    }

    /// Whether a new key may have this id ([`KeyId::new`]'s rule): false
    /// only for an id made by [`KeyId::existing`] that starts with `.`,
    /// `_` or `-`.
    pub fn is_valid_for_new_keys(&self) -> bool {
        starts_well(&self.0)
    }

    /// A new random id of 16 base62 characters (about 95 bits).
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> KeyId {
        let mut bytes = [0u8; GENERATED_LEN];
        base62::fill_random(rng, &mut bytes);
        KeyId(bytes.iter().map(|&b| char::from(b)).collect())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key id a token's framing names (`PresentedToken::parse` checked
    /// it: 1 to 64 bytes of the id alphabet).
    pub(crate) fn named(id: &str) -> KeyId {
        KeyId(SmolStr::new(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({:?})", self.0.as_str())
    }
}

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::new(s)
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Which ids a constructor takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Ids of new keys and owners: the first character a letter or digit.
    New,
    /// Ids that versions before 0.4 stored: any character of the alphabet.
    Existing,
}

/// Whether `id` starts with an ASCII letter or digit: no id made only of
/// dots (a URL's `.` and `..` segments), none that reads as an option.
fn starts_well(id: &str) -> bool {
    id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// `id` if it is 1 to 64 bytes of `[A-Za-z0-9._-]` (and, by the new rule,
/// starts with a letter or digit); else the error naming `what` it was to
/// be.
fn checked(id: String, what: &'static str, rule: Rule) -> Result<SmolStr, InvalidKeyId> {
    let problem = if id.is_empty() {
        "it is empty"
    } else if id.len() > KEY_ID_MAX_LEN {
        "it is longer than 64 bytes"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "it holds a character outside the alphabet"
    } else if rule == Rule::New && !starts_well(&id) {
        "it must start with an ASCII letter or digit"
    } else {
        return Ok(SmolStr::from(id));
    };
    Err(InvalidKeyId {
        what,
        quoted: quote(&id),
        problem,
    })
}

/// Whom a key belongs to: a customer, a team, a tenant. Keys are listed by
/// owner ([`KeyManager::list_owned`](crate::KeyManager::list_owned)), and
/// every store of keyroll indexes it.
///
/// The same rules as a [`KeyId`]: 1 to 64 characters of `[A-Za-z0-9._-]`,
/// the first an ASCII letter or digit; [`OwnerId::existing`] names an
/// owner that a version before 0.4 stored.
///
/// # Example
///
/// ```
/// use keyroll::OwnerId;
///
/// let owner = OwnerId::new("acme")?;
/// assert_eq!(owner.as_str(), "acme");
/// assert!(OwnerId::new("acme corp").is_err());
/// # Ok::<(), keyroll::error::InvalidKeyId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerId(pub(crate) SmolStr);

impl OwnerId {
    /// Checks and wraps an owner id.
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] (its message says "owner id") when `id` is empty,
    /// longer than 64 bytes, holds a character outside `[A-Za-z0-9._-]`,
    /// or starts with one that is not an ASCII letter or digit.
    pub fn new(id: impl Into<String>) -> Result<OwnerId, InvalidKeyId> {
        checked(id.into(), "owner id", Rule::New).map(OwnerId)
    }

    /// Checks and wraps an owner id that may already be stored, by the
    /// rule of versions before 0.4 (see [`KeyId::existing`]): to list its
    /// keys. A key's owner cannot be set to one that fails
    /// [`OwnerId::new`].
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] when `id` is empty, longer than 64 bytes, or holds
    /// a character outside `[A-Za-z0-9._-]`.
    pub fn existing(id: impl Into<String>) -> Result<OwnerId, InvalidKeyId> {
        checked(id.into(), "owner id", Rule::Existing).map(OwnerId)
    }

    /// Whether a key's owner may be set to this id ([`OwnerId::new`]'s
    /// rule).
    pub fn is_valid_for_new_keys(&self) -> bool {
        starts_well(&self.0)
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerId({:?})", self.0.as_str())
    }
}

impl FromStr for OwnerId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OwnerId::new(s)
    }
}

impl AsRef<str> for OwnerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The public, non-secret id of one token of a key, for audit trails.
///
/// Random, 128 bits, shown as 32 lower-case hex digits. It says which token
/// was issued, renewed, used or deleted without revealing anything of the
/// secret.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId([u8; 16]);

impl TokenId {
    pub(crate) fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> TokenId {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        TokenId(bytes)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl FromStr for TokenId {
    type Err = InvalidTokenId;

    /// Parses the 32 lower-case hex digits written by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::hex::decode::<16>(s)
            .map(TokenId)
            .ok_or(InvalidTokenId(()))
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::{KeyId, OwnerId, TokenId};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    impl Serialize for OwnerId {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for OwnerId {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            OwnerId::existing(s.into_owned()).map_err(D::Error::custom)
        }
    }

    impl Serialize for KeyId {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for KeyId {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            KeyId::existing(s.into_owned()).map_err(D::Error::custom)
        }
    }

    impl Serialize for TokenId {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }

    impl<'de> Deserialize<'de> for TokenId {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn key_id_accepts_exactly_its_alphabet_and_length() {
        assert!(KeyId::new("a").is_ok());
        assert!(KeyId::new("vtexappkey-acme-ORYNWX").is_ok());
        assert!(KeyId::new("a.b_c-D9").is_ok());
        assert!(KeyId::new("x".repeat(64)).is_ok());
        assert!(KeyId::new("x".repeat(65)).is_err());
        assert!(KeyId::new("").is_err());
        for bad in ["a b", "a/b", "é", "a\0", "a:b"] {
            let error = KeyId::new(bad).unwrap_err().to_string();
            assert!(error.contains("outside the alphabet"), "{error}");
            assert!(error.contains(&format!("{:?}", bad)), "{error}");
        }
        assert!(KeyId::new("").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn new_ids_start_with_a_letter_or_digit_and_stored_ones_still_load() {
        for bad in [".", "..", "...", "_x", "-x", ".hidden"] {
            let error = KeyId::new(bad).unwrap_err().to_string();
            assert!(
                error.contains("must start with an ASCII letter or digit"),
                "{error}"
            );
            assert!(error.contains(&format!("{bad:?}")), "{error}");
            assert!(OwnerId::new(bad).is_err());
            assert!(bad.parse::<KeyId>().is_err());
            let stored = KeyId::existing(bad).unwrap();
            assert!(!stored.is_valid_for_new_keys());
            assert!(!OwnerId::existing(bad).unwrap().is_valid_for_new_keys());
        }
        for good in ["a", "0", "a..", "9_-."] {
            assert!(KeyId::new(good).unwrap().is_valid_for_new_keys());
        }
        assert!(KeyId::existing("a b").is_err());
        assert!(KeyId::existing("").is_err());
    }

    #[test]
    fn owner_ids_follow_the_key_id_rules_and_say_what_they_are() {
        assert!(OwnerId::new("acme.EU_1-b").is_ok());
        assert!(OwnerId::new("x".repeat(64)).is_ok());
        let error = OwnerId::new("acme corp").unwrap_err().to_string();
        assert!(
            error.starts_with("invalid owner id \"acme corp\""),
            "{error}"
        );
        assert!(OwnerId::new("x".repeat(65)).is_err());
        assert_eq!("acme".parse::<OwnerId>(), OwnerId::new("acme"));
    }

    #[test]
    fn generated_key_ids_are_valid_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = KeyId::generate(&mut rng);
        let b = KeyId::generate(&mut rng);
        assert_ne!(a, b);
        assert_eq!(KeyId::new(a.as_str()), Ok(a.clone()));
        assert_eq!(a.to_string().parse::<KeyId>(), Ok(a));
    }

    #[test]
    fn token_id_display_round_trips() {
        let id = TokenId::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<TokenId>(), Ok(id));
        assert!("ABCD".parse::<TokenId>().is_err());
        assert_eq!(TokenId([0xab; 16]).to_string(), "ab".repeat(16));
        assert!("AB".repeat(16).parse::<TokenId>().is_err());
    }
}
