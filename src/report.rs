//! `connwatch report`: one sweep's census, for a person (a table) or a program (JSON).
//!
//! Rendering only reads the census; it computes no findings of its own.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::census::{Census, UserCensus};
use crate::config::EnforceConfig;
use crate::enforce::{cap_for, CapSource};
use crate::snapshot::{ServerError, ServerSeen, Snapshot};
use crate::topology::{self, SilentCluster, Topology};

/// How complete a sweep was, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    /// When the sweep started.
    pub started: Option<DateTime<Utc>>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Servers expected to answer.
    pub servers_expected: usize,
    /// Servers whose connections are all counted.
    pub servers_responded: usize,
    /// Whether some connections may be missing.
    pub partial: bool,
    /// Expected servers that did not answer: known names, else route peers the live servers
    /// name, else `<unknown>` (`<unknown> (cluster C)` for a silent gateway cluster).
    pub missing: Vec<String>,
    /// Servers that answered but whose connections are not counted (an error envelope, a list
    /// that could not be read whole, conflicting replies for its id, the sweep's deadline).
    pub errors: Vec<ServerError>,
    /// The servers that answered.
    pub servers: Vec<ServerSeen>,
    /// Connections counted.
    pub connections: usize,
    /// Requests sent.
    pub requests: usize,
    /// CONNZ pages received.
    pub pages: usize,
    /// Reply bytes received.
    pub bytes: usize,
    /// The most reply bytes in flight at one time during the sweep (asked for, not yet parsed).
    pub peak_bytes_in_flight: usize,
    /// Replies ignored: unparseable, inconsistent, or not from a server the cluster knows by
    /// that id and name.
    pub bad_replies: usize,
    /// Connections listed before they authenticated (the servers require auth): nobody's yet,
    /// not in `connections` nor in any user's count.
    pub pending_connections: u64,
    /// `connwatch run` with the live census: why the live view is not complete (events may
    /// have been lost since the last complete sweep); absent when it is, and for a sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_gap: Option<String>,
    /// Server name → its cluster and JetStream domain (servers that answered, and missing
    /// servers whose cluster an earlier sweep saw); absent when no server has a cluster.
    #[serde(skip_serializing_if = "Topology::is_empty")]
    pub topology: Topology,
    /// Clusters none of whose servers answered, each with its missing servers and the words
    /// `cluster <name> silent (gateway down?)`.
    pub silent_clusters: Vec<SilentCluster>,
}

impl SweepSummary {
    /// Summarises a snapshot.
    pub fn of(s: &Snapshot) -> Self {
        Self {
            started: s.started,
            duration_ms: s.duration.as_millis() as u64,
            servers_expected: s.servers_expected,
            servers_responded: s.servers.len(),
            partial: s.partial(),
            missing: s.missing.clone(),
            errors: s.errors.clone(),
            servers: s.servers.clone(),
            connections: s.connection_count() as usize,
            requests: s.requests,
            pages: s.pages,
            bytes: s.bytes,
            peak_bytes_in_flight: s.peak_bytes_in_flight,
            bad_replies: s.bad_replies,
            pending_connections: s.pending,
            live_gap: s.gap.clone(),
            topology: if s.topology.values().any(|p| p.cluster.is_some()) {
                s.topology.clone()
            } else {
                Topology::new()
            },
            silent_clusters: s.silent_clusters(),
        }
    }
}

/// Which users to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this account (key or name).
    pub account: Option<String>,
    /// Only this user (key or name).
    pub user: Option<String>,
    /// At most this many users; 0 for all.
    pub top: usize,
}

impl Filter {
    fn keeps(&self, u: &UserCensus) -> bool {
        let matches = |want: &Option<String>, key: &str, name: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| w == key || name.as_deref() == Some(w))
        };
        matches(&self.account, &u.account, &u.account_name)
            && matches(&self.user, &u.user, &u.user_name)
    }
}

/// The report, as printed with `--format json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report<'a> {
    /// The sweep's completeness and cost.
    pub sweep: SweepSummary,
    /// Users matching the filter, before `--top`.
    pub users_total: usize,
    /// The users shown, most connections first.
    pub users: Vec<ReportUser<'a>>,
    /// Set when each user's `by_name` and `by_ip` were cut to this many largest entries (the
    /// `census` endpoint, when the whole census is over the servers' `max_payload`); absent
    /// when they are whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps_cut_to: Option<usize>,
}

/// A user in the report: its census and, when one applies, its cap.
#[derive(Debug, Clone, Serialize)]
pub struct ReportUser<'a> {
    /// The user's census.
    #[serde(flatten)]
    pub census: &'a UserCensus,
    /// Its cap (`[enforce]`), when one applies; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<UserCap>,
}

impl std::ops::Deref for ReportUser<'_> {
    type Target = UserCensus;

    fn deref(&self) -> &UserCensus {
        self.census
    }
}

/// A user's cap as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserCap {
    /// The most connections the user may hold, cluster-wide.
    pub max_connections: u64,
    /// Where it comes from: `user`, `account` (an `[[enforce.caps]]` entry) or `default`.
    pub source: CapSource,
    /// `enforced`, `dry_run` (announced, nothing closed) or `off` (`enforce.enabled` false).
    pub mode: &'static str,
    /// Whether the user holds more connections than the cap.
    pub over: bool,
}

impl UserCap {
    /// The cap of `u` under `cfg`; `None` when none applies (or for the system account, never
    /// capped).
    pub fn of(u: &UserCensus, cfg: &EnforceConfig) -> Option<Self> {
        if u.system {
            return None;
        }
        let cap = cap_for(cfg, &u.account, &u.account_name, &u.user, &u.user_name)?;
        Some(Self {
            max_connections: cap.max,
            source: cap.source,
            mode: match (cfg.enabled, cfg.dry_run) {
                (false, _) => "off",
                (true, true) => "dry_run",
                (true, false) => "enforced",
            },
            over: u.connections > cap.max,
        })
    }
}

impl<'a> Report<'a> {
    /// Builds the report of a sweep and its census.
    pub fn new(snap: &Snapshot, census: &'a Census, filter: &Filter) -> Self {
        Self::of_summary(SweepSummary::of(snap), census, filter)
    }

    /// Builds the report from a sweep's summary and its census.
    pub fn of_summary(sweep: SweepSummary, census: &'a Census, filter: &Filter) -> Self {
        let matching: Vec<&UserCensus> = census.users.iter().filter(|u| filter.keeps(u)).collect();
        let users_total = matching.len();
        let take = if filter.top == 0 {
            usize::MAX
        } else {
            filter.top
        };
        Self {
            sweep,
            users_total,
            users: matching
                .into_iter()
                .take(take)
                .map(|census| ReportUser { census, cap: None })
                .collect(),
            maps_cut_to: None,
        }
    }

    /// Adds each user's cap, where one applies.
    pub fn with_caps(mut self, cfg: &EnforceConfig) -> Self {
        for u in &mut self.users {
            u.cap = UserCap::of(u.census, cfg);
        }
        self
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// The report as a table for a person.
    pub fn to_table(&self) -> String {
        let s = &self.sweep;
        let mut out = String::new();
        let state = if s.partial { "PARTIAL" } else { "complete" };
        let _ = writeln!(
            out,
            "sweep {state}: {}/{} servers answered, {} connections, {} requests, {} in {} ms",
            s.servers_responded,
            s.servers_expected,
            s.connections,
            s.requests,
            human_bytes(s.bytes),
            s.duration_ms
        );
        for c in &s.silent_clusters {
            let _ = writeln!(out, "  {}: {} missing", c.says, c.servers.join(", "));
        }
        let lone: Vec<String> = s
            .missing
            .iter()
            .filter(|m| !s.silent_clusters.iter().any(|c| c.servers.contains(m)))
            .map(|m| topology::missing_label(&s.topology, m))
            .collect();
        if !lone.is_empty() {
            let _ = writeln!(out, "  missing (no answer): {}", lone.join(", "));
        }
        // Servers grouped by cluster, in a super-cluster (one cluster needs no grouping).
        let clusters: std::collections::BTreeSet<_> = s
            .topology
            .values()
            .filter_map(|p| p.cluster.as_deref())
            .collect();
        if clusters.len() > 1 {
            let counts: std::collections::BTreeMap<&str, u64> = s
                .servers
                .iter()
                .map(|v| (v.name.as_str(), v.connections))
                .collect();
            let groups = topology::group(
                &s.topology,
                s.servers
                    .iter()
                    .map(|v| v.name.as_str())
                    .chain(s.missing.iter().map(String::as_str)),
            );
            for (cluster, servers) in groups {
                let list: Vec<String> = servers
                    .iter()
                    .map(|n| match counts.get(n) {
                        Some(c) => format!("{n}:{c}"),
                        None => format!("{n}:-"),
                    })
                    .collect();
                let name = if cluster.is_empty() {
                    "(no cluster)"
                } else {
                    cluster.as_str()
                };
                let _ = writeln!(out, "  cluster {name}: {}", list.join(" "));
            }
        }
        for e in &s.errors {
            let _ = writeln!(
                out,
                "  error from {} (its connections are not counted): {}",
                e.server, e.error
            );
        }
        if s.bad_replies > 0 {
            let _ = writeln!(
                out,
                "  bad replies ignored: {} (unparseable, inconsistent, or not from a server the cluster knows by that id and name)",
                s.bad_replies
            );
        }
        if s.partial {
            let _ = writeln!(
                out,
                "  counts below may be too low: not every server's connections are in them"
            );
        }
        let _ = writeln!(out);
        let header = [
            "ACCOUNT",
            "USER",
            "CONNS",
            "LIMIT",
            "CAP",
            "IDLE0",
            "ONCE",
            "SERVERS",
            "TOP CLIENT NAME",
            "TOP IP",
        ];
        let rows: Vec<[String; 10]> = self
            .users
            .iter()
            .map(|u| {
                [
                    u.account_label() + if u.system { " [system]" } else { "" },
                    u.label(),
                    u.connections.to_string(),
                    format!(
                        "{}{}",
                        u.threshold,
                        if u.over_threshold { " OVER" } else { "" }
                    ),
                    u.cap.as_ref().map_or("-".into(), |c| {
                        let mode = match c.mode {
                            "enforced" => "",
                            "dry_run" => " dry-run",
                            _ => " off",
                        };
                        let over = if c.over { " OVER" } else { "" };
                        format!("{}{mode}{over}", c.max_connections)
                    }),
                    u.idle_zero_msgs.to_string(),
                    u.idle_used_once.to_string(),
                    u.by_server
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    top_of(&u.by_name, "(unnamed)"),
                    top_of(&u.by_ip, "?"),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c}{}  ", " ".repeat(w - c.chars().count()));
                }
            }
            l
        };
        let _ = writeln!(out, "{}", line(&header.map(String::from)));
        for r in &rows {
            let _ = writeln!(out, "{}", line(r));
        }
        if self.users_total > self.users.len() {
            let _ = writeln!(
                out,
                "({} more users; --top 0 shows all)",
                self.users_total - self.users.len()
            );
        }
        out
    }
}

/// The most frequent key with its count, and how many others there are.
fn top_of(m: &std::collections::BTreeMap<String, u64>, empty: &str) -> String {
    let Some((k, v)) = m.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else {
        return String::new();
    };
    let k = if k.is_empty() { empty } else { k.as_str() };
    let others = m.len() - 1;
    if others == 0 {
        format!("{k} ({v})")
    } else {
        format!("{k} ({v}) +{others} more")
    }
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ServerFailure;
    use std::collections::BTreeMap;

    fn user(account: &str, user: &str, n: u64) -> UserCensus {
        UserCensus {
            account: account.into(),
            user: user.into(),
            connections: n,
            threshold: 100,
            over_threshold: n > 100,
            by_name: BTreeMap::from([("".into(), n)]).into(),
            ..UserCensus::default()
        }
    }

    fn census() -> Census {
        Census {
            connections: 260,
            users: vec![
                user("APP", "leaky", 250),
                user("APP", "ok", 7),
                user("B", "x", 3),
            ],
        }
    }

    #[test]
    fn filter_and_top_select_users() {
        let c = census();
        let snap = Snapshot::default();
        let r = Report::new(
            &snap,
            &c,
            &Filter {
                account: Some("APP".into()),
                top: 1,
                ..Filter::default()
            },
        );
        assert_eq!(r.users_total, 2);
        assert_eq!(r.users.len(), 1);
        assert_eq!(r.users[0].user, "leaky");
        let r = Report::new(
            &snap,
            &c,
            &Filter {
                user: Some("x".into()),
                ..Filter::default()
            },
        );
        assert_eq!(
            r.users.iter().map(|u| u.user.as_str()).collect::<Vec<_>>(),
            vec!["x"]
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let c = census();
        let snap = Snapshot {
            servers_expected: 3,
            missing: vec!["n3".into()],
            ..Snapshot::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&Report::new(&snap, &c, &Filter::default()).to_json()).unwrap();
        for key in [
            "servers_expected",
            "servers_responded",
            "partial",
            "missing",
            "connections",
        ] {
            assert!(v["sweep"].get(key).is_some(), "sweep.{key}");
        }
        assert_eq!(v["sweep"]["partial"], true);
        for key in [
            "account",
            "user",
            "connections",
            "by_server",
            "by_name",
            "by_ip",
            "idle_zero_msgs",
            "idle_used_once",
            "leak_suspects",
            "over_threshold",
        ] {
            assert!(v["users"][0].get(key).is_some(), "users[].{key}");
        }
    }

    #[test]
    fn table_flags_partial_and_over_threshold() {
        let c = census();
        let snap = Snapshot {
            servers_expected: 3,
            missing: vec!["n3".into()],
            errors: vec![ServerError {
                server: "n2".into(),
                error: ServerFailure::ErrorReply {
                    code: 500,
                    description: "boom".into(),
                    directed: false,
                },
            }],
            bad_replies: 2,
            ..Snapshot::default()
        };
        let t = Report::new(&snap, &c, &Filter::default()).to_table();
        assert!(t.contains("PARTIAL"), "{t}");
        assert!(t.contains("missing (no answer): n3"), "{t}");
        assert!(
            t.contains("error from n2 (its connections are not counted): boom"),
            "{t}"
        );
        assert!(t.contains("bad replies ignored: 2"), "{t}");
        assert!(t.contains("100 OVER"), "{t}");
        assert!(t.contains("(unnamed) (250)"), "{t}");
    }

    #[test]
    fn caps_show_beside_the_threshold_when_one_applies() {
        let c = census();
        let cfg = EnforceConfig {
            enabled: true,
            dry_run: false,
            caps: vec![crate::config::CapRule {
                account: "APP".into(),
                user: None,
                max_connections: 200,
            }],
            ..EnforceConfig::default()
        };
        let r = Report::new(&Snapshot::default(), &c, &Filter::default()).with_caps(&cfg);
        let t = r.to_table();
        assert!(t.contains("LIMIT     CAP"), "{t}");
        assert!(t.contains("100 OVER  200 OVER"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["users"][0]["cap"]["max_connections"], 200);
        assert_eq!(v["users"][0]["cap"]["source"], "account");
        assert_eq!(v["users"][0]["cap"]["mode"], "enforced");
        assert!(v["users"][2].get("cap").is_none(), "B has no cap: {v:#}");
        assert!(
            v["users"][0].get("connections").is_some(),
            "the census is flattened"
        );
    }
}
