//! Development and test tooling (never used by the service itself).
//!
//! - [`jwt`]: mints operator-mode credentials (operator, accounts, users, `.creds` files).
//! - [`cluster`]: starts a real local nats-server cluster on loopback.
//! - [`load`]: opens thousands of cheap raw-protocol client connections.

pub mod cluster;
pub mod jwt;
pub mod load;
