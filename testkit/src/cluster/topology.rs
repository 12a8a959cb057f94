//! Super-clusters and leaf servers: clusters joined by gateways (the system account spans
//! them) and one leaf server attached by a leafnode remote.
//!
//! A super-cluster of `clusters` × `servers` names its clusters `c1`, `c2`, ... and its servers
//! `c1-n1`, `c1-n2`, ...; every server has a gateway to every other cluster (all of that
//! cluster's gateway URLs). With a leaf, every cluster server also listens for leafnodes and the
//! leaf server (named `leaf`, the last server) connects to the first one.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{bail, Context};

use super::{quote, AuthMode, Cluster, ClusterSpec, Server, POLL_INTERVAL};

/// A leaf server attached to the first cluster server by a leafnode remote (config mode).
///
/// The leaf has the same accounts and users as the hub. Its remote for `account` logs in to the
/// hub as `user` of that account: on the hub, every client of the leaf in that account is
/// behind ONE connection of kind `Leafnode`, under that user.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The account bridged to the hub.
    pub account: String,
    /// The hub user (of `account`, with its password from the spec) the remote logs in as.
    pub user: String,
    /// Whether the leaf also bridges the system account `SYS` (a second remote, as the system
    /// user): the leaf then joins the hub's system, answers `$SYS` requests (sweeps) itself and
    /// counts in STATSZ `active_servers`. Without it the leaf is a separate system the hub's
    /// system account does not reach.
    pub shares_system: bool,
}

impl ClusterSpec {
    /// A super-cluster: `clusters` clusters of `servers` servers each, joined by gateways.
    pub fn super_cluster(mut self, clusters: usize, servers: usize) -> Self {
        self.clusters = clusters.max(1);
        self.servers = servers;
        self
    }

    /// Adds a leaf server (config mode only).
    pub fn leaf(mut self, leaf: LeafSpec) -> Self {
        self.leaf = Some(leaf);
        self
    }
}

impl Cluster {
    /// Every server's (name, cluster) in start order; the leaf last, with an empty cluster.
    pub(super) fn places(&self) -> Vec<(String, String)> {
        let spec = &self.spec;
        let mut out = Vec::new();
        for c in 0..spec.clusters.max(1) {
            for j in 0..spec.servers {
                out.push(if spec.clusters > 1 {
                    (format!("c{}-n{}", c + 1, j + 1), format!("c{}", c + 1))
                } else {
                    (format!("n{}", j + 1), spec.cluster_name.clone())
                });
            }
        }
        if spec.leaf.is_some() {
            out.push(("leaf".to_owned(), String::new()));
        }
        out
    }

    /// Whether `server` belongs to the hub's system (counts in its STATSZ `active_servers`).
    pub(super) fn in_system(&self, server: &Server) -> bool {
        !server.leaf || self.spec.leaf.as_ref().is_some_and(|l| l.shares_system)
    }

    /// Index of the leaf server, when there is one.
    pub fn leaf_index(&self) -> Option<usize> {
        self.servers.iter().position(|s| s.leaf)
    }

    /// Server `i`'s cluster name (empty for the leaf server).
    pub fn cluster_of(&self, i: usize) -> &str {
        &self.servers[i].cluster
    }

    /// Indexes of the servers of cluster `name`.
    pub fn servers_of(&self, name: &str) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| !self.servers[i].leaf && self.servers[i].cluster == name)
            .collect()
    }

    /// The `gateway { }` and `leafnodes { }` blocks of server `i`'s configuration.
    pub(super) fn topology_config(&self, i: usize) -> String {
        let server = &self.servers[i];
        let mut out = String::new();
        if server.leaf {
            if let Some(leaf) = &self.spec.leaf {
                out.push_str(&self.leaf_remotes(leaf));
            }
            return out;
        }
        if self.spec.clusters > 1 {
            let remotes: Vec<String> = (1..=self.spec.clusters)
                .map(|c| format!("c{c}"))
                .filter(|c| *c != server.cluster)
                .map(|c| {
                    let urls: Vec<String> = self
                        .servers
                        .iter()
                        .filter(|s| s.cluster == c && !s.leaf)
                        .map(|s| quote(&format!("nats://127.0.0.1:{}", s.gateway_port)))
                        .collect();
                    format!("{{name: {}, urls: [{}]}}", quote(&c), urls.join(", "))
                })
                .collect();
            let _ = writeln!(
                out,
                "gateway {{\n  name: {}\n  listen: 127.0.0.1:{}\n  gateways: [{}]\n}}",
                quote(&server.cluster),
                server.gateway_port,
                remotes.join(", ")
            );
        }
        if self.spec.leaf.is_some() {
            let _ = writeln!(
                out,
                "leafnodes {{\n  listen: 127.0.0.1:{}\n}}",
                server.leaf_port
            );
        }
        out
    }

    /// The leaf server's remotes to the first cluster server: `leaf.account` as `leaf.user`,
    /// and `SYS` as the system user when it shares the system account.
    fn leaf_remotes(&self, leaf: &super::LeafSpec) -> String {
        let hub = self.servers[0].leaf_port;
        let password = self
            .spec
            .accounts
            .iter()
            .find(|a| a.name == leaf.account)
            .and_then(|a| a.users.iter().find(|u| u.name == leaf.user))
            .map(|u| u.password.clone())
            .unwrap_or_default();
        let mut remotes = vec![(leaf.account.clone(), leaf.user.clone(), password)];
        if leaf.shares_system {
            let sys = &self.spec.system_user;
            remotes.push(("SYS".into(), sys.name.clone(), sys.password.clone()));
        }
        let remotes: Vec<String> = remotes
            .into_iter()
            .map(|(account, user, password)| {
                format!(
                    "{{urls: [{}], account: {}}}",
                    quote(&format!("nats-leaf://{user}:{password}@127.0.0.1:{hub}")),
                    quote(&account)
                )
            })
            .collect();
        format!("leafnodes {{\n  remotes: [{}]\n}}\n", remotes.join(", "))
    }

    /// Polls the first cluster server's `/leafz` until the leaf's remotes are connected (one per
    /// bridged account). STATSZ convergence already covers the gateways.
    pub(super) fn wait_leaf(&self, deadline: Instant) -> anyhow::Result<()> {
        let Some(leaf) = &self.spec.leaf else {
            return Ok(());
        };
        if self.spec.mode != AuthMode::Config {
            bail!("a leaf server is only supported in config mode");
        }
        if self
            .leaf_index()
            .is_none_or(|i| self.servers[i].child.is_none())
        {
            return Ok(());
        }
        let want = if leaf.shares_system { 2 } else { 1 };
        loop {
            let leafz = self.monitor_get(0, "/leafz").context("leafz")?;
            let up = leafz["leafnodes"].as_u64().unwrap_or(0);
            if up >= want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "leaf server not attached in time: {up} of {want} leafnode connections on {}",
                    self.servers[0].name
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
