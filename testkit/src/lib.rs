//! Development and test tooling for connwatch, kept out of the service: never shipped, never
//! imported by `src/` (connwatch uses it only as a dev-dependency).
//!
//! - [`jwt`]: mints operator-mode credentials (operator, accounts, users, `.creds` files).
//! - [`cluster`]: starts a real local nats-server cluster on loopback.
//! - [`load`]: opens thousands of cheap raw-protocol client connections.
//! - [`wait_until`], [`wait_until_async`], [`eventually`]: poll a condition with a deadline instead of sleeping.
//! - [`tool_bin`]: builds and finds the `connwatch-dev` / `connwatch-bench` binaries for tests of
//!   other packages.
//!
//! The binaries: `connwatch-dev` (credentials, a cluster, load: the demo's tools) and
//! `connwatch-bench` (BENCHMARKS.md).

pub mod cluster;
pub mod jwt;
pub mod load;
mod tools;

pub use tools::{eventually, tool_bin, wait_until, wait_until_async};
