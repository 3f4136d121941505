//! [Standard Webhooks](https://www.standardwebhooks.com/) signatures for
//! the webhooks keyroll sends: what a receiver's own Standard Webhooks
//! library verifies.
//!
//! - A secret is `whsec_` and the base64 of its key ([`WebhookSecret`]);
//!   it never prints (its `Debug` is redacted) and is zeroed when dropped.
//! - A delivery carries `webhook-id` (stable: the receiver deduplicates by
//!   it), `webhook-timestamp` (Unix seconds) and `webhook-signature`:
//!   `v1,` and the base64 of HMAC-SHA256 over `id.timestamp.body`.
//! - While a secret rotates, a [`Signer`] signs with both the new secret
//!   and the previous one, space-separated, so that a receiver holding
//!   either accepts the delivery.
//! - [`WebhookSink`] delivers keyroll's outbox entries
//!   ([`keyroll::outbox::Dispatcher`]) to one endpoint: a signed JSON
//!   `POST` per entry, in order, each cut off after a timeout, redirects
//!   never followed, anything but a `2xx` a failure the dispatcher
//!   retries.
//!
//! # Example
//!
//! ```
//! use keyroll_webhooks::{Signer, WebhookSecret};
//!
//! let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
//! let signed = Signer::new(secret).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1_674_087_231, br#"{"test": 2432232314}"#);
//! assert_eq!(signed.id, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W");
//! assert_eq!(signed.timestamp, "1674087231");
//! // What the `standardwebhooks` Python package computes for the same.
//! assert_eq!(signed.signature, "v1,SJVF30Kpi2mR/9mMIvIkhtG4Iz8hWa0S4q2Yt1caIO0=");
//! # Ok::<(), keyroll_webhooks::InvalidWebhookSecret>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod sign;
mod sink;

pub use sign::{InvalidWebhookSecret, Signed, Signer, WebhookSecret};
pub use sink::{InvalidEndpoint, WebhookSink};
