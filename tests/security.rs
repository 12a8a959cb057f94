//! Security: secrets never leak into logs (text or JSON, at debug level), `check-config`,
//! reports or advisories; credentials files readable by others are warned about; kicks happen
//! only when enabled and only inside the policy.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use testkit::jwt::OperatorSetup;

const WAIT: Duration = Duration::from_secs(40);

fn is_firing(b: &serde_json::Value) -> bool {
    b["type"] == "io.connwatch.advisory.v1.excessive_user_connections" && b["state"] == "firing"
}

/// Panics naming where a secret showed up.
fn assert_no_secret(secrets: &[&str], outputs: &[(&str, String)]) {
    for (what, text) in outputs {
        // Logs and reports must have content (an empty capture would prove nothing).
        assert!(
            !text.is_empty() || what.contains("stdout") || what.contains("stderr"),
            "{what} is empty"
        );
        for s in secrets {
            assert!(
                !text.contains(s),
                "secret {s:?} leaked into {what}:\n{text}"
            );
        }
    }
}

fn cli(config: &Path, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_connwatch_env(&all, env, WAIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_debug_logs_json_logs_reports_or_advisories() {
    const SYS_PW: &str = "sysPW-s3cr3t-4b1d";
    const APP_PW: &str = "appPW-s3cr3t-9e7c";
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::new(dir.path().join("cluster"))
        .account(AccountSpec::new("APP").user("leaky", APP_PW));
    spec.system_user.password = SYS_PW.into();
    let cluster = Cluster::start(spec).unwrap();
    assert!(cluster.connwatch_toml().contains(SYS_PW));
    let leak = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("leaky", APP_PW),
            110,
        )
        .name("worker"),
    )
    .await
    .unwrap();
    let (seen, _sub) = Seen::subscribe_as(&cluster.client_url(1), "sys", SYS_PW).await;
    let tuning = "[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\n[detect]\nidle_threshold = \"1s\"\n\
                  [kick]\nenabled = true\ndry_run = true\nmin_idle = \"1s\"\nmin_age = \"1s\"\n";
    let config = write_config(dir.path(), &format!("{}{tuning}", cluster.connwatch_toml()));
    // The same, with the password from the environment instead of the file.
    let env_config = dir.path().join("env.toml");
    let without_pw: String = cluster
        .connwatch_toml()
        .lines()
        .filter(|l| !l.starts_with("password"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env_config, format!("{without_pw}{tuning}")).unwrap();

    let debug = [("RUST_LOG", "debug")];
    let text_run = Running::start_with(
        &["--config", config.to_str().unwrap(), "run"],
        &debug,
        dir.path().join("text.log"),
    );
    seen.wait_for(0, "firing", is_firing).await;
    seen.wait_for(0, "would-kick", |b| {
        b["type"] == "io.connwatch.advisory.v1.connection_kicked"
    })
    .await;
    let text_log = text_run.log();
    assert_eq!(text_run.terminate(), Some(0));
    assert!(text_log.contains("DEBUG"), "not a debug log: {text_log}");

    let from = seen.all().len();
    let json_run = Running::start_with(
        &[
            "--config",
            env_config.to_str().unwrap(),
            "--log-format",
            "json",
            "run",
        ],
        &[("RUST_LOG", "debug"), ("CONNWATCH_NATS__PASSWORD", SYS_PW)],
        dir.path().join("json.log"),
    );
    seen.wait_for(from, "firing again", is_firing).await;
    assert!(wait_until_async(WAIT, || json_run.rounds().0 >= 3).await);
    let json_log = json_run.log();
    assert_eq!(json_run.terminate(), Some(0));
    for line in json_log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }

    let check = tokio::task::spawn_blocking({
        let c = config.clone();
        move || cli(&c, &["check-config"], &[("RUST_LOG", "debug")])
    })
    .await
    .unwrap();
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    let check_env = tokio::task::spawn_blocking({
        let c = env_config.clone();
        move || {
            cli(
                &c,
                &["check-config"],
                &[("RUST_LOG", "debug"), ("CONNWATCH_NATS__PASSWORD", SYS_PW)],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(check_env.code, Some(0), "{}", check_env.stderr);
    let table = tokio::task::spawn_blocking({
        let c = config.clone();
        move || cli(&c, &["report", "--top", "0"], &[("RUST_LOG", "debug")])
    })
    .await
    .unwrap();
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let json = tokio::task::spawn_blocking({
        let c = config.clone();
        move || {
            cli(
                &c,
                &[
                    "--log-format",
                    "json",
                    "report",
                    "--format",
                    "json",
                    "--top",
                    "0",
                ],
                &[("RUST_LOG", "debug")],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    assert!(json.stdout.contains("leaky"));
    let advisories = serde_json::to_string(&seen.all()).unwrap();
    assert!(advisories.contains("connection_kicked"));
    assert_no_secret(
        &[SYS_PW, APP_PW],
        &[
            ("run text log", text_log),
            ("run JSON log", json_log),
            ("check-config stdout", check.stdout),
            ("check-config stderr", check.stderr),
            ("check-config (env) stdout", check_env.stdout),
            ("check-config (env) stderr", check_env.stderr),
            ("report stdout", table.stdout),
            ("report stderr", table.stderr),
            ("report JSON stdout", json.stdout),
            ("report JSON stderr", json.stderr),
            ("advisories", advisories),
        ],
    );
    leak.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_and_jwts_never_appear_in_operator_mode_output() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .mode(AuthMode::Operator)
            .account(AccountSpec::new("APP").user("leaky", "")),
    )
    .unwrap();
    let setup = cluster.operator().unwrap();
    let sys = setup.user("SYS", "sys").unwrap();
    let app = setup.user("APP", "leaky").unwrap();
    let secrets = [
        sys.seed(),
        sys.jwt.clone(),
        app.seed(),
        app.jwt.clone(),
        setup.operator.seed().unwrap(),
    ];
    let leak = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::from_creds_file(cluster.creds_path("APP", "leaky").unwrap()).unwrap(),
            110,
        )
        .name("worker"),
    )
    .await
    .unwrap();
    let (seen, _sub) = Seen::subscribe_with(
        &cluster.client_url(1),
        async_nats::ConnectOptions::with_credentials_file(cluster.system_creds_path().unwrap())
            .await
            .unwrap(),
    )
    .await;
    let config = write_config(
        dir.path(),
        &format!(
            "{}[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\n[detect]\nidle_threshold = \"1s\"\n",
            cluster.connwatch_toml()
        ),
    );
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let run = Running::start_with(
            &[
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                format,
                "run",
            ],
            &[("RUST_LOG", "debug")],
            dir.path().join(format!("{format}.log")),
        );
        let from = seen.all().len();
        seen.wait_for(from, "firing", is_firing).await;
        let log = run.log();
        assert_eq!(run.terminate(), Some(0));
        outputs.push((format!("run {format} log"), log));
    }
    for args in [
        vec!["check-config"],
        vec!["report", "--top", "0"],
        vec!["report", "--format", "json", "--top", "0"],
    ] {
        let c = config.clone();
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            cli(&c, &a, &[("RUST_LOG", "debug")])
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        outputs.push((format!("{args:?} stdout"), out.stdout));
        outputs.push((format!("{args:?} stderr"), out.stderr));
    }
    outputs.push((
        "advisories".into(),
        serde_json::to_string(&seen.all()).unwrap(),
    ));
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let outputs: Vec<(&str, String)> = outputs
        .iter()
        .map(|(w, t)| (w.as_str(), t.clone()))
        .collect();
    assert_no_secret(&secrets, &outputs);
    leak.close().await;
}

#[test]
fn tokens_and_nkey_seeds_never_appear_in_check_config_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-s3cr3t-c0ffee";
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().unwrap();
    let seed_file = dir.path().join("sys.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    std::fs::set_permissions(&seed_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_cfg = dir.path().join("token.toml");
    std::fs::write(
        &token_cfg,
        format!("[nats]\nservers = [\"nats://127.0.0.1:1\"]\ntoken = {token:?}\n"),
    )
    .unwrap();
    let nkey_cfg = dir.path().join("nkey.toml");
    std::fs::write(
        &nkey_cfg,
        format!(
            "[nats]\nservers = [\"nats://127.0.0.1:1\"]\nnkey = {:?}\n",
            seed_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut outputs = Vec::new();
    for cfg in [&token_cfg, &nkey_cfg] {
        for args in [vec!["check-config"], vec!["report"], vec!["run"]] {
            for format in ["text", "json"] {
                let mut a = vec!["--log-format", format];
                a.extend(&args);
                let out = cli(cfg, &a, &[("RUST_LOG", "debug")]);
                let expect = if args[0] == "check-config" { 0 } else { 3 };
                assert_eq!(out.code, Some(expect), "{args:?}: {}", out.stderr);
                outputs.push((
                    format!("{cfg:?} {args:?} {format}"),
                    out.stdout + &out.stderr,
                ));
            }
        }
    }
    // A token given in the environment, and a broken config that echoes values back.
    let out = run_connwatch_env(
        &["-s", "nats://127.0.0.1:1", "check-config"],
        &[
            ("CONNWATCH_NATS__TOKEN", token),
            ("CONNWATCH_NATS__USER", "sys"),
        ],
        WAIT,
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    outputs.push(("conflicting env".into(), out.stdout + &out.stderr));
    let out = run_connwatch_env(
        &["-s", "nats://127.0.0.1:1", "check-config"],
        &[("CONNWATCH_NATS__PASSWORD", token)],
        WAIT,
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    outputs.push(("password without user".into(), out.stdout + &out.stderr));
    let outputs: Vec<(&str, String)> = outputs
        .iter()
        .map(|(w, t)| (w.as_str(), t.clone()))
        .collect();
    assert_no_secret(&[token, &seed], &outputs);
}

/// Writes a valid system `.creds` file (or nkey seed file) with `mode`.
fn secret_file(dir: &Path, name: &str, nkey: bool, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let text = if nkey {
        format!("{}\n", nkeys::KeyPair::new_user().seed().unwrap())
    } else {
        let setup = OperatorSetup::generate("perm-test", &["sys"], &[]).unwrap();
        setup.user("SYS", "sys").unwrap().creds()
    };
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `report`, `run` and `check-config` with the file as `nats.creds` or `nats.nkey`; the stderr
/// of each.
fn startup_stderr(dir: &Path, file: &Path, nkey: bool) -> Vec<(String, String)> {
    let key = if nkey { "nkey" } else { "creds" };
    let cfg = dir.join(format!("{key}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[nats]\nservers = [\"nats://127.0.0.1:1\"]\n{key} = {:?}\nconnect_timeout = \"1s\"\n",
            file.to_str().unwrap()
        ),
    )
    .unwrap();
    ["check-config", "report", "run"]
        .iter()
        .map(|cmd| {
            let out = cli(&cfg, &[cmd], &[]);
            let expect = if *cmd == "check-config" { 0 } else { 3 };
            assert_eq!(out.code, Some(expect), "{cmd}: {}", out.stderr);
            (cmd.to_string(), out.stderr)
        })
        .collect()
}

#[test]
fn a_creds_or_seed_file_readable_by_others_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    for (nkey, name) in [(false, "sys.creds"), (true, "sys.nk")] {
        for mode in [0o644, 0o640, 0o604] {
            let file = secret_file(dir.path(), name, nkey, mode);
            for (cmd, stderr) in startup_stderr(dir.path(), &file, nkey) {
                assert!(
                    stderr.contains("readable by others")
                        && stderr.contains(file.to_str().unwrap()),
                    "{cmd} with {name} mode {mode:o}: no warning naming the file:\n{stderr}"
                );
            }
        }
        let file = secret_file(dir.path(), name, nkey, 0o600);
        for (cmd, stderr) in startup_stderr(dir.path(), &file, nkey) {
            assert!(
                !stderr.contains("readable by others"),
                "{cmd} with {name} mode 600 warned:\n{stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_happen_only_when_enabled_and_only_inside_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).account(
            AccountSpec::new("APP")
                .user("leaky", "pw")
                .user("other", "pw"),
        ),
    )
    .unwrap();
    let leak = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("leaky", "pw"),
            130,
        )
        .name("worker"),
    )
    .await
    .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let base = format!(
        "{}[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\n[detect]\nidle_threshold = \"1s\"\n",
        cluster.connwatch_toml()
    );
    let policies = [
        (
            "disabled",
            "[kick]\nenabled = false\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n",
        ),
        (
            "protected by kick.protect",
            "[kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n\
             [[kick.protect]]\naccount = \"APP\"\n",
        ),
        (
            "not on the kick.only list",
            "[kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n\
             [[kick.only]]\naccount = \"APP\"\nuser = \"other\"\n",
        ),
        (
            "too young",
            "[kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1h\"\n",
        ),
        (
            "not idle long enough",
            "[kick]\nenabled = true\ndry_run = false\nmin_idle = \"1h\"\nmin_age = \"1s\"\n",
        ),
    ];
    for (what, policy) in policies {
        let path = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, format!("{base}{policy}")).unwrap();
        let from = seen.all().len();
        let running = Running::start(&path, dir.path().join(format!("{what}.log")));
        seen.wait_for(from, "firing", is_firing).await;
        // Past min_idle and min_age (1 s) for several complete sweeps.
        let rounds = running.rounds().0;
        assert!(
            wait_until_async(WAIT, || running.rounds().0 >= rounds + 6).await,
            "{what}: {}",
            running.log()
        );
        // No kick decided at all: none sent, none failed, none in dry run.
        let kicks = metric_sum(&running.metrics(), "connwatch_kicks_total").unwrap_or(0.0);
        let log = running.log();
        assert_eq!(running.terminate(), Some(0), "{what}");
        assert!(
            seen.of("connection_kicked").is_empty(),
            "{what}: kicked: {:#?}",
            seen.of("connection_kicked")
        );
        assert_eq!(kicks, 0.0, "{what}: {log}");
        assert_eq!(leak.alive(), 130, "{what}: connections closed");
    }
    leak.close().await;
}

fn kicked_in(seen: &Seen, account: &str) -> usize {
    seen.of("connection_kicked")
        .iter()
        .filter(|b| b["account"] == account)
        .count()
}

/// A cluster whose system user `sys` may not publish to `deny`, with 150 idle connections of
/// `sys` itself and 150 of `APP/leaky`, and connwatch's configuration with kicks on.
async fn denied(dir: &Path, deny: &[&str]) -> (Cluster, Load, Load, PathBuf, std::net::SocketAddr) {
    let subjects: Vec<String> = deny.iter().map(|s| format!("{s:?}")).collect();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.join("cluster"))
            .account(AccountSpec::new("APP").user("leaky", "pw"))
            .system_permissions(format!("{{publish: {{deny: [{}]}}}}", subjects.join(", "))),
    )
    .unwrap();
    let open = |user: &str, password: &str| {
        load::open(
            LoadSpec::new(
                cluster.client_url(0),
                LoadAuth::user_password(user, password),
                150,
            )
            .name("idle"),
        )
    };
    let sys = open("sys", "sys-dev-password").await.unwrap();
    let leaky = open("leaky", "pw").await.unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = write_config(
        dir,
        &format!(
            "{}[live]\nreconcile_interval = \"300ms\"\n[sweep]\ninterval = \"300ms\"\ntimeout = \"1s\"\n[detect]\nidle_threshold = \"1s\"\n\
             [metrics]\nlisten = \"{listen}\"\n\
             [kick]\nenabled = true\ndry_run = false\nmin_idle = \"1s\"\nmin_age = \"1s\"\n\
             max_per_sweep = 100\nmax_per_user = 20\n",
            cluster.connwatch_toml()
        ),
    );
    (cluster, sys, leaky, path, listen)
}

fn metric(listen: std::net::SocketAddr, prefix: &str) -> Option<f64> {
    let (_, text) = testkit::cluster::http_get(listen, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// connwatch's user may not ask `$SYS.REQ.USER.INFO`: it learns the system account from VARZ
/// and never kicks the system user's idle connections, while it kicks the leaked ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_user_info_the_system_account_comes_from_varz_and_is_spared() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, sys, leaky, path, listen) = denied(dir.path(), &["$SYS.REQ.USER.INFO"]).await;
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.path().join("run.log"));
    seen.wait_for(0, "APP kick", |b| {
        b["type"] == "io.connwatch.advisory.v1.connection_kicked" && b["account"] == "APP"
    })
    .await;
    let rounds = running.rounds().0;
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= rounds + 3).await,
        "{}",
        running.log()
    );
    assert_eq!(metric(listen, "connwatch_identity_known "), Some(1.0));
    assert_eq!(
        kicked_in(&seen, "SYS"),
        0,
        "system-account connections kicked: {:#?}",
        seen.of("connection_kicked")
    );
    assert_eq!(sys.alive(), 150, "system user's connections closed");
    assert!(leaky.alive() < 150, "the leak was not kicked");
    assert_eq!(running.terminate(), Some(0));
}

/// Neither USER.INFO nor VARZ: connwatch does not know the system account, so it kicks nothing
/// (automatic or manual) and says why in its metric and `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_system_account_unknown_nothing_is_kicked_and_it_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, sys, leaky, path, listen) = denied(
        dir.path(),
        &["$SYS.REQ.USER.INFO", "$SYS.REQ.SERVER.PING.VARZ"],
    )
    .await;
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let running = Running::start(&path, dir.path().join("run.log"));
    seen.wait_for(0, "firing", is_firing).await;
    // Past min_idle and min_age (1 s) for several complete sweeps.
    let rounds = running.rounds().0;
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= rounds + 4).await,
        "{}",
        running.log()
    );
    assert!(
        seen.of("connection_kicked").is_empty(),
        "kicked with the system account unknown: {:#?}",
        seen.of("connection_kicked")
    );
    assert_eq!((sys.alive(), leaky.alive()), (150, 150));
    assert_eq!(metric(listen, "connwatch_identity_known "), Some(0.0));
    let (code, body) = testkit::cluster::http_get(listen, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("system account is unknown"), "{body}");
    // The failed VARZ lookups are counted as unknown limits, not taken as "no limit".
    assert!(
        metric(
            listen,
            "connwatch_limit_lookups_failed_total{lookup=\"varz\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    let out = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            cli(
                &path,
                &["kick", "--account", "APP", "--user", "leaky", "--yes"],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("refusing to kick"), "{}", out.stderr);
    assert!(
        out.stderr.contains("system account is unknown"),
        "{}",
        out.stderr
    );
    assert_eq!(leaky.alive(), 150);
    assert_eq!(running.terminate(), Some(0));
}

/// connwatch's user may not subscribe to `$SRV.>` nor `connwatch.sweep`: the server refuses the service's
/// subscriptions without the client failing, so `run` asks the server which it holds and does
/// not start (exit 6 naming `service.enabled` and the refused subjects) rather than run with
/// endpoints that never answer. Nothing is half-started: no advisory, `/readyz` never 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_endpoints_the_server_refuses_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster"))
            .account(AccountSpec::new("APP").user("leaky", "pw"))
            .system_permissions(r#"{subscribe: {deny: ["$SRV.>", "connwatch.sweep"]}}"#),
    )
    .unwrap();
    // A leak that would fire at the first round, had the service started.
    let _leak = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("leaky", "pw"),
            130,
        )
        .name("idle"),
    )
    .await
    .unwrap();
    let (seen, _sub) = Seen::subscribe(&cluster.client_url(1)).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "{}[sweep]\ninterval = \"300ms\"\n[detect]\nidle_threshold = \"1s\"\n[metrics]\nlisten = \"{listen}\"\n",
            cluster.connwatch_toml()
        ),
    );
    let run = tokio::task::spawn_blocking({
        let p = path.display().to_string();
        move || run_connwatch(["--config", &p, "run"], WAIT)
    });
    // `/readyz` asked until the process is gone: never ready.
    let mut ready = Vec::new();
    while !run.is_finished() {
        if let Ok((code, body)) =
            tokio::task::spawn_blocking(move || testkit::cluster::http_get(listen, "/readyz"))
                .await
                .unwrap()
        {
            ready.push((code, body));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = run.await.unwrap();
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(
        out.stderr.contains("service.enabled")
            && out
                .stderr
                .contains("refused the subscriptions to $SRV.PING")
            && out.stderr.contains("connwatch.sweep")
            && !out.stderr.contains("connwatch.census"),
        "{}",
        out.stderr
    );
    assert!(ready.iter().all(|(code, _)| *code != 200), "{ready:?}");
    // The leak fires for a service that starts (the same cluster, the endpoints off).
    let off = write_config(
        dir.path(),
        &format!(
            "{}[sweep]\ninterval = \"300ms\"\n[detect]\nidle_threshold = \"1s\"\n[service]\nenabled = false\n",
            cluster.connwatch_toml()
        ),
    );
    assert!(seen.all().is_empty(), "published: {:#?}", seen.all());
    let running = Running::start(&off, dir.path().join("off.log"));
    seen.wait_for(
        0,
        "excessive_user_connections",
        advisory_is("excessive_user_connections", "firing"),
    )
    .await;
    assert_eq!(running.terminate(), Some(0));
}

/// connwatch's user may not subscribe to the kick audits: `run` would not follow by-hand kicks
/// into its kick memory, so it does not start (exit 6 naming `advisory.subject_prefix` and the
/// refused subject) rather than miss them silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_to_kick_audits_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).system_permissions(
            r#"{subscribe: {deny: ["connwatch.advisory.connection_kicked.>"]}}"#,
        ),
    )
    .unwrap();
    let path = write_config(dir.path(), &cluster.connwatch_toml());
    let p = path.display().to_string();
    let out = tokio::task::spawn_blocking(move || run_connwatch(["--config", &p, "run"], WAIT))
        .await
        .unwrap();
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    assert!(
        out.stderr.contains("advisory.subject_prefix")
            && out.stderr.contains("refused the subscription")
            && out
                .stderr
                .contains("connwatch.advisory.connection_kicked.>"),
        "{}",
        out.stderr
    );
}
