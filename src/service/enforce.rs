//! The service's side of per-user caps (`[enforce]`): a cap round reads the live view, lets
//! the pure core decide ([`crate::enforce`]), sends the KICKs through the kick executor, and
//! announces each finished burst. Rounds run on every live round, after every sweep, and when
//! the core asks for one (a burst to announce, closes put off by the rate bound).

use std::time::Instant;

use chrono::Utc;
use tracing::{debug, info, warn};

use super::Service;
use crate::advisory::Completeness;
use crate::enforce::{announce, beyond_cap, by_user, cap_for, Done, Enforcer, Guard, Verdict};
use crate::kick::executor::{kick_until, Outcome};
use crate::kick::KickPlan;
use crate::live::LiveView;
use crate::snapshot::Snapshot;

/// What the service keeps for caps between rounds.
#[derive(Default)]
pub(super) struct Caps {
    enforcer: Enforcer,
    /// Why the last round held users over their cap, to log each reason once.
    held: Option<String>,
}

impl Caps {
    /// When the next cap round is wanted without an event.
    pub(super) fn next_wake(&self, cfg: &crate::config::EnforceConfig) -> Option<Instant> {
        if !cfg.enabled {
            return None;
        }
        self.enforcer.next_wake(cfg)
    }

    /// After a reload: closes announced in dry run may be closed for real now.
    pub(super) fn reloaded(&mut self) {
        self.enforcer.forget_in_flight();
    }
}

/// Sleeps until `at`, or forever when there is none (for `select!`).
pub(super) async fn wake(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The completeness of the live view, for the advisories.
fn completeness(view: &LiveView, meta: &Snapshot) -> Completeness {
    Completeness {
        started: Some(Utc::now()),
        servers_expected: meta.servers_expected,
        servers_responded: view
            .servers()
            .keys()
            .filter(|id| meta.servers.iter().any(|s| &s.id == *id))
            .count(),
        partial: view.incomplete().is_some() || meta.partial(),
        missing: meta.missing.clone(),
        silent_clusters: meta
            .silent_clusters()
            .into_iter()
            .map(|c| c.cluster)
            .collect(),
    }
}

impl Service {
    /// One cap round (see the module docs). On an incomplete view, while connwatch does not
    /// know the system account or its own connection, or when a server does not answer (or
    /// answers under a new id) the STATSZ asked just before the closes, it closes nothing and
    /// says why (log, `connwatch_cap_users_held`); bursts already made are still announced.
    pub(super) async fn enforce_caps(&mut self) {
        let Some(live) = self.live.clone().filter(|_| self.config.enforce.enabled) else {
            return;
        };
        // `[ha]`: only the replica that leads (and took its predecessor's state) closes and
        // announces; the others keep their live census warm.
        if self.gate.replicated() && !(self.led && self.gate.acting()) {
            return;
        }
        // Owned: the round's saves below borrow the whole service.
        let config = self.config.enforce.clone();
        let cfg = &config;
        let now = Instant::now();
        let own = self.session.own();
        let guard = Guard {
            system_account: self.session.system_account.as_deref(),
            own: own.as_ref(),
            kick: &self.config.kick,
        };
        let (mut decided, finished, mut held_why, sweep) = {
            let view = live.view.lock().expect("live view lock");
            let users = by_user(view.connections());
            let refusal = match view.incomplete() {
                Some(why) => Some(format!("the live view is not complete ({why})")),
                None => self.session.kick_refusal(),
            };
            let (decided, held_why) = match refusal {
                None => {
                    let d = self.caps.enforcer.decide(&users, cfg, &guard, now);
                    let why = d
                        .held
                        .first()
                        .map(|(u, why)| format!("{}/{}: {why}", u.0, u.1));
                    (d, why)
                }
                Some(why) => {
                    let held = users
                        .values()
                        .filter(|conns| {
                            let c = conns[0];
                            cap_for(cfg, &c.account, &c.account_name, &c.user, &c.user_name)
                                .is_some_and(|cap| {
                                    conns.len() as u64 > cap.max
                                        && matches!(
                                            beyond_cap(conns, cap.max, &guard),
                                            Verdict::Close(_) | Verdict::Held(_)
                                        )
                                })
                        })
                        .map(|conns| {
                            let u = (conns[0].account.to_string(), conns[0].user.to_string());
                            (u, why.clone())
                        })
                        .collect::<Vec<_>>();
                    let why = (!held.is_empty()).then_some(why);
                    (
                        crate::enforce::Decided {
                            held,
                            ..Default::default()
                        },
                        why,
                    )
                }
            };
            let finished = self.caps.enforcer.finish(&users, now);
            (
                decided,
                finished,
                held_why,
                completeness(&view, &self.last_sweep_meta),
            )
        };
        // The view says complete, but a server that died or restarted since the last probe
        // leaves its connections in it until a gap is noticed: ask every server first, as
        // before a resolve, and close nothing unless each answers under the id the view holds.
        if !decided.closes.is_empty() && !self.servers_confirmed(&live).await {
            let why = "a server did not answer or restarted (checked before closing): the live view is not complete".to_string();
            self.caps.enforcer.withdraw(&decided.closes);
            for c in std::mem::take(&mut decided.closes) {
                let user = (c.conn.account.to_string(), c.conn.user.to_string());
                if !decided.held.iter().any(|(u, _)| u == &user) {
                    decided.held.push((user, why.clone()));
                }
            }
            held_why = Some(why);
        }
        let metrics = self.metrics.clone();
        let m = &metrics.caps;
        m.held.set(decided.held.len() as i64);
        m.deferred.inc_by(decided.deferred as u64);
        if held_why != self.caps.held {
            if let Some(why) = &held_why {
                warn!(users = decided.held.len(), reason = %why, "users over their cap: nothing closed");
            }
            self.caps.held = held_why;
        }
        let prefix = self.config.advisory.subject_prefix.clone();
        for f in &finished {
            let a = announce::advisory(&prefix, f, cfg.dry_run, &sweep, Utc::now());
            info!(account = %f.account, user = %f.user, cap = f.cap.max, closed = f.closed.len(), after = f.after, dry_run = cfg.dry_run, subject = %a.subject, "cap enforced");
            m.burst(cfg.dry_run, f.closed.len() as u64);
            self.announce(a);
        }
        if !decided.closes.is_empty() {
            let wall = Utc::now();
            let done: Vec<Done> = if cfg.dry_run {
                vec![Done::Closed; decided.closes.len()]
            } else {
                let plans: Vec<KickPlan> = decided
                    .closes
                    .iter()
                    .map(|c| KickPlan::of(&c.conn, wall, 0, c.cap.max))
                    .collect();
                // `[ha]`: recorded in the bucket before any is sent, as kicks are: a replica
                // that takes over mid-batch never closes one of them a second time.
                if self.gate.replicated() && !self.record_intents(&plans).await {
                    self.caps.enforcer.withdraw(&decided.closes);
                    m.set_churn(self.caps.enforcer.churn());
                    return;
                }
                let k = &self.config.kick;
                let outcomes = kick_until(
                    &self.session.system,
                    &plans,
                    k.timeout,
                    k.concurrency,
                    &self.stop,
                )
                .await;
                if self.gate.replicated() {
                    self.state.kicked.finished(&plans);
                }
                outcomes
                    .into_iter()
                    .map(|o| match o {
                        Some(Outcome::Kicked | Outcome::Gone) => Done::Closed,
                        Some(Outcome::Failed(_)) | None => {
                            m.failed.inc();
                            Done::Failed
                        }
                    })
                    .collect()
            };
            let n = decided.closes.len();
            self.caps
                .enforcer
                .record(decided.closes.into_iter().zip(done).collect(), now, wall);
            debug!(
                closes = n,
                deferred = decided.deferred,
                dry_run = cfg.dry_run,
                "cap round"
            );
        }
        m.set_churn(self.caps.enforcer.churn());
        // `[ha]`: what this round announced goes out once saved in the bucket's outbox.
        if self.gate.replicated() && !self.outbox.is_empty() && !self.save_and_release().await {
            self.led = false;
        }
    }
}
