//! Reloading the configuration (SIGHUP): what applies at once, what needs a restart.

use tracing::{error, info, warn};

use super::Service;
use crate::config::{Config, ConfigErrors};

impl Service {
    /// Applies a reloaded configuration, or refuses it (the schedule follows the new
    /// intervals from the last sweep's start). Findings, history and kick memory are kept; settings that need a new connection or
    /// listener are reported and left as they are.
    pub(super) fn reload(&mut self, new: Result<Config, ConfigErrors>) {
        let new = match new {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload("refused");
                error!(error = %e, "reload refused: the new configuration is invalid; the old one keeps running");
                return;
            }
        };
        let old = &self.config;
        let mut restart = Vec::new();
        for (key, changed) in [
            ("nats", old.nats != new.nats),
            ("metrics.listen", old.metrics.listen != new.metrics.listen),
            ("service", old.service != new.service),
            (
                "advisory.queue_size",
                old.advisory.queue_size != new.advisory.queue_size,
            ),
            (
                "advisory.jetstream",
                old.advisory.jetstream != new.advisory.jetstream,
            ),
            (
                "advisory.publish_timeout",
                old.advisory.publish_timeout != new.advisory.publish_timeout,
            ),
            (
                "advisory.stream",
                old.advisory.stream != new.advisory.stream,
            ),
            ("jetstream", old.jetstream != new.jetstream),
            ("ha", old.ha != new.ha),
            ("state.file", old.state.file != new.state.file),
            ("log.level", old.log.level != new.log.level),
        ] {
            if changed {
                restart.push(key);
            }
        }
        if !restart.is_empty() {
            warn!(keys = ?restart, "reload: these settings need a restart and keep their old values");
        }
        let mut applied = new;
        applied.nats = old.nats.clone();
        applied.metrics.listen = old.metrics.listen.clone();
        applied.service = old.service.clone();
        applied.advisory.queue_size = old.advisory.queue_size;
        applied.advisory.jetstream = old.advisory.jetstream;
        applied.advisory.publish_timeout = old.advisory.publish_timeout;
        applied.advisory.stream = old.advisory.stream.clone();
        applied.jetstream = old.jetstream.clone();
        applied.ha = old.ha.clone();
        applied.state = old.state.clone();
        applied.log = old.log.clone();
        if old.enforce != applied.enforce {
            self.caps.reloaded();
        }
        self.sweeper.set_config(&applied.sweep);
        self.health.set_interval(applied.sweep_cadence());
        self.config = applied;
        self.metrics.reload("applied");
        info!(
            threshold = self.config.detect.max_connections_per_user,
            kick = if !self.config.kick.enabled {
                "off"
            } else if self.config.kick.dry_run {
                "dry run"
            } else {
                "on"
            },
            "configuration reloaded"
        );
    }
}
