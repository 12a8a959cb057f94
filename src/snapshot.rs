//! What one sweep saw: plain data, free of NATS types, the input of the census.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::intern::Str;
use crate::stamp::Stamp;

/// One open connection, as a server reported it. Its texts are [`Str`]s: shared by every
/// connection of a reply with the same value (see [`crate::intern`]), so a connection owns
/// no text of its own and a clone copies none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// Name of the server holding it.
    pub server: Str,
    /// Id of that server (for directed requests such as KICK).
    pub server_id: Str,
    /// Connection id on that server.
    pub cid: u64,
    /// `Client` or `Leafnode`.
    pub kind: Str,
    /// Remote IP.
    pub ip: Str,
    /// When it was made.
    pub start: Option<Stamp>,
    /// Time since the server last saw traffic on it, by the server's own clock.
    pub idle: Duration,
    /// When the server last saw a message on it, in (published) or out (delivered to it);
    /// PINGs and PONGs do not count. Equal to `start` until its first message.
    pub last_activity: Option<Stamp>,
    /// Subscriptions it holds.
    pub subscriptions: u32,
    /// Messages from the client.
    pub in_msgs: u64,
    /// Messages to the client.
    pub out_msgs: u64,
    /// Client name; empty when the client gave none.
    pub name: Str,
    /// Account (name, or public key in operator mode); `$G` for the global account.
    pub account: Str,
    /// The account's human name, when the server gives one (operator mode `name_tag`).
    pub account_name: Option<Str>,
    /// Authenticated user (name, or public nkey in operator mode).
    pub user: Str,
    /// The user's human name (the `name` claim of its JWT), when there is one.
    pub user_name: Option<Str>,
    /// Tags of the user.
    pub tags: Vec<Str>,
}

/// One connection as the census reads it, its texts borrowed: from a [`Connection`]
/// ([`Connection::view`]) or straight from a reply being parsed, so a sweep that only needs
/// the census builds no [`Connection`] at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnRef<'a> {
    /// Name of the server holding it.
    pub server: &'a str,
    /// Id of that server.
    pub server_id: &'a str,
    /// Connection id on that server.
    pub cid: u64,
    /// `Client` or `Leafnode`.
    pub kind: &'a str,
    /// Remote IP ([`IpText::text`]).
    pub ip: IpText<'a>,
    /// When it was made.
    pub start: Option<Stamp>,
    /// Time since the server last saw traffic on it.
    pub idle: Duration,
    /// When the server last saw a message on it.
    pub last_activity: Option<Stamp>,
    /// Subscriptions it holds.
    pub subscriptions: u32,
    /// Messages from the client.
    pub in_msgs: u64,
    /// Messages to the client.
    pub out_msgs: u64,
    /// Client name; empty when none.
    pub name: &'a str,
    /// Account.
    pub account: &'a str,
    /// The account's human name, when known.
    pub account_name: Option<&'a str>,
    /// Authenticated user.
    pub user: &'a str,
    /// The user's human name, when known.
    pub user_name: Option<&'a str>,
    /// Tags of the user.
    pub tags: Tags<'a>,
}

/// The remote IP of a [`ConnRef`]: a borrowed text, or an IPv4 address a compact list holds
/// packed ([`crate::ipv4`]), written out only where its text is needed ([`IpText::text`]).
#[derive(Clone, Copy)]
pub enum IpText<'a> {
    /// The text as it is held.
    Text(&'a str),
    /// A canonical IPv4 address, packed.
    V4(u32),
}

impl<'a> IpText<'a> {
    /// The text: borrowed, or written into `buf`.
    pub fn text<'b>(&'b self, buf: &'b mut [u8; 15]) -> &'b str
    where
        'a: 'b,
    {
        match self {
            Self::Text(t) => t,
            Self::V4(v) => crate::ipv4::write(*v, buf),
        }
    }
}

impl Default for IpText<'_> {
    fn default() -> Self {
        Self::Text("")
    }
}

impl std::fmt::Display for IpText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text(&mut [0; 15]))
    }
}

impl std::fmt::Debug for IpText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.text(&mut [0; 15]), f)
    }
}

/// The tags of a [`ConnRef`]: a [`Connection`]'s, or as a reply gave them.
#[derive(Debug, Clone, Copy)]
pub enum Tags<'a> {
    /// A connection's shared texts.
    Shared(&'a [Str]),
    /// A reply's texts.
    Read(&'a [std::borrow::Cow<'a, str>]),
}

impl Default for Tags<'_> {
    fn default() -> Self {
        Self::Shared(&[])
    }
}

impl<'a> Tags<'a> {
    /// The tags, in order.
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        let (shared, read) = match self {
            Self::Shared(t) => (t, &[][..]),
            Self::Read(t) => (&[][..], t),
        };
        shared
            .iter()
            .map(Str::as_str)
            .chain(read.iter().map(|t| t.as_ref()))
    }
}

impl<'a> ConnRef<'a> {
    /// Whether a server listed it before it authenticated ([`Connection::pending`]).
    pub fn pending(&self, auth_required: bool) -> bool {
        auth_required && self.kind == "Client" && self.user.is_empty() && self.account == "$G"
    }

    /// An owned connection, its texts from `texts`.
    pub fn to_connection(&self, texts: &mut crate::intern::Interner) -> Connection {
        Connection {
            server: texts.get(self.server),
            server_id: texts.get(self.server_id),
            cid: self.cid,
            kind: texts.get(self.kind),
            ip: texts.get(self.ip.text(&mut [0; 15])),
            start: self.start,
            idle: self.idle,
            last_activity: self.last_activity,
            subscriptions: self.subscriptions,
            in_msgs: self.in_msgs,
            out_msgs: self.out_msgs,
            name: texts.get(self.name),
            account: texts.get(self.account),
            account_name: self.account_name.map(|n| texts.get(n)),
            user: texts.get(self.user),
            user_name: self.user_name.map(|n| texts.get(n)),
            tags: self.tags.iter().map(|t| texts.get(t)).collect(),
        }
    }
}

impl Connection {
    /// The connection as the census reads it.
    pub fn view(&self) -> ConnRef<'_> {
        ConnRef {
            server: &self.server,
            server_id: &self.server_id,
            cid: self.cid,
            kind: &self.kind,
            ip: IpText::Text(&self.ip),
            start: self.start,
            idle: self.idle,
            last_activity: self.last_activity,
            subscriptions: self.subscriptions,
            in_msgs: self.in_msgs,
            out_msgs: self.out_msgs,
            name: &self.name,
            account: &self.account,
            account_name: self.account_name.as_deref(),
            user: &self.user,
            user_name: self.user_name.as_deref(),
            tags: Tags::Shared(&self.tags),
        }
    }

    /// Whether a server listed it before it authenticated, when the servers require auth: a
    /// server lists a connection from the moment it accepts it, in the global account with no
    /// user, until its CONNECT is authorized (up to the server's `auth_timeout`, 2 s by
    /// default). It is no user's connection (a burst of connects would make a short-lived
    /// finding for `$G`/""). Without auth every client is `$G`/"", and counted. Leafnodes are
    /// never taken for pending: a leafnode port without auth has real user-less connections.
    pub fn pending(&self, auth_required: bool) -> bool {
        self.view().pending(auth_required)
    }
}

/// Takes out of `connections` those listed before they authenticated ([`Connection::pending`]);
/// returns how many.
pub fn drop_pending(connections: &mut Vec<Connection>, auth_required: bool) -> u64 {
    if !auth_required {
        return 0;
    }
    let before = connections.len();
    connections.retain(|c| !c.pending(true));
    (before - connections.len()) as u64
}

/// Whether a server of version `ver` lists its leafnode connections in CONNZ: since
/// nats-server 2.12.0 (nats-io/nats-server#6930; before, only client connections, `/leafz`
/// has the leafnodes). An unreadable version is taken for a recent one.
pub fn lists_leafnodes(ver: &str) -> bool {
    let mut parts = ver.split(['.', '-']).map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 12),
        _ => true,
    }
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
///
/// Serialized as `{"server", "error", "kind"}`: `error` is the text for a person, `kind` the
/// [`ServerFailure::kind`] for a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Server name, or id when the name is unknown.
    pub server: String,
    /// What went wrong.
    pub error: ServerFailure,
}

impl Serialize for ServerError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ServerError", 3)?;
        st.serialize_field("server", &self.server)?;
        st.serialize_field("error", &self.error.to_string())?;
        st.serialize_field("kind", self.error.kind())?;
        st.end()
    }
}

/// Why a server's connections are not counted. Display is the text reports show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFailure {
    /// The server answered with an error envelope: to the PING (or the account STATZ of a
    /// hot-account sweep), or to a directed request (`directed`).
    ErrorReply {
        /// The envelope's code.
        code: i64,
        /// The envelope's description.
        description: String,
        /// Whether it answered a directed request.
        directed: bool,
    },
    /// Several different replies claim its server id: something else in the system account
    /// answers as this server, so none is believed.
    Impostors {
        /// How many replies.
        replies: usize,
        /// The id they claim.
        id: String,
    },
    /// It reports more connections than `sweep.max_connections_per_server`: not read.
    TooLarge {
        /// Connections it reports.
        total: u64,
        /// `sweep.max_connections_per_server`.
        max: u64,
    },
    /// Its connections grew past the headroom of every directed request: no whole list.
    KeptGrowing {
        /// Directed requests made.
        requests: u32,
        /// The last `total` it reported.
        total: u64,
    },
    /// `sweep.deadline` passed before its list was asked for, or while it was read
    /// (`in_flight`).
    Deadline {
        /// Whether a directed request was under way.
        in_flight: bool,
    },
    /// A directed request got no answer in time.
    TimedOut(Duration),
    /// A directed request found nobody to answer it.
    NoResponders,
    /// A directed request failed otherwise (the text is the client's).
    RequestFailed(String),
    /// A directed reply could not be read, or failed the checks (the text says which).
    BadReply(String),
    /// A directed reply came from another server id.
    WrongServer(String),
    /// A directed reply had no data.
    NoData,
}

impl ServerFailure {
    /// A stable name for programs, metrics and logs: `error_reply`, `impostors`,
    /// `too_large`, `kept_growing`, `deadline`, `timeout`,
    /// `no_responders`, `request_failed`, `bad_reply`, `wrong_server`, `no_data`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ErrorReply { .. } => "error_reply",
            Self::Impostors { .. } => "impostors",
            Self::TooLarge { .. } => "too_large",
            Self::KeptGrowing { .. } => "kept_growing",
            Self::Deadline { .. } => "deadline",
            Self::TimedOut(_) => "timeout",
            Self::NoResponders => "no_responders",
            Self::RequestFailed(_) => "request_failed",
            Self::BadReply(_) => "bad_reply",
            Self::WrongServer(_) => "wrong_server",
            Self::NoData => "no_data",
        }
    }
}

impl std::fmt::Display for ServerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NONE: &str = "none of its connections counted";
        match self {
            Self::ErrorReply {
                description,
                directed: false,
                ..
            } => f.write_str(description),
            Self::ErrorReply {
                description,
                directed: true,
                ..
            } => write!(f, "directed connz request: {description}"),
            Self::Impostors { replies, id } => write!(
                f,
                "{replies} different replies claim its server id {id}: something else in the system account answers as this server, so none is believed"
            ),
            Self::TooLarge { total, max } => write!(
                f,
                "it reports {total} connections, more than sweep.max_connections_per_server ({max}): not read"
            ),
            Self::KeptGrowing { requests, total } => write!(
                f,
                "its connections grew past the headroom of {requests} directed requests (last total {total}): no whole list could be read, none counted"
            ),
            Self::Deadline { in_flight: false } => f.write_str(
                "sweep.deadline passed before its connections were read: none counted",
            ),
            Self::Deadline { in_flight: true } => {
                f.write_str("sweep.deadline passed while its connections were read: none counted")
            }
            Self::TimedOut(d) => {
                write!(f, "directed connz request failed: timed out after {d:?}: {NONE}")
            }
            Self::NoResponders => {
                write!(f, "directed connz request failed: no responders: {NONE}")
            }
            Self::RequestFailed(e) => write!(f, "directed connz request failed: {e}: {NONE}"),
            Self::BadReply(e) => write!(f, "bad directed connz reply: {e}: none counted"),
            Self::WrongServer(id) => {
                write!(f, "directed connz reply came from server id {id:?}: none counted")
            }
            Self::NoData => f.write_str("directed connz reply without data: none counted"),
        }
    }
}

impl std::error::Error for ServerFailure {}

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
    /// Reply bytes received, as they came (compressed with `sweep.compression = "snappy"`).
    pub bytes: usize,
    /// The most reply bytes in flight at one time: asked for and not yet parsed (held for
    /// connwatch by the servers, the network and its client). A PING puts every server's first
    /// reply in flight at once; a bounded sweep (`sweep.max_in_flight`) a few servers' replies.
    pub peak_bytes_in_flight: usize,
    /// The connections of the servers in `servers`, each exactly once: every server's from one
    /// reply (one snapshot of it). Empty when the sweep only counted them (`census`).
    pub connections: Vec<Connection>,
    /// The same, listed compactly instead ([`crate::sweep::Collecting::Live`]: for the live
    /// view, which reads them in place), less the lists it took as they came (`handed`); empty
    /// otherwise. A sweep fills one of `connections`, `compact` and `census`.
    pub compact: crate::connlist::ConnList,
    /// The census of the servers in `servers`, built while their replies were parsed, when the
    /// sweep counted connections instead of listing them
    /// ([`crate::sweep::Collecting::Census`]), or the live view's census (shared with the
    /// view, which keeps it for its next round); not yet finished (thresholds, suspects).
    pub census: Option<std::sync::Arc<crate::census::Aggregate>>,
    /// For a view of the live census: why it is not complete (a gap since the last complete
    /// sweep: events may have been lost); `None` for a sweep, or a complete live view.
    pub gap: Option<String>,
    /// Where each server sits (cluster, domain): the servers that answered, and the missing
    /// ones whose cluster an earlier sweep saw.
    pub topology: crate::topology::Topology,
    /// Connections the servers listed before they authenticated ([`Connection::pending`]),
    /// not in `connections`: nobody's yet. For a view of the live census, the last sweep's.
    pub pending: u64,
    /// Ids of the servers that answered but whose CONNZ does not list leafnode connections
    /// ([`lists_leafnodes`]): the live census keeps their `Leafnode` connections from events.
    pub leafnodes_unlisted: Vec<String>,
    /// Ids of the servers whose whole lists a live sweep handed to the live view as they came
    /// ([`crate::sweep::Collecting::Live`]), not in `compact`.
    pub handed: Vec<String>,
    /// The connections those lists held.
    pub handed_connections: u64,
}

impl Snapshot {
    /// Connections counted: listed (or handed to the live view), or in the census.
    pub fn connection_count(&self) -> u64 {
        match &self.census {
            Some(census) => census.connections(),
            None => (self.connections.len() + self.compact.len()) as u64 + self.handed_connections,
        }
    }

    /// Whether some of the cluster's connections may be missing from this sweep.
    pub fn partial(&self) -> bool {
        self.servers.len() < self.servers_expected
            || !self.missing.is_empty()
            || !self.errors.is_empty()
            || self.gap.is_some()
    }

    /// Clusters none of whose servers answered (see [`crate::topology::silent_clusters`]).
    pub fn silent_clusters(&self) -> Vec<crate::topology::SilentCluster> {
        let answered: Vec<&str> = self
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.errors.iter().map(|e| e.server.as_str()))
            .collect();
        crate::topology::silent_clusters(&self.topology, &answered, &self.missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_less_global_clients_are_pending_and_only_when_auth_is_required() {
        let c = |kind: &str, account: &str, user: &str| Connection {
            kind: kind.into(),
            account: account.into(),
            user: user.into(),
            ..Connection::default()
        };
        let mut conns = vec![
            c("Client", "$G", ""),
            c("Client", "$G", "alice"),
            c("Client", "APP", ""),
            c("Leafnode", "$G", ""),
        ];
        assert_eq!(drop_pending(&mut conns.clone(), false), 0);
        assert_eq!(drop_pending(&mut conns, true), 1);
        assert_eq!(conns.len(), 3);
        assert!(!conns.iter().any(|c| c.pending(true)));
    }

    #[test]
    fn connz_lists_leafnodes_since_2_12() {
        for (ver, lists) in [
            ("2.10.22", false),
            ("2.11.9", false),
            ("2.12.0-RC.1", true),
            ("2.12.0", true),
            ("2.15.1", true),
            ("3.0.0", true),
            ("", true),
            ("dev", true),
        ] {
            assert_eq!(lists_leafnodes(ver), lists, "{ver}");
        }
    }

    #[test]
    fn a_connection_holds_no_text_of_its_own() {
        // The size the live view pays per connection (it was 296 bytes plus nine owned strings,
        // then 240 with two-word shared texts).
        assert!(std::mem::size_of::<Connection>() <= 168);
        let mut texts = crate::intern::Interner::default();
        let a = Connection {
            account: texts.get("APP"),
            ..Connection::default()
        };
        let b = a.clone();
        assert!(std::ptr::eq(a.account.as_str(), b.account.as_str()));
    }
}
