//! The edge to NATS: connecting as a system-account user, the system requests connwatch sends,
//! the replies' wire types and the streaming CONNZ page parser.
//!
//! Nothing here knows about users, thresholds or findings: it speaks the wire.

mod connect;
pub mod events;
pub mod lookup;
pub mod page;
pub(crate) mod scan;
pub(crate) mod snappy;
mod system;
pub mod wire;

pub use connect::{connect, ConnectError, ConnectionEvents};
pub(crate) use system::decoded;
pub use system::{
    parse, server_subject, RequestError, System, PING_ACCOUNT_STATZ, PING_CONNZ, PING_STATSZ,
    PING_VARZ,
};
