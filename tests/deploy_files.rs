//! Files that cannot run here (Docker) are kept valid: parsed, and every file they mount exists;
//! and the compose setup (its nats-server configuration, development JWTs and connwatch
//! environment) is run for real on loopback, without Docker.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::cluster::{find_nats_server, http_get};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    YamlLoader::load_from_str(&text)
        .expect("docker-compose.yml is valid YAML")
        .remove(0)
}

/// A service's `key`, or the one it merges in (`<<: *anchor`).
fn merged<'a>(service: &'a Yaml, key: &str) -> &'a Yaml {
    if service[key].is_badvalue() {
        &service["<<"][key]
    } else {
        &service[key]
    }
}

/// The host side of every `host:container[:mode]` volume of a service (merge keys resolved).
fn host_mounts(service: &Yaml) -> Vec<String> {
    let vols = merged(service, "volumes")
        .as_vec()
        .cloned()
        .unwrap_or_default();
    vols.iter()
        .filter_map(|v| v.as_str())
        .map(|v| v.split(':').next().unwrap().to_string())
        .collect()
}

#[test]
fn compose_has_a_three_node_cluster_and_connwatch() {
    let c = compose();
    let services = &c["services"];
    for name in ["n1", "n2", "n3", "connwatch"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
    }
    let nats = &c["x-nats"];
    assert!(nats["image"].as_str().unwrap().starts_with("nats:"));
    for n in ["n1", "n2", "n3"] {
        let s = &services[n];
        let merged = if s["image"].is_badvalue() {
            &s["<<"]
        } else {
            s
        };
        assert!(merged["image"].as_str().is_some(), "{n} has no image");
        assert_eq!(s["environment"]["SERVER_NAME"].as_str(), Some(n));
    }
    let cw = &services["connwatch"];
    assert_eq!(cw["build"]["context"].as_str(), Some("."));
    assert_eq!(cw["build"]["target"].as_str(), Some("connwatch"));
    assert!(root().join("Dockerfile").exists());
    let command: Vec<&str> = cw["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(command.last(), Some(&"run"), "connwatch runs as a service");
    // Every environment variable it sets is a configuration key connwatch accepts.
    let env = local_env(cw);
    let loaded = connwatch::config::load(
        Some(&root().join("config/connwatch.toml")),
        &env,
        Default::default(),
    );
    assert!(
        loaded.is_ok(),
        "compose environment is not a valid configuration: {:?}",
        loaded.err()
    );
    let leaky = &services["leaky-client"];
    let args: Vec<&str> = leaky["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(args[0], "load");
    assert!(root().join("creds/leaky.creds").exists());
    // The demo client runs from the tools image, so the service image need not carry it.
    assert_eq!(leaky["build"]["target"].as_str(), Some("demo-tools"));
    assert!(dockerfile_stages()
        .iter()
        .any(|(name, _)| name == "demo-tools"));
}

/// A connwatch service's environment, its `/app/creds/` files read from this repository's
/// `creds/`.
fn local_env(service: &Yaml) -> Vec<(String, String)> {
    merged(service, "environment")
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap();
            let v = match v.strip_prefix("/app/creds/") {
                Some(file) => root().join("creds").join(file).display().to_string(),
                None => v.to_string(),
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn compose_runs_two_ha_replicas_with_advisories_in_jetstream() {
    let c = compose();
    let services = &c["services"];
    let (a, b) = (&services["connwatch"], &services["connwatch-2"]);
    assert!(!b.is_badvalue(), "no second replica");
    for s in [a, b] {
        let env = local_env(s);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CONNWATCH_HA__ENABLED"), Some("true"));
        assert_eq!(get("CONNWATCH_ADVISORY__JETSTREAM"), Some("true"));
        assert!(Path::new(get("CONNWATCH_JETSTREAM__CREDS").unwrap()).exists());
        assert_eq!(merged(s, "image").as_str(), Some("connwatch:dev"));
    }
    // Both replicas publish their metrics port on the host, on different ports.
    let port = |s: &Yaml| s["ports"][0].as_str().unwrap().to_string();
    assert_ne!(port(a), port(b));
    let conf = std::fs::read_to_string(root().join("config/nats/cluster.conf")).unwrap();
    assert!(conf.contains("jetstream {"), "{conf}");
}

#[test]
fn every_mounted_file_exists() {
    let c = compose();
    let services = c["services"].as_hash().unwrap();
    let mut checked = 0;
    for (_, s) in services {
        for host in host_mounts(s) {
            let path = root().join(host.trim_start_matches("./"));
            assert!(
                path.exists(),
                "{} is mounted but does not exist",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} mounts checked");
}

#[test]
fn cluster_config_includes_the_resolver_and_routes_all_nodes() {
    let conf = std::fs::read_to_string(root().join("config/nats/cluster.conf")).unwrap();
    assert!(conf.contains("include resolver.conf"));
    for n in ["n1", "n2", "n3"] {
        assert!(conf.contains(&format!("nats://{n}:6222")), "route to {n}");
    }
    let resolver = std::fs::read_to_string(root().join("creds/resolver.conf")).unwrap();
    assert!(resolver.contains("system_account"));
    assert!(resolver.contains("resolver_preload"));
}

/// The Dockerfile's stages in order: each stage's name (`AS name`) and its lines.
fn dockerfile_stages() -> Vec<(String, String)> {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut stages: Vec<(String, String)> = Vec::new();
    for line in d.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.split(" AS ").nth(1).unwrap_or_default();
            stages.push((name.trim().to_string(), String::new()));
        } else if let Some((_, text)) = stages.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    stages
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "{stages:?}");
    // The last stage is what `docker build .` produces: the service, connwatch alone.
    let (name, service) = stages.last().unwrap();
    assert_eq!(name, "connwatch");
    assert!(service.contains("COPY --from=build /src/target/release/connwatch /usr/local/bin/"));
    assert!(!service.contains("connwatch-dev"), "{service}");
    assert!(service.contains("USER connwatch"));
    let (_, build) = &stages[0];
    assert!(build.contains("cargo build --release --locked -p connwatch --bin connwatch\n"));
}

#[test]
fn alert_rules_and_dashboard_use_only_metrics_connwatch_exports() {
    // Label families show only once they have a series: observe one sweep first.
    let metrics = connwatch::metrics::Metrics::new();
    let census = connwatch::census::Census {
        connections: 150,
        users: vec![connwatch::census::UserCensus {
            connections: 150,
            ..Default::default()
        }],
    };
    let snap = connwatch::snapshot::Snapshot::default();
    metrics.observe_sweep(&snap);
    metrics.observe(&snap, &census, &Default::default(), &Default::default());
    metrics.kick("sent");
    let exported = metrics.render();
    let known = |name: &str| {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_total")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        exported.contains(&format!("# TYPE {base} "))
    };
    let names = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("connwatch_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    };
    let rules_text = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let rules = YamlLoader::load_from_str(&rules_text)
        .expect("alerts.yml is valid YAML")
        .remove(0);
    let mut exprs = 0;
    for group in rules["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            assert!(rule["alert"].as_str().is_some());
            let expr = rule["expr"].as_str().unwrap();
            for n in names(expr) {
                assert!(
                    known(&n),
                    "alert {} uses {n}, which connwatch does not export",
                    rule["alert"].as_str().unwrap()
                );
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 5);
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/connwatch-dashboard.json")).unwrap(),
    )
    .expect("dashboard is valid JSON");
    let mut targets = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            for n in names(t["expr"].as_str().unwrap()) {
                assert!(
                    known(&n),
                    "panel {} uses {n}, which connwatch does not export",
                    p["title"]
                );
            }
            targets += 1;
        }
    }
    assert!(targets >= 8);
}

#[test]
fn systemd_unit_runs_reloads_and_stops_connwatch() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/connwatch.service")).unwrap();
    let mut section = String::new();
    let mut keys = std::collections::HashMap::new();
    for line in unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line}"));
        keys.insert(format!("{section}{k}"), v.to_string());
    }
    assert!(keys["[Service]ExecStart"].ends_with(" run"));
    assert!(keys["[Service]ExecStart"].starts_with("/usr/local/bin/connwatch "));
    assert_eq!(keys["[Service]ExecReload"], "/bin/kill -HUP $MAINPID");
    assert_eq!(keys["[Service]KillSignal"], "SIGTERM");
    assert_eq!(keys["[Service]Restart"], "on-failure");
    assert_eq!(keys["[Install]WantedBy"], "multi-user.target");
}

/// nats-server processes, killed on drop.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The compose cluster on loopback: config/nats/cluster.conf as each container reads it
/// (`SERVER_NAME` from the environment, `include resolver.conf` of creds/resolver.conf), with
/// only its addresses and JetStream directory changed. Returns the servers and their client
/// URLs.
fn compose_cluster(dir: &Path) -> (Servers, Vec<String>) {
    let conf = std::fs::read_to_string(root().join("config/nats/cluster.conf")).unwrap();
    let names = ["n1", "n2", "n3"];
    let ports: Vec<[u16; 3]> = names
        .iter()
        .map(|_| [free_addr().port(), free_addr().port(), free_addr().port()])
        .collect();
    let mut servers = Servers(Vec::new());
    for (i, name) in names.iter().enumerate() {
        let [client, http, route] = ports[i];
        let mut text = conf.clone();
        let mut replace = |from: &str, to: String| {
            assert!(text.contains(from), "cluster.conf has no {from:?}");
            text = text.replace(from, &to);
        };
        replace("0.0.0.0:4222", format!("127.0.0.1:{client}"));
        replace("0.0.0.0:8222", format!("127.0.0.1:{http}"));
        replace("0.0.0.0:6222", format!("127.0.0.1:{route}"));
        for (j, other) in names.iter().enumerate() {
            replace(
                &format!("nats://{other}:6222"),
                format!("nats://127.0.0.1:{}", ports[j][2]),
            );
        }
        let store = dir.join(format!("{name}-js"));
        replace("/data/jetstream", store.display().to_string());
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("nats-server.conf"), text).unwrap();
        std::fs::copy(
            root().join("creds/resolver.conf"),
            home.join("resolver.conf"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        servers.0.push(
            Command::new(find_nats_server().unwrap())
                .arg("-c")
                .arg(home.join("nats-server.conf"))
                .env("SERVER_NAME", name)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    // Healthy: JetStream (meta leader elected) included.
    for (i, p) in ports.iter().enumerate() {
        let addr = format!("127.0.0.1:{}", p[1]).parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || http_get(addr, "/healthz")
                .is_ok_and(|(code, _)| code == 200)),
            "{} not healthy: {}",
            names[i],
            std::fs::read_to_string(dir.join(format!("{}.log", names[i]))).unwrap_or_default()
        );
    }
    let urls = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{}", p[0]))
        .collect();
    (servers, urls)
}

/// The value of `--flag` in a compose command.
fn flag<'a>(command: &'a [&str], flag: &str) -> &'a str {
    let i = command.iter().position(|a| *a == flag).unwrap();
    command[i + 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_setup_runs_for_real_two_replicas_one_leading_advisories_in_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_servers, urls) = compose_cluster(dir.path());
    let c = compose();
    let services = &c["services"];

    // Both connwatch services as compose starts them: their command and environment, the
    // configuration file they mount, addresses on loopback.
    let start = |name: &str| {
        let s = &services[name];
        let mut env = local_env(s);
        for (k, v) in &mut env {
            match k.as_str() {
                "CONNWATCH_NATS__SERVERS" => *v = urls.join(","),
                "CONNWATCH_METRICS__LISTEN" => *v = free_addr().to_string(),
                _ => {}
            }
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = root().join("config/connwatch.toml");
        let mut args = vec!["--config", config.to_str().unwrap()];
        let command: Vec<&str> = merged(s, "command")
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        args.extend(command);
        Running::start_with(&args, &env, dir.path().join(format!("{name}.log")))
    };
    let mut replicas = vec![Some(start("connwatch")), Some(start("connwatch-2"))];
    let role = |r: &Running| {
        http_get(r.metrics_addr(), "/readyz")
            .map(|(_, body)| body)
            .ok()
    };
    let roles = |replicas: &[Option<Running>]| -> Vec<Option<String>> {
        replicas.iter().map(|r| r.as_ref().and_then(role)).collect()
    };
    let logs = |replicas: &[Option<Running>]| {
        replicas
            .iter()
            .flatten()
            .map(Running::log)
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    let one_leads = |replicas: &[Option<Running>]| {
        let mut r: Vec<String> = roles(replicas).into_iter().flatten().collect();
        r.sort();
        let running = replicas.iter().flatten().count();
        let mut want = vec!["ready: follower\n".to_string(); running - 1];
        want.push("ready: leader\n".to_string());
        want.sort();
        r == want
    };
    assert!(
        wait_until_async(Duration::from_secs(60), || one_leads(&replicas)).await,
        "not one leader and one follower: {:?}\n{}",
        roles(&replicas),
        logs(&replicas)
    );

    // The leaky client as compose runs it, with its creds.
    let leaky: Vec<&str> = services["leaky-client"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let creds: PathBuf = root()
        .join("creds")
        .join(flag(&leaky, "--creds").strip_prefix("/app/creds/").unwrap());
    let load = load::open(
        LoadSpec::new(
            urls[0].clone(),
            LoadAuth::from_creds_file(&creds).unwrap(),
            flag(&leaky, "--count").parse().unwrap(),
        )
        .name(flag(&leaky, "--name")),
    )
    .await
    .unwrap();

    // Read the stream as connwatch's JetStream user (its permissions allow the API).
    let reader =
        async_nats::ConnectOptions::with_credentials_file(root().join("creds/connwatch.creds"))
            .await
            .unwrap()
            .connect(urls[1].as_str())
            .await
            .unwrap();
    let js = async_nats::jetstream::new(reader);
    let excessive = |state: &'static str| {
        move |b: &Value| {
            b["type"] == "io.connwatch.advisory.v1.excessive_user_connections"
                && b["state"] == state
                && b["user_name"] == "leaky"
        }
    };
    let (firing, resolved) = (excessive("firing"), excessive("resolved"));
    let stored = || stream_bodies(&js, "CONNWATCH_ADVISORIES");
    assert!(
        eventually(Duration::from_secs(60), || async {
            stored().await.iter().any(firing)
        })
        .await,
        "no firing advisory in the stream: {}",
        logs(&replicas)
    );

    // kill -9 the leader: the other leads, and announces nothing again.
    let leader = roles(&replicas)
        .iter()
        .position(|r| r.as_deref() == Some("ready: leader\n"))
        .unwrap();
    drop(replicas[leader].take());
    assert!(
        wait_until_async(Duration::from_secs(60), || one_leads(&replicas)).await,
        "the other replica does not lead: {:?}\n{}",
        roles(&replicas),
        logs(&replicas)
    );

    // The leak closes: the new leader announces its end once, with the first leader's `since`
    // (it took the finding from the bucket); nothing was announced again.
    load.close().await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            stored().await.iter().any(resolved)
        })
        .await,
        "no resolved advisory in the stream: {}",
        logs(&replicas)
    );
    let all = stored().await;
    let (f, r): (Vec<&Value>, Vec<&Value>) = (
        all.iter().filter(|b| firing(b)).collect(),
        all.iter().filter(|b| resolved(b)).collect(),
    );
    assert_eq!((f.len(), r.len()), (1, 1), "{all:#?}");
    assert_eq!(f[0]["since"], r[0]["since"]);
    for b in &all {
        assert_valid(b);
    }
}
