//! Refused connections from the servers' events (the window logic is plain data in
//! [`crate::rules::refused`]).
//!
//! What nats-server 2.15.1 sends (server/client.go, events.go; `tests/live_events.rs` shows each on a
//! real cluster):
//! - over an account's limit, the client is registered with the account and then closed:
//!   `$SYS.ACCOUNT.<acc>.DISCONNECT` with reason `Maximum Account Connections Exceeded`, and
//!   no CONNECT event before it. A server that learns the account is over its limit
//!   cluster-wide closes its newest local clients with the same reason (those had a CONNECT).
//! - over a server's `max_connections`, a new client is closed at once, still in the global
//!   account: `$SYS.ACCOUNT.$G.DISCONNECT` with reason `Maximum Connections Exceeded`, no user,
//!   no CONNECT before it (seen on 2.15.1). Counted per server.
//! - a failed authentication: `$SYS.SERVER.<id>.CLIENT.AUTH.ERR`, a `client_disconnect` whose
//!   `client.acc` is `$G` (the client was not authenticated yet; seen on 2.15.1) or `N/A`,
//!   and `reason` such as `Authentication Failure` or `Authentication Timeout`: counted per
//!   server.

use chrono::{DateTime, Utc};

use super::Live;
use crate::metrics::Metrics;
use crate::nats::events::ClientEvent;
use crate::rules::refused::{Refusal, RefusedReason};

/// Every server's authentication failures.
pub const AUTH_ERRORS: &str = "$SYS.SERVER.*.CLIENT.AUTH.ERR";

/// The refusal an event reports: a disconnect event whose reason is a connection limit, or
/// any authentication error event (`auth`); `None` for any other event.
pub fn refusal_of(e: &ClientEvent, auth: bool, now: DateTime<Utc>) -> Option<Refusal> {
    let reason = if auth {
        RefusedReason::Auth
    } else if e.is_disconnect() {
        RefusedReason::of_disconnect(e.reason.as_deref()?)?
    } else {
        return None;
    };
    let c = &e.client;
    Some(Refusal {
        reason,
        // A client failing to authenticate is still in the global account (`$G`) or in none
        // (`N/A`): the account it meant is unknown.
        account: c
            .acc
            .clone()
            .filter(|a| !a.is_empty() && a != "N/A" && !(auth && a == "$G")),
        account_name: c.name_tag.clone(),
        server: e.server.name.clone(),
        user: c.user.clone().unwrap_or_default(),
        ip: c.host.clone().unwrap_or_default(),
        at: now,
    })
}

impl Live {
    /// Records a refusal (counted in `connwatch_connections_refused_total`) and wakes the
    /// service, so its finding fires within `live.evaluate_every`.
    pub(super) fn refused(&self, metrics: &Metrics, r: &Refusal) {
        metrics.refused(r.reason.name());
        self.refused.lock().expect("refusals lock").record(r);
        self.changed.notify_one();
    }

    /// Forgets the refusals whose window went quiet; wakes the service when any did, so their
    /// findings resolve.
    pub(super) fn expire_refusals(&self) {
        if self
            .refused
            .lock()
            .expect("refusals lock")
            .expire(Utc::now())
        {
            self.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> ClientEvent {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limit_disconnects_and_auth_errors_are_refusals_other_closes_are_not() {
        let now = Utc::now();
        let over = event(
            r#"{"type":"io.nats.server.advisory.v1.client_disconnect","server":{"name":"n1","id":"N1"},
            "client":{"id":7,"acc":"APP","user":"leaky","host":"10.0.0.9"},
            "reason":"Maximum Account Connections Exceeded"}"#,
        );
        let r = refusal_of(&over, false, now).unwrap();
        assert_eq!(r.reason, RefusedReason::AccountLimit);
        assert_eq!(
            (
                r.account.as_deref(),
                r.user.as_str(),
                r.ip.as_str(),
                r.server.as_str()
            ),
            (Some("APP"), "leaky", "10.0.0.9", "n1")
        );
        let closed = event(
            r#"{"type":"io.nats.server.advisory.v1.client_disconnect","server":{"name":"n1","id":"N1"},
            "client":{"id":8,"acc":"APP"},"reason":"Client Closed"}"#,
        );
        assert!(refusal_of(&closed, false, now).is_none());
        let connect = event(
            r#"{"type":"io.nats.server.advisory.v1.client_connect","server":{"name":"n1","id":"N1"},
            "client":{"id":9,"acc":"APP"}}"#,
        );
        assert!(refusal_of(&connect, false, now).is_none());
        let auth = event(
            r#"{"type":"io.nats.server.advisory.v1.client_disconnect","server":{"name":"n2","id":"N2"},
            "client":{"id":3,"acc":"$G","user":"mallory","host":"10.0.0.5"},
            "reason":"Authentication Failure"}"#,
        );
        let r = refusal_of(&auth, true, now).unwrap();
        assert_eq!((r.reason, r.account), (RefusedReason::Auth, None));
    }
}
