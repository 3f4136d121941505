//! Every signature checked by a verifier nobody here wrote: the
//! `standardwebhooks` package from PyPI (its Python `Webhook.verify`).
//! Signed deliveries verify, with one secret and with either secret of a
//! rotation; a tampered body, an old timestamp and a wrong secret are
//! refused by it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use keyroll_webhooks::{Signer, WebhookSecret};
use serde_json::{Value, json};

/// A delivery to check: the receiver's secret, the body, the headers.
type Case<'a> = (&'a str, &'a [u8], [(&'static str, &'a str); 3]);

/// What `Webhook(secret).verify(body, headers)` says of each case: "ok"
/// or the name of the exception it raised.
fn verify(cases: &[Case<'_>]) -> Vec<String> {
    let python = std::env::var("KEYROLL_STANDARDWEBHOOKS").unwrap_or_else(|_| "python3".into());
    let input: Vec<Value> = cases
        .iter()
        .map(|(secret, body, headers)| {
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(name, value)| (name.to_string(), json!(value)))
                .collect();
            json!({"secret": secret, "body": std::str::from_utf8(body).unwrap(), "headers": headers})
        })
        .collect();
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from standardwebhooks.webhooks import Webhook\n\
             out = []\n\
             for case in json.load(sys.stdin):\n\
             \x20   try:\n\
             \x20       Webhook(case['secret']).verify(case['body'].encode(), case['headers'], json_parse=False)\n\
             \x20       out.append('ok')\n\
             \x20   except Exception as e:\n\
             \x20       out.append(type(e).__name__)\n\
             print(json.dumps(out))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = serde_json::to_vec(&input).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
#[cfg_attr(
    not(keyroll_standardwebhooks),
    ignore = "needs Python's standardwebhooks: `pip install standardwebhooks` and set KEYROLL_STANDARDWEBHOOKS=python3 (`bash .ci/run` does)"
)]
fn the_standardwebhooks_package_verifies_what_is_signed_and_refuses_the_rest() {
    let (new, old, other) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "whsec_8x9yZ0a1b2c3d4e5f6g7h8i9j0k1l2m3",
    );
    let secret = |text: &str| text.parse::<WebhookSecret>().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = br#"{"event":"token_renewed","key_id":"acme","version":2}"#;
    let one = Signer::new(secret(new)).sign("msg_1", now, body);
    let rotating = Signer::rotating(secret(new), secret(old)).sign("msg_2", now, body);
    let old_one = Signer::new(secret(new)).sign("msg_3", now - 3600, body);
    let tampered: &[u8] = br#"{"event":"token_renewed","key_id":"acme","version":3}"#;
    let answers = verify(&[
        (new, body, one.headers()),
        (new, body, rotating.headers()),
        (old, body, rotating.headers()),
        (new, tampered, one.headers()),
        (new, body, old_one.headers()),
        (other, body, one.headers()),
    ]);
    assert_eq!(answers[..3], ["ok", "ok", "ok"], "{answers:?}");
    for (case, answer) in ["tampered body", "an hour old", "wrong secret"]
        .iter()
        .zip(&answers[3..])
    {
        assert_eq!(answer, "WebhookVerificationError", "{case}: {answers:?}");
    }
    assert_eq!(answers.len(), 6);
}
