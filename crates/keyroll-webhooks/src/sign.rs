//! Signatures: [`WebhookSecret`], [`Signer`], [`Signed`].

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The prefix of every secret.
const PREFIX: &str = "whsec_";
/// The fewest key bytes a secret may hold (the specification asks for 24
/// to 64).
const MIN_KEY: usize = 24;
/// The most key bytes a secret may hold.
const MAX_KEY: usize = 64;

/// A webhook secret: `whsec_` and the base64 of 24 to 64 key bytes. Its
/// `Debug` never shows it; it is zeroed when dropped.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

/// Why a text is no webhook secret. It never quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid webhook secret: {problem}; make one with `echo whsec_$(openssl rand -base64 32)`")]
pub struct InvalidWebhookSecret {
    problem: &'static str,
}

impl FromStr for WebhookSecret {
    type Err = InvalidWebhookSecret;

    /// # Errors
    ///
    /// [`InvalidWebhookSecret`] without the `whsec_` prefix, for what is
    /// not base64 after it, or for fewer than 24 or more than 64 key bytes.
    fn from_str(text: &str) -> Result<WebhookSecret, InvalidWebhookSecret> {
        let bad = |problem| InvalidWebhookSecret { problem };
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or(bad("it does not start with whsec_"))?;
        let key = Zeroizing::new(
            STANDARD
                .decode(encoded)
                .map_err(|_| bad("what follows whsec_ is not base64"))?,
        );
        match key.len() {
            n if n < MIN_KEY => Err(bad("it holds fewer than 24 bytes")),
            n if n > MAX_KEY => Err(bad("it holds more than 64 bytes")),
            _ => Ok(WebhookSecret(key)),
        }
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

impl WebhookSecret {
    /// `v1,` and the base64 of HMAC-SHA256 over `id.timestamp.body`.
    fn signature(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
            mac.update(part);
        }
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Signs deliveries with a secret, and, while it rotates, with the
/// previous one too.
#[derive(Debug, Clone)]
pub struct Signer {
    secrets: Vec<WebhookSecret>,
}

/// The three headers of a signed delivery, as their values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Signed {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds.
    pub timestamp: String,
    /// `webhook-signature`: `v1,...`, one per secret, space-separated.
    pub signature: String,
}

impl Signed {
    /// The headers' names and values, in the specification's order.
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            ("webhook-id", &self.id),
            ("webhook-timestamp", &self.timestamp),
            ("webhook-signature", &self.signature),
        ]
    }
}

impl Signer {
    /// Signs with `secret`.
    pub fn new(secret: WebhookSecret) -> Signer {
        Signer {
            secrets: vec![secret],
        }
    }

    /// Signs with `current`, and with `previous` beside it: while a
    /// receiver moves from `previous` to `current`, either verifies.
    pub fn rotating(current: WebhookSecret, previous: WebhookSecret) -> Signer {
        Signer {
            secrets: vec![current, previous],
        }
    }

    /// The headers of delivery `id` of `body` at `timestamp` (Unix
    /// seconds).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Signed {
        let timestamp = timestamp.to_string();
        let signatures: Vec<String> = self
            .secrets
            .iter()
            .map(|secret| secret.signature(id, &timestamp, body))
            .collect();
        Signed {
            id: id.to_owned(),
            timestamp,
            signature: signatures.join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_secrets_are_refused_without_being_quoted() {
        let cases = [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "does not start with whsec_",
            ),
            ("whsec_not*base64", "not base64"),
            ("whsec_c2hvcnQ=", "fewer than 24 bytes"),
        ];
        for (text, problem) in cases {
            let refused = text.parse::<WebhookSecret>().unwrap_err().to_string();
            assert!(refused.contains(problem), "{text}: {refused}");
            assert!(!refused.contains(text), "{refused} quotes the secret");
        }
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert!(long.parse::<WebhookSecret>().is_err());
    }

    #[test]
    fn a_secret_never_prints() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let shown = format!("{secret:?} {:?}", Signer::new(secret.clone()));
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }

    #[test]
    fn a_rotating_signer_signs_with_both_secrets_current_first() {
        let current: WebhookSecret = format!("whsec_{}", STANDARD.encode([1u8; 32]))
            .parse()
            .unwrap();
        let previous: WebhookSecret = format!("whsec_{}", STANDARD.encode([2u8; 32]))
            .parse()
            .unwrap();
        let both = Signer::rotating(current.clone(), previous.clone()).sign("m", 1, b"{}");
        let one = |s: WebhookSecret| Signer::new(s).sign("m", 1, b"{}").signature;
        assert_eq!(
            both.signature,
            format!("{} {}", one(current), one(previous))
        );
    }
}
