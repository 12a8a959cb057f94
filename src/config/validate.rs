//! The checks a configuration must pass beyond its types; every error names the key and the
//! source of its value.

use figment::Figment;

use super::load::{source_of, ConfigError, ConfigErrors};
use super::{check_creds_file, check_seed_file, Config, NatsConfig};

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
    check_connection("nats", n, figment, &mut bad);
    if let Some(js) = &c.jetstream {
        check_connection("jetstream", &js.connection(n), figment, &mut bad);
        if js.replicas == 0 {
            bad("jetstream.replicas", "must be at least 1".into());
        }
    }
    if c.advisory.jetstream && c.jetstream.is_none() {
        bad(
            "advisory.jetstream",
            "needs a `[jetstream]` section (`jetstream.servers`, `jetstream.user`/`jetstream.password`, `jetstream.creds`, ...): a connection to a JetStream-enabled account, since the system account cannot have streams"
                .into(),
        );
    }
    if c.ha.enabled && c.jetstream.is_none() {
        bad(
            "ha.enabled",
            "needs a `[jetstream]` section: the lease lives in a key-value bucket of a JetStream-enabled account".into(),
        );
    }
    if c.ha.enabled
        && (c.ha.lease < std::time::Duration::from_secs(2) || c.ha.lease.subsec_nanos() != 0)
    {
        bad(
            "ha.lease",
            format!(
                "must be whole seconds, at least 2s (the key's TTL is in seconds), got {}",
                humantime::format_duration(c.ha.lease)
            ),
        );
    }
    if c.ha.enabled && !is_stream_name(&c.ha.bucket) {
        bad(
            "ha.bucket",
            format!(
                "`{}` is not a bucket name (letters, digits, `-` and `_`)",
                c.ha.bucket
            ),
        );
    }
    if c.advisory.jetstream && !is_stream_name(&c.advisory.stream) {
        bad(
            "advisory.stream",
            format!(
                "`{}` is not a stream name (letters, digits, `-` and `_`)",
                c.advisory.stream
            ),
        );
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
        ("live.heartbeat_margin", c.live.heartbeat_margin),
        ("live.refused_window", c.live.refused_window),
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
    for (key, message) in super::enforce::problems(c) {
        bad(&key, message);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

/// The checks of one connection's settings (`[nats]` or `[jetstream]`), keys under `p`.
fn check_connection(
    p: &str,
    n: &NatsConfig,
    figment: &Figment,
    bad: &mut impl FnMut(&str, String),
) {
    let key = |k: &str| format!("{p}.{k}");
    if n.servers.is_empty() {
        bad(&key("servers"), "no server URL given".into());
    }
    for url in &n.servers {
        if url.contains(char::is_whitespace) {
            bad(&key("servers"), format!("`{url}` is not a server URL"));
        }
    }
    let kinds: Vec<String> = [
        (n.creds.is_some(), "creds"),
        (n.user.is_some() || n.password.is_some(), "user"),
        (n.token.is_some(), "token"),
        (n.nkey.is_some(), "nkey"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, k)| key(k))
    .collect();
    if kinds.len() > 1 {
        let from: Vec<String> = kinds
            .iter()
            .map(|k| format!("`{k}` from {}", source_of(figment, k)))
            .collect();
        bad(
            &kinds[1],
            format!(
                "more than one kind of credentials given ({}); keep exactly one",
                from.join(", ")
            ),
        );
    }
    if n.user.is_some() != n.password.is_some() {
        let missing = if n.user.is_some() { "password" } else { "user" };
        bad(
            &key(missing),
            format!("`{p}.user` and `{p}.password` go together"),
        );
    }
    if let Some(path) = &n.creds {
        if let Err(m) = check_creds_file(path) {
            bad(&key("creds"), m);
        }
    }
    if let Some(path) = &n.nkey {
        if let Err(m) = check_seed_file(path) {
            bad(&key("nkey"), m);
        }
    }
    for (k, path) in [
        ("tls.ca", &n.tls.ca),
        ("tls.cert", &n.tls.cert),
        ("tls.key", &n.tls.key),
    ] {
        if let Some(path) = path {
            if let Err(e) = std::fs::File::open(path) {
                bad(&key(k), format!("cannot read {}: {e}", path.display()));
            }
        }
    }
    if n.tls.cert.is_some() != n.tls.key.is_some() {
        let missing = if n.tls.cert.is_some() {
            "tls.key"
        } else {
            "tls.cert"
        };
        bad(
            &key(missing),
            format!("`{p}.tls.cert` and `{p}.tls.key` go together"),
        );
    }
}

/// A JetStream stream name: letters, digits, `-` and `_`.
fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
