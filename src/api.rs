//! connwatch as a NATS micro service: discoverable with `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`,
//! with three endpoints (request and reply bodies are JSON):
//!
//! - `<prefix>.census`: the latest census, like `report --format json`; body optional:
//!   `{"account": "...", "user": "...", "top": N}` (`top` 0 or absent: all);
//! - `<prefix>.findings`: the findings firing; body optional: `{"type": "<name>"}`;
//! - `<prefix>.sweep`: sweep now; replies with the sweep's summary. Requests that arrive during
//!   a sweep share it, and within `service.sweep_min_interval` of the last sweep's start the
//!   reply is the last sweep's summary (or a 503 naming when the next sweep is allowed, when
//!   the last sweep failed): the endpoint cannot make connwatch hammer the servers.
//!
//! A body that is not such JSON gets a service error (code 400), never a crash.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::service::{endpoint::Endpoint, error::Error as ServiceError, Request, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::census::Census;
use crate::config::ServiceConfig;
use crate::lifecycle::Active;
use crate::report::{Filter, Report, SweepSummary};
use crate::rules::MAX_MAP_ENTRIES;

/// The latest round's results, read by the endpoints.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// The last sweep.
    pub sweep: Option<SweepSummary>,
    /// Its census.
    pub census: Census,
    /// The findings firing after it.
    pub findings: Vec<Active>,
}

/// Shared between the run loop (writer) and the endpoints (readers).
pub type Shared = Arc<RwLock<Latest>>;

/// Why a `sweep` request got no summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepRefused {
    /// The sweep failed (500).
    Failed(String),
    /// The last sweep failed and the next is not allowed yet (503).
    TooSoon {
        /// When the next sweep is allowed.
        retry_in: Duration,
    },
}

/// A request from the endpoints to the run loop.
#[derive(Debug)]
pub enum Command {
    /// Sweep now (or share the sweep in flight, or answer with the last one when it is too
    /// recent); the reply is a sweep's summary, or why there is none.
    SweepNow(oneshot::Sender<Result<SweepSummary, SweepRefused>>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CensusQuery {
    account: Option<String>,
    user: Option<String>,
    #[serde(default)]
    top: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingsQuery {
    r#type: Option<String>,
}

/// Parses an optional JSON request body; empty means the defaults.
fn query<T: Default + for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ServiceError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ServiceError {
        code: 400,
        status: format!("invalid request: {e}"),
    })
}

/// The census endpoint's answer, within `max_payload` bytes (the servers' limit on a message):
/// the census as `report --format json` shapes it. Over that, each user's `by_name` and
/// `by_ip` are cut to their [`MAX_MAP_ENTRIES`] largest (`maps_cut_to` says so; `spread` keeps
/// the totals), as a fleet whose every client has its own IP makes them long; still over, a
/// 413 that says how to ask for less. Never a reply the servers refuse (the asker would only
/// time out).
pub fn census_reply(
    latest: &Latest,
    body: &[u8],
    max_payload: usize,
) -> Result<Bytes, ServiceError> {
    let q: CensusQuery = query(body)?;
    let sweep = latest.sweep.clone().ok_or(ServiceError {
        code: 503,
        status: "no sweep yet".into(),
    })?;
    let filter = Filter {
        account: q.account,
        user: q.user,
        top: q.top,
    };
    let whole = Report::of_summary(sweep.clone(), &latest.census, &filter);
    let whole = serde_json::to_vec(&whole).expect("serializes");
    if whole.len() <= max_payload {
        return Ok(Bytes::from(whole));
    }
    let cut = Census {
        connections: latest.census.connections,
        users: latest
            .census
            .users
            .iter()
            .map(|u| u.with_maps_cut(MAX_MAP_ENTRIES))
            .collect(),
    };
    let mut report = Report::of_summary(sweep, &cut, &filter);
    report.maps_cut_to = Some(MAX_MAP_ENTRIES);
    let cut = serde_json::to_vec(&report).expect("serializes");
    within(cut, max_payload, || {
        format!(
            "the census is {} bytes, over the servers' max_payload of {max_payload} even with each user's by_name and by_ip cut to their {MAX_MAP_ENTRIES} largest: ask for fewer users ({{\"top\": 100}}) or one account or user",
            whole.len()
        )
    })
}

/// The findings endpoint's answer, within `max_payload` bytes (else a 413).
pub fn findings_reply(
    latest: &Latest,
    body: &[u8],
    max_payload: usize,
) -> Result<Bytes, ServiceError> {
    let q: FindingsQuery = query(body)?;
    let findings: Vec<&Active> = latest
        .findings
        .iter()
        .filter(|a| q.r#type.as_deref().is_none_or(|t| t == a.kind().name()))
        .collect();
    let reply =
        serde_json::to_vec(&serde_json::json!({ "findings": findings })).expect("serializes");
    let bytes = reply.len();
    within(reply, max_payload, || {
        format!(
            "the findings are {bytes} bytes, over the servers' max_payload of {max_payload}: ask for one type ({{\"type\": \"excessive_user_connections\"}})"
        )
    })
}

/// `reply` when it fits in `max_payload` bytes, else a 413 saying `why` (made only then).
fn within(
    reply: Vec<u8>,
    max_payload: usize,
    why: impl FnOnce() -> String,
) -> Result<Bytes, ServiceError> {
    if reply.len() <= max_payload {
        return Ok(Bytes::from(reply));
    }
    let why = why();
    warn!(
        bytes = reply.len(),
        max_payload, "service reply too large: {why}"
    );
    Err(ServiceError {
        code: 413,
        status: why,
    })
}

/// The service, registered with its endpoints and ready to [`Endpoints::serve`].
pub struct Endpoints {
    service: async_nats::service::Service,
    /// The connection the endpoints answer on: its server's `max_payload` bounds a reply.
    client: async_nats::Client,
    census: Endpoint,
    findings: Endpoint,
    sweep: Endpoint,
}

/// Registers the service and its endpoints on `client`: a failure here is a start-up failure.
/// With `[ha]`, each endpoint's `data` in `$SRV.STATS` is this replica's role and since when
/// (`{"role": "leader", "since": "<RFC 3339>"}`): `$SRV.INFO` is fixed when the service
/// starts, `$SRV.STATS` is asked anew each time, and every replica answers both.
///
/// The server refuses a subscription its user may not make (`-ERR 'Permissions Violation for
/// Subscription'`) without the client failing, so the endpoints would look started and never
/// answer: once they are subscribed, the server is asked (`CONNZ` of connwatch's own
/// connection, within `timeout`) which subscriptions it holds, and any missing, or no answer,
/// is an error (fail closed: nothing is started half).
pub async fn start(
    system: &crate::nats::System,
    cfg: &ServiceConfig,
    gate: &crate::ha::Gate,
    timeout: Duration,
) -> Result<Endpoints, async_nats::Error> {
    let client = system.client();
    let mut builder = client
        .service_builder()
        .description("Finds leaked and excessive NATS connections per user across a cluster");
    if gate.replicated() {
        let gate = gate.clone();
        builder = builder.stats_handler(move |_endpoint, _stats| {
            gate.role().map_or(
                serde_json::Value::Null,
                |(role, since)| serde_json::json!({ "role": role.name(), "since": since }),
            )
        });
    }
    let service = builder
        .start("connwatch", env!("CARGO_PKG_VERSION"))
        .await?;
    let group = service.group(&cfg.prefix);
    let census = group.endpoint("census").await?;
    let findings = group.endpoint("findings").await?;
    let sweep = group.endpoint("sweep").await?;
    // The endpoints subscribe asynchronously: confirm the server has them before "ready".
    let expected = service_subjects(&cfg.prefix, &service.info().await.id);
    let held = crate::nats::lookup::held_by(system, client, timeout).await?;
    let refused = missing(&expected, &held);
    if !refused.is_empty() {
        return Err(format!(
            "the server refused the subscriptions to {} (connwatch's user may not subscribe to them: allow `$SRV.>` and `{}.>`, or set service.enabled = false)",
            refused.join(", "),
            cfg.prefix
        )
        .into());
    }
    info!(prefix = %cfg.prefix, "service endpoints ready");
    Ok(Endpoints {
        service,
        client: client.clone(),
        census,
        findings,
        sweep,
    })
}

/// The subjects the service subscribes to: `$SRV.<verb>`, `$SRV.<verb>.connwatch` and
/// `$SRV.<verb>.connwatch.<id>` for `PING`, `INFO` and `STATS`, and its endpoints under
/// `prefix`.
fn service_subjects(prefix: &str, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        out.push(format!("$SRV.{verb}"));
        out.push(format!("$SRV.{verb}.connwatch"));
        out.push(format!("$SRV.{verb}.connwatch.{id}"));
    }
    out.extend(["census", "findings", "sweep"].map(|e| format!("{prefix}.{e}")));
    out
}

/// The subjects of `expected` the server does not hold (not in `held`), in order.
fn missing(expected: &[String], held: &[String]) -> Vec<String> {
    expected
        .iter()
        .filter(|s| !held.contains(s))
        .cloned()
        .collect()
}

impl Endpoints {
    /// Answers requests until `shutdown`.
    pub async fn serve(
        self,
        latest: Shared,
        commands: mpsc::Sender<Command>,
        sweep_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let Endpoints {
            service,
            client,
            mut census,
            mut findings,
            mut sweep,
        } = self;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(req) = census.next() => {
                    let max = max_payload(&client);
                    let reply = census_reply(&latest.read().expect("latest lock"), &req.message.payload, max);
                    respond(&req, reply).await;
                }
                Some(req) = findings.next() => {
                    let max = max_payload(&client);
                    let reply = findings_reply(&latest.read().expect("latest lock"), &req.message.payload, max);
                    respond(&req, reply).await;
                }
                Some(req) = sweep.next() => {
                    // A sweep takes a while: answer from a task, so the other endpoints stay responsive.
                    let commands = commands.clone();
                    tokio::spawn(async move {
                        let reply = sweep_now(&commands, sweep_timeout).await;
                        respond(&req, reply).await;
                    });
                }
            }
        }
        service.stop().await?;
        Ok(())
    }
}

async fn sweep_now(
    commands: &mpsc::Sender<Command>,
    timeout: Duration,
) -> Result<Bytes, ServiceError> {
    let unavailable = |why: &str| ServiceError {
        code: 503,
        status: why.to_string(),
    };
    let (tx, rx) = oneshot::channel();
    commands
        .send(Command::SweepNow(tx))
        .await
        .map_err(|_| unavailable("shutting down"))?;
    // Waiting covers a sweep in flight, the requested one, and their pages.
    let summary = tokio::time::timeout(timeout * 4, rx)
        .await
        .map_err(|_| unavailable("sweep did not finish in time"))?
        .map_err(|_| unavailable("shutting down"))?
        .map_err(|e| match e {
            SweepRefused::Failed(why) => ServiceError {
                code: 500,
                status: why,
            },
            SweepRefused::TooSoon { retry_in } => unavailable(&format!(
                "the last sweep failed; the next is allowed in {} ms (service.sweep_min_interval)",
                retry_in.as_millis()
            )),
        })?;
    Ok(Bytes::from(
        serde_json::to_vec(&summary).expect("serializes"),
    ))
}

/// The most bytes a message may carry on `client`'s server (its `max_payload`).
fn max_payload(client: &async_nats::Client) -> usize {
    client.server_info().max_payload
}

async fn respond(req: &Request, reply: Result<Bytes, ServiceError>) {
    if let Err(e) = req.respond(reply).await {
        warn!(error = %e, "service reply failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_get_a_400() {
        let latest = Latest::default();
        for body in [
            &b"{not json"[..],
            b"[1,2]",
            b"{\"acount\": \"x\"}",
            b"\xff\xfe",
        ] {
            let e = census_reply(&latest, body, MAX).unwrap_err();
            assert_eq!(e.code, 400, "{body:?}");
            assert!(e.status.starts_with("invalid request"));
            assert_eq!(findings_reply(&latest, body, MAX).unwrap_err().code, 400);
        }
    }

    #[test]
    fn a_subscription_the_server_does_not_hold_is_named() {
        let expected = service_subjects("cw", "ID1");
        assert_eq!(expected.len(), 12);
        assert!(expected.contains(&"$SRV.STATS.connwatch.ID1".to_string()));
        assert!(expected.contains(&"cw.sweep".to_string()));
        assert!(missing(&expected, &expected).is_empty());
        let held: Vec<String> = expected
            .iter()
            .filter(|s| !s.starts_with("$SRV.PING") && *s != "cw.sweep")
            .cloned()
            .collect();
        assert_eq!(
            missing(&expected, &held),
            [
                "$SRV.PING",
                "$SRV.PING.connwatch",
                "$SRV.PING.connwatch.ID1",
                "cw.sweep"
            ]
        );
    }

    #[test]
    fn census_before_the_first_sweep_is_unavailable() {
        assert_eq!(
            census_reply(&Latest::default(), b"", MAX).unwrap_err().code,
            503
        );
    }

    /// The servers' default `max_payload`.
    const MAX: usize = 1024 * 1024;

    /// A fleet: `fleet` with 3,000 clients, each on its own IP (and one IP with two more),
    /// and a user `one` on one IP.
    fn fleet() -> Latest {
        use crate::snapshot::{Connection, Snapshot};
        let conn = |cid: u64, user: &str, ip: String| Connection {
            server: "n1".into(),
            cid,
            account: "APP".into(),
            user: user.into(),
            name: "pod".into(),
            ip: ip.into(),
            ..Connection::default()
        };
        let mut conns: Vec<Connection> = (0..3_000)
            .map(|i| conn(i, "fleet", format!("10.1.{}.{}", i / 250, i % 250)))
            .collect();
        conns.push(conn(5_000, "fleet", "10.1.0.7".into()));
        conns.push(conn(5_001, "fleet", "10.1.0.7".into()));
        conns.push(conn(5_002, "one", "10.9.9.9".into()));
        let census = crate::census::build(&conns, None, &crate::config::DetectConfig::default());
        Latest {
            sweep: Some(SweepSummary::of(&Snapshot::default())),
            census,
            findings: Vec::new(),
        }
    }

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn a_census_over_max_payload_comes_with_its_maps_cut_then_as_a_413() {
        let latest = fleet();
        let whole = census_reply(&latest, b"", MAX).unwrap();
        let w = json(&whole);
        assert!(w.get("maps_cut_to").is_none(), "whole: no mark");
        assert_eq!(w["users"][0]["by_ip"].as_object().unwrap().len(), 3_000);

        // One byte short of the whole: every user's maps cut, the totals kept, and it fits.
        let max = whole.len() - 1;
        let cut = census_reply(&latest, b"", max).unwrap();
        assert!(cut.len() <= max, "{} > {max}", cut.len());
        let c = json(&cut);
        assert_eq!(c["maps_cut_to"], 50);
        let fleet = &c["users"][0];
        assert_eq!(fleet["user"], "fleet");
        assert_eq!(fleet["connections"], 3_002);
        let by_ip = fleet["by_ip"].as_object().unwrap();
        assert_eq!(by_ip.len(), 50);
        assert_eq!(by_ip["10.1.0.7"], 3, "the largest entry is kept");
        assert_eq!(fleet["spread"]["ips"], 3_000, "the totals stay");
        assert_eq!(c["users"][1]["by_ip"]["10.9.9.9"], 1);
        assert_eq!(
            (&c["users_total"], &w["users_total"]),
            (&2.into(), &2.into())
        );

        // Smaller than even that: a 413 that says how to ask for less.
        let max = cut.len() - 1;
        let e = census_reply(&latest, b"", max).unwrap_err();
        assert_eq!(e.code, 413);
        assert!(
            e.status.contains(&format!("max_payload of {max}")),
            "{}",
            e.status
        );
        assert!(e.status.contains("\"top\""), "{}", e.status);
        // Asking for one user fits.
        let one = census_reply(&latest, br#"{"user": "one"}"#, max).unwrap();
        assert_eq!(json(&one)["users"][0]["user"], "one");
    }

    #[test]
    fn findings_over_max_payload_are_a_413() {
        let latest = fleet();
        let none = findings_reply(&latest, b"", 20).unwrap();
        assert_eq!(json(&none)["findings"], serde_json::json!([]));
        let e = findings_reply(&latest, b"", 10).unwrap_err();
        assert_eq!(e.code, 413);
        assert!(e.status.contains("\"type\""), "{}", e.status);
    }
}
