//! The token format: generation, parsing and hashing of the one plaintext
//! secret.
//!
//! A token reads `{prefix}_{key_id}_{secret}{checksum}`: a prefix of 1 to 16
//! characters of `[a-z0-9]`, the key's id (which may itself hold `_`), 40
//! base62 characters drawn uniformly from a `CryptoRng`, and a 6-character
//! base62 CRC-32 of everything before it. Parsing takes the prefix up to the
//! first `_` and the secret and checksum from the last 46 characters. Only the
//! SHA-256 hash of the secret, bound to the key id, is ever kept.
//!
//! Keyroll 0.1 wrote tokens without the key id (`{prefix}_{secret}{checksum}`);
//! their hashes are the same, so a key whose record says 0.1 issued its
//! token still accepts it.
//!
//! [`PresentedToken::parse`] is the one parser of this framing: everything
//! that reads a presented token (a key's `verify`, the stores, the manager,
//! [`KeyId::from_token`]) goes through it, once per token.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::base62;
use crate::errors::{InvalidPrefix, VerifyError, quote};
use crate::id::{KeyId, TokenId};

/// Number of base62 characters of the secret (about 238 bits).
const SECRET_LEN: usize = 40;
/// Number of base62 characters of the checksum.
const CHECKSUM_LEN: usize = 6;
/// The secret and checksum: the tail every token ends with.
const TAIL_LEN: usize = SECRET_LEN + CHECKSUM_LEN;
/// The longest prefix, in bytes.
const PREFIX_MAX_LEN: usize = 16;
/// The longest key id, in bytes.
const KEY_ID_MAX_LEN: usize = 64;
/// The longest token: prefix, `_`, key id, `_`, secret, checksum.
const TOKEN_MAX_LEN: usize = PREFIX_MAX_LEN + 1 + KEY_ID_MAX_LEN + 1 + TAIL_LEN;
/// Separates the hashes of keyroll tokens from any other SHA-256 use.
const HASH_DOMAIN: &[u8; 3] = b"kr\x01";

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
/// pass `rand::rng()`, [`os_rng`](crate::os_rng) or another generator seeded
/// by the operating system. A generator seeded with a known value
/// (`StdRng::seed_from_u64`) makes every token predictable, and the public
/// token ids in events and records tell an attacker where in its stream it
/// is. Seeded generators are for tests only.
pub struct Token {
    text: Zeroizing<String>,
    id: TokenId,
}

impl Token {
    /// The full token, `{prefix}_{key_id}_{secret}{checksum}`, to show the
    /// user once.
    pub fn expose_secret(&self) -> &str {
        &self.text
    }

    /// The public id of this token, as found in events and
    /// [`TokenInfo`](crate::TokenInfo).
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
/// encoding of its 40 characters, and what its hash is computed over).
/// Wiped when dropped.
struct Secret([u8; 30]);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The SHA-256 of a token's secret, bound to its key id.
#[derive(Clone, Copy)]
pub(crate) struct TokenHash(pub(crate) [u8; 32]);

impl TokenHash {
    /// SHA-256 of the domain tag, the key id (length-prefixed) and the
    /// packed secret.
    fn of(key: &KeyId, secret: &Secret) -> TokenHash {
        // The input padded as SHA-256 pads it, in one block for key ids of
        // up to 21 bytes and two beyond, and compressed directly: going
        // through `Digest` copies the input into a buffer of its own first
        // and costs a sixth of `verify` (measured in BENCHMARKS.md). The
        // blocks live on the stack for one call and are not wiped, as the
        // presented token stays in the caller's request buffer.
        let mut blocks = [[0u8; 64]; 2];
        let bytes = blocks.as_flattened_mut();
        let id = key.as_str().as_bytes();
        let tag = HASH_DOMAIN.len();
        bytes[..tag].copy_from_slice(HASH_DOMAIN);
        // A KeyId is at most 64 bytes, so its length fits one byte.
        bytes[tag] = id.len() as u8;
        bytes[tag + 1..tag + 1 + id.len()].copy_from_slice(id);
        let len = tag + 1 + id.len() + secret.0.len();
        bytes[tag + 1 + id.len()..len].copy_from_slice(&secret.0);
        bytes[len] = 0x80;
        let used = if len + 9 <= 64 { 1 } else { 2 };
        let bits = (len as u64) * 8;
        bytes[used * 64 - 8..used * 64].copy_from_slice(&bits.to_be_bytes());
        let mut state = SHA256_IV;
        sha2::block_api::compress256(&mut state, &blocks[..used]);
        let mut hash = [0u8; 32];
        for (out, word) in hash.chunks_exact_mut(4).zip(state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        TokenHash(hash)
    }

    /// Constant-time equality: the four 64-bit words' differences are
    /// folded with `|`, and only the fold is compared (by `subtle`).
    /// `subtle` compares a byte slice a byte at a time behind an
    /// optimization barrier; the words cost 40% less of `verify`'s floor
    /// (`verify/floor_wordwise` against `verify/floor` in
    /// `benches/verify.rs`).
    pub(crate) fn ct_eq(&self, other: &TokenHash) -> subtle::Choice {
        fn words(hash: &TokenHash) -> impl Iterator<Item = u64> + '_ {
            hash.0
                .as_chunks::<8>()
                .0
                .iter()
                .map(|word| u64::from_ne_bytes(*word))
        }
        let difference = words(self)
            .zip(words(other))
            .fold(0, |difference, (a, b)| difference | (a ^ b));
        difference.ct_eq(&0)
    }
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

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A presented token whose framing is checked: prefix, key id, secret
/// alphabet and checksum. Nothing is hashed and no store is read to make
/// one; a key hashes it when it verifies it.
///
/// [`parse`](PresentedToken::parse) is the one parser of the token
/// framing. A manager parses the token of a request once and hands the
/// result to its store and, through it, to the key. It holds the secret
/// packed (wiped when dropped) and borrows nothing: its `Debug` shows only
/// the prefix and the key id.
///
/// # Example
///
/// ```
/// use keyroll::{ApiKey, KeyId, PresentedToken, TokenMatch, VerifyError};
/// use time::OffsetDateTime;
///
/// let now = OffsetDateTime::now_utc();
/// let (key, token, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rand::rng())?;
/// let presented = PresentedToken::parse(token.expose_secret())?;
/// assert_eq!(presented.key_id().map(|id| id.to_string()).as_deref(), Some("acme"));
/// assert_eq!(presented.prefix(), "kr");
/// assert_eq!(key.verify_presented(&presented, now), Ok(TokenMatch::Current));
/// assert_eq!(PresentedToken::parse("kr_acme_typo").err(), Some(VerifyError::Malformed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PresentedToken<'a> {
    prefix: &'a str,
    /// `None`: the framing of keyroll 0.1, which names no key.
    key_id: Option<&'a str>,
    secret: Secret,
}

impl<'a> PresentedToken<'a> {
    /// Checks the framing of `presented` and takes it apart. Inputs longer
    /// than the longest possible token (128 bytes) are refused before
    /// anything else.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`] for anything that is not a well-formed
    /// token: wrong length, a prefix outside `[a-z0-9]{1,16}`, a key id
    /// outside the id alphabet, a secret outside base62, a bad checksum.
    pub fn parse(presented: &'a str) -> Result<PresentedToken<'a>, VerifyError> {
        let bytes = presented.as_bytes();
        if bytes.len() > TOKEN_MAX_LEN || bytes.len() < 1 + 1 + TAIL_LEN {
            return Err(VerifyError::Malformed);
        }
        // The prefix ends at the first `_`; the tail is the last 46
        // characters; between them, the key id framed by `_` (nothing, for
        // a token of keyroll 0.1).
        let prefix_len = bytes
            .iter()
            .take(PREFIX_MAX_LEN + 1)
            .position(|&b| b == b'_')
            .ok_or(VerifyError::Malformed)?;
        let tail_at = bytes.len() - TAIL_LEN;
        if prefix_len == 0 || prefix_len + 1 > tail_at {
            return Err(VerifyError::Malformed);
        }
        // Bytes are checked before any slice of the text is taken: every
        // boundary is then next to an ASCII byte.
        if !bytes[..prefix_len]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(VerifyError::Malformed);
        }
        let prefix = &presented[..prefix_len];
        let key_id = match &bytes[prefix_len + 1..tail_at] {
            [] => None,
            [id @ .., b'_']
                if (1..=KEY_ID_MAX_LEN).contains(&id.len())
                    && id
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
            {
                Some(&presented[prefix_len + 1..prefix_len + 1 + id.len()])
            }
            _ => return Err(VerifyError::Malformed),
        };
        let (signed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let mut written = 0u64;
        for &c in checksum {
            written = written * 62 + u64::from(base62::digit(c).ok_or(VerifyError::Malformed)?);
        }
        let chars: &[u8; SECRET_LEN] = signed[signed.len() - SECRET_LEN..]
            .try_into()
            .map_err(|_| VerifyError::Malformed)?;
        let secret = Secret(base62::pack40(chars).ok_or(VerifyError::Malformed)?);
        if written != u64::from(crc32fast::hash(signed)) {
            return Err(VerifyError::Malformed);
        }
        Ok(PresentedToken {
            prefix,
            key_id,
            secret,
        })
    }

    /// The prefix, without the `_` that follows it.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The key the token names; `None` for a token in the framing of
    /// keyroll 0.1, which names none (such a token is used in the
    /// two-credential form, its key id given apart).
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id.map(KeyId::named)
    }

    /// Whether the token names `id` (`None`: it names no key).
    pub(crate) fn names(&self, id: &KeyId) -> Option<bool> {
        self.key_id.map(|named| named == id.as_str())
    }

    /// The hash this token would have as a token of key `id`.
    pub(crate) fn hash_for(&self, id: &KeyId) -> TokenHash {
        TokenHash::of(id, &self.secret)
    }
}

impl fmt::Debug for PresentedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedToken")
            .field("prefix", &self.prefix)
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl KeyId {
    /// The key id a token names (`{prefix}_{key_id}_{secret}{checksum}`),
    /// after checking the token's framing ([`PresentedToken::parse`]):
    /// nothing is hashed and no prefix is assumed. This is how a service
    /// finds the key of a one-string bearer token, and a secret scanner's
    /// report the key of a leaked one.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`] for anything that is not a well-formed
    /// token naming a key (a token of keyroll 0.1 names none).
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::{ApiKey, KeyId, VerifyError};
    /// use time::OffsetDateTime;
    ///
    /// let (_, token, _) = ApiKey::issue(KeyId::new("acme_orders")?, OffsetDateTime::now_utc(), &mut rand::rng())?;
    /// assert_eq!(KeyId::from_token(token.expose_secret())?.as_str(), "acme_orders");
    /// assert_eq!(KeyId::from_token("kr_acme_typo"), Err(VerifyError::Malformed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_token(presented: &str) -> Result<KeyId, VerifyError> {
        PresentedToken::parse(presented)?
            .key_id()
            .ok_or(VerifyError::Malformed)
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
/// # Ok::<(), keyroll::error::InvalidPrefix>(())
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
        let problem = if bytes.is_empty() {
            Some("it is empty")
        } else if bytes.len() > PREFIX_MAX_LEN {
            Some("it is longer than 16 characters")
        } else if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Some("it holds a character outside a-z and 0-9")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(InvalidPrefix {
                quoted: quote(prefix),
                problem,
            });
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
        std::str::from_utf8(&self.prefix[..usize::from(self.len)])
            .unwrap_or_else(|_| unreachable!("`new` stores only ASCII"))
    }

    /// The length of the tokens of this format for the key `id`.
    pub fn token_len(&self, id: &KeyId) -> usize {
        usize::from(self.len) + 1 + id.as_str().len() + 1 + TAIL_LEN
    }

    /// Checks that `presented` is a well-formed token of this format that
    /// names a key: prefix, shape, key id, alphabet and checksum. Nothing
    /// is hashed.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`] on any failure.
    pub fn check(&self, presented: &str) -> Result<(), VerifyError> {
        let token = PresentedToken::parse(presented)?;
        if token.prefix == self.prefix() && token.key_id.is_some() {
            Ok(())
        } else {
            Err(VerifyError::Malformed)
        }
    }

    /// The regular expression secret scanners register to find this
    /// format's tokens in any text: GitHub's secret scanning partner
    /// program, GitLab, gitleaks, trufflehog.
    ///
    /// It matches every token of this format, whole, and nothing shorter; a
    /// token counts only where it is not preceded or followed by an ASCII
    /// letter, digit or `_` (so `zzkr_...`, a token of another prefix that
    /// ends in this one, is not a `kr` token). It uses plain ASCII classes
    /// and word boundaries, no look-around, so that every common engine
    /// reads it the same. Tokens in the framing of keyroll 0.1, which name
    /// no key, do not match, and no scanner's report could lead to their
    /// key (their hash is bound to an id they do not carry): renew their
    /// keys.
    ///
    /// # Example
    ///
    /// ```
    /// use keyroll::TokenFormat;
    ///
    /// assert_eq!(
    ///     TokenFormat::default().scan_pattern(),
    ///     r"\bkr_[A-Za-z0-9._-]{1,64}_[0-9A-Za-z]{46}\b"
    /// );
    /// ```
    pub fn scan_pattern(&self) -> String {
        format!(
            r"\b{}_[A-Za-z0-9._-]{{1,{KEY_ID_MAX_LEN}}}_[0-9A-Za-z]{{{TAIL_LEN}}}\b",
            self.prefix()
        )
    }

    /// A new token of this format for `key`, with the hash to keep.
    pub(crate) fn generate<R: rand_core::CryptoRng + ?Sized>(
        &self,
        key: &KeyId,
        rng: &mut R,
    ) -> (Token, TokenHash) {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        base62::fill_random(rng, &mut secret[..]);
        let mut text = Zeroizing::new(String::with_capacity(self.token_len(key)));
        text.push_str(self.prefix());
        text.push('_');
        text.push_str(key.as_str());
        text.push('_');
        for &c in secret.iter() {
            text.push(char::from(c));
        }
        let checksum =
            base62::encode_fixed::<CHECKSUM_LEN>(u64::from(crc32fast::hash(text.as_bytes())));
        for c in checksum {
            text.push(char::from(c));
        }
        let packed = Secret(
            base62::pack40(&secret).unwrap_or_else(|| unreachable!("generated from the alphabet")),
        );
        let hash = TokenHash::of(key, &packed);
        let token = Token {
            text,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use sha2::{Digest, Sha256};

    fn key() -> KeyId {
        KeyId::new("k1").unwrap()
    }

    #[test]
    fn generated_tokens_parse_back_to_their_hash() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for prefix in ["kr", "a", "0123456789abcdef"] {
            for id in ["k1", "a_b_c", &"x".repeat(64)] {
                let id = KeyId::new(id).unwrap();
                let format = TokenFormat::new(prefix).unwrap();
                let (token, hash) = format.generate(&id, &mut rng);
                let text = token.expose_secret();
                assert_eq!(text.len(), format.token_len(&id));
                assert!(text.len() <= TOKEN_MAX_LEN);
                assert!(text.starts_with(&format!("{prefix}_{id}_")));
                format.check(text).unwrap();
                let parsed = PresentedToken::parse(text).unwrap();
                assert_eq!(parsed.key_id(), Some(id.clone()));
                assert_eq!(parsed.prefix(), prefix);
                assert_eq!(parsed.hash_for(&id), hash);
            }
        }
    }

    #[test]
    fn prefix_rules() {
        for (bad, problem) in [
            ("", "empty"),
            ("KR", "outside"),
            ("k_r", "outside"),
            ("k-r", "outside"),
            ("0123456789abcdefg", "longer"),
            ("ü", "outside"),
        ] {
            let error = TokenFormat::new(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
            assert!(error.contains(problem), "{error}");
        }
    }

    #[test]
    fn the_hash_is_bound_to_the_key_id() {
        let (token, _) = TokenFormat::default().generate(&key(), &mut rand::rng());
        let parsed = PresentedToken::parse(token.expose_secret()).unwrap();
        let other = KeyId::new("k2").unwrap();
        assert_ne!(parsed.hash_for(&key()), parsed.hash_for(&other));
    }

    /// The hash is SHA-256 of the domain tag, the id's length, the id and
    /// the secret packed 6 bits a character: the stored form since keyroll
    /// 0.1, which must not change.
    #[test]
    fn the_hash_is_sha256_of_tag_id_and_packed_secret() {
        let secret = Secret(std::array::from_fn(|i| i as u8 * 7));
        for len in [1, 21, 22, 64] {
            let id = KeyId::new("k".repeat(len)).unwrap();
            let mut input = HASH_DOMAIN.to_vec();
            input.push(len as u8);
            input.extend_from_slice(id.as_str().as_bytes());
            input.extend_from_slice(&secret.0);
            let expected: [u8; 32] = Sha256::digest(&input).into();
            assert_eq!(TokenHash::of(&id, &secret).0, expected, "id of {len} bytes");
        }
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
    fn no_debug_shows_a_secret() {
        let (token, _) = TokenFormat::default().generate(&key(), &mut rand::rng());
        let secret = &token.expose_secret()[6..46];
        let debug = format!("{token:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(&token.id().to_string()));
        let parsed = format!(
            "{:?}",
            PresentedToken::parse(token.expose_secret()).unwrap()
        );
        assert!(!parsed.contains(secret), "{parsed}");
        assert!(parsed.contains("k1"), "{parsed}");
    }
}
