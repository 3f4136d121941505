//! The production service example (`src/bin/production.rs`, under 100
//! lines), run as a process against PostgreSQL: it serves priced routes in
//! keyroll's error format, the admin API, metrics, and delivers a key's
//! event as a signed webhook (verified by `standardwebhooks`), then stops
//! cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ureq::Agent;

mod common;

use common::{Receiver, WEBHOOK_SECRET, free_port};

#[test]
#[cfg_attr(
    not(all(keyroll_pg, keyroll_standardwebhooks)),
    ignore = "needs PostgreSQL (KEYROLL_PG_URL) and Python's standardwebhooks (KEYROLL_STANDARDWEBHOOKS=python3); `bash .ci/run` has both"
)]
fn the_production_example_serves_and_delivers() {
    let url = std::env::var("KEYROLL_PG_URL").expect("KEYROLL_PG_URL");
    let database = format!("{url}?sslmode=disable");
    let store = format!("postgres:{database}");
    let keyctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keyctl"))
            .args(["--store", &store])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    keyctl(&["migrate"]);
    let port = free_port();
    let _receiver = Receiver::start(port);
    let mut service = Command::new(env!("CARGO_BIN_EXE_production"))
        .env("DATABASE_URL", &database)
        .env(
            "KEYROLL_ADMIN_TOKEN",
            "production-example-bootstrap-token-0123456789",
        )
        .env(
            "KEYROLL_WEBHOOK_URL",
            format!("http://127.0.0.1:{port}/hooks"),
        )
        .env("KEYROLL_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(service.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = format!(
        "http://{}",
        first.trim().strip_prefix("listening on ").unwrap()
    );

    // A key with 15 credits, made by an operator while the service runs.
    let id = format!("production-{}", std::process::id());
    let created = keyctl(&[
        "create",
        "--id",
        &id,
        "--label",
        "orders",
        "--scope",
        "orders:write",
        "--credits",
        "15",
    ]);
    let token = created
        .lines()
        .find_map(|line| line.trim().strip_prefix("token:"))
        .unwrap()
        .trim()
        .to_owned();
    let agent = Agent::new_with_config(Agent::config_builder().http_status_as_error(false).build());
    let call = |method: &str, path: &str, bearer: Option<&str>, body: Option<Value>| {
        let url = format!("{base}{path}");
        let answer = match (method, body) {
            ("POST", Some(body)) => {
                let mut request = agent.post(&url).header("Content-Type", "application/json");
                if let Some(token) = bearer {
                    request = request.header("Authorization", &format!("Bearer {token}"));
                }
                request.send(body.to_string())
            }
            _ => {
                let mut request = agent.get(&url);
                if let Some(token) = bearer {
                    request = request.header("Authorization", &format!("Bearer {token}"));
                }
                request.call()
            }
        }
        .unwrap();
        let status = answer.status().as_u16();
        (status, answer.into_body().read_to_string().unwrap())
    };
    let (status, body) = call("GET", "/v1/orders", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(call("GET", "/v1/orders", Some(&token), None).0, 200);
    // Placing an order costs 10: 15 - 1 - 10 leaves 4, too few for another.
    let order = json!({"item": "tea"});
    assert_eq!(
        call("POST", "/v1/orders", Some(&token), Some(order.clone())).0,
        200
    );
    let (status, body) = call("POST", "/v1/orders", Some(&token), Some(order));
    assert_eq!(status, 429, "{body}");
    let (status, body) = call("GET", "/nowhere", None, None);
    assert_eq!(
        (status, body.contains("no_such_route")),
        (404, true),
        "{body}"
    );
    assert_eq!(call("GET", "/admin/openapi.json", None, None).0, 200);
    let (status, metrics) = call("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("keyroll_authentications_total"),
        "{metrics}"
    );

    // The key's issue, delivered and verified by standardwebhooks.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = Receiver::log(port);
        let ours: Vec<&Value> = log.iter().filter(|d| d["key"] == id.as_str()).collect();
        if let Some(delivery) = ours.first() {
            assert_eq!(delivery["verified"], true, "{log:?}");
            assert_eq!(delivery["type"], "key_issued");
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {log:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM: a graceful stop, its tasks' last rounds run.
    let pid = service.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    keyctl(&["delete", &id]);
}
