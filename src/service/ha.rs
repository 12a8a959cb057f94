//! `[ha]` in the round: a replica that becomes leader first takes its predecessor's state from
//! the bucket, so it neither announces again what is firing nor forgets whom it gave up on.

use tracing::{info, warn};

use super::Service;

impl Service {
    /// Takes the firing findings and the kick memory the last leader saved; false (do not act
    /// this round) when the bucket cannot be read. With nothing saved yet, its own are kept.
    /// Also after a moment without the lease: what it computed meanwhile was not announced.
    pub(super) async fn take_over(&mut self) -> bool {
        match self.gate.load_state().await {
            Ok(Some(saved)) => {
                info!(
                    firing = saved.findings.active.len(),
                    kicked = saved.kicked.clients.len(),
                    "HA: leading, with the last leader's findings and kick memory"
                );
                self.state.findings = saved.findings;
                self.state.kicked = saved.kicked;
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
}
