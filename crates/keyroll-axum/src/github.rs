//! GitHub's secret scanning partner endpoint (feature `github`): GitHub
//! finds keyroll tokens pushed to public repositories and reports them
//! here; each live token of a stored key is revoked at once.
//!
//! [`SecretScanning::router`] serves `POST /secret-scanning/github` in
//! GitHub's partner format. The raw body must be signed (headers
//! `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`: a
//! base64 DER ECDSA P-256 / SHA-256 signature, verified with the key the
//! identifier names and no other); an unsigned or badly signed request is
//! a 401 and changes nothing. Each reported token that is a live token of
//! a stored key is revoked and told to [`SecretScanning::on_event`]; the
//! answer labels each match `true_positive` or `false_positive`. A report
//! sent again within 10 minutes (the SHA-256 of the last 10,000 bodies is
//! kept) gets the same answer and is not acted on again. Where a token
//! leaked (the report's `url` and `source`) is logged with the key id,
//! never the token.
//!
//! **Tokens of keyroll 0.1 cannot be revoked this way.** Their framing
//! (`{prefix}_{secret}{checksum}`) names no key, and a token's hash is
//! bound to its key's id, so finding its key would mean hashing the
//! reported token once for every stored key, on a request anyone can
//! send; the scan pattern does not match them either, so GitHub never
//! reports them. Renew every key whose current token predates 0.2 (its
//! new token names the key), and revoke a leaked 0.1 token by hand with
//! its key id (`keyctl revoke --id ID`, or
//! [`Credentials::with_id`](keyroll::Credentials::with_id)).
//!
//! Register keyroll's token pattern with GitHub
//! ([`TokenFormat::scan_pattern`](keyroll::TokenFormat::scan_pattern)) and
//! this endpoint's URL; load the public keys GitHub signs with
//! (`https://api.github.com/meta/public_keys/secret_scanning`) as PEM.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use keyroll::KeyManager;
//! use keyroll::store::InMemoryStore;
//! use keyroll_axum::github::{SecretScanning, SigningKeys};
//!
//! # fn pem() -> String {
//! #     use p256::pkcs8::{EncodePublicKey, LineEnding};
//! #     let key = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate_from_rng(&mut rand::rng());
//! #     p256::ecdsa::VerifyingKey::from(&key).to_public_key_pem(LineEnding::LF).unwrap()
//! # }
//! let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
//! let signers = SigningKeys::from_pem(&pem())?;
//! let app: axum::Router = SecretScanning::new(keys, signers)
//!     .on_event(|event| println!("revoked a token of {:?}", event.key_id()))
//!     .router();
//! # Ok::<(), keyroll_axum::github::InvalidSigningKeys>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use keyroll::store::KeyStore;
use keyroll::{Event, KeyId, KeyManager};
use p256::ecdsa::VerifyingKey;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::ApiError;

/// The endpoint, to configure. See [the module](self).
pub struct SecretScanning<S> {
    keys: Arc<KeyManager<S>>,
    signers: SigningKeys,
    audit: Arc<dyn Fn(&Event) + Send + Sync>,
}

impl<S> fmt::Debug for SecretScanning<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretScanning")
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore + 'static> SecretScanning<S> {
    /// The endpoint revoking the tokens of `keys` that reports signed by
    /// one of `signers` name. Revocations are logged as `tracing` events
    /// (target `keyroll::audit`) unless told to [`on_event`](Self::on_event).
    pub fn new(keys: Arc<KeyManager<S>>, signers: SigningKeys) -> Self {
        SecretScanning {
            keys,
            signers,
            audit: Arc::new(|event: &Event| {
                let event = serde_json::to_string(event).unwrap_or_default();
                tracing::info!(target: "keyroll::audit", %event, "keyroll: leaked token revoked");
            }),
        }
    }

    /// Tells each revocation to `audit`, once the answer is built.
    pub fn on_event(mut self, audit: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.audit = Arc::new(audit);
        self
    }

    /// The router serving `POST /secret-scanning/github`.
    pub fn router(self) -> Router {
        let scanner = Scanner {
            keys: self.keys,
            signers: self.signers,
            scanned: Scanned::default(),
            audit: self.audit,
        };
        Router::new()
            .route("/secret-scanning/github", post(github_secret_scanning::<S>))
            .with_state(Arc::new(scanner))
    }
}

struct Scanner<S> {
    keys: Arc<KeyManager<S>>,
    signers: SigningKeys,
    /// The answers to the reports of the last minutes, for replays.
    scanned: Scanned,
    audit: Arc<dyn Fn(&Event) + Send + Sync>,
}

/// The public keys a report may be signed with, by their identifier (the
/// hex SHA-256 of the key's DER encoding, as GitHub names them).
#[derive(Clone)]
pub struct SigningKeys(Vec<(String, VerifyingKey)>);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(id, _)| id))
            .finish()
    }
}

/// [`SigningKeys::from_pem`]'s refusal: what is wrong with the PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSigningKeys(String);

impl fmt::Display for InvalidSigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSigningKeys {}

impl SigningKeys {
    /// Every `PUBLIC KEY` block of PEM text: P-256 keys.
    ///
    /// # Errors
    ///
    /// [`InvalidSigningKeys`] when a block is not a P-256 public key, or
    /// when there is no block at all.
    pub fn from_pem(pem: &str) -> Result<SigningKeys, InvalidSigningKeys> {
        let mut keys = Vec::new();
        for (n, block) in pem.split_inclusive("-----END PUBLIC KEY-----").enumerate() {
            let Some(start) = block.find("-----BEGIN PUBLIC KEY-----") else {
                continue;
            };
            let key = VerifyingKey::from_public_key_pem(&block[start..]).map_err(|e| {
                InvalidSigningKeys(format!("public key {}: not a P-256 public key: {e}", n + 1))
            })?;
            let der = key
                .to_public_key_der()
                .map_err(|e| InvalidSigningKeys(e.to_string()))?;
            keys.push((hex(&Sha256::digest(der.as_bytes())), key));
        }
        if keys.is_empty() {
            return Err(InvalidSigningKeys(
                "no PUBLIC KEY block: give the PEM keys GitHub signs secret scanning reports with"
                    .into(),
            ));
        }
        Ok(SigningKeys(keys))
    }

    /// Whether `signature` (base64 of a DER ECDSA signature) is a signature
    /// of `body` by the key `identifier` names, and only by that one; why
    /// not, otherwise.
    fn verify(&self, identifier: &str, signature: &str, body: &[u8]) -> Result<(), &'static str> {
        let (_, key) = self
            .0
            .iter()
            .find(|(id, _)| id == identifier)
            .ok_or("unknown Github-Public-Key-Identifier")?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| "the signature is not base64")?;
        let signature =
            p256::ecdsa::Signature::from_der(&der).map_err(|_| "the signature is not DER")?;
        key.verify(body, &signature)
            .map_err(|_| "the signature does not verify")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One match GitHub reports.
#[derive(Deserialize)]
struct ScanMatch {
    token: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// GitHub's secret scanning partner endpoint: verifies the signature of the
/// raw body, revokes every live token reported, and labels each match.
async fn github_secret_scanning<S: KeyStore + 'static>(
    State(app): State<Arc<Scanner<S>>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = &app.signers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = match (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) {
        (Some(identifier), Some(signature)) => keys.verify(identifier, signature, &body),
        _ => Err("missing signature headers"),
    };
    if let Err(cause) = signed {
        tracing::info!(cause, "keyroll: secret scanning report refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "invalid signature",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(&body).into();
    if let Some(answered) = app.scanned.answered(&digest) {
        tracing::info!(
            digest = hex(&digest),
            "keyroll: secret scanning report replayed"
        );
        return Ok(Json(answered));
    }
    let matches: Vec<ScanMatch> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid report: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let mut answers = Vec::with_capacity(matches.len());
    let mut events = Vec::new();
    for found in matches {
        let revoked = app.keys.revoke_token(&found.token, now).await?;
        let label = match revoked {
            Some(event) => {
                events.push(event.clone());
                // Where it leaked, for the operators; never the token.
                tracing::warn!(
                    key_id = event.key_id().map(KeyId::as_str),
                    url = found.url.as_deref(),
                    source = found.source.as_deref(),
                    "keyroll: leaked token revoked"
                );
                "true_positive"
            }
            None => "false_positive",
        };
        answers.push(json!({
            "token_raw": found.token,
            "token_type": found.token_type,
            "label": label,
        }));
    }
    let answer = json!(answers);
    app.scanned.remember(digest, &answer);
    for event in &events {
        (app.audit)(event);
    }
    Ok(Json(answer))
}

/// The answers to the secret scanning reports of the last
/// [`REPLAY_WINDOW`], at most [`REPLAYS_KEPT`] of them, by the SHA-256 of
/// the report's body: a report sent again (replayed by whoever saw it, or
/// retried) gets the same answer and is not acted on twice.
#[derive(Default)]
struct Scanned(Mutex<VecDeque<([u8; 32], Instant, serde_json::Value)>>);

/// How long a report's answer is kept.
const REPLAY_WINDOW: Duration = Duration::from_secs(600);
/// How many answers are kept at most.
const REPLAYS_KEPT: usize = 10_000;

impl Scanned {
    fn answered(&self, digest: &[u8; 32]) -> Option<serde_json::Value> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while kept
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) >= REPLAY_WINDOW)
        {
            kept.pop_front();
        }
        kept.iter()
            .find(|(kept, _, _)| kept == digest)
            .map(|(_, _, answer)| answer.clone())
    }

    fn remember(&self, digest: [u8; 32], answer: &serde_json::Value) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == REPLAYS_KEPT {
            kept.pop_front();
        }
        kept.push_back((digest, Instant::now(), answer.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::LineEnding;

    fn signer() -> (p256::ecdsa::SigningKey, String) {
        let key = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let pem = VerifyingKey::from(&key)
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (key, pem)
    }

    #[test]
    fn pem_without_a_key_or_with_a_bad_one_is_refused_by_name() {
        let none = SigningKeys::from_pem("nothing here").unwrap_err();
        assert!(none.to_string().contains("no PUBLIC KEY"), "{none}");
        let (_, good) = signer();
        let bad = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let error = SigningKeys::from_pem(&format!("{good}{bad}")).unwrap_err();
        assert!(error.to_string().starts_with("public key 2:"), "{error}");
    }

    #[test]
    fn only_the_named_key_verifies_a_report() {
        let (one, one_pem) = signer();
        let (two, two_pem) = signer();
        let keys = SigningKeys::from_pem(&format!("{one_pem}{two_pem}")).unwrap();
        let (first, second) = (keys.0[0].0.clone(), keys.0[1].0.clone());
        let body = b"[]";
        let signed = |key: &p256::ecdsa::SigningKey| {
            let signature: p256::ecdsa::DerSignature = key.sign(body);
            base64::engine::general_purpose::STANDARD.encode(signature.as_bytes())
        };
        assert_eq!(keys.verify(&first, &signed(&one), body), Ok(()));
        assert_eq!(keys.verify(&second, &signed(&two), body), Ok(()));
        assert!(keys.verify(&first, &signed(&two), body).is_err());
        assert!(keys.verify(&first, &signed(&one), b"[1]").is_err());
        assert!(keys.verify("unknown", &signed(&one), body).is_err());
        assert!(keys.verify(&first, "not base64!", body).is_err());
    }
}
