//! TLS against a real nats-server, with certificates made at test time: a verified connection
//! works, a wrong CA is refused with exit code 3, and client certificates work and are required
//! when the server verifies them.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(40);

/// A CA that signs server and client certificates, written as PEM files into a directory.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("connwatch test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Self {
            cert,
            key,
            dir: dir.to_path_buf(),
            name: name.into(),
        }
    }

    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Signs a leaf certificate; returns (cert file, key file).
    fn leaf(
        &self,
        what: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("connwatch test {what}"));
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = self.dir.join(format!("{}-{what}.pem", self.name));
        let key_path = self.dir.join(format!("{}-{what}-key.pem", self.name));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn server(&self) -> (PathBuf, PathBuf) {
        self.leaf(
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> (PathBuf, PathBuf) {
        self.leaf(
            "client",
            &["connwatch"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

fn tls_cluster(dir: &Path, ca: &Ca, verify: bool) -> Cluster {
    let (cert_file, key_file) = ca.server();
    Cluster::start(
        ClusterSpec::new(dir.join(if verify { "verify" } else { "plain" }))
            .servers(1)
            .tls(TlsSpec {
                cert_file,
                key_file,
                ca_file: Some(ca.pem()),
                verify,
            }),
    )
    .unwrap()
}

/// `connwatch report --format json` with `[nats.tls]` set from `tls` (TOML lines).
fn report(dir: &Path, cluster: &Cluster, tls: &str) -> RunOutput {
    let config = format!(
        "{}connect_timeout = \"3s\"\n[nats.tls]\n{tls}[sweep]\ntimeout = \"2s\"\n",
        cluster.connwatch_toml()
    );
    let path = dir.join(format!("c{}.toml", nuid::next()));
    std::fs::write(&path, config).unwrap();
    run_connwatch(
        [
            "--config",
            path.to_str().unwrap(),
            "report",
            "--format",
            "json",
        ],
        WAIT,
    )
}

fn assert_ok(out: &RunOutput) {
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).expect("report JSON");
    assert_eq!(report["sweep"]["servers_responded"], 1, "{report:#}");
    assert_eq!(report["sweep"]["partial"], false, "{report:#}");
}

fn assert_tls_refused(out: &RunOutput) {
    assert_eq!(
        out.code,
        Some(3),
        "expected exit 3 (TLS failed); stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("TLS") || out.stderr.contains("tls"),
        "the error does not say TLS: {}",
        out.stderr
    );
    assert!(!out.timed_out, "hung instead of failing: {}", out.stderr);
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

#[test]
fn a_verified_tls_connection_works_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let cluster = tls_cluster(dir.path(), &ca, false);
    assert!(cluster.client_url(0).starts_with("tls://"));

    let ok = report(
        dir.path(),
        &cluster,
        &format!("ca = {}\n", toml_path(&ca.pem())),
    );
    assert_ok(&ok);

    // A CA that did not sign the server certificate.
    let wrong = report(
        dir.path(),
        &cluster,
        &format!("ca = {}\n", toml_path(&other.pem())),
    );
    assert_tls_refused(&wrong);

    // No CA at all: the system roots do not know the test CA either.
    let config = format!("{}connect_timeout = \"3s\"\n", cluster.connwatch_toml());
    let path = dir.path().join("noca.toml");
    std::fs::write(&path, config).unwrap();
    let none = run_connwatch(["--config", path.to_str().unwrap(), "report"], WAIT);
    assert_tls_refused(&none);
}

#[test]
fn client_certificates_work_and_are_required_when_the_server_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let cluster = tls_cluster(dir.path(), &ca, true);
    let (cert, key) = ca.client();

    let ok = report(
        dir.path(),
        &cluster,
        &format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_path(&ca.pem()),
            toml_path(&cert),
            toml_path(&key)
        ),
    );
    assert_ok(&ok);

    // No client certificate: the server refuses the handshake.
    let missing = report(
        dir.path(),
        &cluster,
        &format!("ca = {}\n", toml_path(&ca.pem())),
    );
    assert_tls_refused(&missing);

    // A client certificate from a CA the server does not trust.
    let (bad_cert, bad_key) = other.client();
    let untrusted = report(
        dir.path(),
        &cluster,
        &format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_path(&ca.pem()),
            toml_path(&bad_cert),
            toml_path(&bad_key)
        ),
    );
    assert_tls_refused(&untrusted);

    // `cert` without `key` is a configuration error, before any connection.
    let half = report(
        dir.path(),
        &cluster,
        &format!(
            "ca = {}\ncert = {}\n",
            toml_path(&ca.pem()),
            toml_path(&cert)
        ),
    );
    assert_eq!(half.code, Some(2), "{}", half.stderr);
    assert!(half.stderr.contains("nats.tls.key"), "{}", half.stderr);
}

#[test]
fn client_certificates_are_optional_when_the_server_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let cluster = tls_cluster(dir.path(), &ca, false);
    let (cert, key) = ca.client();
    let out = report(
        dir.path(),
        &cluster,
        &format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_path(&ca.pem()),
            toml_path(&cert),
            toml_path(&key)
        ),
    );
    assert_ok(&out);
}

/// The wrong CA, no CA and a missing client certificate are TLS failures: the message should
/// point at `nats.tls.*`, not at `nats.servers`.
#[test]
fn tls_failures_are_reported_as_tls_errors_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let plain = tls_cluster(dir.path(), &ca, false);
    let verify = tls_cluster(dir.path(), &ca, true);
    for (what, cluster, tls) in [
        (
            "wrong CA",
            &plain,
            format!("ca = {}\n", toml_path(&other.pem())),
        ),
        (
            "no client certificate",
            &verify,
            format!("ca = {}\n", toml_path(&ca.pem())),
        ),
    ] {
        let out = report(dir.path(), cluster, &tls);
        assert_eq!(out.code, Some(3), "{what}: {}", out.stderr);
        assert!(
            out.stderr.contains("TLS with the server failed") && out.stderr.contains("nats.tls"),
            "{what}: not reported as a TLS failure: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("cannot reach any NATS server"),
            "{what}: reported as unreachable: {}",
            out.stderr
        );
    }
}
