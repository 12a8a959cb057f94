//! What a round looks up besides the sweep: account and server limits (cached, refreshed now
//! and then; a failed lookup is unknown, never "no limit") and the churn of excessive users.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tracing::warn;

use super::Service;
use crate::census::Census;
use crate::live::churn;
use crate::nats::lookup;
use crate::rules;
use crate::rules::diagnosis::churn as closed_churn;
use crate::snapshot::Snapshot;

/// At most this many excessive users get their closed connections read per sweep.
const MAX_CHURN_LOOKUPS: usize = 10;
/// Account and server limits are read again after this long.
const LIMITS_REFRESH: Duration = Duration::from_secs(300);

/// Limits read from the cluster, refreshed now and then. Only answers are kept: a failed
/// lookup is unknown (never "no limit") and is asked again next round.
#[derive(Default)]
pub(super) struct Limits {
    /// Account → its connection limit (`None`: unlimited).
    pub(super) accounts: HashMap<String, Option<u64>>,
    /// Server name → its `max_connections`.
    pub(super) servers: HashMap<String, u64>,
    /// When the cache was last cleared.
    read_at: Option<Instant>,
}

impl Service {
    /// Each user's churn: from the live census's events when it runs; else (and for the
    /// accounts whose events it cannot follow, [`churn::followed`]) the closed connections
    /// since the last sweep of the users over their threshold (read from every server, CONNZ
    /// `state: 1`).
    pub(super) async fn churn(
        &self,
        snap: &Snapshot,
        census: &Census,
        now: DateTime<Utc>,
    ) -> HashMap<(String, String), rules::diagnosis::Churn> {
        let live = self.live.is_some();
        let mut out = self.live_churn().unwrap_or_default();
        let Some(since) = self.last_sweep else {
            return out;
        };
        for u in census
            .users
            .iter()
            .filter(|u| u.over_threshold && !(live && churn::followed(&u.account)))
            .take(MAX_CHURN_LOOKUPS)
        {
            let closed = lookup::closed_connections(
                &self.session.system,
                &u.account,
                &u.user,
                snap.servers.len().max(1),
                self.config.sweep.timeout,
            )
            .await;
            out.insert(
                (u.account.clone(), u.user.clone()),
                closed_churn(&closed, since, now),
            );
        }
        out
    }

    /// Reads account limits (operator mode JWTs) and servers' `max_connections` when stale or
    /// not yet known. Returns the accounts and servers whose limit is unknown this round (the
    /// lookup failed or the server did not answer): they are counted, not cached, and asked
    /// again next round.
    pub(super) async fn refresh_limits(
        &mut self,
        snap: &Snapshot,
        census: &Census,
    ) -> (HashSet<String>, HashSet<String>) {
        let (mut unknown_accounts, mut unknown_servers) = (HashSet::new(), HashSet::new());
        let Some(server) = snap.servers.first() else {
            return (unknown_accounts, unknown_servers);
        };
        let timeout = self.config.sweep.timeout;
        if self
            .limits
            .read_at
            .is_none_or(|t| t.elapsed() >= LIMITS_REFRESH)
        {
            self.limits.servers.clear();
            self.limits.accounts.clear();
            self.limits.read_at = Some(Instant::now());
        }
        if snap
            .servers
            .iter()
            .any(|s| !self.limits.servers.contains_key(&s.name))
        {
            match lookup::server_limits(&self.session.system, snap.servers.len(), timeout).await {
                Ok(m) => self.limits.servers.extend(m),
                Err(e) => warn!(error = %e, "server limits lookup failed"),
            }
            unknown_servers = snap
                .servers
                .iter()
                .filter(|s| !self.limits.servers.contains_key(&s.name))
                .map(|s| s.name.clone())
                .collect();
            if !unknown_servers.is_empty() {
                self.metrics.lookup_failed("varz");
                warn!(servers = ?unknown_servers, "max_connections unknown: their pressure findings are held");
            }
        }
        let mut accounts: Vec<&str> = census.users.iter().map(|u| u.account.as_str()).collect();
        accounts.sort_unstable();
        accounts.dedup();
        for account in accounts {
            if self.limits.accounts.contains_key(account) {
                continue;
            }
            match lookup::account_limit(&self.session.system, &server.id, account, timeout).await {
                Ok(limit) => {
                    self.limits.accounts.insert(account.to_string(), limit);
                }
                Err(e) => {
                    self.metrics.lookup_failed("accountz");
                    warn!(account, error = %e, "account limit lookup failed: its findings are held");
                    unknown_accounts.insert(account.to_string());
                }
            }
        }
        (unknown_accounts, unknown_servers)
    }
}
