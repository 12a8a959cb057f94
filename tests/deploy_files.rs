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
    assert_eq!(cw["build"].as_str(), Some("."));
    assert!(root().join("Dockerfile").exists());
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

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert_eq!(
        d.matches("\nFROM ").count() + usize::from(d.starts_with("FROM ")),
        2
    );
    assert!(d.contains("COPY --from=build"));
    assert!(d.contains("USER connwatch"));
}
