//! The edge to NATS: connecting as a system-account user and the system requests connwatch sends.
//!
//! Nothing here knows about users, thresholds or findings: it speaks the wire.

mod connect;
mod system;
pub mod wire;

pub use connect::{connect, ConnectError};
pub use system::{
    parse, server_subject, RequestError, System, PING_ACCOUNT_STATZ, PING_CONNZ, PING_STATSZ,
    PING_VARZ,
};
