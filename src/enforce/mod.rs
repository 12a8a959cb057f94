//! Per-user connection caps (`[enforce]`): the per-user limit NATS does not have, enforced
//! from the live census within a second of the connection that crosses it.
//!
//! - [`cap`]: which cap applies to a user and which of its connections are beyond it (pure);
//! - [`rounds`]: the rate bound, closes in flight, bursts and churn over time (pure);
//! - [`announce`]: a burst as its `connection_cap_enforced` advisory (pure);
//! - [`metrics`]: the cap metrics, registered with the others;
//! - the I/O (reading the live view, sending KICKs, announcing) is in `service/enforce.rs`.
//!
//! Fail closed: nothing is closed while the live view is not complete (a gap, a partial
//! sweep, or a server that does not answer, or answers under a new id, when asked just before
//! the closes), while connwatch does not know the system account or its own connection, or
//! when a user's newest connections cannot be told (a start time unknown).

pub mod announce;
pub mod cap;
pub mod metrics;
pub mod rounds;

pub use cap::{beyond_cap, by_user, cap_for, Cap, CapSource, Guard, UserKey, Users, Verdict};
pub use rounds::{Close, Decided, Done, Enforcer, Finished};
