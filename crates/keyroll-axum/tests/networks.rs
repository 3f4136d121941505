//! Keys with networks behind the layer, over real connections: the peer
//! address from `ConnectInfo`, forwarded addresses only from trusted
//! proxies, a 403 that charges nothing, and one 401 for a wrong token
//! wherever it comes from.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing;
use keyroll::meter::Credits;
use keyroll::store::InMemoryStore;
use keyroll::{Change, KeyId, KeyManager, NewKey, Token};
use keyroll_axum::{Caller, KeyrollLayer, TrustedProxies};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn whoami(caller: Caller) -> String {
    caller.key_id.to_string()
}

/// `GET /whoami` with `token` and `headers`: the status and the body.
async fn get(addr: SocketAddr, token: &str, headers: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{headers}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_owned())
}

/// Keys `loopback` (127.0.0.0/8) and `private` (10.0.0.0/8, one credit)
/// behind a layer configured by `layer`, served with the peer's address
/// or without it.
async fn serve(
    layer: impl FnOnce(KeyrollLayer<InMemoryStore>) -> KeyrollLayer<InMemoryStore>,
    connect_info: bool,
) -> (SocketAddr, Token, Token) {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let mut tokens = Vec::new();
    for (id, networks, credits) in [
        ("loopback", "127.0.0.0/8", None),
        ("private", "10.0.0.0/8", Some(Credits::new(1))),
    ] {
        let mut new = NewKey::new(KeyId::new(id).unwrap())
            .with(Change::Networks(Some(networks.parse().unwrap())))
            .unwrap();
        if let Some(credits) = credits {
            new = new.credits(credits);
        }
        tokens.push(keys.create_key(new, now, &mut rand::rng()).await.unwrap().0);
    }
    let layer = layer(KeyrollLayer::new(keys));
    let app = Router::new()
        .route("/whoami", routing::get(whoami))
        .layer(layer.clone())
        .with_state(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        } else {
            axum::serve(listener, app).await.unwrap();
        }
    });
    let private = tokens.pop().unwrap();
    (addr, tokens.pop().unwrap(), private)
}

const REFUSED: &str = r#"{"error":"network_not_allowed","message":"the request's address is not in the key's networks"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_address_decides_and_forwarded_headers_are_ignored_by_default() {
    let (addr, loopback, private) = serve(|layer| layer, true).await;
    let loopback = loopback.expose_secret();
    let private = private.expose_secret();
    assert_eq!(get(addr, loopback, "").await, (200, "loopback".into()));
    // A client's own X-Forwarded-For changes nothing.
    let forged = "X-Forwarded-For: 10.1.2.3\r\nForwarded: for=10.1.2.3\r\n";
    assert_eq!(get(addr, private, forged).await, (403, REFUSED.into()));
    // A wrong token from outside is the uniform 401: networks tell nothing.
    let (_, wrong, _) = keyroll::ApiKey::issue(
        KeyId::new("private").unwrap(),
        OffsetDateTime::now_utc(),
        &mut rand::rng(),
    )
    .unwrap();
    let (status, body) = get(addr, wrong.expose_secret(), "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_credentials"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_peer_address_a_key_with_networks_is_refused() {
    let (addr, loopback, _) = serve(|layer| layer, false).await;
    assert_eq!(
        get(addr, loopback.expose_secret(), "").await,
        (403, REFUSED.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_tell_the_address_and_a_refusal_charges_nothing() {
    let (addr, _, private) =
        serve(|layer| layer.trusted_proxies(TrustedProxies::Hops(1)), true).await;
    let private = private.expose_secret();
    // The peer (127.0.0.1) is the proxy; the client is what it appended.
    let from = |ip: &str| format!("X-Forwarded-For: 192.0.2.1, {ip}\r\n");
    assert_eq!(
        get(addr, private, &from("192.0.2.9")).await,
        (403, REFUSED.into())
    );
    assert_eq!(get(addr, private, "").await.0, 403, "a chain too short");
    // The one credit was not spent by the refusals.
    assert_eq!(
        get(addr, private, &from("10.1.2.3")).await,
        (200, "private".into())
    );
    assert_eq!(get(addr, private, &from("10.1.2.3")).await.0, 429);
    // Networks of proxies: the loopback peer is walked past.
    let (addr, _, private) = serve(
        |layer| layer.trusted_proxies(TrustedProxies::Networks("127.0.0.0/8".parse().unwrap())),
        true,
    )
    .await;
    let forwarded = "Forwarded: for=\"10.0.0.5:4711\";proto=https\r\n";
    assert_eq!(
        get(addr, private.expose_secret(), forwarded).await,
        (200, "private".into())
    );
}
