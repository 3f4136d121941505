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
//! [`error`] holds every error type.
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

// From the bottom up: each module imports only from those above it in
// this list.
mod attributes;
mod base62;
mod change;
#[cfg(feature = "conformance")]
pub mod conformance;
mod counts;
#[cfg(feature = "serde")]
mod duration;
mod errors;
mod event;
mod expiring;
mod hex;
mod id;
mod input;
mod key;
mod manager;
pub mod meter;
mod new_key;
mod padded;
mod policy;
#[cfg(feature = "serde")]
pub mod record;
mod revision;
mod rng;
mod state;
pub mod store;
#[cfg(feature = "proptest")]
pub mod testing;
mod token;
mod usage;
mod verify;

pub mod error {
    //! Every error type of keyroll, in one place. The ones a caller meets
    //! daily ([`VerifyError`], [`TransitionError`], [`ManagerError`],
    //! [`AuthError`]) are also at the crate root.
    pub use crate::errors::{
        AuthError, InvalidKeyId, InvalidLabel, InvalidMetadata, InvalidPrefix, InvalidScope,
        InvalidTokenId, ManagerError, ParseError, StoreError, TransitionError, VerifyError,
    };
    pub use crate::manager::FlushError;
    pub use crate::meter::{InvalidRateLimit, InvalidRefill};
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
pub use key::{ApiKey, TokenInfo};
pub use manager::{Credentials, KeyManager};
pub use new_key::NewKey;
pub use policy::{Policy, RenewalEnforcement};
pub use rng::os_rng;
pub use state::{Decision, Freshness, KeyStatus, OldTokenDeletion, RenewalState, TokenMatch};
pub use token::{PresentedToken, Token, TokenFormat};
pub use verify::Authenticated;
