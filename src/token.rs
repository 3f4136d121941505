//! The token format: generation, parsing and hashing of the one plaintext secret.
//!
//! A token reads `{prefix}_{secret}{checksum}`: a prefix of 1 to 16 characters
//! of `[a-z0-9]`, 40 base62 characters drawn uniformly from a `CryptoRng`, and
//! a 6-character base62 CRC-32 of everything before it. Only its SHA-256 hash,
//! bound to the key id, is ever kept.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::base62;
use crate::id::{KeyId, TokenId};
use crate::verify::VerifyError;

/// Number of base62 characters of the secret (about 238 bits).
pub(crate) const SECRET_LEN: usize = 40;
/// Number of base62 characters of the checksum.
const CHECKSUM_LEN: usize = 6;
/// The longest prefix, in bytes.
const PREFIX_MAX_LEN: usize = 16;
/// Separates the hashes of keyroll tokens from any other SHA-256 use. Kept
/// short so that, with a key id of up to 21 bytes, the hashed input fits one
/// SHA-256 block.
const HASH_DOMAIN: &[u8; 3] = b"kr\x01";
/// The longest hashed input: tag, id length, id, packed secret.
const HASHED_MAX: usize = HASH_DOMAIN.len() + 1 + 64 + PACKED_LEN;
/// The secret packed 6 bits per character.
const PACKED_LEN: usize = SECRET_LEN * 6 / 8;

/// A freshly generated token: the only value in keyroll that holds a plaintext
/// secret.
///
/// It is handed out once, by [`ApiKey::issue`](crate::ApiKey::issue) or
/// [`ApiKey::renew`](crate::ApiKey::renew); only its hash is kept. It cannot be
/// cloned, displayed or serialized, its `Debug` shows only its [`TokenId`], and
/// its memory is zeroized when it is dropped. Show it to the user with
/// [`expose_secret`](Token::expose_secret), then let it go.
///
/// A token is only as secret as the generator it was drawn from. The
/// `CryptoRng` bound of `issue` and `renew` is a marker, not a guarantee:
/// pass `rand::rng()` or another generator seeded by the operating system.
/// A generator seeded with a known value (`StdRng::seed_from_u64`) makes
/// every token predictable, and the public token ids in events and records
/// tell an attacker where in its stream it is. Seeded generators are for
/// tests only.
pub struct Token {
    text: Zeroizing<String>,
    id: TokenId,
}

impl Token {
    /// The full token, `{prefix}_{secret}{checksum}`, to show the user once.
    pub fn expose_secret(&self) -> &str {
        &self.text
    }

    /// The public id of this token, as found in events and [`TokenInfo`](crate::TokenInfo).
    pub fn id(&self) -> TokenId {
        self.id
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A token's secret, checked and packed 6 bits per character (a lossless
/// encoding of its 40 characters).
///
/// Unlike [`Token`], it is not zeroized: it lives on the stack for one
/// `verify`, whose input (the presented token) stays in the caller's request
/// buffer anyway, and wiping it and the hash input would cost a sixth of
/// `verify`.
pub(crate) struct Secret([u8; PACKED_LEN]);

impl zeroize::Zeroize for Secret {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// The SHA-256 of a token's secret, bound to its key id.
#[derive(Clone, Copy)]
pub(crate) struct TokenHash(pub(crate) [u8; 32]);

impl TokenHash {
    /// Hashes, in one call, the domain tag, the key id (length-prefixed) and
    /// the packed secret.
    pub(crate) fn of(key: &KeyId, secret: &Secret) -> TokenHash {
        let mut input = [0u8; HASHED_MAX];
        let len = hash_input(key, secret, &mut input);
        TokenHash(Sha256::digest(&input[..len]).into())
    }

    /// Constant-time equality, a 64-bit word at a time.
    pub(crate) fn ct_eq(&self, other: &TokenHash) -> subtle::Choice {
        let (ours, []) = self.0.as_chunks::<8>() else {
            unreachable!("32 bytes are 4 words")
        };
        let (theirs, []) = other.0.as_chunks::<8>() else {
            unreachable!("32 bytes are 4 words")
        };
        ours.iter()
            .zip(theirs)
            .fold(subtle::Choice::from(1), |equal, (a, b)| {
                equal & u64::from_ne_bytes(*a).ct_eq(&u64::from_ne_bytes(*b))
            })
    }
}

/// Writes what is hashed (the domain tag, the key id's length, the key id,
/// the packed secret) into `input` and returns its length.
fn hash_input(key: &KeyId, secret: &Secret, input: &mut [u8; HASHED_MAX]) -> usize {
    let id = key.as_str().as_bytes();
    let tag = HASH_DOMAIN.len();
    input[..tag].copy_from_slice(HASH_DOMAIN);
    // A KeyId is at most 64 bytes, so its length fits one byte.
    input[tag] = id.len() as u8;
    input[tag + 1..tag + 1 + id.len()].copy_from_slice(id);
    let len = tag + 1 + id.len() + PACKED_LEN;
    input[tag + 1 + id.len()..len].copy_from_slice(&secret.0);
    len
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// The shape of a key's tokens: their prefix.
///
/// The prefix (default `kr`) lets secret scanners and humans recognise a
/// token; the checksum lets [`check`](TokenFormat::check) reject a typo
/// before any hashing.
///
/// # Example
///
/// ```
/// use keyroll::{TokenFormat, VerifyError};
///
/// let format = TokenFormat::new("acme")?;
/// assert_eq!(format.prefix(), "acme");
/// assert_eq!(format.check("acme_nope"), Err(VerifyError::Malformed));
/// assert_eq!(TokenFormat::default().prefix(), "kr");
/// # Ok::<(), keyroll::InvalidPrefix>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenFormat {
    prefix: [u8; PREFIX_MAX_LEN],
    len: u8,
}

impl TokenFormat {
    /// A format with this prefix.
    ///
    /// # Errors
    ///
    /// [`InvalidPrefix`] unless `prefix` is 1 to 16 characters of `[a-z0-9]`.
    pub fn new(prefix: &str) -> Result<TokenFormat, InvalidPrefix> {
        let bytes = prefix.as_bytes();
        let valid = (1..=PREFIX_MAX_LEN).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            return Err(InvalidPrefix(()));
        }
        let mut stored = [0u8; PREFIX_MAX_LEN];
        stored[..bytes.len()].copy_from_slice(bytes);
        Ok(TokenFormat {
            prefix: stored,
            len: bytes.len() as u8,
        })
    }

    /// The prefix, without the `_` that follows it in a token.
    pub fn prefix(&self) -> &str {
        std::str::from_utf8(self.prefix_bytes())
            .unwrap_or_else(|_| unreachable!("`new` stores only ASCII"))
    }

    fn prefix_bytes(&self) -> &[u8] {
        &self.prefix[..usize::from(self.len)]
    }

    /// The length of every token of this format.
    pub fn token_len(&self) -> usize {
        usize::from(self.len) + 1 + SECRET_LEN + CHECKSUM_LEN
    }

    /// Checks that `presented` is a well-formed token of this format: prefix,
    /// length, alphabet and checksum. Nothing is hashed.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`] on any failure.
    pub fn check(&self, presented: &str) -> Result<(), VerifyError> {
        self.secret_of(presented).map(|_| ())
    }

    /// The secret of a well-formed token of this format.
    pub(crate) fn secret_of(&self, presented: &str) -> Result<Secret, VerifyError> {
        let bytes = presented.as_bytes();
        let prefix = self.prefix_bytes();
        if bytes.len() != self.token_len()
            || !bytes.starts_with(prefix)
            || bytes[prefix.len()] != b'_'
        {
            return Err(VerifyError::Malformed);
        }
        let (signed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let mut written = 0u64;
        for &c in checksum {
            written = written * 62 + u64::from(base62::digit(c).ok_or(VerifyError::Malformed)?);
        }
        let chars: &[u8; SECRET_LEN] = signed[prefix.len() + 1..]
            .try_into()
            .map_err(|_| VerifyError::Malformed)?;
        let secret = base62::pack40(chars)
            .map(Secret)
            .ok_or(VerifyError::Malformed)?;
        if written != u64::from(crc32fast::hash(signed)) {
            return Err(VerifyError::Malformed);
        }
        Ok(secret)
    }

    /// A new token of this format for `key`, with the hash to keep.
    pub(crate) fn generate<R: rand::CryptoRng + ?Sized>(
        &self,
        key: &KeyId,
        rng: &mut R,
    ) -> (Token, TokenHash) {
        let prefix = self.prefix_bytes();
        let mut text = Zeroizing::new(vec![0u8; self.token_len()]);
        text[..prefix.len()].copy_from_slice(prefix);
        text[prefix.len()] = b'_';
        let secret_at = prefix.len() + 1..prefix.len() + 1 + SECRET_LEN;
        base62::fill_random(rng, &mut text[secret_at.clone()]);
        let checksum = crc32fast::hash(&text[..secret_at.end]);
        text[secret_at.end..]
            .copy_from_slice(&base62::encode_fixed::<CHECKSUM_LEN>(u64::from(checksum)));
        let chars: &[u8; SECRET_LEN] = text[secret_at]
            .try_into()
            .unwrap_or_else(|_| unreachable!("the secret is {SECRET_LEN} characters"));
        let secret = Zeroizing::new(
            base62::pack40(chars)
                .map(Secret)
                .unwrap_or_else(|| unreachable!("generated from the alphabet")),
        );
        // Issue time is not the hot path: wipe the hash input too.
        let mut input = Zeroizing::new([0u8; HASHED_MAX]);
        let len = hash_input(key, &secret, &mut input);
        let hash = TokenHash(Sha256::digest(&input[..len]).into());
        let text = String::from_utf8(std::mem::take(&mut *text))
            .unwrap_or_else(|_| unreachable!("only ASCII was written"));
        let token = Token {
            text: Zeroizing::new(text),
            id: TokenId::generate(rng),
        };
        (token, hash)
    }
}

impl Default for TokenFormat {
    /// The prefix `kr`.
    fn default() -> Self {
        TokenFormat::new("kr").unwrap_or_else(|_| unreachable!("\"kr\" is a valid prefix"))
    }
}

impl fmt::Debug for TokenFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenFormat({:?})", self.prefix())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for TokenFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.prefix())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for TokenFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let prefix = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TokenFormat::new(&prefix).map_err(serde::de::Error::custom)
    }
}

/// A string that is not a valid token prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token prefix: use 1 to 16 characters of a-z or 0-9")]
pub struct InvalidPrefix(());

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key() -> KeyId {
        KeyId::new("k1").unwrap()
    }

    #[test]
    fn generated_tokens_pass_their_own_check() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for prefix in ["kr", "a", "0123456789abcdef"] {
            let format = TokenFormat::new(prefix).unwrap();
            let (token, hash) = format.generate(&key(), &mut rng);
            let text = token.expose_secret();
            assert_eq!(text.len(), format.token_len());
            assert!(text.starts_with(&format!("{prefix}_")));
            let secret = format.secret_of(text).unwrap();
            assert_eq!(TokenHash::of(&key(), &secret), hash);
        }
    }

    #[test]
    fn prefix_rules() {
        for bad in ["", "KR", "k_r", "k-r", "0123456789abcdefg", "ü"] {
            assert_eq!(TokenFormat::new(bad), Err(InvalidPrefix(())), "{bad:?}");
        }
    }

    #[test]
    fn the_hash_is_bound_to_the_key_id() {
        let secret = Secret([7; PACKED_LEN]);
        let other = KeyId::new("k2").unwrap();
        assert_ne!(
            TokenHash::of(&key(), &secret),
            TokenHash::of(&other, &secret)
        );
    }

    #[test]
    fn hashes_differing_in_any_byte_compare_unequal() {
        let base = TokenHash([0x5a; 32]);
        assert!(bool::from(base.ct_eq(&base)));
        for i in 0..32 {
            let mut other = base;
            other.0[i] ^= 1;
            assert!(!bool::from(base.ct_eq(&other)), "byte {i}");
        }
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let (token, _) = TokenFormat::default().generate(&key(), &mut rand::rng());
        let debug = format!("{token:?}");
        assert!(!debug.contains(&token.expose_secret()[3..43]), "{debug}");
        assert!(debug.contains(&token.id().to_string()));
    }
}
