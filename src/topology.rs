//! Where each server sits: its cluster (and JetStream domain) in a super-cluster, and which
//! clusters went silent as a whole (a gateway down, not N unrelated servers).
//!
//! Plain functions over plain data: the sweep fills a [`Topology`] from what the servers say
//! about themselves (the `server` part of every CONNZ and STATSZ reply) and what earlier sweeps
//! remembered; the census, report, advisories and metrics read it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::Census;
use crate::sweep::UNKNOWN_SERVER;

/// A server's place: its cluster and JetStream domain, when it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Place {
    /// The server's cluster name (`cluster { name }`); absent for a server without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Its JetStream domain, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Place {
    /// A place in `cluster`, without a domain.
    pub fn in_cluster(cluster: &str) -> Self {
        Self {
            cluster: Some(cluster.to_string()),
            domain: None,
        }
    }
}

/// Server name → place, for the servers that answered and the missing servers whose cluster is
/// known (remembered from an earlier sweep).
pub type Topology = BTreeMap<String, Place>;

/// A cluster none of whose servers answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SilentCluster {
    /// The cluster's name.
    pub cluster: String,
    /// Its servers that did not answer, by name where known (`<unknown>` otherwise).
    pub servers: Vec<String>,
    /// `cluster <name> silent (gateway down?)`: what a person reads.
    pub says: String,
}

/// What a report says about a silent cluster.
pub fn silent_words(cluster: &str) -> String {
    format!("cluster {cluster} silent (gateway down?)")
}

/// The cluster of `server` (a name in `missing` or of a server that answered): from the
/// topology, else from a `<unknown> (cluster C)` placeholder.
pub fn cluster_of<'a>(topology: &'a Topology, server: &'a str) -> Option<&'a str> {
    if let Some(c) = topology.get(server).and_then(|p| p.cluster.as_deref()) {
        return Some(c);
    }
    server
        .strip_prefix(UNKNOWN_SERVER)?
        .strip_prefix(" (cluster ")?
        .strip_suffix(')')
}

/// Clusters with a missing server and none that answered (`answered`: every server that gave a
/// reply, counted or in error): a whole cluster silent, most likely its gateway.
pub fn silent_clusters(
    topology: &Topology,
    answered: &[&str],
    missing: &[String],
) -> Vec<SilentCluster> {
    let mut silent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for m in missing {
        if let Some(c) = cluster_of(topology, m) {
            silent.entry(c).or_default().push(m.clone());
        }
    }
    silent.retain(|c, _| !answered.iter().any(|a| cluster_of(topology, a) == Some(*c)));
    silent
        .into_iter()
        .map(|(c, servers)| SilentCluster {
            cluster: c.to_string(),
            servers,
            says: silent_words(c),
        })
        .collect()
}

/// How a missing server is named for a person: `name (cluster C)` when its cluster is known.
pub fn missing_label(topology: &Topology, server: &str) -> String {
    match topology.get(server).and_then(|p| p.cluster.as_deref()) {
        Some(c) => format!("{server} (cluster {c})"),
        None => server.to_string(),
    }
}

/// Sums a per-server count by cluster; servers without a known cluster count under `""`.
pub fn by_cluster(topology: &Topology, by_server: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (server, n) in by_server {
        let c = cluster_of(topology, server).unwrap_or_default();
        *out.entry(c.to_string()).or_default() += n;
    }
    out
}

/// Fills every user's `by_cluster` from its `by_server`, when the topology knows any cluster
/// (a sweep of servers without clusters leaves it empty, and absent from the JSON).
pub fn fill_by_cluster(census: &mut Census, topology: &Topology) {
    if topology.values().all(|p| p.cluster.is_none()) {
        return;
    }
    for u in &mut census.users {
        u.by_cluster = by_cluster(topology, &u.by_server);
    }
}

/// The census of a sweep: the one it counted while parsing ([`Snapshot::census`], built with
/// the same rules), else [`crate::census::build`] over its connections; with every user's
/// `by_cluster` from the sweep's topology.
///
/// [`Snapshot::census`]: crate::snapshot::Snapshot::census
pub fn census_of(
    snap: &crate::snapshot::Snapshot,
    system_account: Option<&str>,
    detect: &crate::config::DetectConfig,
) -> Census {
    let mut census = match &snap.census {
        Some(counted) => counted.finish(),
        None => crate::census::build(&snap.connections, system_account, detect),
    };
    fill_by_cluster(&mut census, &snap.topology);
    census
}

/// Servers grouped by cluster (name → its servers, in order); servers without a cluster under
/// `""`.
pub fn group<'a>(
    topology: &Topology,
    servers: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Vec<&'a str>> {
    let mut out: BTreeMap<String, Vec<&'a str>> = BTreeMap::new();
    for s in servers {
        let c = cluster_of(topology, s).unwrap_or_default().to_string();
        out.entry(c).or_default().push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(entries: &[(&str, &str)]) -> Topology {
        entries
            .iter()
            .map(|(s, c)| (s.to_string(), Place::in_cluster(c)))
            .collect()
    }

    #[test]
    fn a_cluster_is_silent_only_when_none_of_its_servers_answered() {
        let t = topo(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")]);
        // b2 missing but b1 answered: one missing server, not a silent cluster.
        let s = silent_clusters(&t, &["a1", "a2", "b1"], &["b2".into()]);
        assert!(s.is_empty());
        let s = silent_clusters(&t, &["a1", "a2"], &["b1".into(), "b2".into()]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].cluster, "b");
        assert_eq!(s[0].servers, vec!["b1", "b2"]);
        assert_eq!(s[0].says, "cluster b silent (gateway down?)");
    }

    #[test]
    fn a_gateway_placeholder_names_its_cluster() {
        let t = topo(&[("a1", "a")]);
        let s = silent_clusters(
            &t,
            &["a1"],
            &["<unknown> (cluster east)".into(), "<unknown>".into()],
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].cluster, "east");
        assert_eq!(cluster_of(&t, "<unknown>"), None);
        assert_eq!(missing_label(&t, "a1"), "a1 (cluster a)");
        assert_eq!(missing_label(&t, "zz"), "zz");
    }

    #[test]
    fn counts_sum_by_cluster_and_group_servers() {
        let t = topo(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
        let by_server: BTreeMap<String, u64> = [
            ("a1".to_string(), 3),
            ("a2".to_string(), 4),
            ("b1".to_string(), 5),
            ("x".to_string(), 1),
        ]
        .into_iter()
        .collect();
        let c = by_cluster(&t, &by_server);
        assert_eq!(c["a"], 7);
        assert_eq!(c["b"], 5);
        assert_eq!(c[""], 1);
        let g = group(&t, ["a1", "b1", "a2"]);
        assert_eq!(g["a"], vec!["a1", "a2"]);
        assert_eq!(g["b"], vec!["b1"]);
    }
}
