//! The servers' connect and disconnect events (`$SYS.ACCOUNT.<acc>.CONNECT` / `.DISCONNECT`),
//! as they come over the wire, and the one conversion to a census connection.
//!
//! Every field is optional or defaulted: an event of another server version must not stop the
//! live census. An event without a server id or a cid cannot be keyed and is refused.

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;

use super::wire::{jwt_name, ServerInfo};
use crate::snapshot::{Connection, Str};
use crate::stamp::Stamp;

/// Every account's connect events.
pub const CONNECT_EVENTS: &str = "$SYS.ACCOUNT.*.CONNECT";
/// Every account's disconnect events.
pub const DISCONNECT_EVENTS: &str = "$SYS.ACCOUNT.*.DISCONNECT";

/// A `client_connect` or `client_disconnect` event.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientEvent {
    /// `io.nats.server.advisory.v1.client_connect` or `..._disconnect`.
    #[serde(default)]
    pub r#type: String,
    /// The server holding the connection.
    #[serde(default)]
    pub server: ServerInfo,
    /// The connection.
    #[serde(default)]
    pub client: EventClient,
    /// Why it closed (disconnect events): `Client Closed`, `Kicked`, ...
    #[serde(default)]
    pub reason: Option<String>,
}

/// The `client` of an event.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventClient {
    /// When it connected.
    #[serde(default)]
    pub start: Option<DateTime<FixedOffset>>,
    /// When it closed (disconnect events).
    #[serde(default)]
    pub stop: Option<DateTime<FixedOffset>>,
    /// Remote IP.
    #[serde(default)]
    pub host: Option<String>,
    /// The cid on its server.
    #[serde(default)]
    pub id: u64,
    /// Account (name, or public key in operator mode).
    #[serde(default)]
    pub acc: Option<String>,
    /// The authenticated user (name, nkey, or the user JWT's public key).
    #[serde(default)]
    pub user: Option<String>,
    /// Client name.
    #[serde(default)]
    pub name: Option<String>,
    /// The account's name tag (operator mode).
    #[serde(default)]
    pub name_tag: Option<String>,
    /// The user's tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// The user JWT (its `name` claim is the user's human name).
    #[serde(default)]
    pub jwt: Option<String>,
    /// `Client` or `Leafnode`.
    #[serde(default)]
    pub kind: Option<String>,
}

impl ClientEvent {
    /// Whether this is a disconnect event.
    pub fn is_disconnect(&self) -> bool {
        self.r#type.ends_with("client_disconnect")
    }

    /// The user the event is about, keyed as the census keys users: (account, or `$G` when
    /// none is given; user).
    pub fn user_key(&self) -> (String, String) {
        (
            self.client
                .acc
                .clone()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "$G".into()),
            self.client.user.clone().unwrap_or_default(),
        )
    }

    /// How long the connection lived (disconnect events with both times).
    pub fn lived(&self) -> Option<std::time::Duration> {
        (self.client.stop? - self.client.start?).to_std().ok()
    }

    /// The connection the event is about, as a sweep would list it fresh: no idle time and no
    /// messages yet (sweeps bring those). `None` when it cannot be keyed. Its strings are
    /// moved, not copied: one allocation per field, made by the parse.
    pub fn into_connection(self) -> Option<Connection> {
        if self.server.id.is_empty() || self.client.id == 0 {
            return None;
        }
        let (account, user) = self.user_key();
        let c = self.client;
        Some(Connection {
            server: self.server.name.into(),
            server_id: self.server.id.into(),
            cid: c.id,
            kind: c.kind.as_deref().unwrap_or("Client").into(),
            ip: c.host.unwrap_or_default().into(),
            start: c.start.map(|t| Stamp::of(t.with_timezone(&Utc))),
            idle: std::time::Duration::ZERO,
            in_msgs: 0,
            out_msgs: 0,
            last_activity: None,
            subscriptions: 0,
            name: c.name.unwrap_or_default().into(),
            account: account.into(),
            account_name: c.name_tag.filter(|n| !n.is_empty()).map(Str::from),
            user: user.into(),
            user_name: c.jwt.as_deref().and_then(jwt_name).map(Str::from),
            tags: c
                .tags
                .unwrap_or_default()
                .into_iter()
                .map(Str::from)
                .collect(),
        })
    }
}

/// An `account_connections` announcement (`$SYS.SERVER.ACCOUNT.<acc>.CONNS`; the same on `$SYS.ACCOUNT.<acc>.SERVER.CONNS`): one server's
/// connections in one account, sent on every change and every 30 s while not zero.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccountConns {
    /// The announcing server.
    #[serde(default)]
    pub server: ServerInfo,
    /// The account (name, or public key in operator mode).
    #[serde(default)]
    pub acc: String,
    /// Its client connections on that server (leafnodes apart).
    #[serde(default)]
    pub conns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_event_is_a_connection_keyed_by_server_id_and_cid() {
        let e: ClientEvent = serde_json::from_str(
            r#"{"type":"io.nats.server.advisory.v1.client_connect","id":"x",
            "server":{"name":"n1","id":"NID","cluster":"c","ver":"2.15.1","seq":3},
            "client":{"start":"2026-01-02T03:04:05.123Z","host":"10.0.0.1","id":42,"acc":"APP",
            "user":"leaky","name":"w","lang":"go","kind":"Client","client_type":"nats"}}"#,
        )
        .unwrap();
        assert!(!e.is_disconnect());
        let c = e.into_connection().unwrap();
        assert_eq!(
            (c.server.as_str(), c.server_id.as_str(), c.cid),
            ("n1", "NID", 42)
        );
        assert_eq!(
            (c.account.as_str(), c.user.as_str(), c.name.as_str()),
            ("APP", "leaky", "w")
        );
        assert_eq!(c.ip, "10.0.0.1");
        assert!(c.start.is_some());
    }

    #[test]
    fn an_account_connections_announcement_reads_its_server_account_and_count() {
        // As nats-server 2.15.1 sends it (trimmed).
        let a: AccountConns = serde_json::from_str(
            r#"{"type":"io.nats.server.advisory.v1.account_connections","id":"x",
            "timestamp":"2026-11-26T03:20:00Z","server":{"name":"n1","id":"NID","ver":"2.15.1"},
            "acc":"APP","name":"APP","conns":2,"leafnodes":1,"total_conns":3,
            "num_subscriptions":4,"sent":{"msgs":0,"bytes":0},"received":{"msgs":0,"bytes":0},
            "slow_consumers":0}"#,
        )
        .unwrap();
        assert_eq!(
            (a.server.id.as_str(), a.acc.as_str(), a.conns),
            ("NID", "APP", 2)
        );
    }

    #[test]
    fn events_without_a_key_are_refused() {
        let e: ClientEvent = serde_json::from_str(
            r#"{"type":"io.nats.server.advisory.v1.client_disconnect","client":{"id":1},"reason":"Client Closed"}"#,
        )
        .unwrap();
        assert!(e.is_disconnect());
        assert!(crate::live::delta(e.clone(), true).is_none());
        assert!(e.into_connection().is_none());
    }
}
