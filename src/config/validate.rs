//! The checks a configuration must pass beyond its types; every error names the key and the
//! source of its value.

use figment::Figment;

use super::load::{source_of, ConfigError, ConfigErrors};
use super::{check_creds_file, check_seed_file, Config};

/// Checks `c`, loaded from `figment` (for the source of each key).
pub(super) fn validate(c: &Config, figment: &Figment) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    let mut bad = |key: &str, message: String| {
        errs.push(ConfigError {
            key: key.into(),
            source: source_of(figment, key),
            message,
        });
    };
    let n = &c.nats;
    if n.servers.is_empty() {
        bad("nats.servers", "no server URL given".into());
    }
    for url in &n.servers {
        if url.contains(char::is_whitespace) {
            bad("nats.servers", format!("`{url}` is not a server URL"));
        }
    }
    let kinds: Vec<&str> = [
        (n.creds.is_some(), "nats.creds"),
        (n.user.is_some() || n.password.is_some(), "nats.user"),
        (n.token.is_some(), "nats.token"),
        (n.nkey.is_some(), "nats.nkey"),
    ]
    .into_iter()
    .filter_map(|(set, key)| set.then_some(key))
    .collect();
    if kinds.len() > 1 {
        let from: Vec<String> = kinds
            .iter()
            .map(|k| format!("`{k}` from {}", source_of(figment, k)))
            .collect();
        bad(
            kinds[1],
            format!(
                "more than one kind of credentials given ({}); keep exactly one",
                from.join(", ")
            ),
        );
    }
    if n.user.is_some() != n.password.is_some() {
        let key = if n.user.is_some() {
            "nats.password"
        } else {
            "nats.user"
        };
        bad(key, "`nats.user` and `nats.password` go together".into());
    }
    if let Some(path) = &n.creds {
        if let Err(m) = check_creds_file(path) {
            bad("nats.creds", m);
        }
    }
    if let Some(path) = &n.nkey {
        if let Err(m) = check_seed_file(path) {
            bad("nats.nkey", m);
        }
    }
    for (key, path) in [
        ("nats.tls.ca", &n.tls.ca),
        ("nats.tls.cert", &n.tls.cert),
        ("nats.tls.key", &n.tls.key),
    ] {
        if let Some(p) = path {
            if let Err(e) = std::fs::File::open(p) {
                bad(key, format!("cannot read {}: {e}", p.display()));
            }
        }
    }
    if n.tls.cert.is_some() != n.tls.key.is_some() {
        let key = if n.tls.cert.is_some() {
            "nats.tls.key"
        } else {
            "nats.tls.cert"
        };
        bad(key, "`nats.tls.cert` and `nats.tls.key` go together".into());
    }
    if n.name.is_empty() {
        bad("nats.name", "must not be empty".into());
    }
    for (key, d) in [
        ("nats.connect_timeout", n.connect_timeout),
        ("sweep.interval", c.sweep.interval),
        ("sweep.timeout", c.sweep.timeout),
        ("detect.idle_threshold", c.detect.idle_threshold),
        ("live.reconcile_interval", c.live.reconcile_interval),
        ("live.evaluate_every", c.live.evaluate_every),
        ("live.probe_interval", c.live.probe_interval),
    ] {
        if d.is_zero() {
            bad(key, "must be longer than zero".into());
        }
    }
    if c.sweep.page_size == 0 {
        bad("sweep.page_size", "must be at least 1".into());
    }
    if c.sweep.max_connections_per_server == 0 {
        bad(
            "sweep.max_connections_per_server",
            "must be at least 1".into(),
        );
    }
    if let Some(d) = c.sweep.deadline.filter(|d| *d < c.sweep.timeout) {
        bad(
            "sweep.deadline",
            format!(
                "must be at least `sweep.timeout` ({}), got {}",
                humantime::format_duration(c.sweep.timeout),
                humantime::format_duration(d)
            ),
        );
    }
    for (key, share) in [
        ("detect.account_pressure", c.detect.account_pressure),
        ("detect.server_pressure", c.detect.server_pressure),
        ("detect.imbalance_share", c.detect.imbalance_share),
    ] {
        if !(share > 0.0 && share <= 1.0) {
            bad(
                key,
                format!("must be a share between 0 and 1, e.g. 0.9 (got {share})"),
            );
        }
    }
    if !(c.detect.hotspot_ratio > 1.0 && c.detect.hotspot_ratio.is_finite()) {
        bad(
            "detect.hotspot_ratio",
            format!(
                "must be more than 1, e.g. 2.0 (got {})",
                c.detect.hotspot_ratio
            ),
        );
    }
    if c.detect.growth_min_per_hour < 0.0 {
        bad("detect.growth_min_per_hour", "must not be negative".into());
    }
    if c.detect.growth_min_span > c.detect.growth_window {
        bad(
            "detect.growth_min_span",
            format!(
                "must not be longer than `detect.growth_window` ({}), or growth is never reported; got {}",
                humantime::format_duration(c.detect.growth_window),
                humantime::format_duration(c.detect.growth_min_span)
            ),
        );
    }
    for (key, d) in [
        ("detect.used_once_within", c.detect.used_once_within),
        ("detect.growth_window", c.detect.growth_window),
        ("detect.growth_horizon", c.detect.growth_horizon),
        ("advisory.renotify", c.advisory.renotify),
        ("kick.return_window", c.kick.return_window),
        ("kick.timeout", c.kick.timeout),
        ("advisory.publish_timeout", c.advisory.publish_timeout),
    ] {
        if d.is_zero() {
            bad(key, "must be longer than zero".into());
        }
    }
    let prefix = &c.advisory.subject_prefix;
    if prefix.is_empty()
        || prefix
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
    {
        bad(
            "advisory.subject_prefix",
            format!("`{prefix}` is not a literal subject (no wildcards, spaces or empty tokens)"),
        );
    }
    if !c.metrics.listen.is_empty() && c.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
        bad(
            "metrics.listen",
            format!(
                "`{}` is not an address like 127.0.0.1:9464",
                c.metrics.listen
            ),
        );
    }
    if c.service.prefix.is_empty() || c.service.prefix.contains(['*', '>', ' ']) {
        bad(
            "service.prefix",
            format!("`{}` is not a literal subject", c.service.prefix),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        bad("log.level", format!("not a log level or filter: {e}"));
    }
    if c.advisory.queue_size == 0 {
        bad("advisory.queue_size", "must be at least 1".into());
    }
    if c.kick.max_attempts == 0 {
        bad("kick.max_attempts", "must be at least 1".into());
    }
    if c.kick.concurrency == 0 {
        bad("kick.concurrency", "must be at least 1".into());
    }
    if c.kick.give_up_for.is_some_and(|d| d.is_zero()) {
        bad(
            "kick.give_up_for",
            "must be longer than zero; leave it unset to keep giving up until `connwatch kick --forget`"
                .into(),
        );
    }
    for (list, matches) in [
        ("detect.ignore", &c.detect.ignore),
        ("kick.protect", &c.kick.protect),
        ("kick.only", &c.kick.only),
    ] {
        for (i, m) in matches.iter().enumerate() {
            if m.account.is_empty() {
                bad(&format!("{list}.{i}.account"), "must not be empty".into());
            }
        }
    }
    for (i, o) in c.detect.overrides.iter().enumerate() {
        if o.account.is_empty() {
            bad(
                &format!("detect.overrides.{i}.account"),
                "must not be empty".into(),
            );
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}
