//! Configuration mistakes exit with code 2 before connecting, naming the key and its source.

mod support;

use std::process::Command;

use support::connwatch_bin;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(config: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(connwatch_bin());
    cmd.current_dir(dir.path()).env_remove("CONNWATCH_CONFIG");
    if let Some(text) = config {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(&path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Port 1 refuses connections: a run that got past the config would exit 3, not 2.
    let out = cmd
        .args(["-s", "nats://127.0.0.1:1"])
        .args(args)
        .output()
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn assert_config_error(out: &Out, needles: &[&str]) {
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "{n:?} not in: {}", out.stderr);
    }
}

#[test]
fn wrong_type_in_file_names_key_and_file() {
    let out = run(Some("[sweep]\ntimeout = 5\n"), &[], &["report"]);
    assert_config_error(&out, &["`sweep.timeout`", "c.toml"]);
}

#[test]
fn wrong_type_in_env_names_the_variable() {
    let out = run(
        None,
        &[("CONNWATCH_DETECT__MAX_CONNECTIONS_PER_USER", "lots")],
        &["report"],
    );
    assert_config_error(
        &out,
        &[
            "`detect.max_connections_per_user`",
            "CONNWATCH_DETECT__MAX_CONNECTIONS_PER_USER",
        ],
    );
}

#[test]
fn unknown_key_is_refused() {
    let out = run(Some("[sweep]\ntimeuot = \"5s\"\n"), &[], &["report"]);
    assert_config_error(&out, &["`sweep.timeuot`", "unknown key", "c.toml"]);
}

#[test]
fn unknown_section_is_refused() {
    let out = run(Some("[sweeps]\ntimeout = \"5s\"\n"), &[], &["report"]);
    assert_config_error(&out, &["`sweeps`", "unknown key"]);
}

#[test]
fn unreadable_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = Command::new(connwatch_bin())
        .arg("--config")
        .arg(&missing)
        .arg("report")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn malformed_toml_is_refused() {
    let out = run(Some("[sweep\ntimeout = \"5s\"\n"), &[], &["report"]);
    assert_config_error(&out, &["c.toml"]);
}

#[test]
fn missing_credentials_file_is_refused() {
    let out = run(
        Some("[nats]\ncreds = \"/no/such/sys.creds\"\n"),
        &[],
        &["report"],
    );
    assert_config_error(&out, &["`nats.creds`", "/no/such/sys.creds", "c.toml"]);
}

#[test]
fn two_credential_kinds_are_refused() {
    let out = run(
        Some("[nats]\ntoken = \"t0k3n\"\n"),
        &[
            ("CONNWATCH_NATS__USER", "sys"),
            ("CONNWATCH_NATS__PASSWORD", "pw"),
        ],
        &["report"],
    );
    assert_config_error(&out, &["nats.token", "nats.user", "CONNWATCH_NATS__USER"]);
    assert!(
        !out.stderr.contains("t0k3n"),
        "secret leaked: {}",
        out.stderr
    );
}

#[test]
fn bad_flag_value_is_refused_by_the_parser() {
    let out = run(None, &[], &["--timeout", "soon", "report"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--timeout"));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let out = run(
        Some("[nats]\nuser = \"sys\"\npassword = \"hunter2\"\n[sweep]\ntimeout = \"7s\"\n"),
        &[("CONNWATCH_SWEEP__PAGE_SIZE", "777")],
        &["check-config"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("timeout = \"7s\""), "{}", out.stdout);
    assert!(out.stdout.contains("page_size = 777"), "{}", out.stdout);
    assert!(out.stdout.contains("<redacted>"), "{}", out.stdout);
    assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"));
}

#[test]
fn check_config_refuses_what_report_refuses() {
    let out = run(
        Some("[detect]\nidle_threshold = \"0s\"\n"),
        &[],
        &["check-config"],
    );
    assert_config_error(&out, &["`detect.idle_threshold`", "longer than zero"]);
}

#[test]
fn the_old_kick_list_keys_are_refused_naming_their_new_names() {
    for (old, new, env) in [
        ("allow", "`kick.protect`", "CONNWATCH_KICK__ALLOW"),
        ("deny", "`kick.only`", "CONNWATCH_KICK__DENY"),
    ] {
        let key = format!("`kick.{old}`");
        let file = format!("[[kick.{old}]]\naccount = \"APP\"\n");
        for command in ["report", "check-config", "kick"] {
            let args: &[&str] = if command == "kick" {
                &["kick", "--account", "APP", "--user", "u"]
            } else {
                &[command]
            };
            let out = run(Some(&file), &[], args);
            assert_config_error(&out, &[&key, new, "renamed", "c.toml"]);
            let out = run(None, &[(env, "[{account = \"APP\"}]")], args);
            assert_config_error(&out, &[&key, new, "renamed", env]);
        }
    }
    // An empty list under the old name is refused too: the key itself is gone.
    let out = run(Some("[kick]\nallow = []\n"), &[], &["report"]);
    assert_config_error(&out, &["`kick.allow`", "`kick.protect`"]);
}

#[test]
fn the_old_live_probe_interval_is_refused_naming_the_heartbeat_margin() {
    let out = run(Some("[live]\nprobe_interval = \"5s\"\n"), &[], &["run"]);
    assert_config_error(
        &out,
        &[
            "`live.probe_interval`",
            "`live.heartbeat_margin`",
            "renamed",
        ],
    );
}

#[test]
fn forget_without_a_state_file_says_so() {
    let out = run(None, &[], &["kick", "--forget", "--all"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("`state.file` is not set"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
