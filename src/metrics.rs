//! Prometheus metrics, `/healthz` and `/readyz` over HTTP.
//!
//! Per-user series are bounded: only users with at least `metrics.user_floor` connections, and
//! at most `metrics.max_users` of them (the largest); the set is rebuilt after every sweep, so a
//! user that drops out loses its series.

mod cluster;
mod http;

pub use cluster::ClusterLabel;
pub use http::{bind, serve, Health};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::advisory::publisher::PublisherStats;
use crate::census::{Census, UserCensus};
use crate::config::MetricsConfig;
use crate::lifecycle::Lifecycle;
use crate::rules::Kind;
use crate::snapshot::Snapshot;

/// Labels of a per-user series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabels {
    /// Account (name or key).
    pub account: String,
    /// User (name or key).
    pub user: String,
}

/// A label naming an advisory type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The advisory type's name.
    pub r#type: String,
}

/// A label naming a limit lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabel {
    /// `varz` (a server's `max_connections`) or `accountz` (an account's connection limit).
    pub lookup: String,
}

/// A label naming why a server's connections were not counted
/// ([`crate::snapshot::ServerFailure::kind`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The failure's kind, e.g. `timeout`, `deadline`, `error_reply`.
    pub kind: String,
}

/// A label naming a result: of a kick, or of a configuration reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Kicks: `sent`, `dry_run` or `failed`; reloads: `applied` or `refused`.
    pub result: String,
}

/// Everything connwatch counts.
pub struct Metrics {
    registry: Registry,
    /// Sweeps run.
    pub sweeps: Counter,
    /// Sweeps that failed as a whole.
    pub sweeps_failed: Counter,
    /// Partial sweeps.
    pub sweeps_partial: Counter,
    /// Sweep starts skipped because the previous sweep ran over.
    pub sweeps_skipped: Counter,
    /// Sweep duration.
    pub sweep_duration: Histogram,
    /// Servers expected by the last sweep.
    pub servers_expected: Gauge,
    /// Servers that answered the last sweep.
    pub servers_responded: Gauge,
    /// Connections counted by the last sweep.
    pub connections: Gauge,
    /// Per-user connections (bounded, see the module docs).
    pub user_connections: Family<UserLabels, Gauge>,
    /// Findings firing, by type.
    pub findings_firing: Family<TypeLabel, Gauge>,
    /// Connections by cluster in the last view.
    pub cluster_connections: Family<ClusterLabel, Gauge>,
    /// 1 for each cluster none of whose servers answered the last sweep.
    pub cluster_silent: Family<ClusterLabel, Gauge>,
    /// Kicks by result.
    pub kicks: Family<ResultLabel, Counter>,
    /// Kicked clients that came back.
    pub kicks_ineffective: Counter,
    /// Advisory publishing.
    pub advisories: Arc<PublisherStats>,
    /// Advisories waiting to be published.
    pub advisories_queued: Gauge,
    /// 1 while this replica acts (holds the `[ha]` lease, or runs alone), else 0.
    pub leader: Gauge,
    /// When `leader` last changed (Unix seconds).
    pub leader_since: Gauge,
    /// Reconnects of connwatch's NATS connection.
    pub reconnects: Counter,
    /// Losses of connwatch's NATS connection.
    pub disconnects: Counter,
    /// Configuration reloads (SIGHUP) by result.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Server replies that could not be parsed.
    pub bad_replies: Counter,
    /// Connections the last sweep saw listed before they authenticated (not counted).
    pub pending_connections: Gauge,
    /// Servers that answered a sweep but whose connections were not counted, by kind.
    pub server_errors: Family<KindLabel, Counter>,
    /// Unix time of the last complete sweep.
    pub last_complete_sweep: Gauge<f64, AtomicU64>,
    /// 1 when connwatch knows the system account and its own connection, else 0 (no kicks).
    pub identity_known: Gauge,
    /// Limit lookups that failed (the limit is unknown, not "none"), by lookup.
    pub limit_lookups_failed: Family<LookupLabel, Counter>,
    /// `connwatch.sweep` requests answered with the latest sweep instead of a new one.
    pub sweep_requests_shared: Counter,
    /// Messages connwatch's client dropped because a subscription could not keep up.
    pub slow_consumers: Counter,
    /// Connect and disconnect events applied to the live census.
    pub live_events: Counter,
    /// Gaps in the live census (events may have been lost), by reason.
    pub live_gaps: Family<ReasonLabel, Counter>,
    /// STATSZ requests the live census sent: `quiet` (one server, quiet past its heartbeat),
    /// `resolve` (every server, before a resolve from the events).
    pub live_statsz_requests: Family<ReasonLabel, Counter>,
    /// 1 while the live census is complete (reconciled by a complete sweep since the last gap).
    pub live_complete: Gauge,
    /// 1 while the events come faster than `live.max_event_rate` and are not followed.
    pub live_over_rate: Gauge,
    /// Servers' announced account counts that disagreed with the live census (each a gap).
    pub live_mismatches: Counter,
    /// Client connections each server announced last, summed over its accounts, by server.
    pub live_announced: Family<ServerLabel, Gauge>,
    /// Servers' lists the live census took as each came, while its sweep still ran.
    pub live_lists_taken: Counter,
    /// Connections refused (account or server limit, failed authentication), by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Per-user connection caps (`[enforce]`).
    pub caps: crate::enforce::metrics::CapMetrics,
}

/// A label naming a server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// Server name.
    pub server: String,
}

/// A label naming why the live census has a gap.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `reconnect`, `slow_consumer`, `server_silent`, `server_new`, `account_new`, `count_mismatch`.
    pub reason: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("connwatch");
        let m = Self {
            sweeps: Counter::default(),
            sweeps_failed: Counter::default(),
            sweeps_partial: Counter::default(),
            sweeps_skipped: Counter::default(),
            sweep_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            servers_expected: Gauge::default(),
            servers_responded: Gauge::default(),
            connections: Gauge::default(),
            user_connections: Family::default(),
            findings_firing: Family::default(),
            cluster_connections: Family::default(),
            cluster_silent: Family::default(),
            kicks: Family::default(),
            kicks_ineffective: Counter::default(),
            advisories: Arc::new(PublisherStats::default()),
            advisories_queued: Gauge::default(),
            leader: Gauge::default(),
            leader_since: Gauge::default(),
            reconnects: Counter::default(),
            disconnects: Counter::default(),
            config_reloads: Family::default(),
            bad_replies: Counter::default(),
            pending_connections: Gauge::default(),
            server_errors: Family::default(),
            last_complete_sweep: Gauge::default(),
            identity_known: Gauge::default(),
            limit_lookups_failed: Family::default(),
            sweep_requests_shared: Counter::default(),
            slow_consumers: Counter::default(),
            live_events: Counter::default(),
            live_gaps: Family::default(),
            live_statsz_requests: Family::default(),
            connections_refused: Family::default(),
            live_complete: Gauge::default(),
            live_over_rate: Gauge::default(),
            live_mismatches: Counter::default(),
            live_announced: Family::default(),
            live_lists_taken: Counter::default(),
            caps: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("sweeps", "Sweeps run", m.sweeps.clone());
        r.register(
            "sweeps_failed",
            "Sweeps that failed as a whole",
            m.sweeps_failed.clone(),
        );
        r.register(
            "sweeps_partial",
            "Sweeps where a server did not answer or failed",
            m.sweeps_partial.clone(),
        );
        r.register(
            "sweeps_skipped",
            "Sweep starts skipped because the previous sweep ran over",
            m.sweeps_skipped.clone(),
        );
        r.register(
            "sweep_duration_seconds",
            "Duration of a sweep",
            m.sweep_duration.clone(),
        );
        r.register(
            "servers_expected",
            "Servers expected to answer the last sweep",
            m.servers_expected.clone(),
        );
        r.register(
            "servers_responded",
            "Servers that answered the last sweep completely",
            m.servers_responded.clone(),
        );
        r.register(
            "connections",
            "Connections counted by the last sweep",
            m.connections.clone(),
        );
        r.register(
            "cluster_connections",
            "Connections by cluster in the last view",
            m.cluster_connections.clone(),
        );
        r.register(
            "cluster_silent",
            "1 for a cluster none of whose servers answered the last sweep (a gateway down?)",
            m.cluster_silent.clone(),
        );
        r.register(
            "user_connections",
            "Connections of a user across the cluster (users over metrics.user_floor, at most metrics.max_users)",
            m.user_connections.clone(),
        );
        r.register(
            "findings_firing",
            "Findings firing, by advisory type",
            m.findings_firing.clone(),
        );
        r.register(
            "kicks",
            "Kicks by result (sent, dry_run, failed)",
            m.kicks.clone(),
        );
        r.register(
            "kicks_ineffective",
            "Kicked clients seen coming back",
            m.kicks_ineffective.clone(),
        );
        m.advisories.register(r);
        r.register(
            "advisories_queued",
            "Advisories waiting to be published",
            m.advisories_queued.clone(),
        );
        r.register(
            "leader",
            "1 while this replica acts (holds the HA lease, or runs alone), else 0",
            m.leader.clone(),
        );
        r.register(
            "leader_since_seconds",
            "When connwatch_leader last changed (Unix time)",
            m.leader_since.clone(),
        );
        r.register(
            "nats_reconnects",
            "Reconnects of connwatch's NATS connection",
            m.reconnects.clone(),
        );
        r.register(
            "nats_disconnects",
            "Losses of connwatch's NATS connection",
            m.disconnects.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result (applied, refused)",
            m.config_reloads.clone(),
        );
        r.register(
            "bad_replies",
            "Server replies that could not be parsed (logged and skipped)",
            m.bad_replies.clone(),
        );
        r.register(
            "pending_connections",
            "Connections the last sweep saw listed before they authenticated: nobody's yet, not counted",
            m.pending_connections.clone(),
        );
        r.register(
            "server_errors",
            "Servers that answered a sweep but whose connections were not counted, by kind",
            m.server_errors.clone(),
        );
        r.register(
            "last_complete_sweep_timestamp_seconds",
            "Unix time of the last complete sweep",
            m.last_complete_sweep.clone(),
        );
        r.register(
            "identity_known",
            "1 when the system account and connwatch's own connection are known; 0 means no kicks",
            m.identity_known.clone(),
        );
        r.register(
            "limit_lookups_failed",
            "Limit lookups (varz, accountz) that failed: the limit is unknown and retried next round",
            m.limit_lookups_failed.clone(),
        );
        r.register(
            "sweep_requests_shared",
            "connwatch.sweep requests answered with the latest sweep (service.sweep_min_interval)",
            m.sweep_requests_shared.clone(),
        );
        r.register(
            "nats_slow_consumers",
            "Messages connwatch's NATS client dropped because a subscription could not keep up",
            m.slow_consumers.clone(),
        );
        r.register(
            "live_events",
            "Connect and disconnect events applied to the live census",
            m.live_events.clone(),
        );
        r.register(
            "live_gaps",
            "Gaps in the live census (events may have been lost; a sweep follows), by reason",
            m.live_gaps.clone(),
        );
        r.register(
            "live_statsz_requests",
            "STATSZ requests the live census sent: quiet (one server past its heartbeat), resolve (every server, before a resolve)",
            m.live_statsz_requests.clone(),
        );
        r.register(
            "live_complete",
            "1 while the live census is complete: reconciled by a complete sweep since the last gap",
            m.live_complete.clone(),
        );
        r.register(
            "live_over_rate",
            "1 while the events come faster than live.max_event_rate and are not followed (sweeps instead)",
            m.live_over_rate.clone(),
        );
        r.register(
            "live_mismatches",
            "Servers' announced account connection counts that disagreed with the live census for 3 s (each a gap)",
            m.live_mismatches.clone(),
        );
        r.register(
            "live_announced_connections",
            "Client connections each server announced last ($SYS.SERVER.ACCOUNT.*.CONNS), summed over its accounts",
            m.live_announced.clone(),
        );
        r.register(
            "live_lists_taken",
            "Servers' lists the live census took as each came, while its sweep still ran (read with directed requests once who is who was settled)",
            m.live_lists_taken.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused, from the servers' events, by reason (account_limit, server_limit, auth)",
            m.connections_refused.clone(),
        );
        m.caps.register(r);
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// Takes in one sweep: its duration, completeness and errors.
    pub fn observe_sweep(&self, snap: &Snapshot) {
        self.sweep_duration.observe(snap.duration.as_secs_f64());
        self.servers_expected.set(snap.servers_expected as i64);
        self.servers_responded.set(snap.servers.len() as i64);
        self.bad_replies.inc_by(snap.bad_replies as u64);
        self.pending_connections.set(snap.pending as i64);
        self.live_lists_taken.inc_by(snap.handed.len() as u64);
        for e in &snap.errors {
            self.server_errors
                .get_or_create(&KindLabel {
                    kind: e.error.kind().into(),
                })
                .inc();
        }
        if snap.partial() {
            self.sweeps_partial.inc();
        } else if let Some(t) = snap.started {
            self.last_complete_sweep
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Takes in one round's view (a sweep's, or the live census's) and the findings after it.
    pub fn observe(
        &self,
        snap: &Snapshot,
        census: &Census,
        findings: &Lifecycle,
        cfg: &MetricsConfig,
    ) {
        self.connections.set(snap.connection_count() as i64);
        self.observe_clusters(snap);
        self.user_connections.clear();
        for u in user_series(census, cfg) {
            let labels = UserLabels {
                account: u.account.clone(),
                user: u.user.clone(),
            };
            self.user_connections
                .get_or_create(&labels)
                .set(u.connections as i64);
        }
        let firing = findings.firing_by_kind();
        for kind in Kind::ALL {
            let n = firing.get(&kind).copied().unwrap_or(0);
            self.findings_firing
                .get_or_create(&TypeLabel {
                    r#type: kind.name().into(),
                })
                .set(n as i64);
        }
    }

    /// Counts a failed limit lookup (`varz` or `accountz`).
    pub fn lookup_failed(&self, lookup: &str) {
        self.limit_lookups_failed
            .get_or_create(&LookupLabel {
                lookup: lookup.into(),
            })
            .inc();
    }

    /// Counts a gap in the live census by reason.
    pub fn live_gap(&self, reason: &str) {
        self.live_gaps
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a STATSZ request of the live census by reason (`quiet`, `resolve`).
    pub fn live_statsz_request(&self, reason: &str) {
        self.live_statsz_requests
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a refused connection by reason (`account_limit`, `server_limit`, `auth`).
    pub fn refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a kick by result (`sent`, `dry_run`, `failed`).
    pub fn kick(&self, result: &str) {
        self.kicks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Counts a configuration reload by result (`applied`, `refused`).
    pub fn reload(&self, result: &str) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Notes whether this replica acts, and since when.
    pub fn leader(&self, acting: bool, since: chrono::DateTime<chrono::Utc>) {
        self.leader.set(i64::from(acting));
        self.leader_since.set(since.timestamp());
    }

    /// The counters the NATS client's connection events increment.
    pub fn connection_events(&self) -> crate::nats::ConnectionEvents {
        crate::nats::ConnectionEvents {
            reconnects: self.reconnects.clone(),
            disconnects: self.disconnects.clone(),
            slow_consumers: self.slow_consumers.clone(),
        }
    }
}

/// The users that get a per-user series: at least `user_floor` connections, the largest
/// `max_users` of them.
pub fn user_series<'a>(census: &'a Census, cfg: &MetricsConfig) -> Vec<&'a UserCensus> {
    let mut users: Vec<&UserCensus> = census
        .users
        .iter()
        .filter(|u| u.connections >= cfg.user_floor)
        .collect();
    users.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then_with(|| (&a.account, &a.user).cmp(&(&b.account, &b.user)))
    });
    users.truncate(cfg.max_users);
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ServerError, ServerFailure};

    fn census(counts: &[(&str, u64)]) -> Census {
        Census {
            connections: counts.iter().map(|c| c.1).sum(),
            users: counts
                .iter()
                .map(|(u, n)| UserCensus {
                    account: "A".into(),
                    user: u.to_string(),
                    connections: *n,
                    ..UserCensus::default()
                })
                .collect(),
        }
    }

    #[test]
    fn per_user_series_are_bounded() {
        let c = census(&[("a", 5), ("b", 500), ("c", 50), ("d", 9), ("e", 10)]);
        let cfg = MetricsConfig {
            user_floor: 10,
            max_users: 2,
            ..MetricsConfig::default()
        };
        let names: Vec<&str> = user_series(&c, &cfg)
            .iter()
            .map(|u| u.user.as_str())
            .collect();
        assert_eq!(names, vec!["b", "c"]);
    }

    #[test]
    fn exposition_has_the_documented_families_and_drops_stale_users() {
        let m = Metrics::new();
        let snap = Snapshot {
            servers_expected: 3,
            errors: vec![ServerError {
                server: "n3".into(),
                error: ServerFailure::Deadline { in_flight: true },
            }],
            ..Snapshot::default()
        };
        let cfg = MetricsConfig {
            user_floor: 1,
            ..MetricsConfig::default()
        };
        m.observe_sweep(&snap);
        m.live_gap("reconnect");
        m.live_announced
            .get_or_create(&ServerLabel {
                server: "n1".into(),
            })
            .set(7);
        m.observe(
            &snap,
            &census(&[("leaky", 150)]),
            &Lifecycle::default(),
            &cfg,
        );
        m.kick("dry_run");
        m.reload("refused");
        m.connection_events().disconnects.inc();
        let text = m.render();
        for name in [
            "connwatch_sweeps_total",
            "connwatch_sweep_duration_seconds_bucket",
            "connwatch_servers_expected 3",
            "connwatch_user_connections{account=\"A\",user=\"leaky\"} 150",
            "connwatch_findings_firing{type=\"excessive_user_connections\"} 0",
            "connwatch_kicks_total{result=\"dry_run\"} 1",
            "connwatch_advisories_dropped_total",
            "connwatch_advisories_too_large_total 0",
            "connwatch_nats_reconnects_total",
            "connwatch_nats_disconnects_total 1",
            "connwatch_config_reloads_total{result=\"refused\"} 1",
            "connwatch_bad_replies_total",
            "connwatch_pending_connections 0",
            "connwatch_server_errors_total{kind=\"deadline\"} 1",
            "connwatch_live_gaps_total{reason=\"reconnect\"} 1",
            "connwatch_live_complete",
            "connwatch_live_events_total",
            "connwatch_nats_slow_consumers_total",
            "connwatch_live_mismatches_total 0",
            "connwatch_live_announced_connections{server=\"n1\"} 7",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        m.observe(
            &snap,
            &census(&[("other", 20)]),
            &Lifecycle::default(),
            &cfg,
        );
        assert!(
            !m.render().contains("user=\"leaky\""),
            "stale user series kept"
        );
    }
}
