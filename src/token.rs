//! The token format: generation, parsing and hashing of the one plaintext secret.
//!
//! A token reads `{prefix}_{key_id}_{secret}{checksum}`: a prefix of 1 to 16
//! characters of `[a-z0-9]`, the key's id (which may itself hold `_`), 40
//! base62 characters drawn uniformly from a `CryptoRng`, and a 6-character
//! base62 CRC-32 of everything before it. Parsing takes the prefix up to the
//! first `_` and the secret and checksum from the last 46 characters. Only the
//! SHA-256 hash of the secret, bound to the key id, is ever kept.
//!
//! Keyroll 0.1 wrote tokens without the key id (`{prefix}_{secret}{checksum}`);
//! their hashes are the same, so `verify` still accepts them for their key.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::base62;
use crate::id::{KeyId, TokenId};
use crate::verify::VerifyError;

/// Number of base62 characters of the secret (about 238 bits).
pub(crate) const SECRET_LEN: usize = 40;
/// Number of base62 characters of the checksum.
const CHECKSUM_LEN: usize = 6;
/// The secret and checksum: the tail every token ends with.
const TAIL_LEN: usize = SECRET_LEN + CHECKSUM_LEN;
/// The longest prefix, in bytes.
const PREFIX_MAX_LEN: usize = 16;
/// The longest key id, in bytes.
const KEY_ID_MAX_LEN: usize = 64;
/// The longest token: prefix, `_`, key id, `_`, secret, checksum.
pub(crate) const TOKEN_MAX_LEN: usize = PREFIX_MAX_LEN + 1 + KEY_ID_MAX_LEN + 1 + TAIL_LEN;
/// Separates the hashes of keyroll tokens from any other SHA-256 use. Kept
/// short so that, with a key id of up to 21 bytes, the hashed input fits one
/// SHA-256 block.
const HASH_DOMAIN: &[u8; 3] = b"kr\x01";
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
    /// The full token, `{prefix}_{key_id}_{secret}{checksum}`, to show the
    /// user once.
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
    /// Hashes the domain tag, the key id (length-prefixed) and the packed
    /// secret: SHA-256 of those bytes.
    pub(crate) fn of(key: &KeyId, secret: &Secret) -> TokenHash {
        let mut blocks = [[0u8; 64]; 2];
        TokenHash::of_blocks(key, secret, &mut blocks)
    }

    /// [`of`](TokenHash::of), padding the input in `blocks` as SHA-256
    /// does and compressing them directly: one block for key ids of up to
    /// 21 bytes, two beyond. (Going through `Digest` would copy the input
    /// into a buffer of its own first; this is `verify`'s hot path.)
    fn of_blocks(key: &KeyId, secret: &Secret, blocks: &mut [[u8; 64]; 2]) -> TokenHash {
        let id = key.as_str().as_bytes();
        let bytes = blocks.as_flattened_mut();
        let tag = HASH_DOMAIN.len();
        bytes[..tag].copy_from_slice(HASH_DOMAIN);
        // A KeyId is at most 64 bytes, so its length fits one byte.
        bytes[tag] = id.len() as u8;
        bytes[tag + 1..tag + 1 + id.len()].copy_from_slice(id);
        let len = tag + 1 + id.len() + PACKED_LEN;
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
    pub(crate) fn ct_eq(&self, other: &TokenHash) -> subtle::Choice {
        let (ours, []) = self.0.as_chunks::<8>() else {
            unreachable!("32 bytes are 4 words")
        };
        let (theirs, []) = other.0.as_chunks::<8>() else {
            unreachable!("32 bytes are 4 words")
        };
        let difference = ours.iter().zip(theirs).fold(0u64, |difference, (a, b)| {
            difference | (u64::from_ne_bytes(*a) ^ u64::from_ne_bytes(*b))
        });
        difference.ct_eq(&0)
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

/// A presented token taken apart: where its prefix and key id are, and its
/// secret, packed (or, for [`named_key`], only checked: `()`). Every part
/// has been checked, the checksum included.
pub(crate) struct Parsed<'a, T = Secret> {
    pub(crate) prefix: &'a [u8],
    /// The key id the token names; `None` for a token of keyroll 0.1, which
    /// names none.
    pub(crate) key_id: Option<&'a str>,
    pub(crate) secret: T,
}

/// Whether each byte may appear in a [`KeyId`].
const KEY_ID_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// What a presented token is to one key, by its shape.
pub(crate) enum Presented {
    /// A well-formed token naming this key, with its secret.
    ThisKey(Secret),
    /// A well-formed token of keyroll 0.1, which names no key.
    Legacy(Secret),
    /// A well-formed token naming another key.
    OtherKey,
}

/// The secret of a tail, packed; `None` if it is not base62.
fn packed(chars: &[u8; SECRET_LEN]) -> Option<Secret> {
    base62::pack40(chars).map(Secret)
}

/// Nothing of the secret of a tail but that it is base62 (for a caller
/// that only wants the key id: cheaper than packing).
fn checked(chars: &[u8; SECRET_LEN]) -> Option<()> {
    base62::all_digits(chars).then_some(())
}

/// Checks the checksum at the end of `bytes` and the secret before it,
/// which `secret` checks and makes what the caller wants of it ([`packed`]
/// or [`checked`]). `bytes` is at least a tail long.
#[inline(always)] // its 30-byte answer is read at once: no trip through memory
fn tail<T>(
    bytes: &[u8],
    secret: impl FnOnce(&[u8; SECRET_LEN]) -> Option<T>,
) -> Result<T, VerifyError> {
    let (signed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let mut written = 0u64;
    for &c in checksum {
        written = written * 62 + u64::from(base62::digit(c).ok_or(VerifyError::Malformed)?);
    }
    let (_, chars) = signed
        .split_last_chunk::<SECRET_LEN>()
        .ok_or(VerifyError::Malformed)?;
    let secret = secret(chars).ok_or(VerifyError::Malformed)?;
    if written != u64::from(crc32fast::hash(signed)) {
        return Err(VerifyError::Malformed);
    }
    Ok(secret)
}

/// Takes a presented token apart, checking its shape, alphabets and
/// checksum; nothing is hashed. Inputs longer than the longest token are
/// refused before anything else.
pub(crate) fn parse(presented: &str) -> Result<Parsed<'_>, VerifyError> {
    parse_with(presented, packed)
}

/// The key id `presented` names (`None` for a token of keyroll 0.1),
/// checked as [`parse`] checks it, without packing the secret.
pub(crate) fn named_key(presented: &str) -> Result<Option<&str>, VerifyError> {
    parse_with(presented, checked).map(|parsed| parsed.key_id)
}

/// The key id `presented` names by its framing alone (its prefix, the id
/// between `_`s, and a tail's length; `None` for a token of keyroll 0.1):
/// its secret and checksum are not read. For a caller whose token will be
/// checked whole by what answers it (a key's `verify`), and that checks it
/// itself before anything reads storage.
pub(crate) fn framed_key(presented: &str) -> Result<Option<&str>, VerifyError> {
    frame(presented).map(|framed| framed.key_id)
}

/// [`parse`], the secret made by `secret`.
#[inline(always)]
fn parse_with<T>(
    presented: &str,
    secret: impl FnOnce(&[u8; SECRET_LEN]) -> Option<T>,
) -> Result<Parsed<'_, T>, VerifyError> {
    let Parsed { prefix, key_id, .. } = frame(presented)?;
    let secret = tail(presented.as_bytes(), secret)?;
    Ok(Parsed {
        prefix,
        key_id,
        secret,
    })
}

/// A presented token's framing checked (length, prefix, key id), its
/// tail not read.
#[inline(always)]
fn frame(presented: &str) -> Result<Parsed<'_, ()>, VerifyError> {
    let bytes = presented.as_bytes();
    if bytes.len() > TOKEN_MAX_LEN || bytes.len() < 1 + 1 + TAIL_LEN {
        return Err(VerifyError::Malformed);
    }
    // The prefix ends at the first `_`.
    let prefix_len = bytes
        .iter()
        .take(PREFIX_MAX_LEN + 1)
        .position(|&b| b == b'_')
        .ok_or(VerifyError::Malformed)?;
    let tail_at = bytes.len() - TAIL_LEN;
    if prefix_len + 1 > tail_at {
        return Err(VerifyError::Malformed);
    }
    let prefix = &bytes[..prefix_len];
    let valid_prefix = !prefix.is_empty()
        && prefix
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    // The tail is the last 46 characters; between them and the prefix, the
    // key id framed by `_` (nothing, for a token of keyroll 0.1).
    let key_id = match &bytes[prefix_len + 1..tail_at] {
        [] => None,
        [id @ .., b'_']
            if (1..=KEY_ID_MAX_LEN).contains(&id.len())
                && id.iter().all(|&b| KEY_ID_BYTE[usize::from(b)]) =>
        {
            // ASCII, so the slice of the text needs no UTF-8 check.
            Some(&presented[prefix_len + 1..prefix_len + 1 + id.len()])
        }
        _ => return Err(VerifyError::Malformed),
    };
    if !valid_prefix {
        return Err(VerifyError::Malformed);
    }
    Ok(Parsed {
        prefix,
        key_id,
        secret: (),
    })
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
                quoted: crate::input::quote(prefix),
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
        std::str::from_utf8(self.prefix_bytes())
            .unwrap_or_else(|_| unreachable!("`new` stores only ASCII"))
    }

    pub(crate) fn prefix_bytes(&self) -> &[u8] {
        &self.prefix[..usize::from(self.len)]
    }

    /// The length of the tokens of this format for the key `id`.
    pub fn token_len(&self, id: &KeyId) -> usize {
        usize::from(self.len) + 1 + id.as_str().len() + 1 + TAIL_LEN
    }

    /// Checks that `presented` is a well-formed token of this format: prefix,
    /// shape, key id, alphabet and checksum. Nothing is hashed.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Malformed`] on any failure.
    pub fn check(&self, presented: &str) -> Result<(), VerifyError> {
        match parse(presented)? {
            Parsed {
                prefix,
                key_id: Some(_),
                ..
            } if prefix == self.prefix_bytes() => Ok(()),
            _ => Err(VerifyError::Malformed),
        }
    }

    /// What `presented` is to the key `id` of this format. The shape every
    /// token of that key has is checked directly (its prefix and id are
    /// known); anything else is taken apart by [`parse`], to tell a token of
    /// another key or of keyroll 0.1 from a malformed one.
    #[inline(always)] // as `tail`
    pub(crate) fn presented_to(
        &self,
        presented: &str,
        id: &KeyId,
    ) -> Result<Presented, VerifyError> {
        let bytes = presented.as_bytes();
        let prefix = self.prefix_bytes();
        let id = id.as_str().as_bytes();
        let (p, i) = (prefix.len(), id.len());
        if bytes.len() == p + 1 + i + 1 + TAIL_LEN
            && &bytes[..p] == prefix
            && bytes[p] == b'_'
            && &bytes[p + 1..p + 1 + i] == id
            && bytes[p + 1 + i] == b'_'
        {
            return tail(bytes, packed).map(Presented::ThisKey);
        }
        let parsed = parse(presented)?;
        if parsed.prefix != prefix {
            return Err(VerifyError::Malformed);
        }
        Ok(match parsed.key_id {
            None => Presented::Legacy(parsed.secret),
            Some(_) => Presented::OtherKey,
        })
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
    /// reads it the same.
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
        let prefix = self.prefix_bytes();
        let id = key.as_str().as_bytes();
        let mut text = Zeroizing::new(vec![0u8; self.token_len(key)]);
        text[..prefix.len()].copy_from_slice(prefix);
        text[prefix.len()] = b'_';
        let id_at = prefix.len() + 1;
        text[id_at..id_at + id.len()].copy_from_slice(id);
        text[id_at + id.len()] = b'_';
        let secret_at = id_at + id.len() + 1..id_at + id.len() + 1 + SECRET_LEN;
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
        let mut blocks = Zeroizing::new([[0u8; 64]; 2]);
        let hash = TokenHash::of_blocks(key, &secret, &mut blocks);
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

/// A string that is not a valid token prefix: 1 to 16 characters of
/// `[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token prefix {quoted}: {problem}; use 1 to 16 characters of a-z or 0-9")]
pub struct InvalidPrefix {
    quoted: String,
    problem: &'static str,
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
    fn generated_tokens_pass_their_own_check() {
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
                let parsed = parse(text).unwrap();
                assert_eq!(parsed.key_id, Some(id.as_str()));
                assert_eq!(TokenHash::of(&id, &parsed.secret), hash);
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
        let secret = Secret([7; PACKED_LEN]);
        let other = KeyId::new("k2").unwrap();
        assert_ne!(
            TokenHash::of(&key(), &secret),
            TokenHash::of(&other, &secret)
        );
    }

    /// The hand-padded SHA-256 is SHA-256, for every id length (one block
    /// and two).
    #[test]
    fn the_hash_is_sha256_of_tag_id_and_packed_secret() {
        let secret = Secret(std::array::from_fn(|i| i as u8 * 7));
        for len in 1..=64 {
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
    fn token_debug_hides_the_secret() {
        let (token, _) = TokenFormat::default().generate(&key(), &mut rand::rng());
        let debug = format!("{token:?}");
        assert!(!debug.contains(&token.expose_secret()[3..43]), "{debug}");
        assert!(debug.contains(&token.id().to_string()));
    }
}
