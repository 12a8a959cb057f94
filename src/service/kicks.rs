//! The service's kicks after a sweep (`[kick]`): kicked clients that came back, then the
//! plan, recorded before it is sent ([`Service::intend`]), executed and audited.

use chrono::{DateTime, Utc};
use tracing::warn;

use super::Service;
use crate::advisory::{self, Completeness, KickRule};
use crate::census::Census;
use crate::kick::executor::{self, Batch, Outcome};
use crate::kick::{self, KickInputs};
use crate::snapshot::Snapshot;

impl Service {
    /// Reports kicked clients that came back, then kicks (or, in dry run, announces) the
    /// connections the policy allows: nothing at all while connwatch does not know the system
    /// account or its own connection (it could not protect them). Every kick sent is audited
    /// and remembered; the caller never cancels this.
    pub(super) async fn kicks(
        &mut self,
        snap: &Snapshot,
        census: &Census,
        complete: bool,
        now: DateTime<Utc>,
        sweep: &Completeness,
    ) {
        let prefix = self.config.advisory.subject_prefix.clone();
        let returned = self
            .state
            .kicked
            .observe(&snap.connections, now, &self.config.kick);
        for r in returned {
            self.metrics.kicks_ineffective.inc();
            warn!(account = %r.client.account, user = %r.client.user, name = %r.client.name, ip = %r.client.ip, returns = r.returns, given_up = r.given_up, "kicked client came back");
            self.announce(advisory::kick_ineffective(&prefix, &r, sweep, Utc::now()));
        }
        if complete {
            self.state.kicked.settle_intents(&snap.connections);
        }
        let cfg = &self.config.kick;
        if let Some(why) = self.session.kick_refusal() {
            warn!(reason = %why, "no kicks this round");
            return;
        }
        let Some(own) = self.session.own() else {
            return;
        };
        let plans = kick::plan(&KickInputs {
            connections: &snap.connections,
            census,
            complete,
            cfg,
            system_account: self.session.system_account.as_deref(),
            own: Some(&own),
            kicked: &self.state.kicked,
            now,
            used_once_within: self.config.detect.used_once_within,
        });
        if plans.is_empty() || !self.intend(&plans).await {
            return;
        }
        let (cfg, prefix) = (&self.config.kick, &self.config.advisory.subject_prefix);
        let batch = Batch {
            system: &self.session.system,
            timeout: cfg.timeout,
            concurrency: cfg.concurrency,
            dry_run: cfg.dry_run,
            rule: KickRule::ExcessiveUserConnections,
            prefix,
            sweep,
            stop: &self.stop,
        };
        let executed = executor::execute(&batch, plans, &mut self.state.kicked, Some(now)).await;
        for (_, outcome) in &executed.done {
            self.metrics.kick(match outcome {
                None => "dry_run",
                Some(Outcome::Failed(_)) => "failed",
                Some(_) => "sent",
            });
        }
        for a in executed.audits {
            self.announce(a);
        }
    }
}
