//! Balance checks, the ones operators of large deployments ask for:
//!
//! - `server_connection_hotspot`: a server holding more than `detect.hotspot_ratio` × its
//!   cluster's average connections (at least `detect.hotspot_min`), in a cluster of at least two
//!   servers that all answered;
//! - `account_connection_imbalance`: more than `detect.imbalance_share` of an account's
//!   connections on one server, for accounts with at least `detect.imbalance_min` connections.
//!
//! Plain functions over plain data. Both fail closed: a cluster with a silent or failed server
//! has no known average, and a partial view has no known shares, so they find nothing there;
//! the lifecycle holds what was firing (a partial view never resolves).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::Census;
use crate::config::DetectConfig;
use crate::snapshot::Snapshot;
use crate::topology;

use super::{round3, Finding};

/// `server_connection_hotspot`: a server far above its cluster's average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HotspotFinding {
    /// Server name.
    pub server: String,
    /// Server id.
    pub server_id: String,
    /// Its cluster.
    pub cluster: String,
    /// Open connections of the server.
    pub connections: u64,
    /// The cluster's average connections per server.
    #[schemars(range(min = 0))]
    pub cluster_average: f64,
    /// `connections / cluster_average`, rounded to 3 decimals.
    #[schemars(range(min = 0))]
    pub ratio: f64,
    /// `detect.hotspot_ratio`.
    pub threshold_ratio: f64,
    /// Every server of the cluster → its connections.
    pub by_server: BTreeMap<String, u64>,
}

/// `account_connection_imbalance`: most of an account's connections on one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImbalanceFinding {
    /// Account (name, or public key in operator mode).
    pub account: String,
    /// The account's human name; present only when the server gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// Open connections of the account, cluster-wide.
    pub connections: u64,
    /// The server holding the most of them.
    pub server: String,
    /// Its share of the account's connections, rounded to 3 decimals.
    #[schemars(range(min = 0, max = 1))]
    pub share: f64,
    /// `detect.imbalance_share`.
    pub threshold_share: f64,
    /// Server name → the account's connections there.
    pub by_server: BTreeMap<String, u64>,
    /// Cluster name → the account's connections there; empty when no server has a cluster.
    pub by_cluster: BTreeMap<String, u64>,
}

/// Both balance checks over one view.
pub fn evaluate(snap: &Snapshot, census: &Census, detect: &DetectConfig) -> Vec<Finding> {
    let mut out: Vec<Finding> = hotspots(snap, detect)
        .into_iter()
        .map(Finding::ServerConnectionHotspot)
        .collect();
    if !snap.partial() {
        out.extend(
            imbalances(census, &snap.topology, detect)
                .into_iter()
                .map(Finding::AccountConnectionImbalance),
        );
    }
    out
}

/// Servers above `detect.hotspot_ratio` × their cluster's average, in clusters of at least two
/// servers, every one of which answered.
pub fn hotspots(snap: &Snapshot, detect: &DetectConfig) -> Vec<HotspotFinding> {
    let unknown: Vec<&str> = snap
        .missing
        .iter()
        .chain(snap.errors.iter().map(|e| &e.server))
        .filter_map(|s| topology::cluster_of(&snap.topology, s))
        .collect();
    let mut clusters: BTreeMap<&str, Vec<&crate::snapshot::ServerSeen>> = BTreeMap::new();
    for s in &snap.servers {
        if let Some(c) = topology::cluster_of(&snap.topology, &s.name) {
            clusters.entry(c).or_default().push(s);
        }
    }
    // Any server that is missing without a known cluster could be in any of them.
    let anonymous_missing = snap.missing.len() + snap.errors.len() > unknown.len();
    let mut out = Vec::new();
    for (cluster, servers) in clusters {
        if servers.len() < 2 || unknown.contains(&cluster) || anonymous_missing {
            continue;
        }
        let total: u64 = servers.iter().map(|s| s.connections).sum();
        let average = total as f64 / servers.len() as f64;
        for s in &servers {
            let ratio = s.connections as f64 / average.max(f64::MIN_POSITIVE);
            if s.connections >= detect.hotspot_min && ratio > detect.hotspot_ratio {
                out.push(HotspotFinding {
                    server: s.name.clone(),
                    server_id: s.id.clone(),
                    cluster: cluster.to_string(),
                    connections: s.connections,
                    cluster_average: round3(average),
                    ratio: round3(ratio),
                    threshold_ratio: detect.hotspot_ratio,
                    by_server: servers
                        .iter()
                        .map(|v| (v.name.clone(), v.connections))
                        .collect(),
                });
            }
        }
    }
    out
}

/// Accounts (the system account left out) with at least `detect.imbalance_min` connections and
/// more than `detect.imbalance_share` of them on one server.
pub fn imbalances(
    census: &Census,
    topology: &topology::Topology,
    detect: &DetectConfig,
) -> Vec<ImbalanceFinding> {
    let mut accounts: BTreeMap<&str, (&Option<String>, BTreeMap<String, u64>)> = BTreeMap::new();
    for u in census.users.iter().filter(|u| !u.system) {
        let e = accounts
            .entry(u.account.as_str())
            .or_insert((&u.account_name, BTreeMap::new()));
        for (server, n) in &u.by_server {
            *e.1.entry(server.clone()).or_default() += n;
        }
    }
    let mut out = Vec::new();
    for (account, (name, by_server)) in accounts {
        let connections: u64 = by_server.values().sum();
        if connections == 0 || connections < detect.imbalance_min {
            continue;
        }
        let Some((server, most)) = by_server
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        else {
            continue;
        };
        let share = *most as f64 / connections as f64;
        if share > detect.imbalance_share {
            let by_cluster = if topology.values().any(|p| p.cluster.is_some()) {
                topology::by_cluster(topology, &by_server)
            } else {
                BTreeMap::new()
            };
            out.push(ImbalanceFinding {
                account: account.to_string(),
                account_name: name.clone(),
                connections,
                server: server.clone(),
                share: round3(share),
                threshold_share: detect.imbalance_share,
                by_cluster,
                by_server,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::UserCensus;
    use crate::snapshot::ServerSeen;
    use crate::topology::Place;

    fn snap(servers: &[(&str, &str, u64)], missing: &[&str]) -> Snapshot {
        Snapshot {
            servers_expected: servers.len() + missing.len(),
            servers: servers
                .iter()
                .map(|(n, _, c)| ServerSeen {
                    name: n.to_string(),
                    id: format!("ID-{n}"),
                    connections: *c,
                    pages: 1,
                })
                .collect(),
            missing: missing.iter().map(|m| m.to_string()).collect(),
            topology: servers
                .iter()
                .map(|(n, c, _)| (n.to_string(), Place::in_cluster(c)))
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_server_above_ratio_times_its_clusters_average_is_a_hotspot() {
        let d = DetectConfig::default();
        // Cluster a: 700 / (700+100+100) * 3 = 2.33 × the average; cluster b is even.
        let s = snap(
            &[
                ("a1", "a", 700),
                ("a2", "a", 100),
                ("a3", "a", 100),
                ("b1", "b", 500),
                ("b2", "b", 500),
            ],
            &[],
        );
        let h = hotspots(&s, &d);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].server, "a1");
        assert_eq!(h[0].cluster, "a");
        assert_eq!(h[0].cluster_average, 300.0);
        assert_eq!(h[0].ratio, 2.333);
        assert_eq!(h[0].by_server.len(), 3);
        // Exactly the ratio is not above it.
        let s = snap(&[("a1", "a", 600), ("a2", "a", 0), ("a3", "a", 300)], &[]);
        assert!(hotspots(&s, &d).is_empty());
    }

    #[test]
    fn an_idle_cluster_a_lone_server_and_a_cluster_with_a_silent_server_never_fire() {
        let d = DetectConfig::default();
        // 90 on one of three: 3 × the average, but under hotspot_min.
        assert!(hotspots(
            &snap(&[("a1", "a", 90), ("a2", "a", 0), ("a3", "a", 0)], &[]),
            &d
        )
        .is_empty());
        // One server in its cluster: no average to compare to.
        assert!(hotspots(&snap(&[("a1", "a", 900)], &[]), &d).is_empty());
        // a3 silent (an unknown count): cluster a is not judged; b still is.
        let mut s = snap(
            &[
                ("a1", "a", 900),
                ("a2", "a", 0),
                ("b1", "b", 900),
                ("b2", "b", 0),
                ("b3", "b", 0),
            ],
            &["a3"],
        );
        s.topology.insert("a3".into(), Place::in_cluster("a"));
        let h = hotspots(&s, &d);
        assert_eq!(
            h.iter().map(|f| f.server.as_str()).collect::<Vec<_>>(),
            vec!["b1"]
        );
        // A missing server of no known cluster could be anywhere: nothing is judged.
        let s = snap(
            &[("b1", "b", 900), ("b2", "b", 0), ("b3", "b", 0)],
            &["<unknown>"],
        );
        assert!(hotspots(&s, &d).is_empty());
    }

    fn user(account: &str, user: &str, by_server: &[(&str, u64)], system: bool) -> UserCensus {
        UserCensus {
            account: account.into(),
            user: user.into(),
            system,
            connections: by_server.iter().map(|(_, n)| n).sum(),
            by_server: by_server.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            ..UserCensus::default()
        }
    }

    #[test]
    fn an_account_mostly_on_one_server_is_imbalanced_summed_over_its_users() {
        let d = DetectConfig::default();
        let census = Census {
            connections: 0,
            users: vec![
                // APP: 80 + 10 on n1, 10 on n2 = 90% on n1.
                user("APP", "a", &[("n1", 80), ("n2", 10)], false),
                user("APP", "b", &[("n1", 10)], false),
                // EVEN: 50/50.
                user("EVEN", "e", &[("n1", 100), ("n2", 100)], false),
                // SMALL: all on one server but under imbalance_min.
                user("SMALL", "s", &[("n1", 99)], false),
                // The system account is never judged.
                user("SYS", "sys", &[("n1", 500)], true),
            ],
        };
        let topo: topology::Topology = [("n1", "c1"), ("n2", "c2")]
            .iter()
            .map(|(s, c)| (s.to_string(), Place::in_cluster(c)))
            .collect();
        let f = imbalances(&census, &topo, &d);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].account, "APP");
        assert_eq!(f[0].connections, 100);
        assert_eq!(f[0].server, "n1");
        assert_eq!(f[0].share, 0.9);
        assert_eq!(f[0].by_cluster["c1"], 90);
    }

    #[test]
    fn a_partial_view_finds_no_imbalance() {
        let d = DetectConfig::default();
        let census = Census {
            connections: 100,
            users: vec![user("APP", "a", &[("n1", 100)], false)],
        };
        let mut s = snap(&[("n1", "c", 100), ("n2", "c", 0)], &[]);
        assert_eq!(evaluate(&s, &census, &d).len(), 1);
        s.missing.push("n3".into());
        assert!(evaluate(&s, &census, &d).is_empty());
    }
}
