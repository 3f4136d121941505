//! A server (or a machine in the middle) that declines TLS never gets a
//! plaintext session, unless the URL says `sslmode=disable`. Against a
//! stand-in server on loopback that speaks the first bytes of PostgreSQL's
//! protocol: no database is needed.

use std::time::Duration;

use keyroll::KeyId;
use keyroll::store::KeyStore;
use keyroll_postgres::PgStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The code of an `SSLRequest` (PostgreSQL's protocol, 55.2.10).
const SSL_REQUEST: u32 = 80_877_103;
/// The protocol version 3.0 of a `StartupMessage`.
const PROTOCOL_3: u32 = 196_608;

/// What the stand-in server saw of the first connection made to it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The client asked for TLS, was told no, and then sent nothing more.
    DeclinedThenNothing,
    /// The client asked for TLS, was told no, and went on in the clear.
    DeclinedThenPlaintext,
    /// The client started in the clear at once.
    Plaintext,
}

/// A server that declines TLS (as PostgreSQL with `ssl=off` does: `N` to an
/// `SSLRequest`) and reports what the client sent next.
async fn declining_server() -> (String, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 8];
        socket.read_exact(&mut first).await.unwrap();
        let code = u32::from_be_bytes(first[4..].try_into().unwrap());
        if code == PROTOCOL_3 {
            return Seen::Plaintext;
        }
        assert_eq!(code, SSL_REQUEST, "the first message is an SSLRequest");
        socket.write_all(b"N").await.unwrap();
        let mut next = [0u8; 8];
        match tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut next)).await {
            Ok(Ok(_)) if u32::from_be_bytes(next[4..].try_into().unwrap()) == PROTOCOL_3 => {
                Seen::DeclinedThenPlaintext
            }
            _ => Seen::DeclinedThenNothing,
        }
    });
    (format!("127.0.0.1:{}", addr.port()), seen)
}

/// Connects with `query` after the URL, makes one store call, and returns
/// what the server saw and whether the call failed.
async fn try_connect(query: &str) -> (Seen, bool) {
    let (addr, seen) = declining_server().await;
    let store = PgStore::connect(&format!("postgres://keyroll@{addr}/keys{query}"))
        .await
        .unwrap();
    let id = KeyId::new("probe").unwrap();
    // The stand-in answers nothing after its first byte: give up early.
    let call = tokio::time::timeout(Duration::from_secs(2), store.get(&id)).await;
    let failed = !matches!(call, Ok(Ok(_)));
    (seen.await.unwrap(), failed)
}

#[tokio::test]
async fn without_sslmode_a_declined_tls_is_refused_not_downgraded() {
    assert_eq!(try_connect("").await, (Seen::DeclinedThenNothing, true));
}

#[tokio::test]
async fn sslmode_prefer_means_require() {
    for mode in ["prefer", "require"] {
        let (seen, failed) = try_connect(&format!("?sslmode={mode}")).await;
        assert_eq!((seen, failed), (Seen::DeclinedThenNothing, true), "{mode}");
    }
}

#[tokio::test]
async fn only_sslmode_disable_speaks_in_the_clear() {
    let (seen, _) = try_connect("?sslmode=disable").await;
    assert_eq!(seen, Seen::Plaintext);
}
