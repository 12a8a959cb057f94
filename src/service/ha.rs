//! `[ha]` in the round: a replica that becomes leader first takes its predecessor's state from
//! the bucket, so it neither announces again what is firing nor forgets whom it gave up on, and
//! publishes what its predecessor decided but did not publish (the outbox). What a leader
//! decides is saved in the bucket before it is published, and kicks before they are sent.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::Service;
use crate::advisory::{self, Advisory, Completeness};
use crate::kick;
use crate::snapshot::Connection;

impl Service {
    /// Takes the firing findings, the kick memory and the outbox the last leader saved; false
    /// (do not act this round) when the bucket cannot be read. With nothing saved yet, its own
    /// are kept. Also after a moment without the lease: what it computed meanwhile was not
    /// announced, and what it had queued is replaced by the bucket's outbox.
    pub(super) async fn take_over(&mut self) -> bool {
        match self.gate.load_state().await {
            Ok(Some((saved, outbox))) => {
                info!(
                    firing = saved.findings.active.len(),
                    kicked = saved.kicked.clients.len(),
                    unpublished = outbox.len(),
                    "HA: leading, with the last leader's findings, kick memory and unpublished advisories"
                );
                self.state.findings = saved.findings;
                self.state.kicked = saved.kicked;
                self.publisher.replace(outbox);
                true
            }
            Ok(None) => {
                info!("HA: leading; no state saved in the bucket yet");
                true
            }
            Err(e) => {
                warn!(error = %e, "HA: cannot read the last leader's state: not acting this round");
                false
            }
        }
    }

    /// Announces `a`: a single instance queues it at once; a replica (`[ha]`) keeps it for
    /// [`Service::save_and_release`].
    pub(super) fn announce(&mut self, a: Advisory) {
        if self.gate.replicated() {
            self.outbox.push(a);
        } else {
            self.publisher.enqueue(a);
        }
    }

    /// Saves the state in the bucket (`[ha]`) with its outbox: what the publisher has not
    /// confirmed yet and what this round announced. Once saved, this round's announcements go
    /// to the publisher; when not (another replica saved since: it leads), they are dropped and
    /// false is returned: the next leader decides from the state it has.
    pub(super) async fn save_and_release(&mut self) -> bool {
        let decided = std::mem::take(&mut self.outbox);
        let mut outbox = self.publisher.pending();
        outbox.extend(decided.iter().cloned());
        let saved = self.gate.save_state(&self.state, &outbox).await;
        if saved {
            for a in decided {
                self.publisher.enqueue(a);
            }
        } else if !decided.is_empty() {
            warn!(
                dropped = decided.len(),
                "HA: state not saved: this round's advisories are left to the next leader"
            );
        }
        saved
    }

    /// Records the kicks about to be sent, in the state file and (`[ha]`) in the bucket as a
    /// fenced update (with the outbox), before any is sent: a replica that takes over after this
    /// one dies mid-batch skips them rather than kick one a second time, and audits those gone.
    /// False (send nothing) when the bucket did not take the record or the lease lapsed
    /// meanwhile; a dry run sends nothing to record.
    pub(super) async fn intend(&mut self, plans: &[kick::KickPlan]) -> bool {
        if self.config.kick.dry_run {
            return true;
        }
        self.record_intents(plans).await
    }

    /// [`Service::intend`] whatever `kick.dry_run` says (closes for a per-user cap, which has
    /// its own `enforce.dry_run`).
    pub(super) async fn record_intents(&mut self, plans: &[kick::KickPlan]) -> bool {
        self.state.kicked.intend(plans);
        self.state.save_to(self.config.state.file.as_deref());
        if !self.save_and_release().await {
            self.state.kicked.unintend(plans);
            self.led = false;
            warn!(
                planned = plans.len(),
                "HA: kicks not recorded in the bucket; none sent"
            );
            return false;
        }
        if !self.gate.acting() {
            warn!(
                planned = plans.len(),
                "HA: the lease lapsed before the kicks were sent; none sent"
            );
            return false;
        }
        true
    }

    /// Audits the kicks recorded without an outcome, by a leader that died (or this instance
    /// before a restart), against a complete sweep's `connections`: a connection gone is
    /// announced as `connection_kicked` (`recovered`) and remembered as kicked at `now`; one
    /// still open is left alone (its intent keeps it from ever being kicked again).
    pub(super) fn recover_kicks(
        &mut self,
        connections: &[Connection],
        now: DateTime<Utc>,
        sweep: &Completeness,
    ) {
        if self.state.kicked.unfinished.is_empty() {
            return;
        }
        let unfinished = self.state.kicked.unfinished.len();
        let gone = self.state.kicked.recover(connections);
        warn!(
            unfinished,
            gone = gone.len(),
            "kicks recorded without an outcome (their sender died): the gone ones audited as recovered, the open ones left alone"
        );
        self.state.kicked.record(&gone, now);
        for plan in &gone {
            let prefix = &self.config.advisory.subject_prefix;
            self.announce(advisory::kicked_recovered(prefix, plan, sweep, Utc::now()));
        }
    }
}
