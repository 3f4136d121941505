//! What the demo's binaries share: [`orders`], the gRPC service
//! `http_service` serves beside its HTTP routes (its tests call it with
//! tonic's client and Python's grpcio).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod orders;
