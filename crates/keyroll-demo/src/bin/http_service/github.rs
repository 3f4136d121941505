//! GitHub's secret scanning partner endpoint, `POST /secret-scanning/github`:
//! a signed report of tokens found in public code; each live token of a
//! stored key is revoked (and audited), and each match labelled.

use std::error::Error;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use keyroll::store::DynKeyStore;
use keyroll::{Event, KeyManager};
use keyroll_axum::ApiError;
use p256::ecdsa::VerifyingKey;
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The actor of the revocations a report makes, in the audit log.
const ACTOR: &str = "github-secret-scanning";

struct Scanner {
    keys: Arc<KeyManager<DynKeyStore>>,
    /// The keys reports are signed with.
    signers: ScannerKeys,
    /// The answers to the reports of the last minutes, for replays.
    scanned: Scanned,
    audit: fn(&str, &Event),
}

/// The endpoint, for reports signed by one of `signers`; every revocation
/// is told to `audit`.
pub fn router(
    keys: Arc<KeyManager<DynKeyStore>>,
    signers: ScannerKeys,
    audit: fn(&str, &Event),
) -> Router {
    let scanner = Scanner {
        keys,
        signers,
        scanned: Scanned::default(),
        audit,
    };
    Router::new()
        .route("/secret-scanning/github", post(github_secret_scanning))
        .with_state(Arc::new(scanner))
}

/// The public keys a secret scanning report may be signed with, by their
/// identifier (the hex SHA-256 of the key's DER encoding).
pub struct ScannerKeys(Vec<(String, VerifyingKey)>);

impl ScannerKeys {
    /// Every `PUBLIC KEY` block of a PEM file.
    pub fn load(path: &std::path::Path) -> Result<ScannerKeys, Box<dyn Error>> {
        let text = std::fs::read_to_string(path)?;
        let mut keys = Vec::new();
        for block in text.split_inclusive("-----END PUBLIC KEY-----") {
            let Some(start) = block.find("-----BEGIN PUBLIC KEY-----") else {
                continue;
            };
            let key = VerifyingKey::from_public_key_pem(&block[start..])
                .map_err(|e| format!("{}: not a P-256 public key: {e}", path.display()))?;
            let der = key.to_public_key_der().map_err(|e| e.to_string())?;
            keys.push((hex(&Sha256::digest(der.as_bytes())), key));
        }
        if keys.is_empty() {
            return Err(format!("{}: no PUBLIC KEY in it", path.display()).into());
        }
        Ok(ScannerKeys(keys))
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
async fn github_secret_scanning(
    State(app): State<Arc<Scanner>>,
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
        eprintln!("{}", json!({ "secret_scanning_refused": cause }));
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "invalid signature",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(&body).into();
    if let Some(answered) = app.scanned.answered(&digest) {
        eprintln!("{}", json!({ "secret_scanning_replay": hex(&digest) }));
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
                eprintln!(
                    "{}",
                    json!({ "leaked_token_revoked": {
                        "key_id": event.key_id(), "url": found.url, "source": found.source,
                    } })
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
        (app.audit)(ACTOR, event);
    }
    Ok(Json(answer))
}

/// The answers to the secret scanning reports of the last
/// [`REPLAY_WINDOW`], at most [`REPLAYS_KEPT`] of them, by the SHA-256 of
/// the report's body: a report sent again (replayed by whoever saw it, or
/// retried) gets the same answer and is not acted on twice.
#[derive(Default)]
struct Scanned(
    std::sync::Mutex<std::collections::VecDeque<([u8; 32], std::time::Instant, serde_json::Value)>>,
);

/// How long a report's answer is kept.
const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// How many answers are kept at most.
const REPLAYS_KEPT: usize = 10_000;

impl Scanned {
    fn answered(&self, digest: &[u8; 32]) -> Option<serde_json::Value> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
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
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() == REPLAYS_KEPT {
            kept.pop_front();
        }
        kept.push_back((digest, std::time::Instant::now(), answer.clone()));
    }
}
