//! By-hand kicks made while `connwatch run` runs (`connwatch kick`, `connwatch top`'s `k`):
//! their process cannot save them in `state.file` (this one holds its lock), so `run` follows
//! their `connection_kicked` audits (`rule: manual`) on the advisory subject and records them
//! in its kick memory, which its next round saves: the client's return is then noticed
//! (`kick_ineffective`) as for its own kicks.

use std::collections::HashSet;

use tracing::info;

use super::Service;
use crate::kick;

/// The subject of every `connection_kicked` advisory under `prefix`.
pub(super) fn subject(prefix: &str) -> String {
    format!("{prefix}.connection_kicked.>")
}

/// Connections whose by-hand kick was recorded, as (server id, cid): a repeat of its audit (a
/// publisher's retry) is recorded once. Bounded: cleared when it grows large (a repeat comes
/// within seconds, and a server never reuses a cid).
#[derive(Default)]
pub(super) struct Heard(HashSet<(String, u64)>);

const HEARD_MAX: usize = 10_000;

impl Service {
    /// Records the by-hand kick `payload` announces, if it is one that closed a connection. Under
    /// `[ha]` only the leader records it (its state is the one saved); a follower ignores it.
    pub(super) fn heard_kick(&mut self, payload: &[u8]) {
        let Some((plan, at)) = kick::manual_kick(payload) else {
            return;
        };
        if !(self.led && self.gate.acting()) {
            return;
        }
        if self.heard.0.len() >= HEARD_MAX {
            self.heard.0.clear();
        }
        if !self.heard.0.insert((plan.server_id.clone(), plan.cid)) {
            return;
        }
        info!(server = %plan.server, cid = plan.cid, account = %plan.account, user = %plan.user, name = %plan.name, ip = %plan.ip, "by-hand kick recorded in the kick memory");
        self.state.kicked.record(&[plan], at);
    }
}
