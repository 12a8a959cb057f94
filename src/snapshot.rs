//! What one sweep saw: plain data, free of NATS types, the input of the census.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One open connection, as a server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Name of the server holding it.
    pub server: String,
    /// Id of that server (for directed requests such as KICK).
    pub server_id: String,
    /// Connection id on that server.
    pub cid: u64,
    /// `Client` or `Leafnode`.
    pub kind: String,
    /// Remote IP.
    pub ip: String,
    /// When it was made.
    pub start: Option<DateTime<Utc>>,
    /// Time since the server last saw traffic on it, by the server's own clock.
    pub idle: Duration,
    /// Messages from the client.
    pub in_msgs: u64,
    /// Messages to the client.
    pub out_msgs: u64,
    /// Client name; empty when the client gave none.
    pub name: String,
    /// Account (name, or public key in operator mode); `$G` for the global account.
    pub account: String,
    /// The account's human name, when the server gives one (operator mode `name_tag`).
    pub account_name: Option<String>,
    /// Authenticated user (name, or public nkey in operator mode).
    pub user: String,
    /// The user's human name (the `name` claim of its JWT), when there is one.
    pub user_name: Option<String>,
    /// Tags of the user.
    pub tags: Vec<String>,
}

/// A server that answered the sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerSeen {
    /// Server name.
    pub name: String,
    /// Server id.
    pub id: String,
    /// Connections it reported (`total`), all of them in the snapshot.
    pub connections: u64,
    /// CONNZ replies it took: 1 when its PING reply held every connection, else 2 or 3
    /// (one or two directed requests for its whole list).
    pub pages: usize,
}

/// A server that answered but whose connections are not in the census: none of them (a
/// server's connections are counted whole or not at all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerError {
    /// Server name, or id when the name is unknown.
    pub server: String,
    /// What went wrong.
    pub error: String,
}

/// Everything one sweep learned.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When the sweep started.
    pub started: Option<DateTime<Utc>>,
    /// How long it took.
    pub duration: Duration,
    /// How many servers were expected to answer.
    pub servers_expected: usize,
    /// Servers whose connections are all here.
    pub servers: Vec<ServerSeen>,
    /// Expected servers that did not answer: names where known (remembered, or route peers
    /// of the live servers), else `<unknown>`.
    pub missing: Vec<String>,
    /// Servers that answered but whose connections are not counted: an error envelope, a list
    /// that could not be read in one reply, conflicting replies for its id, the deadline.
    pub errors: Vec<ServerError>,
    /// Replies ignored: unparseable, inconsistent, or not from a server the cluster knows by
    /// that id and name.
    pub bad_replies: usize,
    /// Requests sent.
    pub requests: usize,
    /// CONNZ pages received.
    pub pages: usize,
    /// Reply bytes received.
    pub bytes: usize,
    /// The connections of the servers in `servers`, each exactly once: every server's from one
    /// reply (one snapshot of it).
    pub connections: Vec<Connection>,
}

impl Snapshot {
    /// Whether some of the cluster's connections may be missing from this sweep.
    pub fn partial(&self) -> bool {
        self.servers.len() < self.servers_expected
            || !self.missing.is_empty()
            || !self.errors.is_empty()
    }
}
