//! `/metrics`, `/healthz` and `/readyz` over HTTP, and what `/readyz` looks at.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Metrics;

/// What `/readyz` looks at.
pub struct Health {
    client: async_nats::Client,
    interval: Mutex<Duration>,
    /// When the last complete sweep finished, and the reconnect count when it started.
    last_complete: Mutex<Option<(Instant, u64)>>,
    reconnects: Counter,
    not_ready: Mutex<Option<String>>,
    role: Mutex<Option<&'static str>>,
}

impl Health {
    /// Health of the service using `client`, sweeping every `interval`; `reconnects` is the
    /// counter the client's reconnects increment.
    pub fn new(client: async_nats::Client, interval: Duration, reconnects: Counter) -> Self {
        Self {
            client,
            interval: Mutex::new(interval),
            last_complete: Mutex::new(None),
            reconnects,
            not_ready: Mutex::new(None),
            role: Mutex::new(None),
        }
    }

    /// The reconnect count now: pass it to [`Health::complete_sweep`] for a sweep started now.
    pub fn generation(&self) -> u64 {
        self.reconnects.get()
    }

    /// Sets (or clears, with `None`) a reason to be unready besides the sweeps, e.g. an unknown
    /// identity while kicks are on.
    pub fn set_not_ready(&self, why: Option<String>) {
        *self.not_ready.lock().expect("health lock") = why;
    }

    /// Sets the `[ha]` role (`leader` or `follower`) `/readyz` names; `None` without `[ha]`.
    pub fn set_role(&self, role: Option<&'static str>) {
        *self.role.lock().expect("health lock") = role;
    }

    /// The `[ha]` role, when set.
    pub fn role(&self) -> Option<&'static str> {
        *self.role.lock().expect("health lock")
    }

    /// Takes a new sweep interval (a reload).
    pub fn set_interval(&self, interval: Duration) {
        *self.interval.lock().expect("health lock") = interval;
    }

    /// Notes a complete sweep that started at reconnect count `generation`.
    pub fn complete_sweep(&self, generation: u64) {
        *self.last_complete.lock().expect("health lock") = Some((Instant::now(), generation));
    }

    /// Ready: connected, no other reason set, and a complete sweep within 3 sweep intervals
    /// ([`crate::config::Config::sweep_cadence`]) that
    /// started after the last reconnect (data from before an outage is not current).
    pub fn ready(&self) -> Result<(), String> {
        if self.client.connection_state() != ConnectionState::Connected {
            return Err("not connected to NATS".into());
        }
        if let Some(why) = self.not_ready.lock().expect("health lock").clone() {
            return Err(why);
        }
        match *self.last_complete.lock().expect("health lock") {
            None => Err("no complete sweep yet".into()),
            Some((_, g)) if g != self.reconnects.get() => {
                Err("no complete sweep since reconnecting to NATS".into())
            }
            Some((t, _)) if t.elapsed() > *self.interval.lock().expect("health lock") * 3 => {
                Err(format!(
                    "no complete sweep for {}s (3 intervals)",
                    t.elapsed().as_secs()
                ))
            }
            Some(_) => Ok(()),
        }
    }
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds the metrics listener: done at start, so a port in use stops connwatch at once.
pub async fn bind(listen: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(listen = %listener.local_addr()?, "metrics listening");
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(Http { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics_handler(State(s): State<Http>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<Http>) -> impl IntoResponse {
    match s.health.ready() {
        // Followers are ready too: they serve reads; the body names the role.
        Ok(()) => match s.health.role() {
            Some(role) => (StatusCode::OK, format!("ready: {role}\n")),
            None => (StatusCode::OK, "ready\n".to_string()),
        },
        Err(why) => {
            warn!(reason = %why, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
        }
    }
}
