//! The per-cluster series of a super-cluster: connections by cluster, and silent clusters.

use prometheus_client::encoding::EncodeLabelSet;

use super::Metrics;
use crate::snapshot::Snapshot;
use crate::topology;

/// A label naming a cluster of a super-cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// The cluster's name (`""` for servers without one).
    pub cluster: String,
}

impl Metrics {
    /// Rebuilds `connwatch_cluster_connections` and `connwatch_cluster_silent` from one view.
    pub(super) fn observe_clusters(&self, snap: &Snapshot) {
        self.cluster_connections.clear();
        self.cluster_silent.clear();
        if !snap.topology.is_empty() {
            let per_server = snap.servers.iter().map(|s| (s.name.clone(), s.connections));
            let by_cluster = topology::by_cluster(&snap.topology, &per_server.collect());
            for (cluster, n) in by_cluster {
                let label = ClusterLabel { cluster };
                self.cluster_connections.get_or_create(&label).set(n as i64);
            }
        }
        for c in snap.silent_clusters() {
            let label = ClusterLabel { cluster: c.cluster };
            self.cluster_silent.get_or_create(&label).set(1);
        }
    }
}
