//! API keys whose secret tokens are renewed with an overlap.
//!
//! A key keeps its public id for life. A renewal hands out a new token once;
//! the old token stays valid until it is deleted (now, later, or by undoing
//! the renewal). Tokens have an advisory or enforced renewal period, and
//! every change returns an audit [`Event`]. The model follows VTEX's API keys.
//!
//! [`ApiKey`] is a pure state machine: it reads no clock, no random source
//! and no storage. `now` and a `CryptoRng` are arguments of every call that
//! needs them.
//!
//! # Example
//!
//! ```
//! use keyroll::{ApiKey, KeyId, OldTokenDeletion, TokenMatch, VerifyError};
//! use time::OffsetDateTime;
//!
//! let mut rng = rand::rng();
//! let now = OffsetDateTime::now_utc();
//! let (mut key, first, _) = ApiKey::issue(KeyId::new("acme")?, now, &mut rng)?;
//!
//! let (second, _) = key.renew(now, &mut rng)?;
//! assert_eq!(key.verify(first.expose_secret(), now)?, TokenMatch::Old);
//!
//! key.finalize(OldTokenDeletion::Now, now)?;
//! assert_eq!(key.verify(first.expose_secret(), now), Err(VerifyError::Mismatch));
//! assert_eq!(key.verify(second.expose_secret(), now)?, TokenMatch::Current);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Around it: [`KeyManager`] runs the transitions over a
//! [`store::KeyStore`] (in memory, behind a cache, SQLite and PostgreSQL in
//! their own crates) with optimistic concurrency, and authenticates
//! requests; [`PresentedToken`] is a presented token parsed once;
//! [`outbox`] delivers every write's events, and the notices
//! ([`KeyManager::sweep_notices`]) of keys expiring, renewals due and
//! credits running low, at least once; [`error`] holds every error type.
//!
//! # Metrics
//!
//! keyroll tells the [`metrics`](https://docs.rs/metrics) facade what it
//! does, and installs no recorder: install one (say
//! `metrics-exporter-prometheus`) to export these; without one each is a
//! no-op. No label carries a key id, an owner id or anything of a token.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `keyroll_authentications_total` | counter | `outcome`: `accepted`, `rate_limited`, `usage_exceeded`, `refused` (a token refused: malformed, wrong, revoked, of an inactive or expired key, from another network), `unknown` (no such key), `cost_out_of_range`, `store_error` |
//! | `keyroll_charges_total` | counter | `outcome`: `admitted`, `rate_limited`, `usage_exceeded`, `cost_out_of_range`, `store_error`; `subject`: `key` or `owner` for a refusal by a limit, else `none` |
//! | `keyroll_store_call_seconds` | histogram | `operation`: the [`store::KeyStore`] method (`verify`, `charge`, `get`, ...), for a store wrapped in [`store::Timed`] |
//! | `keyroll_cache_lookups_total` | counter | `result`: `hit`, `miss` ([`store::CachedStore`]'s `verify`) |
//! | `keyroll_lease_units` | gauge | none: the units a replica's leases held when a lease was last taken or released |
//! | `keyroll_outbox_pending`, `keyroll_outbox_parked` | gauge | none: the outbox's entries waiting and given up on, after a [`outbox::Dispatcher`] round |
//! | `keyroll_outbox_deliveries_total` | counter | `outcome`: `delivered`, `retrying`, `parked` |
//! | `keyroll_outbox_lag_seconds` | histogram | none: from an event to its delivery |
//!
//! # Features
//!
//! - `serde` (default): `Serialize`/`Deserialize` for [`ApiKey`] (checked on
//!   load), [`Policy`], [`Event`], [`KeyId`], [`TokenId`], the attributes and
//!   the small enums; `record`, the JSON record codec stores share.
//! - `conformance`: `conformance`, the suite any [`store::KeyStore`]
//!   runs to show it keeps the store contract.
//! - `proptest`: `testing`, a reference model of the lifecycle and
//!   strategies for your own property tests.
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll/0.3.0")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The modules by floor, from the bottom up: each imports only from the
// floors below it (`farm-studio look` draws it; none imports back up).
// Within a floor, rustfmt sorts.

// 1: leaves.
mod base62;
mod hex;
pub mod meter;
mod networks;
mod padded;
mod revision;
mod rng;

// 2: every error type, so that no module imports another's errors.
mod errors;

// 3: ids, attributes, the token states, durations' JSON, what the metrics
// are told; 4: a change of
// a key, as data, and an owner's limits.
mod attributes;
#[cfg(feature = "serde")]
mod duration;
mod id;
mod state;
mod telemetry;

mod change;
mod owner;

// 5: tokens, events, usage outcomes, the policy; 6: what builds on
// events and the policy: input checks, the new key's description,
// notices, outbox entries.
mod counts;
mod event;
mod policy;
mod token;

mod entry;
mod input;
mod new_key;
mod notice;

// 7: the key itself, its changes and its verification (inside it, as they
// read the key's private fields); 8: what works on a key through its
// methods (expiring keys, usage notes) and the stores; 9: what works on
// the stores (leases, the outbox's dispatcher) and the backend kit
// (`record`), which hands stores their shared parts; 10: the manager, and
// the outbox's public face; above the root: the suites over them all.
mod key;

mod expiring;
pub mod store;
mod usage;

mod dispatcher;
mod lease;
#[cfg(feature = "serde")]
pub mod record;

mod manager;

pub mod outbox;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "proptest")]
pub mod testing;

pub mod error {
    //! Every error type of keyroll, in one place. The ones a caller meets
    //! daily ([`VerifyError`], [`TransitionError`], [`ManagerError`],
    //! [`AuthError`]) are also at the crate root.
    pub use crate::errors::{
        AuthError, InvalidKeyId, InvalidLabel, InvalidMetadata, InvalidPrefix, InvalidScope,
        InvalidTokenId, ManagerError, ParseError, StoreError, TransitionError, VerifyError,
    };
    pub use crate::lease::InvalidLeasePolicy;
    pub use crate::manager::FlushError;
    pub use crate::meter::{InvalidRateLimit, InvalidRefill};
    pub use crate::networks::{InvalidNetworks, NetworkProblem};
    pub use crate::notice::InvalidNoticePolicy;
    #[cfg(feature = "serde")]
    pub use crate::record::RecordError;
}

pub use attributes::{Metadata, Scope, Scopes};
pub use change::Change;
pub use counts::Outcome;
pub use errors::{AuthError, ManagerError, TransitionError, VerifyError};
pub use event::{DeletionReason, Event};
pub use expiring::{Expiring, ExpiringReason};
pub use id::{KeyId, OwnerId, TokenId};
pub use key::{ApiKey, Authenticated, TokenInfo};
pub use lease::{HeldLease, LeasePolicy};
pub use manager::{Credentials, KeyManager};
pub use networks::Networks;
pub use new_key::NewKey;
pub use notice::NoticePolicy;
pub use owner::OwnerLimits;
pub use policy::{Policy, RenewalEnforcement};
pub use rng::os_rng;
pub use state::{Decision, Freshness, KeyStatus, OldTokenDeletion, RenewalState, TokenMatch};
pub use token::{PresentedToken, Token, TokenFormat};
