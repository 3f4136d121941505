//! The HTTP service example, end to end: started as a child process on a
//! free loopback port and driven by a real HTTP client.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{Receiver, WEBHOOK_SECRET, free_port};
use ureq::Agent;

/// The bootstrap token: at least 32 bytes, or the service does not start.
const ADMIN: &str = "test-bootstrap-token-0123456789abcdef";

struct Service {
    child: Child,
    base: String,
    agent: Agent,
    /// Everything the service printed on stdout after its first line: the
    /// audit log.
    log: Arc<Mutex<String>>,
    /// Everything it printed on stderr: the server log.
    server_log: Arc<Mutex<String>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Service {
    start_with(&[])
}

fn start_with(args: &[&str]) -> Service {
    start_collecting(args, true)
}

/// Starts the service; with `collect_stdout` false, its stdout is closed
/// once it has said where it listens (every later write to it fails).
fn start_collecting(args: &[&str], collect_stdout: bool) -> Service {
    let store: &[&str] = match args.contains(&"--store") {
        true => &[],
        false => &["--store", "memory"],
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_http_service"))
        .args(["--listen", "127.0.0.1:0"])
        .args(store)
        .args(args)
        .env("KEYROLL_ADMIN_TOKEN", ADMIN)
        .env("KEYROLL_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server_log = Arc::new(Mutex::new(String::new()));
    collect(
        BufReader::new(child.stderr.take().unwrap()),
        server_log.clone(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"));
    let log = Arc::new(Mutex::new(String::new()));
    if collect_stdout {
        collect(stdout, log.clone());
    } else {
        drop(stdout);
    }
    let agent = Agent::new_with_config(Agent::config_builder().http_status_as_error(false).build());
    Service {
        child,
        base: format!("http://{addr}"),
        agent,
        log,
        server_log,
    }
}

/// Copies every line `from` prints into `into`, on a thread of its own.
fn collect(mut from: impl BufRead + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut line = String::new();
        while from.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// A response's status and JSON body (`Null` if not JSON).
type Answer = (u16, Value);

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let (status, _, body) = answer_with_headers(response);
    (status, body)
}

/// A response's status, `Cache-Control` header and JSON body.
fn answer_with_headers(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> (u16, Option<String>, Value) {
    let mut response = response.unwrap();
    let cache_control = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    let mut text = String::new();
    response
        .body_mut()
        .as_reader()
        .read_to_string(&mut text)
        .unwrap();
    (
        status,
        cache_control,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// The one answer to every refused credential.
fn refusal() -> Answer {
    (
        401,
        json!({"error": "invalid_credentials", "message": "invalid credentials"}),
    )
}

impl Service {
    /// An admin call with the bootstrap token.
    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.admin_as(ADMIN, method, path, body)
    }

    /// An admin call with the bearer token `admin`.
    fn admin_as(&self, admin: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{path}", self.base);
        let bearer = format!("Bearer {admin}");
        match (method, body) {
            ("GET", _) => answer(self.agent.get(&url).header("Authorization", &bearer).call()),
            ("PUT", Some(body)) => answer(
                self.agent
                    .put(&url)
                    .header("Authorization", &bearer)
                    .header("Content-Type", "application/json")
                    .send(body.to_string()),
            ),
            ("DELETE", _) => answer(
                self.agent
                    .delete(&url)
                    .header("Authorization", &bearer)
                    .call(),
            ),
            (_, Some(body)) => answer(
                self.agent
                    .post(&url)
                    .header("Authorization", &bearer)
                    .header("Content-Type", "application/json")
                    .send(body.to_string()),
            ),
            (_, None) => answer(
                self.agent
                    .post(&url)
                    .header("Authorization", &bearer)
                    .send_empty(),
            ),
        }
    }

    /// Creates a key with `body` through the admin API; its token.
    fn create(&self, body: Value) -> String {
        let created = self.admin("POST", "/admin/keys", Some(body));
        assert_eq!(created.0, 201, "{created:?}");
        token_of(&created)
    }

    fn bearer(&self, token: &str) -> Answer {
        answer(
            self.agent
                .get(format!("{}/v1/whoami", self.base))
                .header("Authorization", &format!("Bearer {token}"))
                .call(),
        )
    }

    fn whoami(&self, key: &str, token: &str) -> Answer {
        answer(
            self.agent
                .get(format!("{}/v1/whoami", self.base))
                .header("X-Api-Key", key)
                .header("X-Api-Token", token)
                .call(),
        )
    }
}

fn token_of(answer: &Answer) -> String {
    answer.1["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {answer:?}"))
        .to_owned()
}

#[test]
fn http_the_whole_renewal_story() {
    let service = start();
    let created = service.admin(
        "POST",
        "/admin/keys",
        Some(json!({"id": "acme-orders", "label": "orders"})),
    );
    assert_eq!(created.0, 201, "{created:?}");
    let first = token_of(&created);
    assert_eq!(
        service.whoami("acme-orders", &first),
        (
            200,
            json!({"key_id": "acme-orders", "token": "current", "scopes": [], "metadata": {}})
        )
    );

    let renewed = service.admin("POST", "/admin/keys/acme-orders/renew", None);
    assert_eq!(renewed.0, 200);
    let second = token_of(&renewed);
    assert_eq!(service.whoami("acme-orders", &second).1["token"], "current");
    assert_eq!(service.whoami("acme-orders", &first).1["token"], "old");
    // Answers to the old token tell the client to move to the new one.
    let renewal_header = |token: &str| {
        let response = service
            .agent
            .get(format!("{}/v1/whoami", service.base))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        let header = response.headers().get("keyroll-token-renewed");
        header.map(|value| value.to_str().unwrap().to_owned())
    };
    assert_eq!(renewal_header(&first).as_deref(), Some("true"));
    assert_eq!(renewal_header(&second), None);

    let listing = service.admin("GET", "/admin/keys", None);
    assert_eq!(listing.0, 200);
    let key = &listing.1["keys"][0];
    assert_eq!(key["id"], "acme-orders");
    assert_eq!(key["pending_deletion"], true);
    assert!(
        key["old_token"]["created_at"].is_string() && key["current_token"]["due_at"].is_string()
    );
    assert!(
        key["current_token"]["last_used_at"].is_string(),
        "uses are tracked: {key}"
    );
    assert_eq!(key["current_token"]["freshness"], "fresh");
    assert!(
        !listing.1.to_string().contains(&second),
        "the listing shows no token"
    );

    assert_eq!(
        service
            .admin(
                "POST",
                "/admin/keys/acme-orders/finalize",
                Some(json!({"delete_old": "later"}))
            )
            .0,
        200
    );
    let again = service.admin(
        "POST",
        "/admin/keys/acme-orders/finalize",
        Some(json!({"delete_old": "now"})),
    );
    assert_eq!(again.0, 409);
    assert!(
        again.1["message"]
            .as_str()
            .unwrap()
            .contains("already finalized"),
        "{again:?}"
    );
    assert_eq!(
        service
            .admin("DELETE", "/admin/keys/acme-orders/old-token", None)
            .0,
        200
    );
    assert_eq!(service.whoami("acme-orders", &first).0, 401);

    let third = token_of(&service.admin("POST", "/admin/keys/acme-orders/renew", None));
    assert_eq!(
        service
            .admin("POST", "/admin/keys/acme-orders/undo-renewal", None)
            .0,
        200
    );
    assert_eq!(service.whoami("acme-orders", &third).0, 401);
    assert_eq!(service.whoami("acme-orders", &second).0, 200);

    assert_eq!(
        service
            .admin("POST", "/admin/keys/acme-orders/deactivate", None)
            .0,
        200
    );
    assert_eq!(service.whoami("acme-orders", &second), refusal());
    assert_eq!(
        service
            .admin("POST", "/admin/keys/acme-orders/deactivate", None)
            .0,
        409
    );
    assert_eq!(
        service
            .admin("POST", "/admin/keys/acme-orders/activate", None)
            .0,
        200
    );
    assert_eq!(service.whoami("acme-orders", &second).0, 200);

    let shown = service.admin("GET", "/admin/keys/acme-orders", None);
    assert_eq!(
        (shown.0, shown.1["version"].clone()),
        (200, json!(shown.1["version"].as_u64().unwrap()))
    );
    assert_eq!(
        service.admin("DELETE", "/admin/keys/acme-orders", None).0,
        200
    );
    assert_eq!(service.admin("GET", "/admin/keys/acme-orders", None).0, 404);
    assert_eq!(service.whoami("acme-orders", &second).0, 401);

    // The audit log: one JSON line per event, and no secret anywhere.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = service.log.lock().unwrap().clone();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["audit"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "key_issued",
            "token_renewed",
            "renewal_finalized",
            "old_token_deleted",
            "token_renewed",
            "renewal_undone",
            "key_deactivated",
            "key_activated",
            "key_deleted"
        ]
    );
    for token in [&first, &second, &third] {
        assert!(!log.contains(&token[3..]), "a token in the audit log");
    }
}

#[test]
fn http_bad_input_gets_a_clear_4xx() {
    let service = start();
    let created = service.admin(
        "POST",
        "/admin/keys",
        Some(json!({"label": "generated id"})),
    );
    assert_eq!(created.0, 201);
    let id = created.1["id"].as_str().unwrap().to_owned();
    let token = token_of(&created);
    let whoami = format!("{}/v1/whoami", service.base);
    let error_of = |a: &Answer| a.1["error"].as_str().map(str::to_owned);

    // Missing headers; malformed, wrong, 10 KB, non-UTF-8 tokens; an
    // invalid key id: one answer for all.
    assert_eq!(answer(service.agent.get(&whoami).call()), refusal());
    let a = answer(service.agent.get(&whoami).header("X-Api-Key", &id).call());
    assert_eq!(a, refusal());
    assert_eq!(service.whoami(&id, "kr_typo"), refusal());
    let mut wrong = token.clone();
    wrong.replace_range(10..11, if &token[10..11] == "A" { "B" } else { "A" });
    assert_eq!(service.whoami(&id, &wrong), refusal());
    assert_eq!(service.whoami(&id, &"x".repeat(10 * 1024)), refusal());
    let a = answer(
        service
            .agent
            .get(&whoami)
            .header("X-Api-Key", &id)
            .header_raw("X-Api-Token", b"kr_\xff\xfe")
            .call(),
    );
    assert_eq!(a, refusal());
    assert_eq!(service.whoami("bad id!", &token), refusal());
    assert_eq!(service.whoami("nobody", &token), refusal());

    // Admin: wrong or missing bearer token.
    let keys = format!("{}/admin/keys", service.base);
    assert_eq!(
        answer(
            service
                .agent
                .get(&keys)
                .header("Authorization", "Bearer nope")
                .call()
        )
        .0,
        401
    );
    assert_eq!(answer(service.agent.get(&keys).call()).0, 401);
    // Malformed JSON, unknown fields, wrong types, invalid ids, unknown keys.
    let post = |path: &str, body: &str| {
        answer(
            service
                .agent
                .post(format!("{}{path}", service.base))
                .header("Authorization", &format!("Bearer {ADMIN}"))
                .header("Content-Type", "application/json")
                .send(body),
        )
    };
    for (body, status) in [
        ("{", 400),
        ("{\"label\": 5}", 400),
        ("{\"label\": \"x\", \"admin\": true}", 400),
    ] {
        let a = post("/admin/keys", body);
        assert_eq!(a.0, status, "{body}: {a:?}");
        assert!(error_of(&a).is_some(), "{body}: a JSON error");
    }
    assert_eq!(
        post("/admin/keys", "{\"id\": \"bad id\", \"label\": \"x\"}").0,
        400
    );
    assert_eq!(
        post(
            "/admin/keys",
            &format!("{{\"id\": \"{id}\", \"label\": \"x\"}}")
        )
        .0,
        409
    );
    assert_eq!(
        post(
            &format!("/admin/keys/{id}/finalize"),
            "{\"delete_old\": \"someday\"}"
        )
        .0,
        400
    );
    assert_eq!(
        service.admin("POST", "/admin/keys/nobody/renew", None).0,
        404
    );
    assert_eq!(service.admin("GET", "/admin/keys?limit=abc", None).0, 400);
    assert_eq!(service.admin("GET", "/admin/nothing-here", None).0, 404);
    // The service is still up and answering.
    assert_eq!(service.whoami(&id, &token).0, 200);
}

/// With `--no-usage-recording`, requests authenticate but no use is
/// ever written: a key's last use stays empty.
#[test]
fn http_without_usage_recording_last_use_stays_empty() {
    let service = start_with(&["--no-usage-recording"]);
    let token = service.create(json!({"id": "quiet"}));
    assert_eq!(service.bearer(&token).0, 200);
    // The listing flushes noted uses first: there are none to write.
    let listing = service.admin("GET", "/admin/keys", None);
    let key = &listing.1["keys"][0];
    assert_eq!(key["id"], "quiet");
    assert!(
        key["current_token"]["last_used_at"].is_null(),
        "no use recorded: {key}"
    );
}

/// An unknown key, a malformed token (of an existing key or not), a wrong
/// token and an inactive key all get one answer: nothing tells a caller
/// whether a key id exists. The causes are in the server's log, with no
/// token.
#[test]
fn http_credential_refusals_do_not_reveal_which_keys_exist() {
    let service = start();
    let token = service.create(json!({"id": "real", "label": "x"}));
    let other = service.create(json!({"id": "other"}));
    let ghost = service.create(json!({"id": "ghost"}));
    service.admin("DELETE", "/admin/keys/ghost", None);
    let answers = [
        service.whoami("real", "kr_typo"),
        service.whoami("nobody", "kr_typo"),
        service.whoami("ghost", &ghost),
        service.whoami("nobody", &token),
        service.whoami("real", &other),
    ];
    service.admin("POST", "/admin/keys/real/deactivate", None);
    let inactive = service.whoami("real", &token);
    for a in answers.iter().chain([&inactive]) {
        assert_eq!(a, &refusal());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let server_log = service.server_log.lock().unwrap().clone();
    for cause in ["malformed", "unknown key", "does not match", "inactive"] {
        assert!(server_log.contains(cause), "{cause} in {server_log}");
    }
    let everything = server_log + &service.log.lock().unwrap();
    for secret in [&token, &other] {
        assert!(!everything.contains(&secret[3..]), "a token in the logs");
    }
}

/// What an admin call gets back when it hands out a token, and how the
/// service deals with bad input and due deletions.
#[test]
fn http_tokens_are_not_cached_and_bad_input_is_refused_at_the_call() {
    let service = start();
    let url = format!("{}/admin/keys", service.base);
    let bearer = format!("Bearer {ADMIN}");
    let created = answer_with_headers(
        service
            .agent
            .post(&url)
            .header("Authorization", &bearer)
            .header("Content-Type", "application/json")
            .send(json!({"id": "k"}).to_string()),
    );
    assert_eq!((created.0, created.1.as_deref()), (201, Some("no-store")));
    let first = created.2["token"].as_str().unwrap().to_owned();
    let renewed = answer_with_headers(
        service
            .agent
            .post(format!("{url}/k/renew"))
            .header("Authorization", &bearer)
            .send_empty(),
    );
    assert_eq!((renewed.0, renewed.1.as_deref()), (200, Some("no-store")));
    let second = renewed.2["token"].as_str().unwrap().to_owned();
    let listed = answer_with_headers(
        service
            .agent
            .get(&url)
            .header("Authorization", &bearer)
            .call(),
    );
    assert_eq!(listed.1, None, "no token, nothing to forbid");

    // A negative grace is refused at the call; nothing changed, and later
    // requests are served (0.1 stored a key in a negative year, and every
    // request after it panicked).
    let grace = json!({"delete_old": "after_new_token_use", "grace": "-100000000000s"});
    let refused = service.admin("POST", "/admin/keys/k/finalize", Some(grace));
    assert_eq!(refused.0, 400, "{refused:?}");
    assert!(
        refused.1["message"].as_str().unwrap().contains("grace"),
        "{refused:?}"
    );
    assert_eq!(service.whoami("k", &second).1["token"], "current");
    assert_eq!(service.whoami("k", &first).1["token"], "old");
    let label = "x".repeat(257);
    assert_eq!(
        service
            .admin(
                "POST",
                "/admin/keys",
                Some(json!({"id": "long", "label": label}))
            )
            .0,
        400
    );

    // A renewal once the old token's scheduled deletion is due goes
    // through, and its one audit line names the token deleted as scheduled.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let scheduled = service.admin(
        "POST",
        "/admin/keys/k/finalize",
        Some(json!({"delete_old": "at", "at": soon})),
    );
    assert_eq!(scheduled.0, 200, "{scheduled:?}");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let third = service.admin("POST", "/admin/keys/k/renew", None);
    assert_eq!(third.0, 200, "{third:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = service.log.lock().unwrap().clone();
    let renewal = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|e| e["audit"]["event"] == "token_renewed")
        .unwrap_or_else(|| panic!("no renewal audited: {log}"));
    assert!(
        renewal["audit"]["deleted_as_scheduled"].is_string(),
        "{renewal}"
    );
    assert_eq!(service.whoami("k", &first), refusal());
}

#[test]
fn http_refuses_to_start_without_an_admin_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_http_service"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("KEYROLL_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYROLL_ADMIN_TOKEN"));
}

/// A webhook endpoint that is not http(s), or a secret not in `whsec_`
/// form, stops the service at start with a message naming the flag; the
/// secret is never quoted.
#[test]
fn http_refuses_bad_webhook_settings_at_start() {
    let refused = |url: &str, secret: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_http_service"))
            .args(["--listen", "127.0.0.1:0", "--webhook-url", url])
            .env("KEYROLL_ADMIN_TOKEN", ADMIN)
            .env("KEYROLL_WEBHOOK_SECRET", secret)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let url = refused("ftp://hooks.example.com/keyroll", WEBHOOK_SECRET);
    assert!(
        url.contains("--webhook-url") && url.contains("only http and https"),
        "{url}"
    );
    let secret = refused("https://hooks.example.com/keyroll", "hunter2-not-a-secret");
    assert!(
        secret.contains("--webhook-secret") && secret.contains("whsec_"),
        "{secret}"
    );
    assert!(!secret.contains("hunter2"), "{secret}");
}

#[test]
fn http_one_string_bearer_tokens_and_the_two_header_form() {
    let service = start();
    let token = service.create(json!({"id": "acme_orders.v2"}));
    let other = service.create(json!({"id": "other"}));
    assert_eq!(
        service.bearer(&token),
        (
            200,
            json!({"key_id": "acme_orders.v2", "token": "current", "scopes": [], "metadata": {}})
        )
    );
    assert_eq!(service.whoami("acme_orders.v2", &token).0, 200);
    // Another key's token in the two-header form, and a bearer token beside
    // an X-Api-Key naming another key: refused.
    assert_eq!(service.whoami("acme_orders.v2", &other), refusal());
    let both = |key: &str| {
        answer(
            service
                .agent
                .get(format!("{}/v1/whoami", service.base))
                .header("Authorization", &format!("Bearer {token}"))
                .header("X-Api-Key", key)
                .call(),
        )
    };
    assert_eq!(both("other"), refusal());
    assert_eq!(both("acme_orders.v2").0, 200);
    for bad in [
        "",
        "kr_typo",
        &token[..token.len() - 1],
        &"x".repeat(10_000),
    ] {
        assert_eq!(service.bearer(bad), refusal(), "{bad:?}");
    }
    let renewed = token_of(&service.admin("POST", "/admin/keys/acme_orders.v2/renew", None));
    assert_eq!(service.bearer(&token).1["token"], "old");
    assert_eq!(service.bearer(&renewed).1["token"], "current");
}

/// A GitHub secret scanning partner: a key pair GitHub would sign with.
struct Scanner {
    key: p256::ecdsa::SigningKey,
    identifier: String,
}

impl Scanner {
    fn new(dir: &std::path::Path) -> (Scanner, std::path::PathBuf) {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        use sha2::Digest;
        let key = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let public = p256::ecdsa::VerifyingKey::from(&key);
        let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
        let der = public.to_public_key_der().unwrap();
        let identifier = sha2::Sha256::digest(der.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = dir.join("github-keys.pem");
        std::fs::write(&path, pem).unwrap();
        (Scanner { key, identifier }, path)
    }

    fn signature(&self, body: &str) -> String {
        use base64::Engine;
        use p256::ecdsa::signature::Signer;
        let signature: p256::ecdsa::DerSignature = self.key.sign(body.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(signature.as_bytes())
    }
}

#[test]
fn http_github_secret_scanning_revokes_reported_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (scanner, keys) = Scanner::new(dir.path());
    let service = start_with(&["--github-keys", keys.to_str().unwrap()]);
    let leaked = service.create(json!({"id": "acme"}));
    let safe = service.create(json!({"id": "safe"}));
    let url = format!("{}/secret-scanning/github", service.base);
    let report = json!([
        {"token": leaked, "type": "keyroll_token", "url": "https://github.com/o/r/blob/x/.env", "source": "content"},
        {"token": "kr_nobody_0000000000000000000000000000000000000000000000", "type": "keyroll_token", "url": "https://github.com/o/r", "source": "content"},
    ])
    .to_string();
    let post = |identifier: Option<&str>, signature: Option<&str>, body: &str| {
        let mut request = service
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(identifier) = identifier {
            request = request.header("Github-Public-Key-Identifier", identifier);
        }
        if let Some(signature) = signature {
            request = request.header("Github-Public-Key-Signature", signature);
        }
        answer(request.send(body))
    };

    // Unsigned, signed by another key, or a signature of another body: 401,
    // and nothing is revoked. Nor is a good signature sent with an
    // identifier that names no key, or another key.
    let (stranger, _) = Scanner::new(tempfile::tempdir().unwrap().path());
    let tampered = report.replace("content", "commit");
    for (identifier, signature) in [
        (None, None),
        (Some("unknown"), Some(scanner.signature(&report))),
        (Some(&stranger.identifier), Some(scanner.signature(&report))),
        (Some(scanner.identifier.as_str()), None),
        (Some(&scanner.identifier), Some(stranger.signature(&report))),
        (
            Some(&scanner.identifier),
            Some(scanner.signature(&tampered)),
        ),
        (
            Some(&scanner.identifier),
            Some("bm90IGEgc2lnbmF0dXJl".to_owned()),
        ),
    ] {
        let a = post(identifier, signature.as_deref(), &report);
        assert_eq!(a.0, 401, "{a:?}");
    }
    assert_eq!(service.bearer(&leaked).0, 200);

    let a = post(
        Some(&scanner.identifier),
        Some(&scanner.signature(&report)),
        &report,
    );
    assert_eq!(
        a,
        (
            200,
            json!([
                {"token_raw": leaked, "token_type": "keyroll_token", "label": "true_positive"},
                {"token_raw": "kr_nobody_0000000000000000000000000000000000000000000000", "token_type": "keyroll_token", "label": "false_positive"},
            ])
        )
    );
    assert_eq!(service.bearer(&leaked), refusal());
    assert_eq!(service.bearer(&safe).0, 200);
    // The same report again (a replay, or a retry): the same answer, and
    // nothing done again.
    let again = post(
        Some(&scanner.identifier),
        Some(&scanner.signature(&report)),
        &report,
    );
    assert_eq!(again, a);
    // A new report of the token: already revoked, a false positive now.
    let later = json!([{"token": leaked, "type": "keyroll_token", "url": "https://github.com/o/r2", "source": "content"}]).to_string();
    let again = post(
        Some(&scanner.identifier),
        Some(&scanner.signature(&later)),
        &later,
    );
    assert_eq!(again.1[0]["label"], "false_positive");

    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = service.log.lock().unwrap().clone();
    let revocations = log.matches("\"token_revoked\"").count();
    assert_eq!(revocations, 1, "one audit line per revocation: {log}");
    assert!(
        log.contains("\"actor\":\"github-secret-scanning\""),
        "{log}"
    );
    let server_log = service.server_log.lock().unwrap().clone();
    assert!(server_log.contains("https://github.com/o/r/blob/x/.env"));
    for text in [&log, &server_log] {
        assert!(
            !text.contains(&leaked[leaked.len() - 46..]),
            "a token in the logs"
        );
    }
}

/// Scopes and metadata on keys through the admin API, a route guarded by a
/// scope, and the admin API itself authorized by a key holding
/// `keyroll:admin` (the bootstrap token only creates the first one).
#[test]
fn http_scopes_guard_routes_and_the_admin_api() {
    let service = start();
    let admin = service.create(json!({"id": "ops", "scopes": ["keyroll:admin"]}));
    let request = |method: &str, path: &str, bearer: &str, body: Option<Value>| {
        let url = format!("{}{path}", service.base);
        let auth = format!("Bearer {bearer}");
        let response = match (method, body) {
            ("GET", _) => service
                .agent
                .get(&url)
                .header("Authorization", &auth)
                .call(),
            ("PUT", Some(body)) => service
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            (_, body) => service
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut response = response.unwrap();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut text = String::new();
        response
            .body_mut()
            .as_reader()
            .read_to_string(&mut text)
            .unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (response.status().as_u16(), challenge, body)
    };

    // The admin key manages keys: one with scopes, metadata and an expiry.
    let created = request(
        "POST",
        "/admin/keys",
        &admin,
        Some(json!({
            "id": "acme",
            "label": "orders",
            "scopes": ["orders:read"],
            "metadata": {"tenant": "acme"},
            "expires_at": "2099-01-01T00:00:00Z",
        })),
    );
    assert_eq!(created.0, 201, "{created:?}");
    let acme = created.2["token"].as_str().unwrap().to_owned();
    let shown = service.admin_as(&admin, "GET", "/admin/keys/acme", None);
    assert_eq!(shown.1["scopes"], json!(["orders:read"]));
    assert_eq!(shown.1["metadata"], json!({"tenant": "acme"}));
    assert_eq!(shown.1["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(
        service.bearer(&acme).1,
        json!({"key_id": "acme", "token": "current", "scopes": ["orders:read"], "metadata": {"tenant": "acme"}})
    );

    // A route guarded by orders:read.
    let orders = request("GET", "/v1/orders", &acme, None);
    assert_eq!(orders.0, 200, "{orders:?}");
    let put = request(
        "PUT",
        "/admin/keys/acme/scopes",
        &admin,
        Some(json!({"scopes": ["billing:read"]})),
    );
    assert_eq!(put.0, 200, "{put:?}");
    let refused = request("GET", "/v1/orders", &acme, None);
    assert_eq!(refused.0, 403);
    assert_eq!(
        refused.1.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"orders:read\"")
    );
    // A key without keyroll:admin cannot use the admin API.
    let denied = request("GET", "/admin/keys", &acme, None);
    assert_eq!(denied.0, 403);
    assert_eq!(
        denied.1.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"keyroll:admin\"")
    );
    // No valid credential at all: 401 with a challenge.
    let unauthenticated = request("GET", "/admin/keys", "kr_nope", None);
    assert_eq!(unauthenticated.0, 401);
    assert_eq!(
        unauthenticated.1.as_deref(),
        Some("Bearer realm=\"keyroll\", error=\"invalid_token\"")
    );

    // The other setters.
    for (path, body) in [
        (
            "/admin/keys/acme/metadata",
            json!({"metadata": {"tenant": "globex", "owner": "ops"}}),
        ),
        ("/admin/keys/acme/label", json!({"label": "orders v2"})),
        ("/admin/keys/acme/expiry", json!({"expires_at": null})),
    ] {
        let answer = request("PUT", path, &admin, Some(body));
        assert_eq!(answer.0, 200, "{path}: {answer:?}");
    }
    let shown = service.admin_as(&admin, "GET", "/admin/keys/acme", None);
    assert_eq!(
        shown.1["metadata"],
        json!({"owner": "ops", "tenant": "globex"})
    );
    assert_eq!(shown.1["label"], "orders v2");
    assert_eq!(shown.1["expires_at"], Value::Null);
    let expired = request(
        "PUT",
        "/admin/keys/acme/expiry",
        &admin,
        Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(expired.0, 200);
    assert_eq!(service.bearer(&acme), refusal());

    // Bad input: 400 naming it, nothing changed.
    let many_scopes: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let many_entries: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (path, body, needle) in [
        (
            "/admin/keys/acme/scopes",
            json!({"scopes": ["has space"]}).to_string(),
            "invalid scope \"has space\"",
        ),
        (
            "/admin/keys/acme/scopes",
            json!({"scopes": many_scopes}).to_string(),
            "too many scopes: 65",
        ),
        (
            "/admin/keys/acme/metadata",
            json!({"metadata": many_entries}).to_string(),
            "too many metadata entries: 33",
        ),
        (
            "/admin/keys/acme/metadata",
            r#"{"metadata": {"tenant": "a", "tenant": "b"}}"#.to_owned(),
            "\"tenant\" is given twice",
        ),
        (
            "/admin/keys/acme/metadata",
            json!({"metadata": {"note": "v".repeat(513)}}).to_string(),
            "513 bytes",
        ),
        (
            "/admin/keys/acme/metadata",
            json!({"metadata": {"": "v"}}).to_string(),
            "the key is empty",
        ),
        (
            "/admin/keys/acme/label",
            json!({"label": "bell\u{7}"}).to_string(),
            "control character",
        ),
    ] {
        let answer = answer(
            service
                .agent
                .put(format!("{}{path}", service.base))
                .header("Authorization", &format!("Bearer {admin}"))
                .header("Content-Type", "application/json")
                .send(body),
        );
        assert_eq!(answer.0, 400, "{path}: {answer:?}");
        let message = answer.1["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message} should contain {needle}"
        );
    }
    assert_eq!(
        service.admin_as(&admin, "GET", "/admin/keys/acme", None).1["label"],
        "orders v2"
    );
}

#[test]
fn http_refuses_a_short_bootstrap_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_http_service"))
        .args(["--listen", "127.0.0.1:0"])
        .env("KEYROLL_ADMIN_TOKEN", "only-31-bytes-long-0123456789ab")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("31 bytes") && stderr.contains("at least 32"),
        "{stderr}"
    );
    // The docs' placeholder is no secret either.
    let out = Command::new(env!("CARGO_BIN_EXE_http_service"))
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "KEYROLL_ADMIN_TOKEN",
            "change-me-to-32-random-bytes-or-more",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("placeholder") && stderr.contains("openssl rand -base64 32"),
        "{stderr}"
    );
}

/// The bootstrap token creates the first admin key, then retires for
/// good: it is accepted only until an active key holds `keyroll:admin`.
/// Every audit line names who acted. (Refused calls with a body are
/// answered `Connection: close`, so the one client reusing connections
/// throughout never sends on a connection the service closed.)
#[test]
fn http_the_bootstrap_token_retires_once_an_admin_key_exists() {
    let service = start();
    assert_eq!(service.admin("GET", "/admin/keys", None).0, 200);
    // A key without the admin scope does not retire it.
    service.create(json!({"id": "plain"}));
    assert_eq!(service.admin("GET", "/admin/keys", None).0, 200);
    let ops = service.create(json!({"id": "ops", "scopes": ["keyroll:admin"]}));
    for (method, path, body) in [
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", Some(json!({"id": "sneaky"}))),
        ("DELETE", "/admin/keys/ops", None),
    ] {
        assert_eq!(
            service.admin(method, path, body),
            refusal(),
            "{method} {path}"
        );
    }
    assert_eq!(
        service.admin_as(&ops, "GET", "/admin/keys/sneaky", None).0,
        404
    );
    let created = service.admin_as(&ops, "POST", "/admin/keys", Some(json!({"id": "acme"})));
    assert_eq!(created.0, 201, "{created:?}");
    // It retired for good: with no active admin key left (the only one
    // deactivated), the bootstrap token is still refused.
    assert_eq!(
        service
            .admin_as(&ops, "POST", "/admin/keys/ops/deactivate", None)
            .0,
        200
    );
    assert_eq!(
        service.admin("POST", "/admin/keys/ops/activate", None),
        refusal()
    );
    assert_eq!(service.admin("GET", "/admin/keys", None), refusal());

    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = service.log.lock().unwrap().clone();
    let actors: Vec<(String, String)> = log
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|line| {
            let kind = line["audit"]["event"].as_str().unwrap().to_owned();
            (kind, line["actor"].as_str().unwrap().to_owned())
        })
        .collect();
    let actors: Vec<(&str, &str)> = actors
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        actors,
        [
            ("key_issued", "bootstrap"),
            ("key_issued", "bootstrap"),
            ("key_issued", "ops"),
            ("key_deactivated", "ops"),
        ],
        "{log}"
    );
    let server_log = service.server_log.lock().unwrap().clone();
    assert!(
        server_log.contains("bootstrap token has retired for good"),
        "{server_log}"
    );
}

/// With stdout closed, the audit line cannot be written: the failure goes
/// to stderr, and the answer that carries a new token still goes out.
#[test]
fn http_a_failed_audit_write_never_loses_a_token() {
    let service = start_collecting(&[], false);
    let created = service.admin("POST", "/admin/keys", Some(json!({"id": "acme"})));
    assert_eq!(created.0, 201, "{created:?}");
    let token = token_of(&created);
    assert_eq!(service.bearer(&token).0, 200);
    let renewed = service.admin("POST", "/admin/keys/acme/renew", None);
    assert_eq!(renewed.0, 200, "{renewed:?}");
    assert_eq!(service.bearer(&token_of(&renewed)).1["token"], "current");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let server_log = service.server_log.lock().unwrap().clone();
    assert_eq!(
        server_log.matches("audit_failed").count(),
        2,
        "{server_log}"
    );
    assert!(
        !server_log.contains(&token[token.len() - 46..]),
        "a token in the log"
    );
}

#[test]
fn http_rate_limits_and_credits_through_the_admin_api() {
    let service = start();
    let token = service.create(json!({"id": "metered"}));
    let path = "/admin/keys/metered";
    let set = service.admin(
        "PUT",
        &format!("{path}/rate-limit"),
        Some(json!({"rate_limit": {"limit": 2, "period": "1m"}})),
    );
    assert_eq!(set.0, 200, "{set:?}");
    let set = service.admin(
        "PUT",
        &format!("{path}/credits"),
        Some(json!({"credits": {"remaining": 3, "refill": {"amount": 3, "every": "1h"}}})),
    );
    assert_eq!(set.0, 200, "{set:?}");
    // Bad limits are 400s that quote them, and change nothing.
    for (what, body, quoted) in [
        (
            "rate-limit",
            json!({"rate_limit": {"limit": 0, "period": "1m"}}),
            "limit 0",
        ),
        (
            "rate-limit",
            json!({"rate_limit": {"limit": 1, "period": "2 fortnights"}}),
            "2 fortnights",
        ),
        (
            "credits",
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "every": "10s"}}}),
            "every 10s",
        ),
    ] {
        let refused = service.admin("PUT", &format!("{path}/{what}"), Some(body));
        assert_eq!(refused.0, 400, "{refused:?}");
        assert!(
            refused.1["message"].as_str().unwrap().contains(quoted),
            "{refused:?}"
        );
    }
    // Two requests a minute: the third is a 429 that says when to retry.
    assert_eq!(service.bearer(&token).0, 200);
    assert_eq!(service.bearer(&token).0, 200);
    let mut limited = service
        .agent
        .get(format!("{}/v1/whoami", service.base))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(
        limited.headers()["ratelimit-policy"],
        "\"key\";q=2;w=60, \"credits\";q=3;w=3600"
    );
    let body: Value = serde_json::from_str(&limited.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    // The key shows its limits and what they allow now.
    let shown = service.admin("GET", path, None);
    assert_eq!(
        shown.1["rate_limit"],
        json!({"limit": 2, "period": "1m", "burst": 2})
    );
    assert_eq!(
        shown.1["credits"]["refill"],
        json!({"amount": 3, "every": "1h"})
    );
    assert_eq!(shown.1["allowance"]["credits_remaining"], 1);
    assert_eq!(shown.1["allowance"]["rate_remaining"], 0);
    assert!(shown.1["allowance"]["next_refill"].is_string(), "{shown:?}");
    // Removed, the limits admit anything again.
    let off = service.admin(
        "PUT",
        &format!("{path}/rate-limit"),
        Some(json!({"rate_limit": null})),
    );
    assert_eq!(off.0, 200);
    let off = service.admin(
        "PUT",
        &format!("{path}/credits"),
        Some(json!({"credits": null})),
    );
    assert_eq!(off.0, 200);
    for _ in 0..3 {
        assert_eq!(service.bearer(&token).0, 200);
    }
}

#[test]
fn http_owners_and_expiring_keys_through_the_admin_api() {
    let service = start();
    service.create(json!({"id": "a2", "owner": "acme"}));
    service.create(json!({"id": "a1", "owner": "acme"}));
    service.create(json!({"id": "g1", "owner": "globex"}));
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    service.create(json!({"id": "soon", "expires_at": soon}));
    let ids = |answer: &Answer| {
        answer.1["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let acme = service.admin("GET", "/admin/keys?owner=acme", None);
    assert_eq!(
        (acme.0, ids(&acme)),
        (200, vec!["a1".to_owned(), "a2".to_owned()])
    );
    assert_eq!(acme.1["keys"][0]["owner"], "acme");
    let bad = service.admin("GET", "/admin/keys?owner=a%20b", None);
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(
        bad.1["message"]
            .as_str()
            .unwrap()
            .contains("invalid owner id")
    );
    let moved = service.admin(
        "PUT",
        "/admin/keys/g1/owner",
        Some(json!({"owner": "acme"})),
    );
    assert_eq!(moved.0, 200, "{moved:?}");
    assert_eq!(
        ids(&service.admin("GET", "/admin/keys?owner=acme&limit=2", None)),
        ["a1", "a2"]
    );
    assert_eq!(
        ids(&service.admin("GET", "/admin/keys?owner=acme&after=a2", None)),
        ["g1"]
    );
    let expiring = service.admin("GET", "/admin/expiring?within=14d", None);
    assert_eq!(expiring.0, 200, "{expiring:?}");
    let listed = expiring.1["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{expiring:?}");
    assert_eq!(listed[0]["key"]["id"], "soon");
    assert_eq!(listed[0]["reason"], "key_expires");
    let bad = service.admin("GET", "/admin/expiring?within=soonish", None);
    assert_eq!(bad.0, 400, "{bad:?}");
}

#[test]
fn http_usage_counts_through_the_admin_api() {
    let service = start();
    // A token of an earlier key under the same id: well formed, refused.
    let stale = service.create(json!({"id": "u"}));
    assert_eq!(service.admin("DELETE", "/admin/keys/u", None).0, 200);
    let token = service.create(json!({"id": "u"}));
    let set = service.admin(
        "PUT",
        "/admin/keys/u/rate-limit",
        Some(json!({"rate_limit": {"limit": 2, "period": "1h"}})),
    );
    assert_eq!(set.0, 200);
    let statuses: Vec<u16> = (0..3).map(|_| service.bearer(&token).0).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(service.bearer(&stale).0, 401);
    let usage = service.admin("GET", "/admin/keys/u/usage?since=1d", None);
    assert_eq!(usage.0, 200, "{usage:?}");
    let hours = usage.1["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 1, "{usage:?}");
    assert_eq!(
        (
            &hours[0]["accepted"],
            &hours[0]["rate_limited"],
            &hours[0]["usage_exceeded"],
            &hours[0]["refused"]
        ),
        (&json!(2), &json!(1), &json!(0), &json!(1))
    );
    assert_eq!(
        service.admin("GET", "/admin/keys/nobody/usage", None).0,
        404
    );
    assert_eq!(
        service
            .admin("GET", "/admin/keys/u/usage?since=often", None)
            .0,
        400
    );
}

/// `/metrics` parses under Python's `prometheus_client` (a parser nobody
/// here wrote), counts authentications and charges by outcome and subject,
/// and no label carries a key id, an owner id or a token.
#[test]
#[cfg_attr(
    not(keyroll_prometheus),
    ignore = "needs Python's prometheus_client: `pip install prometheus_client` and set KEYROLL_PROMETHEUS_PARSER=python3 (`bash .ci/run` does)"
)]
fn http_metrics_parse_count_outcomes_and_name_no_key() {
    let service = start_with(&["--dispatch-every", "50ms"]);
    let token = service.create(json!({"id": "metered-key", "owner": "owner-acme"}));
    let set = service.admin(
        "PUT",
        "/admin/owners/owner-acme/limits",
        Some(json!({"credits": {"remaining": 2}})),
    );
    assert_eq!(set.0, 200, "{set:?}");
    for expected in [200, 200, 429] {
        assert_eq!(service.bearer(&token).0, expected);
    }
    // A malformed token, and a token of a key deleted since.
    assert_eq!(service.bearer("kr_nosuchkey_0000").0, 401);
    let gone = service.create(json!({"id": "gone-key"}));
    assert_eq!(service.admin("DELETE", "/admin/keys/gone-key", None).0, 200);
    assert_eq!(service.bearer(&gone).0, 401);
    let (text, samples) = scrape(&service);
    assert!(
        ["metered-key", "owner-acme", "gone-key"]
            .iter()
            .all(|id| !text.contains(id)),
        "{text}"
    );
    assert!(!text.contains(&token), "a token in the metrics");
    let sample = |name: &str| {
        samples[name]
            .as_f64()
            .unwrap_or_else(|| panic!("no {name} in {samples}"))
    };
    let count = |outcome: &str| {
        sample(&format!(
            "keyroll_authentications_total{{outcome={outcome}}}"
        ))
    };
    assert_eq!(count("accepted"), 2.0);
    assert_eq!(count("usage_exceeded"), 1.0);
    assert_eq!(count("refused"), 1.0);
    assert_eq!(count("unknown"), 1.0);
    // Store calls are timed by operation: a summary's count per operation.
    assert!(sample("keyroll_store_call_seconds_count{operation=verify}") >= 4.0);
    assert!(sample("keyroll_store_call_seconds_count{operation=charge}") >= 3.0);
    assert_eq!(
        sample("keyroll_charges_total{outcome=admitted,subject=none}"),
        2.0
    );
    assert_eq!(
        sample("keyroll_charges_total{outcome=usage_exceeded,subject=owner}"),
        1.0
    );
    // The outbox: the 4 changes' events (2 keys issued, the owner's
    // limits set, a key deleted) delivered (to the log), none waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let (_, samples) = scrape(&service);
        if samples["keyroll_outbox_deliveries_total{outcome=delivered}"].as_f64() == Some(4.0) {
            break samples;
        }
        assert!(Instant::now() < deadline, "not delivered: {samples}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        samples["keyroll_outbox_pending{}"].as_f64(),
        Some(0.0),
        "{samples}"
    );
    assert_eq!(
        samples["keyroll_outbox_parked{}"].as_f64(),
        Some(0.0),
        "{samples}"
    );
    assert_eq!(
        samples["keyroll_outbox_lag_seconds_count{}"].as_f64(),
        Some(4.0),
        "{samples}"
    );
}

/// `/metrics` as text, and its samples as Python's `prometheus_client`
/// parses them: `{"name{label=value,...}": value}`.
fn scrape(service: &Service) -> (String, Value) {
    let text = service
        .agent
        .get(format!("{}/metrics", service.base))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let python = std::env::var("KEYROLL_PROMETHEUS_PARSER").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             out = {}\n\
             for family in text_string_to_metric_families(sys.stdin.read()):\n\
             \x20   for s in family.samples:\n\
             \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
             \x20       out[s.name + '{' + labels + '}'] = s.value\n\
             print(json.dumps(out))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{text}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (text, serde_json::from_slice(&output.stdout).unwrap())
}

/// The service is killed (SIGKILL) after a change and before its event is
/// delivered (its receiver is down); started again on the same database,
/// it delivers the event, checked by `standardwebhooks`, once per id.
#[test]
#[cfg_attr(
    not(keyroll_standardwebhooks),
    ignore = "needs Python's standardwebhooks: `pip install standardwebhooks` and set KEYROLL_STANDARDWEBHOOKS=python3 (`bash .ci/run` does)"
)]
fn http_an_event_survives_a_sigkill_before_its_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("keys.db").display());
    // A port nothing listens on yet: every delivery fails, for now.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let args = [
        "--store",
        &store,
        "--webhook-url",
        &url,
        "--dispatch-every",
        "50ms",
    ];
    let service = start_with(&args);
    service.create(json!({"id": "survivor"}));
    // Killed once the delivery failed (it then waits a second or so for
    // its retry): the change is written, its event not delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = service.admin("GET", "/admin/outbox?state=pending", None);
        let attempts = &pending.1["entries"][0]["attempts"];
        if attempts.as_u64().is_some_and(|n| n >= 1) {
            let error = pending.1["entries"][0]["last_error"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(error.contains(&format!("POST {url}")), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed delivery: {pending:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(service); // SIGKILL: `Child::kill` on Unix

    let _receiver = Receiver::start(port);
    let service = start_with(&args);
    // A hold left by a delivery in flight at the kill ends within 2 min.
    let deadline = Instant::now() + Duration::from_secs(150);
    let log = loop {
        let log = Receiver::log(port);
        if !log.is_empty() {
            std::thread::sleep(Duration::from_millis(300)); // any duplicate lands too
            break Receiver::log(port);
        }
        assert!(Instant::now() < deadline, "never delivered");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(log.len(), 1, "once per id: {log:?}");
    assert_eq!(log[0]["verified"], true, "{log:?}");
    assert_eq!(log[0]["type"], "key_issued");
    assert_eq!(log[0]["key"], "survivor");
    let outbox = service.admin("GET", "/admin/outbox?state=delivered", None);
    assert_eq!(
        outbox.1["entries"][0]["id"]
            .as_u64()
            .map(|id| format!("evt_{id}"))
            .as_deref(),
        log[0]["id"].as_str()
    );
    assert_eq!(
        (outbox.1["pending"].as_u64(), outbox.1["parked"].as_u64()),
        (Some(0), Some(0))
    );
}

/// The demo's gRPC method, called by Python's `grpcio` (a client nobody
/// here wrote) through the stubs protoc (`grpcio-tools`) makes of
/// `proto/orders.proto`: the caller's key id back; `UNAUTHENTICATED`
/// without a token, `PERMISSION_DENIED` without the scope,
/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` (read by
/// `grpcio-status`) once a key's rate limit is spent.
#[test]
#[cfg_attr(
    not(keyroll_grpcio),
    ignore = "needs Python's grpcio, grpcio-tools and grpcio-status: `pip install grpcio grpcio-tools grpcio-status` and set KEYROLL_GRPCIO=python3 (`bash .ci/run` does)"
)]
fn http_the_grpc_method_answers_grpcio() {
    let port = free_port();
    let grpc = format!("127.0.0.1:{port}");
    let service = start_with(&["--grpc-listen", &grpc]);
    let reader = service.create(json!({"id": "grpc-reader", "scopes": ["orders:read"]}));
    let outsider = service.create(json!({"id": "grpc-outsider"}));
    let limited = service.create(json!({
        "id": "grpc-limited",
        "scopes": ["orders:read"],
        "rate_limit": {"limit": 1, "period": "1m"}
    }));
    let python = std::env::var("KEYROLL_GRPCIO").unwrap_or_else(|_| "python3".into());
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let stubs = tempfile::tempdir().unwrap();
    let output = Command::new(python)
        .args([
            "-c",
            r#"
import json, sys, grpc
from grpc_tools import protoc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
address, proto, stubs, reader, outsider, limited = sys.argv[1:]
assert protoc.main(["protoc", "-I" + proto, "--python_out=" + stubs,
                    "--grpc_python_out=" + stubs, "orders.proto"]) == 0
sys.path.insert(0, stubs)
import orders_pb2, orders_pb2_grpc
channel = grpc.insecure_channel(address)
grpc.channel_ready_future(channel).result(timeout=30)
orders = orders_pb2_grpc.OrdersStub(channel)

def call(token):
    metadata = [("authorization", "Bearer " + token)] if token else []
    try:
        return {"key_id": orders.List(orders_pb2.ListRequest(), metadata=metadata, timeout=10).key_id}
    except grpc.RpcError as e:
        answer = {"code": e.code().name, "details": e.details()}
        status = rpc_status.from_call(e)
        for detail in status.details if status else []:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                answer["retry_seconds"] = info.retry_delay.ToTimedelta().total_seconds()
        return answer

print(json.dumps({"reader": call(reader), "anonymous": call(None), "outsider": call(outsider),
                  "limited": [call(limited), call(limited)]}))
"#,
            &grpc,
            proto,
            stubs.path().to_str().unwrap(),
            &reader,
            &outsider,
            &limited,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers["reader"]["key_id"], "grpc-reader", "{answers}");
    assert_eq!(answers["anonymous"]["code"], "UNAUTHENTICATED", "{answers}");
    assert_eq!(
        answers["outsider"]["code"], "PERMISSION_DENIED",
        "{answers}"
    );
    assert!(
        answers["outsider"]["details"]
            .as_str()
            .unwrap()
            .contains("orders:read")
    );
    assert_eq!(answers["limited"][0]["key_id"], "grpc-limited", "{answers}");
    assert_eq!(
        answers["limited"][1]["code"], "RESOURCE_EXHAUSTED",
        "{answers}"
    );
    // RetryInfo: the rest of the minute of a rate limit of 1 a minute.
    let retry = answers["limited"][1]["retry_seconds"].as_f64().unwrap();
    assert!(retry > 0.0 && retry <= 60.0, "{answers}");
}
