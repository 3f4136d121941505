//! Rate limits and credits over a real socket: 429 with `Retry-After`,
//! the IETF `RateLimit-Policy` and `RateLimit` fields, a route's cost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use keyroll::meter::{Credits, RateLimit, Refill};
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, NewKey, OwnerId, OwnerLimits, Token};
use keyroll_axum::{Caller, KeyrollLayer};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn whoami(caller: Caller) -> impl IntoResponse {
    (caller.headers(), caller.key_id.to_string())
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

async fn get_at(addr: SocketAddr, path: &str, token: &Token) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.expose_secret()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_lowercase(), value.to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A server with `/whoami` behind a layer (cost 1), `/search` behind its
/// own (cost 2), and `/own/whoami` authenticated by `Caller` alone; and a
/// key for each case.
struct Fixture {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    tokens: HashMap<&'static str, Token>,
}

async fn serve() -> Fixture {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let mut rng = rand::rng();
    // 2 per 10 s: one every 5 s, in bursts of 2.
    let two_per_ten = RateLimit::new(2, Duration::seconds(10)).unwrap();
    let one_per_minute = RateLimit::new(1, Duration::MINUTE).unwrap();
    let every_minute = Refill::new(1, Duration::MINUTE).unwrap();
    let keys_made = [
        (
            "rated",
            NewKey::new(KeyId::new("rated").unwrap()).rate_limit(two_per_ten),
        ),
        (
            "own",
            NewKey::new(KeyId::new("own").unwrap()).rate_limit(two_per_ten),
        ),
        (
            "costly",
            NewKey::new(KeyId::new("costly").unwrap()).rate_limit(two_per_ten),
        ),
        (
            "narrow",
            NewKey::new(KeyId::new("narrow").unwrap()).rate_limit(one_per_minute),
        ),
        (
            "spent",
            NewKey::new(KeyId::new("spent").unwrap()).credits(Credits::new(1)),
        ),
        (
            "refilled",
            NewKey::new(KeyId::new("refilled").unwrap())
                .credits(Credits::new(1).with_refill(every_minute)),
        ),
        (
            "both",
            NewKey::new(KeyId::new("both").unwrap())
                .rate_limit(two_per_ten)
                .credits(Credits::new(1).with_refill(every_minute)),
        ),
        ("free", NewKey::new(KeyId::new("free").unwrap())),
        (
            "shared",
            NewKey::new(KeyId::new("shared").unwrap())
                .rate_limit(two_per_ten)
                .owner(OwnerId::new("acme").unwrap()),
        ),
    ];
    let mut tokens = HashMap::new();
    for (name, new) in keys_made {
        let (token, _) = keys.create_key(new, now, &mut rng).await.unwrap();
        tokens.insert(name, token);
    }
    // The owner of "shared": 2 per 10 s, and 1 credit refilled every
    // minute, for all its keys.
    let shared = OwnerLimits::new()
        .rate_limit(two_per_ten)
        .credits(Credits::new(1).with_refill(every_minute));
    let acme = OwnerId::new("acme").unwrap();
    keys.set_owner_limits(&acme, shared, now).await.unwrap();
    let keyroll = KeyrollLayer::new(keys);
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(keyroll.clone())
        .route("/search", get(whoami).layer(keyroll.clone().cost(2)))
        .route("/own/whoami", get(whoami))
        .with_state(keyroll);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fixture {
        addr,
        server,
        tokens,
    }
}

impl Fixture {
    async fn get(&self, path: &str, key: &str) -> Answer {
        get_at(self.addr, path, &self.tokens[key]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_key_gets_the_fields_then_429() {
    let f = serve().await;
    for path in ["/whoami", "/own/whoami"] {
        let key = if path == "/whoami" { "rated" } else { "own" };
        let first = f.get(path, key).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(first.header("ratelimit-policy"), Some("\"key\";q=2;w=10"));
        assert_eq!(first.header("ratelimit"), Some("\"key\";r=1;t=5"));
        let second = f.get(path, key).await;
        assert_eq!(second.status, 200);
        assert_eq!(second.header("ratelimit"), Some("\"key\";r=0;t=10"));
        let third = f.get(path, key).await;
        assert_eq!(third.status, 429);
        // The next one-request slot opens in (just under) 5 s.
        assert_eq!(third.header("retry-after"), Some("5"));
        assert_eq!(third.header("ratelimit-policy"), Some("\"key\";q=2;w=10"));
        assert_eq!(third.header("ratelimit"), Some("\"key\";r=0;t=5"));
        let body: serde_json::Value = serde_json::from_str(&third.body).unwrap();
        assert_eq!(body["error"], "rate_limited");
        // Whose limit refused it: the key's own (an owner's limit is "owner").
        assert_eq!(body["subject"], "key");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("retry after 5 s")
        );
    }
    f.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_credits_get_429_with_a_retry_after_only_when_a_refill_comes() {
    let f = serve().await;
    assert_eq!(f.get("/whoami", "spent").await.status, 200);
    let spent = f.get("/whoami", "spent").await;
    assert_eq!(spent.status, 429);
    assert_eq!(spent.header("retry-after"), None);
    // The credits' fields, on the 429 too: none left, and no refill.
    assert_eq!(spent.header("ratelimit-policy"), Some("\"credits\";q=1"));
    assert_eq!(spent.header("ratelimit"), Some("\"credits\";r=0"));
    let body: serde_json::Value = serde_json::from_str(&spent.body).unwrap();
    assert_eq!(body["error"], "usage_exceeded", "{}", spent.body);
    assert_eq!(body["subject"], "key", "{}", spent.body);

    assert_eq!(f.get("/whoami", "refilled").await.status, 200);
    let waiting = f.get("/whoami", "refilled").await;
    assert_eq!(waiting.status, 429);
    let retry: i64 = waiting.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    f.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_limits_apply_beside_the_keys_and_name_the_owner() {
    let f = serve().await;
    let first = f.get("/whoami", "shared").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"key\";q=2;w=10, \"owner\";q=2;w=10, \"owner-credits\";q=1;w=60")
    );
    let state = first.header("ratelimit").unwrap();
    assert!(
        state.starts_with("\"key\";r=1;t=5, \"owner\";r=1;t=5, \"owner-credits\";r=0;t="),
        "{state}"
    );
    // The key's own limit admits a second request; the owner's credits do
    // not: 429, the owner named, its fields, and the key's burst untouched.
    let second = f.get("/whoami", "shared").await;
    assert_eq!(second.status, 429, "{}", second.body);
    let body: serde_json::Value = serde_json::from_str(&second.body).unwrap();
    assert_eq!(body["error"], "usage_exceeded", "{}", second.body);
    assert_eq!(body["subject"], "owner", "{}", second.body);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the owner's credits"),
        "{}",
        second.body
    );
    assert_eq!(
        second.header("ratelimit-policy"),
        Some("\"owner\";q=2;w=10, \"owner-credits\";q=1;w=60")
    );
    let retry: i64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    f.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_sets_its_cost() {
    let f = serve().await;
    // A search costs the whole burst of 2.
    let search = f.get("/search", "costly").await;
    assert_eq!(search.status, 200);
    assert_eq!(search.header("ratelimit"), Some("\"key\";r=0;t=10"));
    assert_eq!(f.get("/search", "costly").await.status, 429);
    // A key whose burst is below the cost can never be served: a mistake
    // of the service's, not a limit (500, and no Retry-After).
    let narrow = f.get("/search", "narrow").await;
    assert_eq!(narrow.status, 500);
    assert_eq!(narrow.header("retry-after"), None);
    // Keys without limits cost nothing and carry no fields.
    let free = f.get("/search", "free").await;
    assert_eq!(free.status, 200);
    assert_eq!(free.header("ratelimit-policy"), None);
    f.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_carries_no_rate_limit_fields() {
    let f = serve().await;
    let mut stream = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    stream
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer kr_rated_nope\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(!answer.to_lowercase().contains("ratelimit"), "{answer}");
    // Nothing was charged: the key still has its whole burst.
    let first = f.get("/whoami", "rated").await;
    assert_eq!(first.header("ratelimit"), Some("\"key\";r=1;t=5"));
    f.server.abort();
}

/// Every field an answer carries, admitted or refused, parses as a
/// structured-field List (RFC 9651) under a parser nobody here wrote:
/// Python's `http_sfv`. Each item is a policy name with its parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keyroll_sfv),
    ignore = "needs Python's http_sfv: `pip install http_sfv` and set KEYROLL_SFV_PARSER=python3 (`bash .ci/run` does)"
)]
async fn the_fields_parse_as_structured_fields() {
    let f = serve().await;
    let admitted = f.get("/whoami", "both").await;
    let spent = f.get("/whoami", "both").await;
    assert_eq!((admitted.status, spent.status), (200, 429));
    let owned = f.get("/whoami", "shared").await;
    let owner_spent = f.get("/whoami", "shared").await;
    assert_eq!((owned.status, owner_spent.status), (200, 429));
    let mut fields = Vec::new();
    for answer in [&admitted, &spent, &owned, &owner_spent] {
        for name in ["ratelimit-policy", "ratelimit"] {
            fields.push((name, answer.header(name).unwrap().to_owned()));
        }
    }
    let python = std::env::var("KEYROLL_SFV_PARSER").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from http_sfv import List\n\
             out = []\n\
             for name, value in json.load(sys.stdin):\n\
             \x20   items = List()\n\
             \x20   items.parse(value.encode())\n\
             \x20   out.append([[i.value, dict(i.params)] for i in items])\n\
             print(json.dumps(out))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = serde_json::to_vec(&fields).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{fields:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // Admitted: 2 per 10 s in bursts of 2, 1 credit refilled every minute.
    assert_eq!(
        parsed[0],
        serde_json::json!([["key", {"q": 2, "w": 10}], ["credits", {"q": 1, "w": 60}]])
    );
    assert_eq!(parsed[1][0], serde_json::json!(["key", {"r": 1, "t": 5}]));
    assert_eq!(parsed[1][1][0], "credits");
    assert_eq!(parsed[1][1][1]["r"], 0);
    // Refused for its credits: the same policies, none left.
    assert_eq!(parsed[2], parsed[0]);
    assert_eq!(parsed[3][1][1]["r"], 0);
    // A key with owner limits: its own policy, then the owner's two.
    assert_eq!(
        parsed[4],
        serde_json::json!([
            ["key", {"q": 2, "w": 10}],
            ["owner", {"q": 2, "w": 10}],
            ["owner-credits", {"q": 1, "w": 60}]
        ])
    );
    assert_eq!(parsed[5][2][0], "owner-credits");
    assert_eq!(parsed[5][2][1]["r"], 0);
    // Refused by the owner's credits: the owner's policies alone.
    assert_eq!(
        parsed[6],
        serde_json::json!([["owner", {"q": 2, "w": 10}], ["owner-credits", {"q": 1, "w": 60}]])
    );
    assert_eq!(parsed[7][1][1]["r"], 0);
    f.server.abort();
}
