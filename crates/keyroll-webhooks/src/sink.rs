//! [`WebhookSink`]: keyroll's outbox entries, delivered as signed webhooks.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyroll::outbox::{Entry, Sink, SinkError};
use time::format_description::well_known::Rfc3339;

use crate::sign::Signer;

/// An endpoint refused at configuration, naming it and why (its query,
/// which may hold a credential, is never quoted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid webhook endpoint {shown}: {problem}")]
pub struct InvalidEndpoint {
    shown: String,
    problem: &'static str,
}

/// Delivers outbox entries to one endpoint, as the Standard Webhooks
/// specification has it: one `POST` per entry, in order, with the body
/// `{"type": <event name>, "timestamp": <event time>, "data": <event>}`
/// and the `webhook-id` (the entry's id: stable across retries, so the
/// receiver drops duplicates), `webhook-timestamp` (the send time) and
/// `webhook-signature` headers.
///
/// Each call is cut off after the timeout (10 s by default), its answer
/// included. A redirect is never followed. Any answer but a `2xx` fails
/// the batch at that entry: the [`Dispatcher`](keyroll::outbox::Dispatcher)
/// retries it later, and the entries after it at once. The client speaks
/// HTTP/1.1, over TLS (rustls, the system's roots) for `https`. Neither
/// the secret nor the endpoint's query ever reach a log or an error.
///
/// Needs a tokio runtime.
///
/// # Example
///
/// ```
/// use keyroll::outbox::Dispatcher;
/// use keyroll::store::InMemoryStore;
/// use keyroll_webhooks::{Signer, WebhookSink};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let sink = WebhookSink::new("https://hooks.example.com/keyroll", Signer::new(secret))?
///     .timeout(std::time::Duration::from_secs(5));
/// let dispatcher = Dispatcher::new(InMemoryStore::new(), sink);
/// assert!(WebhookSink::new("ftp://example.com", Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?)).is_err());
/// # drop(dispatcher);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebhookSink {
    endpoint: Uri,
    signer: Signer,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("endpoint", &shown(&self.endpoint))
            .field("signer", &self.signer)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The endpoint as it may be shown: scheme, host, port and path; never
/// its query or user info.
fn shown(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or("?");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", uri.path())
}

impl WebhookSink {
    /// A sink posting to `url` (`http` or `https`), signed by `signer`.
    ///
    /// # Errors
    ///
    /// [`InvalidEndpoint`] for what is not an absolute `http` or `https`
    /// URL with a host, or one with user info.
    pub fn new(url: &str, signer: Signer) -> Result<WebhookSink, InvalidEndpoint> {
        let first = url.split(['?', '#']).next().unwrap_or_default();
        let bad = |problem| InvalidEndpoint {
            shown: format!("{first:?}"),
            problem,
        };
        let endpoint: Uri = url
            .parse()
            .map_err(|_| bad("not a URL; give an absolute one, https://host/path"))?;
        match endpoint.scheme_str() {
            Some("http" | "https") => {}
            Some(_) => return Err(bad("only http and https are delivered to")),
            None => return Err(bad("give an absolute URL, https://host/path")),
        }
        if endpoint.host().is_none_or(str::is_empty) {
            return Err(bad("it has no host"));
        }
        if endpoint
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            return Err(bad(
                "credentials in the URL are refused: the signature authenticates",
            ));
        }
        let roots = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|_| bad("no TLS root certificates found on this system"))?;
        let connector = roots.https_or_http().enable_http1().build();
        Ok(WebhookSink {
            endpoint,
            signer,
            timeout: Duration::from_secs(10),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Cuts off each call after `timeout`, its answer included.
    pub fn timeout(mut self, timeout: Duration) -> WebhookSink {
        self.timeout = timeout;
        self
    }

    /// Posts one entry; what went wrong, if anything.
    async fn post(&self, entry: &Entry) -> Result<(), String> {
        let at = entry.event.at().format(&Rfc3339).unwrap_or_default();
        let body = serde_json::to_vec(&serde_json::json!({
            "type": entry.event.name(),
            "timestamp": at,
            "data": entry.event,
        }))
        .map_err(|e| format!("the event does not encode: {e}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let signed = self
            .signer
            .sign(&entry.id.to_string(), now.as_secs() as i64, &body);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                concat!("keyroll-webhooks/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("the request does not build: {e}"))?;
        let target = shown(&self.endpoint);
        let exchange = async {
            let answer = self.client.request(request).await?;
            let status = answer.status();
            // Read the answer to its end, so the connection is reused.
            answer.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(format!(
                "POST {target}: no answer within {:?}",
                self.timeout
            )),
            Ok(Err(e)) => Err(format!("POST {target}: {e}")),
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) if status.is_redirection() => Err(format!(
                "POST {target}: answered {status}; redirects are not followed"
            )),
            Ok(Ok(status)) => Err(format!("POST {target}: answered {status}")),
        }
    }
}

impl Sink for WebhookSink {
    async fn deliver(&self, entries: &[Entry]) -> Result<(), SinkError> {
        for (delivered, entry) in entries.iter().enumerate() {
            self.post(entry)
                .await
                .map_err(|message| SinkError::new(delivered, message))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap())
    }

    #[test]
    fn bad_endpoints_are_refused_naming_them_but_never_their_query() {
        let cases = [
            ("ftp://example.com/hooks", "only http and https"),
            ("/hooks", "absolute"),
            ("example.com/hooks", "absolute"),
            ("https://user:pw@example.com/hooks", "credentials"),
            ("not a url?token=hunter2", "not a URL; give an absolute one"),
        ];
        for (url, problem) in cases {
            let refused = WebhookSink::new(url, signer()).unwrap_err().to_string();
            assert!(refused.contains(problem), "{url}: {refused}");
            assert!(!refused.contains("hunter2"), "{refused}");
        }
        let ok = WebhookSink::new("https://example.com/hooks?token=hunter2", signer()).unwrap();
        let shown = format!("{ok:?}");
        assert!(
            shown.contains("https://example.com/hooks") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
