//! What the live census subscribes to, chosen so that following the events costs the servers
//! as little as it can (BENCHMARKS.md, "Fewer events delivered"): only the connect and
//! disconnect events, and the account counts on the subject the servers already route to each
//! other for themselves.
//!
//! - [`EVENTS`], `$SYS.ACCOUNT.*.*`: the connect and disconnect events of every account whose
//!   name has no dot (`$SYS.ACCOUNT.<acc>.CONNECT|DISCONNECT` are the only four-token subjects
//!   under `$SYS.ACCOUNT`), in ONE subscription, so a server's events are handled in the order
//!   it sent them (a connection's connect before its disconnect). Not `$SYS.ACCOUNT.>`: that
//!   also takes every account's count on the new subject `$SYS.ACCOUNT.<acc>.SERVER.CONNS`,
//!   two per connect+close pair, which nobody else listens to, so the servers route them to
//!   connwatch's server for connwatch alone.
//! - [`COUNTS`], `$SYS.SERVER.ACCOUNT.>`: the same counts on the old subject, which every
//!   server subscribes to itself (`$SYS.SERVER.ACCOUNT.*.CONNS`, for account connection
//!   limits): they cross the routes with or without connwatch, which adds only their delivery
//!   from its own server. They feed the cross-check ([`super::crosscheck`]).
//! - An account whose name holds dots (`team.a`, config mode) publishes on more tokens: it gets
//!   a subscription of its own, `$SYS.ACCOUNT.team.a.*` (again one, for the order), as soon as
//!   connwatch hears its count. A server sends an account's count with every change of its
//!   connections (just before the event) and every 30 s while it has any, so no event of it
//!   can come unheard: the first one may be lost while the subscription is made, which is a
//!   gap (`account_new`, a sweep follows).
//!
//! A queue subscription per server (each server's events delivered to a listener on the same
//! server, no route hop) does not work: nats-server picks a queue member at random, a remote
//! one as readily as a local one, for a message published on the server itself (server/client.go
//! `processMsgResults`: only a message that came over a route prefers local members).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use futures::stream::SelectAll;
use futures::StreamExt;
use tracing::warn;

use super::churn;
use super::view::Delta;
use crate::nats::events::{AccountConns, ClientEvent};
use crate::nats::wire::{Accountz, Reply};
use crate::nats::{parse, System};

/// The connect and disconnect events of every account without a dot in its name.
pub const EVENTS: &str = "$SYS.ACCOUNT.*.*";
/// Every account's connection count, on the subject the servers route for themselves.
pub const COUNTS: &str = "$SYS.SERVER.ACCOUNT.>";
const COUNTS_PREFIX: &str = "$SYS.SERVER.ACCOUNT.";
const EVENTS_PREFIX: &str = "$SYS.ACCOUNT.";

/// The subscriptions that follow the events (see the module docs), as one stream.
pub struct Following {
    subs: SelectAll<Subscriber>,
    /// The accounts with dots in their names that have a subscription of their own.
    dotted: BTreeSet<String>,
}

impl Following {
    /// Subscribes to [`EVENTS`], [`COUNTS`] and the events of each of `dotted` (flushed: nothing
    /// published after this returns is missed).
    pub async fn start(
        client: &Client,
        dotted: &BTreeSet<String>,
    ) -> Result<Following, async_nats::Error> {
        let mut subs = SelectAll::new();
        subs.push(client.subscribe(EVENTS).await?);
        subs.push(client.subscribe(COUNTS).await?);
        for account in dotted {
            subs.push(client.subscribe(account_events(account)).await?);
        }
        client.flush().await?;
        Ok(Following {
            subs,
            dotted: dotted.clone(),
        })
    }

    /// The next message of any of the subscriptions.
    pub async fn next(&mut self) -> Option<Message> {
        self.subs.next().await
    }

    /// Subscribes to the events of `account` (flushed) when it needs a subscription of its own
    /// ([`own_subscription`]) and has none yet; returns whether it subscribed.
    pub async fn account(
        &mut self,
        client: &Client,
        account: &str,
    ) -> Result<bool, async_nats::Error> {
        if !own_subscription(account) || self.dotted.contains(account) {
            return Ok(false);
        }
        self.subs
            .push(client.subscribe(account_events(account)).await?);
        client.flush().await?;
        self.dotted.insert(account.to_string());
        Ok(true)
    }

    /// The accounts with a subscription of their own.
    pub fn dotted(&self) -> &BTreeSet<String> {
        &self.dotted
    }

    /// Unsubscribes from everything.
    pub async fn stop(mut self) {
        for sub in self.subs.iter_mut() {
            let _ = sub.unsubscribe().await;
        }
    }
}

/// The accounts with dots in their names that the servers know, asked of every server at once
/// (`$SYS.REQ.SERVER.PING.ACCOUNTZ`; the first answer and those within `linger` of it), so
/// that their events are followed before any connection of theirs: an account not heard here
/// (no answer, a slow server, an account added later) is heard by its count instead.
pub async fn dotted_accounts(
    system: &System,
    timeout: Duration,
    linger: Duration,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = system
        .scatter_each(
            &[(PING_ACCOUNTZ, bytes::Bytes::new())],
            timeout,
            linger,
            |_, msg| {
                if let Ok(Reply { data: Some(a), .. }) = parse::<Reply<Accountz>>(&msg.payload) {
                    out.extend(a.accounts.into_iter().filter(|a| own_subscription(a)));
                }
                true
            },
        )
        .await;
    out
}

/// Every server's list of accounts.
const PING_ACCOUNTZ: &str = "$SYS.REQ.SERVER.PING.ACCOUNTZ";

/// The subject of the events of one account (one subscription for both kinds).
fn account_events(account: &str) -> String {
    format!("{EVENTS_PREFIX}{account}.*")
}

/// Whether `account`'s events need a subscription of their own: its name holds a dot (so
/// [`EVENTS`] misses them) and makes a valid subject (no whitespace or wildcard: such a name's
/// events reach no subscriber whole, see [`churn::followed`]).
pub fn own_subscription(account: &str) -> bool {
    account.contains('.') && churn::followed(account)
}

/// The account a subject `<prefix><account>.<suffix>` names, whatever its tokens.
fn account_of<'a>(subject: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .strip_suffix('.')
}

/// Whether a subject may be an account's connection count (`$SYS.SERVER.ACCOUNT.<acc>.CONNS`);
/// [`conns_of`] says whether it is.
pub fn is_account_conns(subject: &str) -> bool {
    account_of(subject, COUNTS_PREFIX, "CONNS").is_some()
}

/// An account's connection count, when the subject is that account's: an account name may hold
/// dots (config mode allows any name), so the payload's `acc` says which account the subject
/// names, not its number of tokens.
pub fn conns_of(subject: &str, payload: &[u8]) -> Option<AccountConns> {
    let a: AccountConns = parse(payload).ok()?;
    (account_of(subject, COUNTS_PREFIX, "CONNS") == Some(a.acc.as_str())).then_some(a)
}

/// A connect or disconnect event message, parsed once, and whether it is a disconnect;
/// `None` for other subjects and unreadable events.
///
/// The server publishes a client's events on `$SYS.ACCOUNT.<client.acc>.CONNECT|DISCONNECT`,
/// and account names may hold dots (`team.a`, allowed in config mode): the event is one when
/// the subject is exactly that of the payload's account. The one other subject a subscription
/// can take that ends the same way is told apart by the same test: the subscription of an
/// account named `A.LEAFNODE` also takes account `A`'s leafnode notice
/// (`$SYS.ACCOUNT.A.LEAFNODE.CONNECT`), which carries no client (`{server, acc}`).
pub fn event_of(subject: &str, payload: &[u8]) -> Option<(ClientEvent, bool)> {
    let last = subject.rsplit('.').next()?;
    if last != "CONNECT" && last != "DISCONNECT" {
        return None;
    }
    let unreadable = |err: serde_json::Error| {
        warn!(subject, error = %err, "unreadable connection event ignored");
    };
    let e: ClientEvent = parse(payload).map_err(unreadable).ok()?;
    let account = e.client.acc.as_deref()?;
    (account_of(subject, EVENTS_PREFIX, last) == Some(account)).then_some((e, last == "DISCONNECT"))
}

/// The delta an event makes on the view: a disconnect closes its (server id, cid), a connect
/// opens its connection (its strings moved, not copied). `None` when it cannot be keyed.
pub fn delta(e: ClientEvent, closed: bool) -> Option<Delta> {
    if !closed {
        return Some(Delta::Open(e.into_connection()?));
    }
    if e.server.id.is_empty() || e.client.id == 0 {
        return None;
    }
    Some(Delta::Close {
        server_id: e.server.id,
        cid: e.client.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_told_apart_by_their_tokens() {
        assert!(is_account_conns("$SYS.SERVER.ACCOUNT.APP.CONNS"));
        assert!(!is_account_conns("$SYS.ACCOUNT.APP.SERVER.CONNS"));
        assert!(!is_account_conns("$SYS.ACCOUNT.APP.CONNECT"));
        let event =
            br#"{"server":{"id":"S","name":"n1"},"client":{"id":3,"acc":"APP","user":"u"}}"#;
        let delta_of = |subject: &str| {
            let (e, closed) = event_of(subject, event)?;
            delta(e, closed)
        };
        assert!(matches!(
            delta_of("$SYS.ACCOUNT.APP.CONNECT"),
            Some(Delta::Open(_))
        ));
        assert!(matches!(
            delta_of("$SYS.ACCOUNT.APP.DISCONNECT"),
            Some(Delta::Close { cid: 3, .. })
        ));
        // Other subjects that end the same way.
        assert_eq!(delta_of("$SYS.ACCOUNT.APP.LEAFNODE.CONNECT"), None);
        assert_eq!(delta_of("$SYS.SERVER.ACCOUNT.APP.CONNS"), None);
        // An event under another account's subject is not this one.
        assert_eq!(delta_of("$SYS.ACCOUNT.OTHER.CONNECT"), None);
    }

    #[test]
    fn account_names_with_dots_are_read_from_the_payload() {
        let event = |acc: &str| {
            format!(
                r#"{{"server":{{"id":"S","name":"n1"}},"client":{{"id":3,"acc":"{acc}","user":"u"}}}}"#
            )
        };
        let of = |subject: &str, acc: &str| event_of(subject, event(acc).as_bytes());
        let (e, closed) = of("$SYS.ACCOUNT.team.a.CONNECT", "team.a").unwrap();
        assert_eq!((e.user_key().0.as_str(), closed), ("team.a", false));
        assert!(of("$SYS.ACCOUNT.team.a.DISCONNECT", "team.a").unwrap().1);
        // An account named `A.LEAFNODE` connecting is told from account A's leafnode notice,
        // which carries no client: the payload decides.
        assert!(of("$SYS.ACCOUNT.A.LEAFNODE.CONNECT", "A.LEAFNODE").is_some());
        let notice = br#"{"server":{"id":"S","name":"n1"},"acc":"A"}"#;
        assert!(event_of("$SYS.ACCOUNT.A.LEAFNODE.CONNECT", notice).is_none());
        // The auth-error feed is a disconnect event too, but not an account's.
        assert!(of("$SYS.ACCOUNT.CLIENT.AUTH.ERR", "CLIENT").is_none());
        // Account counts of a dotted account, and not another's.
        let conns = br#"{"server":{"id":"S","name":"n1"},"acc":"team.a","conns":4}"#;
        assert!(is_account_conns("$SYS.SERVER.ACCOUNT.team.a.CONNS"));
        assert_eq!(
            conns_of("$SYS.SERVER.ACCOUNT.team.a.CONNS", conns).map(|a| a.conns),
            Some(4)
        );
        assert!(conns_of("$SYS.SERVER.ACCOUNT.team.CONNS", conns).is_none());
    }

    #[test]
    fn only_dotted_names_that_make_a_subject_get_their_own_subscription() {
        assert!(!own_subscription("APP"));
        assert!(own_subscription("team.a"));
        assert_eq!(account_events("team.a"), "$SYS.ACCOUNT.team.a.*");
        // No valid subject: not subscribed (its events reach no subscriber whole).
        assert!(!own_subscription("team.a b"));
        assert!(!own_subscription("team.*"));
        assert!(!own_subscription("team.>"));
    }
}
