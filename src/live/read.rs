//! Reading one user's connections from every server (CONNZ filtered by `acc` and `user`), to
//! give a finding found by the live census its details (idle times, messages: the suspects)
//! before it fires. One small request answered by each server, not a sweep.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use super::view::{LiveView, Scope};
use crate::nats::page::{connz_user_body, parse_reply};
use crate::nats::{System, PING_CONNZ};
use crate::snapshot::Connection;

/// Reads `account`/`user`'s connections on every server the view holds and puts them in the
/// view (a sync of that user). A server that does not answer in `timeout`, answers with an
/// error, or whose reply does not hold all the user's connections keeps what the view had.
/// `expected` is the user's connection count now (the reply is sized from it). Returns how
/// many servers answered in full.
pub async fn read_user(
    system: &System,
    view: &Mutex<LiveView>,
    account: &str,
    user: &str,
    expected: u64,
    timeout: Duration,
) -> usize {
    let (sync, known) = {
        let mut v = view.lock().expect("live view lock");
        (v.begin_sync(), v.servers().clone())
    };
    let limit = (expected as usize).saturating_mul(2).max(1024);
    let body: Bytes = connz_user_body(limit, account, user);
    let mut servers: Vec<(String, String)> = Vec::new();
    let mut conns = Vec::new();
    let result = system
        .scatter_each(&[(PING_CONNZ, body)], timeout, Duration::ZERO, |_, msg| {
            match parse_reply(&msg.payload, limit) {
                Ok(r)
                    if r.error.is_none()
                        && known.get(&r.server.id) == Some(&r.server.name)
                        // Filtered by user, CONNZ's `total` is the account's count on that
                        // server, not the user's: a reply is whole when it was not cut at `limit`.
                        && r.connections.len() < limit
                        && !servers.iter().any(|(id, _)| id == &r.server.id) =>
                {
                    servers.push((r.server.id.clone(), r.server.name.clone()));
                    conns.extend(r.connections);
                }
                Ok(r) => debug!(server = %r.server.name, "user connz reply not taken"),
                Err(e) => debug!(error = %e, "unreadable user connz reply"),
            }
            servers.len() >= known.len()
        })
        .await;
    if let Err(e) = result {
        debug!(error = %e, account, user, "user connz request failed");
    }
    let scope = Scope::User {
        account: account.to_string(),
        user: user.to_string(),
    };
    let answered = servers.len();
    view.lock().expect("live view lock").finish_sync(
        sync,
        &scope,
        &servers,
        conns.iter().map(Connection::view),
    );
    answered
}
