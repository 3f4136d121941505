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
//! # Features
//!
//! - `serde` (default): `Serialize`/`Deserialize` for [`ApiKey`] (checked on
//!   load), [`Policy`], [`Event`], [`KeyId`], [`TokenId`], the attributes and
//!   the small enums; [`record`], the JSON record codec stores share.
//! - `conformance`: [`conformance`], the suite any [`KeyStore`] or
//!   [`AsyncKeyStore`] backend runs to show it keeps the store contract.
//! - `proptest`: [`testing`], a reference model of the lifecycle and
//!   strategies for your own property tests.
#![forbid(unsafe_code)]
#![doc(html_root_url = "https://docs.rs/keyroll/0.2.0")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod attributes;
mod base62;
#[cfg(feature = "conformance")]
pub mod conformance;
mod event;
mod hex;
mod id;
mod input;
mod key;
mod manager;
mod names;
mod new_key;
mod padded;
mod policy;
#[cfg(feature = "serde")]
pub mod record;
mod revision;
mod rng;
mod store;
#[cfg(feature = "proptest")]
pub mod testing;
mod token;
mod usage;
mod verify;

pub use attributes::{InvalidMetadata, InvalidScope, Metadata, Scope, Scopes};
pub use event::{DeletionReason, Event};
pub use id::{InvalidKeyId, InvalidTokenId, KeyId, TokenId};
pub use input::InvalidLabel;
pub use key::{
    ApiKey, Decision, KeyState, KeyStatus, OldTokenDeletion, TokenInfo, TransitionError,
};
pub use manager::{
    AsyncKeyManager, AuthError, DEFAULT_MAX_RETRIES, FlushError, KeyManager, ManagerError,
};
pub use names::ParseError;
pub use new_key::NewKey;
pub use policy::{Expiry, Policy};
pub use revision::Revision;
pub use rng::os_rng;
pub use store::{
    AsyncKeyStore, CachedStore, DynKeyStore, DynStoreError, InMemoryStore, KeyStore, StoreError,
    Verification,
};
pub use token::{InvalidPrefix, Token, TokenFormat};
pub use verify::{Authenticated, Freshness, TokenMatch, VerifyError};
