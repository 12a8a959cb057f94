//! Lookups that are not sweeps: a server's or an account's connection limit, one connection by
//! cid, a user's recently closed connections, the system account's name.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tracing::warn;

use super::page::parse_page;
use super::wire::{Accountz, Connz, ConnzRequest, Reply, Varz};
use super::{parse, server_subject, RequestError, System, PING_CONNZ, PING_VARZ};
use crate::snapshot::Connection;

/// Connections of one user closed recently, cluster-wide, as (stop time, reason): the servers
/// keep their last 10,000 closed connections each.
pub async fn closed_connections(
    system: &System,
    account: &str,
    user: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<(DateTime<Utc>, String)> {
    let req = ConnzRequest {
        auth: true,
        limit: 10_000,
        sort: "cid",
        // `$G` is how connwatch names the global account: the server has no filter for it.
        acc: Some(account.to_string()).filter(|a| a != "$G"),
        user: Some(user.to_string()),
        state: Some(1),
        ..ConnzRequest::default()
    };
    let body = Bytes::from(serde_json::to_vec(&req).expect("connz request serializes"));
    let mut n = 0;
    let replies = match system
        .scatter(PING_CONNZ, body, timeout, |_| {
            n += 1;
            n >= expected
        })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            warn!(account, user, error = %e, "closed connections request failed");
            return Vec::new();
        }
    };
    replies
        .iter()
        .filter_map(|m| parse::<Reply<Connz>>(&m.payload).ok()?.data?.connections)
        .flatten()
        .filter_map(|c| Some((c.stop?.with_timezone(&Utc), c.reason.unwrap_or_default())))
        .collect()
}

/// One connection of one server by cid (`None` when the server has no such open connection).
pub async fn connection(
    system: &System,
    server_id: &str,
    cid: u64,
    timeout: Duration,
) -> Result<Option<Connection>, RequestError> {
    let body = Bytes::from(serde_json::json!({ "cid": cid, "auth": true }).to_string());
    let msg = system
        .request(server_subject(server_id, "CONNZ"), body, timeout)
        .await?;
    // The same streaming parse as a sweep's pages.
    let mut conns = Vec::new();
    parse_page(&msg.payload, &mut conns, 1024, false)
        .map_err(|e| RequestError::Nats(Box::new(e)))?;
    Ok(conns.into_iter().find(|c| c.cid == cid))
}

/// An account's connection limit from its JWT, asked of one server: `Ok(None)` when
/// unlimited or not known to the server (config mode); an error when the lookup failed (no
/// answer, an error reply, or an unparseable one), which means unknown, not unlimited.
pub async fn account_limit(
    system: &System,
    server_id: &str,
    account: &str,
    timeout: Duration,
) -> Result<Option<u64>, RequestError> {
    let body = Bytes::from(serde_json::json!({ "account": account }).to_string());
    let msg = system
        .request(server_subject(server_id, "ACCOUNTZ"), body, timeout)
        .await?;
    let reply = parse::<Reply<Accountz>>(&msg.payload).map_err(|e| RequestError::Nats(e.into()))?;
    if let Some(e) = reply.error {
        return Err(RequestError::Nats(e.description.into()));
    }
    Ok(reply
        .data
        .and_then(|d| d.account_detail)
        .and_then(|d| d.connection_limit()))
}

/// Every server's `max_connections`, by server name: only servers that answered are in the
/// map (a server missing from it has an unknown limit); an error when the request failed.
pub async fn server_limits(
    system: &System,
    expected: usize,
    timeout: Duration,
) -> Result<HashMap<String, u64>, RequestError> {
    let mut n = 0;
    let replies = system
        .scatter(PING_VARZ, Bytes::new(), timeout, |_| {
            n += 1;
            n >= expected
        })
        .await?;
    Ok(replies
        .iter()
        .filter_map(|m| {
            let r = parse::<Reply<Varz>>(&m.payload).ok()?;
            Some((r.server.name, r.data?.max_connections))
        })
        .collect())
}

/// The system account as the servers name it (VARZ `system_account`): the first server that
/// names one; `Ok(None)` when none did in time.
pub async fn varz_system_account(
    system: &System,
    timeout: Duration,
) -> Result<Option<String>, RequestError> {
    #[derive(serde::Deserialize)]
    struct VarzSystem {
        #[serde(default)]
        system_account: String,
    }
    let mut found = None;
    system
        .scatter(PING_VARZ, Bytes::new(), timeout, |m| {
            found = parse::<Reply<VarzSystem>>(&m.payload)
                .ok()
                .and_then(|r| r.data)
                .map(|d| d.system_account)
                .filter(|a| !a.is_empty());
            found.is_some()
        })
        .await?;
    Ok(found)
}

/// The subjects one connection is subscribed to, as its server has them (`CONNZ` with
/// `subscriptions`): `None` when the server has no such open connection. A subscription the
/// server refused (permissions) is not among them.
pub async fn subscriptions(
    system: &System,
    server_id: &str,
    cid: u64,
    timeout: Duration,
) -> Result<Option<Vec<String>>, RequestError> {
    let body = Bytes::from(serde_json::json!({ "cid": cid, "subscriptions": true }).to_string());
    let msg = system
        .request(server_subject(server_id, "CONNZ"), body, timeout)
        .await?;
    let reply = parse::<Reply<serde_json::Value>>(&msg.payload)
        .map_err(|e| RequestError::Nats(Box::new(e)))?;
    if let Some(e) = reply.error {
        return Err(RequestError::Nats(e.description.into()));
    }
    let data = reply.data.unwrap_or_default();
    let conn = data["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["cid"].as_u64() == Some(cid));
    Ok(conn.map(|c| {
        c["subscriptions_list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }))
}

/// The subjects `client`'s own connection is subscribed to, as its server has them (asked
/// through `system` after a flush, so what `client` just subscribed to has been sent), or why
/// that cannot be known: the confirmation a start that subscribes needs before it trusts a
/// subscription (the server refuses one its user may not make without the client failing).
pub async fn held_by(
    system: &System,
    client: &async_nats::Client,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    client.flush().await.map_err(|e| e.to_string())?;
    let info = client.server_info();
    subscriptions(system, &info.server_id, info.client_id, timeout)
        .await
        .map_err(|e| format!("cannot confirm that the server holds the subscriptions: {e}"))?
        .ok_or_else(|| {
            "cannot confirm that the server holds the subscriptions: its server does not list connwatch's own connection".to_string()
        })
}
