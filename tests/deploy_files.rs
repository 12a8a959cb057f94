//! Files that cannot run here (Docker) are kept valid: parsed, and every file they mount exists.

use std::path::Path;

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

/// The host side of every `host:container[:mode]` volume of a service (merge keys resolved).
fn host_mounts(service: &Yaml, anchors: &Yaml) -> Vec<String> {
    let mut vols = service["volumes"].as_vec().cloned().unwrap_or_default();
    if service["volumes"].is_badvalue() {
        vols = anchors["volumes"].as_vec().cloned().unwrap_or_default();
    }
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
    let env: Vec<(String, String)> = cw["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            if k == "CONNWATCH_NATS__CREDS" {
                (k, root().join("creds/sys.creds").display().to_string())
            } else {
                (k, v)
            }
        })
        .collect();
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

#[test]
fn every_mounted_file_exists() {
    let c = compose();
    let anchors = &c["x-nats"];
    let services = c["services"].as_hash().unwrap();
    let mut checked = 0;
    for (_, s) in services {
        for host in host_mounts(s, anchors) {
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
