//! Broken configurations and credentials, table-driven through the `connwatch` binary: each
//! case with the exit code (2 config, 3 unreachable, 4 credentials, 5 not the system account)
//! and the words the error must contain. Complements tests/config_errors.rs (no case repeated).

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

struct Case {
    name: &'static str,
    /// The configuration file; `{dir}` is replaced by a scratch directory, `{url}` by a server.
    config: &'static str,
    /// Files to create in `{dir}` first: (name, contents).
    files: &'static [(&'static str, &'static str)],
    /// Extra arguments before the command.
    args: &'static [&'static str],
    code: i32,
    needles: &'static [&'static str],
}

const SYS_CREDS_SHAPE: &str = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n\
------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\nSUAMNOTAVALIDSEED\n\
------END USER NKEY SEED------\n";

const OFFLINE: &[Case] = &[
    Case {
        name: "no servers",
        config: "[nats]\nservers = []\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`nats.servers`", "no server URL"],
    },
    Case {
        name: "server URL with a space",
        config: "[nats]\nservers = [\"nats://127.0.0.1 :4222\"]\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`nats.servers`", "is not a server URL"],
    },
    Case {
        name: "user without password",
        config: "[nats]\nservers = [\"{url}\"]\nuser = \"sys\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`nats.password`", "go together"],
    },
    Case {
        name: "creds file that is not a creds file",
        config: "[nats]\nservers = [\"{url}\"]\ncreds = \"{dir}/junk.creds\"\n",
        files: &[("junk.creds", "hello\n\u{0}\u{1}binary")],
        args: &[],
        code: 2,
        needles: &["`nats.creds`", "junk.creds", "not a NATS .creds file"],
    },
    Case {
        name: "creds file with an invalid seed",
        config: "[nats]\nservers = [\"{url}\"]\ncreds = \"{dir}/bad.creds\"\n",
        files: &[("bad.creds", SYS_CREDS_SHAPE)],
        args: &[],
        code: 2,
        needles: &["`nats.creds`", "bad.creds", "invalid nkey seed"],
    },
    Case {
        name: "empty creds file",
        config: "[nats]\nservers = [\"{url}\"]\ncreds = \"{dir}/empty.creds\"\n",
        files: &[("empty.creds", "")],
        args: &[],
        code: 2,
        needles: &["`nats.creds`", "empty.creds"],
    },
    Case {
        name: "nkey file without a user seed",
        config: "[nats]\nservers = [\"{url}\"]\nnkey = \"{dir}/sys.nk\"\n",
        files: &[("sys.nk", "SAAGNOTAUSERSEED\n")],
        args: &[],
        code: 2,
        needles: &["`nats.nkey`", "sys.nk", "user nkey seed"],
    },
    Case {
        name: "nkey file with a corrupt seed",
        config: "[nats]\nservers = [\"{url}\"]\nnkey = \"{dir}/sys.nk\"\n",
        files: &[(
            "sys.nk",
            "SUACORRUPTSEEDXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n",
        )],
        args: &[],
        code: 2,
        needles: &["`nats.nkey`", "invalid nkey seed"],
    },
    Case {
        name: "missing nkey file",
        config: "[nats]\nservers = [\"{url}\"]\nnkey = \"{dir}/none.nk\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`nats.nkey`", "none.nk"],
    },
    Case {
        name: "missing TLS CA",
        config: "[nats]\nservers = [\"{url}\"]\n[nats.tls]\nca = \"{dir}/ca.pem\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`nats.tls.ca`", "ca.pem"],
    },
    Case {
        name: "TLS key without certificate",
        config: "[nats]\nservers = [\"{url}\"]\n[nats.tls]\nkey = \"{dir}/key.pem\"\n",
        files: &[("key.pem", "x")],
        args: &[],
        code: 2,
        needles: &["`nats.tls.cert`", "go together"],
    },
    Case {
        name: "advisory.jetstream without a [jetstream] connection",
        config: "[nats]\nservers = [\"{url}\"]\n[advisory]\njetstream = true\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`advisory.jetstream`", "`[jetstream]`", "system account"],
    },
    Case {
        name: "[jetstream] user without password",
        config: "[nats]\nservers = [\"{url}\"]\n[jetstream]\nuser = \"js\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`jetstream.password`", "go together"],
    },
    Case {
        name: "[jetstream] with two kinds of credentials",
        config: "[nats]\nservers = [\"{url}\"]\n[jetstream]\ntoken = \"t\"\nnkey = \"{dir}/js.nk\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`jetstream.token`", "`jetstream.nkey`", "more than one kind", "js.nk"],
    },
    Case {
        name: "advisory.stream that is no stream name",
        config: "[nats]\nservers = [\"{url}\"]\n[advisory]\njetstream = true\nstream = \"a.b\"\n[jetstream]\nuser = \"js\"\npassword = \"pw\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`advisory.stream`", "not a stream name"],
    },
    Case {
        name: "empty client name",
        config: "[nats]\nservers = [\"{url}\"]\nname = \"\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`nats.name`", "must not be empty"],
    },
    Case {
        name: "zero interval",
        config: "[sweep]\ninterval = \"0s\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`sweep.interval`", "longer than zero"],
    },
    Case {
        name: "not a duration",
        config: "[sweep]\ntimeout = \"forever\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`sweep.timeout`"],
    },
    Case {
        name: "zero page size",
        config: "[sweep]\npage_size = 0\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`sweep.page_size`", "at least 1"],
    },
    Case {
        name: "negative page size",
        config: "[sweep]\npage_size = -5\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`sweep.page_size`"],
    },
    Case {
        name: "number too big for TOML",
        config: "[sweep]\npage_size = 99999999999999999999999\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["connwatch.toml"],
    },
    Case {
        name: "pressure share above one",
        config: "[detect]\naccount_pressure = 1.5\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`detect.account_pressure`", "between 0 and 1"],
    },
    Case {
        name: "NaN pressure",
        config: "[detect]\nserver_pressure = nan\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`detect.server_pressure`"],
    },
    Case {
        name: "negative growth",
        config: "[detect]\ngrowth_min_per_hour = -1.0\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`detect.growth_min_per_hour`", "negative"],
    },
    Case {
        name: "wildcard subject prefix",
        config: "[advisory]\nsubject_prefix = \"connwatch.*\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`advisory.subject_prefix`", "literal subject"],
    },
    Case {
        name: "empty token in subject prefix",
        config: "[advisory]\nsubject_prefix = \"connwatch..advisory\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`advisory.subject_prefix`"],
    },
    Case {
        name: "space in subject prefix",
        config: "[advisory]\nsubject_prefix = \"conn watch\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`advisory.subject_prefix`"],
    },
    Case {
        name: "zero queue",
        config: "[advisory]\nqueue_size = 0\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`advisory.queue_size`", "at least 1"],
    },
    Case {
        name: "zero kick attempts",
        config: "[kick]\nmax_attempts = 0\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`kick.max_attempts`"],
    },
    Case {
        name: "kick protect without account",
        config: "[[kick.protect]]\naccount = \"\"\nuser = \"x\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`kick.protect.0.account`", "must not be empty"],
    },
    Case {
        name: "kick only without account",
        config: "[[kick.only]]\naccount = \"\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`kick.only.0.account`", "must not be empty"],
    },
    Case {
        name: "zero kick concurrency",
        config: "[kick]\nconcurrency = 0\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`kick.concurrency`", "at least 1"],
    },
    Case {
        name: "zero give_up_for",
        config: "[kick]\ngive_up_for = \"0s\"\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`kick.give_up_for`", "longer than zero"],
    },
    Case {
        name: "override without account",
        config: "[[detect.overrides]]\naccount = \"\"\nmax_connections = 5\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &["`detect.overrides.0.account`"],
    },
    Case {
        name: "several mistakes are all named",
        config: "[sweep]\npage_size = 0\n[advisory]\nqueue_size = 0\n[kick]\nmax_attempts = 0\n",
        files: &[],
        args: &[],
        code: 2,
        needles: &[
            "`sweep.page_size`",
            "`advisory.queue_size`",
            "`kick.max_attempts`",
        ],
    },
    Case {
        name: "a binary config file",
        config: "\u{0}\u{1}\u{2}\u{fffd}\u{7f}[[[",
        files: &[],
        args: &[],
        code: 2,
        needles: &["connwatch.toml"],
    },
    Case {
        name: "bad --expected-servers",
        config: "",
        files: &[],
        args: &["--expected-servers", "many"],
        code: 2,
        needles: &["--expected-servers"],
    },
    Case {
        name: "nobody listening",
        config: "[nats]\nservers = [\"{url}\"]\nconnect_timeout = \"2s\"\n",
        files: &[],
        args: &[],
        code: 3,
        needles: &["cannot reach any NATS server", "127.0.0.1:1"],
    },
];

/// Runs one case's `report` (and `check-config` for configuration errors) against `url`.
fn check(case: &Case, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (name, text) in case.files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = case.config.replace("{dir}", d).replace("{url}", url);
    let path = write_config(dir.path(), &config);
    let mut commands = vec!["report"];
    if case.code == 2 {
        commands.push("check-config");
    }
    for command in commands {
        let out = run(&path, case.args, command);
        assert_eq!(
            out.status.code(),
            Some(case.code),
            "{}: `{command}` exit code; stderr:\n{}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for n in case.needles {
            let n = n.replace("{dir}", d);
            assert!(
                stderr.contains(&n),
                "{}: `{command}`: {n:?} not in:\n{stderr}",
                case.name
            );
        }
        assert!(
            !stderr.contains("panicked"),
            "{}: panicked:\n{stderr}",
            case.name
        );
    }
}

fn run(config: &Path, args: &[&str], command: &str) -> std::process::Output {
    Command::new(connwatch_bin())
        .env_remove("CONNWATCH_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .arg(command)
        .output()
        .unwrap()
}

#[test]
fn broken_configurations_exit_2_or_3_with_the_key_named() {
    // Port 1 refuses connections: a case that got past the configuration exits 3.
    for case in OFFLINE {
        check(case, "nats://127.0.0.1:1");
    }
}

#[test]
fn rejected_credentials_exit_4_and_non_system_users_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let config_cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("config"))
            .servers(1)
            .account(AccountSpec::new("APP").user("app", "app-pw")),
    )
    .unwrap();
    let operator_cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("operator"))
            .servers(1)
            .mode(AuthMode::Operator)
            .account(AccountSpec::new("APP").user("app", "")),
    )
    .unwrap();
    // Credentials of another operator: well-formed, unknown to the server.
    let foreign = testkit::jwt::OperatorSetup::generate("elsewhere", &["sys"], &[])
        .unwrap()
        .user("SYS", "sys")
        .unwrap()
        .creds();
    let foreign_path = dir.path().join("foreign.creds");
    std::fs::write(&foreign_path, foreign).unwrap();
    let seed_path = dir.path().join("unknown.nk");
    std::fs::write(&seed_path, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let app_creds = operator_cluster.creds_path("APP", "app").unwrap();

    let config_url = config_cluster.client_url(0);
    let operator_url = operator_cluster.client_url(0);
    let cases: Vec<(&str, String, i32, Vec<&str>)> = vec![
        (
            "wrong password",
            format!("[nats]\nservers = [{config_url:?}]\nuser = \"sys\"\npassword = \"wrong\"\n"),
            4,
            vec!["rejected", "`nats.user`"],
        ),
        (
            "unknown user",
            format!("[nats]\nservers = [{config_url:?}]\nuser = \"nobody\"\npassword = \"x\"\n"),
            4,
            vec!["rejected"],
        ),
        (
            "token on a password server",
            format!("[nats]\nservers = [{config_url:?}]\ntoken = \"t\"\n"),
            4,
            vec!["rejected", "`nats.token`"],
        ),
        (
            "unknown nkey",
            format!(
                "[nats]\nservers = [{config_url:?}]\nnkey = {:?}\n",
                seed_path.to_str().unwrap()
            ),
            4,
            vec!["nats.nkey"],
        ),
        (
            "creds of another operator",
            format!(
                "[nats]\nservers = [{operator_url:?}]\ncreds = {:?}\n",
                foreign_path.to_str().unwrap()
            ),
            4,
            vec!["creds"],
        ),
        (
            "an application user (config mode)",
            format!("[nats]\nservers = [{config_url:?}]\nuser = \"app\"\npassword = \"app-pw\"\n"),
            5,
            vec!["not a system-account user", "app"],
        ),
        (
            "an application user (operator mode)",
            format!(
                "[nats]\nservers = [{operator_url:?}]\ncreds = {:?}\n",
                app_creds.to_str().unwrap()
            ),
            5,
            vec!["not a system-account user"],
        ),
    ];
    for (name, config, code, needles) in cases {
        let case_dir = tempfile::tempdir().unwrap();
        let path = write_config(
            case_dir.path(),
            &format!("{config}[sweep]\ntimeout = \"2s\"\n"),
        );
        for command in ["report", "run"] {
            let out = run(&path, &[], command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{name}: `{command}` exit code; stderr:\n{stderr}"
            );
            for n in &needles {
                assert!(
                    stderr.contains(n),
                    "{name}: `{command}`: {n:?} not in:\n{stderr}"
                );
            }
        }
    }
}
