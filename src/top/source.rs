//! Where `connwatch top` gets its data: the census and findings endpoints of a running
//! `connwatch run` (polled), or, with `--standalone`, its own sweeps.

use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::data::{CensusView, Data, FindingsView};
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::nats::System;
use crate::report::{Filter, Report, SweepSummary};
use crate::rules::{self, growth::History, Context};
use crate::state::KnownServers;
use crate::sweep::Sweeper;
use crate::topology;

/// One refresh: new data, or why there is none this time.
pub type Update = Result<Data, String>;

/// Polls `<prefix>.census` and `<prefix>.findings` every `every` until `stop`.
pub async fn poll_service(
    client: Client,
    prefix: String,
    timeout: Duration,
    every: Duration,
    tx: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    let mut tick = ticker(every);
    loop {
        if !next(&mut tick, &stop).await {
            return;
        }
        let census = request(&client, format!("{prefix}.census"), timeout);
        let findings = request(&client, format!("{prefix}.findings"), timeout);
        let (census, findings) = tokio::join!(census, findings);
        let update = (|| {
            let census: CensusView = serde_json::from_slice(&census?)
                .map_err(|e| format!("{prefix}.census: unreadable reply: {e}"))?;
            let findings: FindingsView = serde_json::from_slice(&findings?)
                .map_err(|e| format!("{prefix}.findings: unreadable reply: {e}"))?;
            Ok(Data {
                census,
                findings: findings.findings,
                received: Utc::now(),
            })
        })();
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

/// A ticker whose late ticks are delayed, not bunched.
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; false once `stop` is cancelled.
async fn next(tick: &mut tokio::time::Interval, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tick.tick() => true,
    }
}

/// One request to a service endpoint; a service error is an error with its code and text.
async fn request(client: &Client, subject: String, timeout: Duration) -> Result<Bytes, String> {
    let reply = tokio::time::timeout(timeout, client.request(subject.clone(), Bytes::new()))
        .await
        .map_err(|_| format!("{subject}: no answer within {}", humantime::format_duration(timeout)))?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => format!(
                "{subject}: no connwatch service answers (is `connwatch run` running with service.enabled, or use --standalone)"
            ),
            _ => format!("{subject}: {e}"),
        })?;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
    {
        let text = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
            .map(|v| v.to_string())
            .unwrap_or_default();
        return Err(format!("{subject}: service error {code}: {text}"));
    }
    Ok(reply.payload)
}

/// Sweeps every `every` (one at a time) and sends each census with the findings the rules and
/// the lifecycle make of it, until `stop`. No limit lookups: account and server pressure are
/// not found here.
pub async fn sweep_standalone(
    system: System,
    system_account: Option<String>,
    config: Config,
    every: Duration,
    tx: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    let mut sweeper = Sweeper::new(system, &config.sweep);
    sweeper.collect(crate::sweep::Collecting::Census(
        crate::census::Aggregate::new(system_account.as_deref(), &config.detect),
    ));
    let mut known = KnownServers::default();
    let mut history = History::default();
    let mut lifecycle = Lifecycle::default();
    let mut tick = ticker(every);
    loop {
        if !next(&mut tick, &stop).await {
            return;
        }
        let snap = tokio::select! {
            _ = stop.cancelled() => return,
            s = sweeper.sweep(&mut known) => s,
        };
        let update = match snap {
            Err(e) => Err(format!("sweep failed: {e}")),
            Ok(snap) => {
                let census = topology::census_of(&snap, system_account.as_deref(), &config.detect);
                let now = snap.started.unwrap_or_else(Utc::now);
                if !snap.partial() {
                    history.record(&census, now, config.detect.growth_window);
                }
                let ctx = Context {
                    history: Some(&history),
                    ..Context::default()
                };
                let findings = rules::evaluate(&census, &config.detect, &ctx);
                lifecycle.step(&findings, !snap.partial(), now, config.advisory.renotify);
                // The same JSON the service's census endpoint serves, read the same way.
                let report =
                    Report::of_summary(SweepSummary::of(&snap), &census, &Filter::default());
                serde_json::to_vec(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|j| serde_json::from_slice(&j).map_err(|e| e.to_string()))
                    .map(|census| Data {
                        census,
                        findings: lifecycle.active.values().cloned().collect(),
                        received: Utc::now(),
                    })
            }
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}
