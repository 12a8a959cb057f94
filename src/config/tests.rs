//! Loading, layering, provenance and validation; the shipped file against the defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn defaults_match_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.sweep.interval, Duration::from_secs(30));
    assert_eq!(c.sweep.timeout, Duration::from_secs(5));
    assert_eq!(c.sweep.max_in_flight, 8);
    assert_eq!(c.detect.max_connections_per_user, 100);
    assert_eq!(c.detect.idle_threshold, Duration::from_secs(300));
    assert_eq!(c.nats.name, "connwatch");
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[sweep]\ntimeout = \"2s\"\ninterval = \"10s\"\npage_size = 7\n",
    );
    let e = env(&[
        ("CONNWATCH_SWEEP__INTERVAL", "20s"),
        ("CONNWATCH_SWEEP__PAGE_SIZE", "9"),
    ]);
    let flags = Flags {
        timeout: Some(Duration::from_secs(3)),
        ..Flags::default()
    };
    let l = load(Some(&f), &e, flags).unwrap();
    assert_eq!(l.config.sweep.timeout, Duration::from_secs(3));
    assert_eq!(l.config.sweep.interval, Duration::from_secs(20));
    assert_eq!(l.config.sweep.page_size, 9);
    assert_eq!(l.source_of("sweep.timeout"), "command-line flags");
    assert_eq!(
        l.source_of("sweep.interval"),
        "environment variable CONNWATCH_SWEEP__INTERVAL"
    );
}

#[test]
fn wrong_type_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", "[sweep]\npage_size = \"many\"\n");
    let err = load(Some(&f), &[], Flags::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`sweep.page_size`"), "{text}");
    assert!(text.contains("c.toml"), "{text}");
}

#[test]
fn wrong_type_from_env_names_the_variable() {
    let e = env(&[("CONNWATCH_SWEEP__TIMEOUT", "soon")]);
    let err = load(Some(Path::new("/dev/null")), &e, Flags::default()).unwrap_err();
    assert_eq!(err.0[0].key, "sweep.timeout");
    assert_eq!(
        err.0[0].source,
        "environment variable CONNWATCH_SWEEP__TIMEOUT"
    );
}

#[test]
fn an_error_inside_a_variables_value_names_that_variable() {
    let e = env(&[(
        "CONNWATCH_DETECT__OVERRIDES",
        r#"[{account = "APP", max_connections = "many"}]"#,
    )]);
    let err = load(Some(Path::new("/dev/null")), &e, Flags::default()).unwrap_err();
    assert_eq!(err.0[0].key, "detect.overrides.0.max_connections");
    assert_eq!(
        err.0[0].source,
        "environment variable CONNWATCH_DETECT__OVERRIDES"
    );
}

#[test]
fn sweep_deadline_defaults_to_four_timeouts_and_is_never_shorter_than_one() {
    assert_eq!(SweepConfig::default().deadline(), Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[sweep]\ntimeout = \"5s\"\ndeadline = \"2s\"\nmax_connections_per_server = 0\n",
    );
    let err = load(Some(&f), &[], Flags::default()).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"sweep.deadline"), "{keys:?}");
    assert!(
        keys.contains(&"sweep.max_connections_per_server"),
        "{keys:?}"
    );
    let ok = write(dir.path(), "d.toml", "[sweep]\ndeadline = \"1m\"\n");
    let l = load(Some(&ok), &[], Flags::default()).unwrap();
    assert_eq!(l.config.sweep.deadline(), Duration::from_secs(60));
}

#[test]
fn full_sweeps_follow_the_reconcile_interval_with_the_live_census_else_the_sweep_interval() {
    let mut c = Config::default();
    assert_eq!(c.sweep_cadence(), Duration::from_secs(900));
    c.live.enabled = false;
    assert_eq!(c.sweep_cadence(), Duration::from_secs(30));
}

#[test]
fn growth_min_span_longer_than_the_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[detect]\ngrowth_window = \"5m\"\ngrowth_min_span = \"10m\"\nused_once_within = \"0s\"\n",
    );
    let err = load(Some(&f), &[], Flags::default()).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["detect.growth_min_span", "detect.used_once_within"],
        "{err}"
    );
    assert!(
        err.0[0].message.contains("`detect.growth_window` (5m)"),
        "{err}"
    );
    let ok = write(
        dir.path(),
        "d.toml",
        "[detect]\ngrowth_window = \"30s\"\ngrowth_min_span = \"5s\"\n",
    );
    let l = load(Some(&ok), &[], Flags::default()).unwrap();
    assert_eq!(l.config.detect.growth_min_span, Duration::from_secs(5));
}

#[test]
fn unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", "[detect]\nmax_conns = 5\n");
    let err = load(Some(&f), &[], Flags::default()).unwrap_err();
    assert_eq!(err.0[0].key, "detect.max_conns");
    assert!(err.0[0].message.contains("unknown key"));
}

#[test]
fn missing_file_is_an_error() {
    let err = load(
        Some(Path::new("/nonexistent/c.toml")),
        &[],
        Flags::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/c.toml"));
}

#[test]
fn two_credential_kinds_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.toml", "[nats]\ntoken = \"t\"\n");
    let e = env(&[
        ("CONNWATCH_NATS__USER", "sys"),
        ("CONNWATCH_NATS__PASSWORD", "123"),
    ]);
    let err = load(Some(&f), &e, Flags::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nats.user"), "{err}");
    assert!(err.contains("nats.token"), "{err}");
    assert!(err.contains("CONNWATCH_NATS__USER"), "{err}");
}

#[test]
fn missing_creds_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[nats]\ncreds = \"/nope/sys.creds\"\n",
    );
    let err = load(Some(&f), &[], Flags::default()).unwrap_err();
    assert_eq!(err.0[0].key, "nats.creds");
    assert!(err.0[0].message.contains("/nope/sys.creds"));
}

#[test]
fn malformed_creds_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let creds = write(dir.path(), "x.creds", "not a creds file");
    let f = write(
        dir.path(),
        "c.toml",
        &format!("[nats]\ncreds = {:?}\n", creds),
    );
    let err = load(Some(&f), &[], Flags::default()).unwrap_err();
    assert!(err.0[0].message.contains("not a NATS .creds file"));
}

#[test]
fn secrets_are_redacted_when_rendered() {
    let mut c = Config::default();
    c.nats.user = Some("sys".into());
    c.nats.password = Some(Secret::new("hunter2"));
    let text = render_toml(&c);
    assert!(!text.contains("hunter2"));
    assert!(text.contains("<redacted>"));
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn servers_accept_a_comma_separated_string() {
    let e = env(&[("CONNWATCH_NATS__SERVERS", "nats://a:4222, nats://b:4222")]);
    let l = load(Some(Path::new("/dev/null")), &e, Flags::default()).unwrap();
    assert_eq!(
        l.config.nats.servers,
        vec!["nats://a:4222", "nats://b:4222"]
    );
}

#[test]
fn overrides_parse() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.toml",
        "[[detect.overrides]]\naccount = \"APP\"\nuser = \"svc\"\nmax_connections = 300\n",
    );
    let l = load(Some(&f), &[], Flags::default()).unwrap();
    assert_eq!(l.config.detect.overrides[0].max_connections, 300);
}

#[test]
fn stray_env_vars_are_found() {
    let e = env(&[
        ("CONNWATCH_TIMEOUT", "1s"),
        ("CONNWATCH_SWEEP__TIMEOUT", "1s"),
    ]);
    assert_eq!(stray_env_vars(&e), vec!["CONNWATCH_TIMEOUT".to_string()]);
}

/// The shipped config file documents the defaults: loading it changes nothing.
#[test]
fn shipped_config_file_equals_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
    let loaded = load(Some(&path), &[], Flags::default()).unwrap();
    let as_json = |c: &Config| serde_json::to_value(c).unwrap();
    assert_eq!(as_json(&loaded.config), as_json(&Config::default()));
}

/// Every key the configuration has appears in the shipped file and in README's reference.
#[test]
fn every_key_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(root.join(DEFAULT_CONFIG_PATH)).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut c = Config::default();
    c.nats.creds = Some("x".into());
    c.nats.user = Some("x".into());
    c.nats.password = Some(Secret::new("x"));
    c.nats.token = Some(Secret::new("x"));
    c.nats.nkey = Some("x".into());
    c.nats.tls = TlsConfig {
        ca: Some("x".into()),
        cert: Some("x".into()),
        key: Some("x".into()),
    };
    c.state.file = Some("x".into());
    c.jetstream = Some(JetStreamConfig {
        creds: c.nats.creds.clone(),
        user: c.nats.user.clone(),
        password: c.nats.password.clone(),
        token: c.nats.token.clone(),
        nkey: c.nats.nkey.clone(),
        tls: c.nats.tls.clone(),
        ..JetStreamConfig::default()
    });
    c.metrics.listen = "127.0.0.1:9464".into();
    let value = serde_json::to_value(&c).unwrap();
    for (section, keys) in value.as_object().unwrap() {
        for (key, v) in keys.as_object().unwrap() {
            let mut names = vec![format!("{section}.{key}")];
            if let Some(inner) = v.as_object() {
                names = inner
                    .keys()
                    .map(|k| format!("{section}.{key}.{k}"))
                    .collect();
            }
            for name in names {
                let leaf = name.rsplit('.').next().unwrap();
                assert!(
                    file.contains(&format!("{leaf} =")),
                    "{name} missing from {DEFAULT_CONFIG_PATH}"
                );
                assert!(
                    readme.contains(&format!("`{name}`")),
                    "{name} missing from README.md"
                );
            }
        }
    }
}

/// The JetStream example in `config/` is a valid configuration with the second connection.
#[test]
fn jetstream_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/jetstream-example.toml");
    let loaded = load(Some(&path), &[], Flags::default()).unwrap();
    let js = loaded
        .config
        .jetstream
        .as_ref()
        .expect("[jetstream] present");
    assert!(loaded.config.advisory.jetstream);
    let conn = js.connection(&loaded.config.nats);
    assert_eq!(conn.servers, loaded.config.nats.servers);
    assert_eq!(conn.user.as_deref(), Some("connwatch"));
    assert_eq!(conn.name, "connwatch-jetstream");
}
