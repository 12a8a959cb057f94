//! A real local nats-server cluster on loopback, for integration tests and manual development.
//!
//! Synchronous on purpose (std processes and sockets) so it works from plain tests and from
//! inside tokio alike. Servers are child processes; dropping the [`Cluster`] kills them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::Value;

use super::jwt::{AccountTemplate, OperatorSetup};

mod topology;

pub use topology::LeafSpec;

/// Environment variable naming the nats-server binary to use instead of the one on `PATH`.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

const POLL_INTERVAL: Duration = Duration::from_millis(50);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 3;
const REQUEST_WAIT: Duration = Duration::from_secs(1);
const INBOX_PREFIX: &str = "_INBOX.connwatch-dev-harness";

/// How clients authenticate to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Accounts and user/password pairs in the server configuration file.
    Config,
    /// Operator mode: JWTs minted by [`OperatorSetup`], users log in with `.creds` files.
    Operator,
}

/// A user of an account. The password is only used in [`AuthMode::Config`].
#[derive(Debug, Clone)]
pub struct UserSpec {
    /// User name (config mode: the login; operator mode: the JWT `name` claim).
    pub name: String,
    /// Password in config mode.
    pub password: String,
}

/// An application account and its users.
#[derive(Debug, Clone)]
pub struct AccountSpec {
    /// Account name.
    pub name: String,
    /// The account's users.
    pub users: Vec<UserSpec>,
    /// Account-wide connection limit (`limits { max_connections }` or JWT `limits.conn`);
    /// `None` for unlimited.
    pub max_connections: Option<i64>,
}

impl AccountSpec {
    /// An account with no users and no connection limit.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            users: Vec::new(),
            max_connections: None,
        }
    }

    /// Adds a user.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push(UserSpec {
            name: name.into(),
            password: password.into(),
        });
        self
    }

    /// Sets the account-wide connection limit.
    pub fn max_connections(mut self, limit: i64) -> Self {
        self.max_connections = Some(limit);
        self
    }
}

/// TLS for the servers' client port: PEM files made by the caller (e.g. with `rcgen` in tests).
///
/// With TLS on, client URLs are `tls://127.0.0.1:<port>` and the harness's own plain-TCP STATSZ
/// convergence check is skipped (readiness still waits for `/healthz` and the routes), so
/// [`Cluster::system_request`] is not available on such a cluster.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// The server certificate (for `127.0.0.1`/`localhost`).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The CA that client certificates must chain to (needed with `verify`).
    pub ca_file: Option<PathBuf>,
    /// Require and verify client certificates.
    pub verify: bool,
}

/// What cluster to start. Build with [`ClusterSpec::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Directory for configuration files, logs and `.creds` files (created if missing).
    pub dir: PathBuf,
    /// Number of servers (of each cluster, in a super-cluster).
    pub servers: usize,
    /// The `cluster { name }` (a super-cluster names its clusters `c1`, `c2`, ...).
    pub cluster_name: String,
    /// Clusters joined by gateways: 1 for a plain cluster (see [`ClusterSpec::super_cluster`]).
    pub clusters: usize,
    /// One leaf server attached by a leafnode remote, after the cluster servers (see
    /// [`ClusterSpec::leaf`]).
    pub leaf: Option<LeafSpec>,
    /// How clients authenticate.
    pub mode: AuthMode,
    /// The user of the system account `SYS` that connwatch logs in as.
    pub system_user: UserSpec,
    /// Application accounts (`SYS` is always added).
    pub accounts: Vec<AccountSpec>,
    /// Server-wide `max_connections`; `None` leaves the server default.
    pub max_connections: Option<u64>,
    /// Server-wide `max_payload` (bytes); `None` leaves the server default (1 MiB).
    pub max_payload: Option<u64>,
    /// How long to wait for every server to be up with its routes formed.
    pub start_timeout: Duration,
    /// TLS on the client port; `None` for plain `nats://`.
    pub tls: Option<TlsSpec>,
    /// A `permissions` block for the system user in config mode (e.g.
    /// `{publish: {deny: ["$SYS.REQ.USER.INFO"]}}`); `None` for none.
    pub system_permissions: Option<String>,
    /// A `permissions` block for [`JETSTREAM_USER`] (config mode, with
    /// [`jetstream`](field@ClusterSpec::jetstream)); `None` for none.
    pub jetstream_permissions: Option<String>,
    /// JetStream on every server (a store directory per server under `dir`, small limits)
    /// and an account [`JETSTREAM_ACCOUNT`] with JetStream enabled and the user
    /// [`JETSTREAM_USER`] (config mode only).
    pub jetstream: bool,
}

/// The JetStream-enabled account of a cluster started with [`ClusterSpec::jetstream`].
pub const JETSTREAM_ACCOUNT: &str = "JS";
/// Its user, for connwatch's `[jetstream]` connection and the tests' readers.
pub const JETSTREAM_USER: &str = "connwatch-js";
/// That user's password.
pub const JETSTREAM_PASSWORD: &str = "js-dev-password";

impl ClusterSpec {
    /// Three servers in config mode, system user `sys`, no application accounts, 20 s to start.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            servers: 3,
            cluster_name: "connwatch-dev".to_owned(),
            clusters: 1,
            leaf: None,
            mode: AuthMode::Config,
            system_user: UserSpec {
                name: "sys".to_owned(),
                password: "sys-dev-password".to_owned(),
            },
            accounts: Vec::new(),
            max_connections: None,
            max_payload: None,
            start_timeout: Duration::from_secs(20),
            tls: None,
            system_permissions: None,
            jetstream_permissions: None,
            jetstream: false,
        }
    }

    /// Turns on JetStream (see [`ClusterSpec::jetstream`](field@ClusterSpec::jetstream)).
    pub fn jetstream(mut self) -> Self {
        self.jetstream = true;
        self
    }

    /// Adds an application account.
    pub fn account(mut self, account: AccountSpec) -> Self {
        self.accounts.push(account);
        self
    }

    /// Sets the authentication mode.
    pub fn mode(mut self, mode: AuthMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the number of servers.
    pub fn servers(mut self, servers: usize) -> Self {
        self.servers = servers;
        self
    }

    /// Gives the system user (config mode) a NATS `permissions` block.
    pub fn system_permissions(mut self, permissions: impl Into<String>) -> Self {
        self.system_permissions = Some(permissions.into());
        self
    }

    /// Gives [`JETSTREAM_USER`] (config mode) a NATS `permissions` block.
    pub fn jetstream_permissions(mut self, permissions: impl Into<String>) -> Self {
        self.jetstream_permissions = Some(permissions.into());
        self
    }

    /// Turns on TLS for client connections.
    pub fn tls(mut self, tls: TlsSpec) -> Self {
        self.tls = Some(tls);
        self
    }
}

#[derive(Debug, Default)]
struct Server {
    name: String,
    /// Its cluster's name; empty for the leaf server.
    cluster: String,
    /// Whether it is the leaf server (no routes, no gateway).
    leaf: bool,
    gateway_port: u16,
    leaf_port: u16,
    client_port: u16,
    http_port: u16,
    route_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Server {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// Last lines of the server's stderr and log, for error messages.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for path in [&self.stderr_path, &self.log_path] {
            if let Ok(text) = std::fs::read_to_string(path) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                if !tail.is_empty() {
                    let _ = write!(out, "\n--- {} ---\n{}", path.display(), tail.join("\n"));
                }
            }
        }
        out
    }
}

/// One server's addresses, as written to `cluster.json` by `connwatch-dev cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// `server_name`.
    pub name: String,
    /// `nats://127.0.0.1:<port>`.
    pub client_url: String,
    /// `http://127.0.0.1:<port>`.
    pub monitor_url: String,
    /// `nats-route://127.0.0.1:<port>`.
    pub route_url: String,
    /// The process id, if running.
    pub pid: Option<u32>,
    /// The server's configuration file.
    pub config: PathBuf,
    /// The server's log file.
    pub log: PathBuf,
}

/// A description of a running cluster, serialisable for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    /// The cluster name.
    pub cluster_name: String,
    /// The authentication mode.
    pub mode: AuthMode,
    /// The servers.
    pub servers: Vec<ServerInfo>,
    /// `.creds` files by `"<account>/<user>"` (operator mode only).
    pub creds: BTreeMap<String, PathBuf>,
}

/// A running local nats-server cluster. Dropping it kills and reaps every server.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    binary: PathBuf,
    servers: Vec<Server>,
    operator: Option<OperatorSetup>,
    creds: BTreeMap<(String, String), PathBuf>,
}

impl Cluster {
    /// Starts the cluster and waits (polling, up to `spec.start_timeout`) until every server
    /// answers `/healthz`, has routes to every other server (including the dedicated
    /// system-account route), and answers `$SYS.REQ.SERVER.PING.STATSZ` with `active_servers`
    /// counting all of them: servers learn of each other over the system account a little after
    /// the routes form, and connwatch relies on that count.
    ///
    /// The convergence check logs in as the system user (client name `connwatch-dev-harness`),
    /// so that connection shows up among the servers' closed connections.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        if spec.servers == 0 {
            bail!("a cluster needs at least one server");
        }
        if spec.jetstream && spec.mode == AuthMode::Operator {
            bail!("JetStream test clusters are config mode only");
        }
        let binary = find_nats_server()?;
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("failed to create {}", spec.dir.display()))?;

        let mut cluster = Cluster {
            binary,
            servers: Vec::new(),
            operator: None,
            creds: BTreeMap::new(),
            spec,
        };
        if cluster.spec.mode == AuthMode::Operator {
            cluster.mint_operator_setup()?;
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            match cluster.try_start() {
                Ok(()) => return Ok(cluster),
                Err(err) => {
                    // Ports are picked by binding :0 and released before the servers bind them, so
                    // another process can take one in between: pick new ports and try again.
                    let port_race = cluster
                        .servers
                        .iter()
                        .any(|s| s.diagnostics().contains("address already in use"));
                    cluster.kill_all();
                    if !port_race || attempt >= START_ATTEMPTS {
                        return Err(err);
                    }
                }
            }
        }
    }

    fn mint_operator_setup(&mut self) -> anyhow::Result<()> {
        let templates: Vec<AccountTemplate> = self
            .spec
            .accounts
            .iter()
            .map(|a| AccountTemplate {
                name: a.name.clone(),
                conn_limit: a.max_connections.unwrap_or(-1),
                users: a.users.iter().map(|u| u.name.clone()).collect(),
                ..AccountTemplate::default()
            })
            .collect();
        let setup = OperatorSetup::generate(
            &self.spec.cluster_name,
            &[self.spec.system_user.name.as_str()],
            &templates,
        )?;
        for account in std::iter::once(&setup.system_account).chain(&setup.accounts) {
            for user in &account.users {
                let path = self
                    .spec
                    .dir
                    .join(format!("{}-{}.creds", account.name, user.name));
                std::fs::write(&path, user.creds())
                    .with_context(|| format!("failed to write {}", path.display()))?;
                self.creds
                    .insert((account.name.clone(), user.name.clone()), path);
            }
        }
        self.operator = Some(setup);
        Ok(())
    }

    fn try_start(&mut self) -> anyhow::Result<()> {
        let places = self.places();
        let n = places.len();
        let ports = free_ports(5 * n)?;
        self.servers = places
            .into_iter()
            .enumerate()
            .map(|(i, (name, cluster))| Server {
                client_port: ports[5 * i],
                http_port: ports[5 * i + 1],
                route_port: ports[5 * i + 2],
                gateway_port: ports[5 * i + 3],
                leaf_port: ports[5 * i + 4],
                config_path: self.spec.dir.join(format!("{name}.conf")),
                log_path: self.spec.dir.join(format!("{name}.log")),
                stderr_path: self.spec.dir.join(format!("{name}.stderr")),
                leaf: cluster.is_empty(),
                name,
                cluster,
                child: None,
                paused: false,
            })
            .collect();
        for i in 0..n {
            let config = self.render_server_config(i);
            let path = &self.servers[i].config_path;
            std::fs::write(path, config)
                .with_context(|| format!("failed to write {}", path.display()))?;
            // Old logs would confuse the port-race check and the reader.
            let _ = std::fs::remove_file(&self.servers[i].log_path);
        }
        for i in 0..n {
            self.spawn(i)?;
        }
        let deadline = Instant::now() + self.spec.start_timeout;
        for i in 0..n {
            self.wait_ready(i, deadline)?;
        }
        self.wait_converged(0, deadline)?;
        self.wait_jetstream(deadline)?;
        self.wait_leaf(deadline)
    }

    /// The nats-server configuration file for server `i`.
    fn render_server_config(&self, i: usize) -> String {
        let server = &self.servers[i];
        let mut out = String::new();
        let _ = writeln!(out, "server_name: {}", server.name);
        let _ = writeln!(out, "listen: 127.0.0.1:{}", server.client_port);
        let _ = writeln!(out, "http: 127.0.0.1:{}", server.http_port);
        let _ = writeln!(
            out,
            "log_file: {}",
            quote(&server.log_path.to_string_lossy())
        );
        if let Some(max) = self.spec.max_connections {
            let _ = writeln!(out, "max_connections: {max}");
        }
        if let Some(max) = self.spec.max_payload {
            let _ = writeln!(out, "max_payload: {max}");
        }
        if self.spec.jetstream {
            let store = self.spec.dir.join(format!("{}-js", server.name));
            let _ = writeln!(
                out,
                "jetstream {{\n  store_dir: {}\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}",
                quote(&store.to_string_lossy())
            );
        }
        if let Some(tls) = &self.spec.tls {
            let _ = write!(
                out,
                "tls {{\n  cert_file: {}\n  key_file: {}\n",
                quote(&tls.cert_file.to_string_lossy()),
                quote(&tls.key_file.to_string_lossy())
            );
            if let Some(ca) = &tls.ca_file {
                let _ = writeln!(out, "  ca_file: {}", quote(&ca.to_string_lossy()));
            }
            let _ = writeln!(out, "  verify: {}\n}}", tls.verify);
        }
        if !server.leaf {
            let routes: Vec<String> = self
                .servers
                .iter()
                .enumerate()
                .filter(|(j, s)| *j != i && s.cluster == server.cluster)
                .map(|(_, s)| format!("nats-route://127.0.0.1:{}", s.route_port))
                .collect();
            let _ = writeln!(
                out,
                "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}",
                quote(&server.cluster),
                server.route_port,
                routes.join(", ")
            );
        }
        out.push_str(&self.topology_config(i));
        match &self.operator {
            Some(setup) => out.push_str(&setup.server_config()),
            None => {
                out.push_str("accounts {\n");
                let sys = AccountSpec {
                    name: "SYS".to_owned(),
                    users: vec![self.spec.system_user.clone()],
                    max_connections: None,
                };
                let js = self.spec.jetstream.then(|| {
                    AccountSpec::new(JETSTREAM_ACCOUNT).user(JETSTREAM_USER, JETSTREAM_PASSWORD)
                });
                for account in std::iter::once(&sys)
                    .chain(&self.spec.accounts)
                    .chain(js.as_ref())
                {
                    let users: Vec<String> = account
                        .users
                        .iter()
                        .map(|u| {
                            let permissions = match (
                                &self.spec.system_permissions,
                                &self.spec.jetstream_permissions,
                            ) {
                                (Some(p), _) if account.name == "SYS" => {
                                    format!(", permissions: {p}")
                                }
                                (_, Some(p)) if account.name == JETSTREAM_ACCOUNT => {
                                    format!(", permissions: {p}")
                                }
                                _ => String::new(),
                            };
                            format!(
                                "{{user: {}, password: {}{permissions}}}",
                                quote(&u.name),
                                quote(&u.password)
                            )
                        })
                        .collect();
                    let _ = write!(
                        out,
                        "  {} {{\n    users: [{}]\n",
                        quote(&account.name),
                        users.join(", ")
                    );
                    if let Some(limit) = account.max_connections {
                        let _ = writeln!(out, "    limits {{ max_connections: {limit} }}");
                    }
                    if self.spec.jetstream && account.name == JETSTREAM_ACCOUNT {
                        out.push_str("    jetstream: enabled\n");
                    }
                    out.push_str("  }\n");
                }
                out.push_str("}\nsystem_account: SYS\n");
            }
        }
        out
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        let stderr = std::fs::File::create(&server.stderr_path)
            .with_context(|| format!("failed to create {}", server.stderr_path.display()))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("failed to run {}", self.binary.display()))?;
        server.child = Some(child);
        server.paused = false;
        Ok(())
    }

    /// Polls server `i` until it is healthy with routes to every other running server.
    fn wait_ready(&mut self, i: usize, deadline: Instant) -> anyhow::Result<()> {
        let peers: BTreeSet<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, s)| {
                *j != i
                    && s.child.is_some()
                    && !s.paused
                    && !s.leaf
                    && s.cluster == self.servers[i].cluster
            })
            .map(|(_, s)| s.name.clone())
            .collect();
        let system_account = match &self.operator {
            Some(setup) => setup.system_account.public_key(),
            None => "SYS".to_owned(),
        };
        loop {
            let server = &mut self.servers[i];
            if let Some(child) = server.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    server.child = None;
                    bail!(
                        "nats-server {} exited during start-up ({status}){}",
                        server.name,
                        server.diagnostics()
                    );
                }
            }
            let last_state = match readiness(server.http_addr(), &peers, &system_account) {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                bail!(
                    "nats-server {} not ready in time: {last_state}{}",
                    server.name,
                    server.diagnostics()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Polls STATSZ through server `via` until every running, unpaused server answers and
    /// counts at least that many active servers.
    fn wait_converged(&self, via: usize, deadline: Instant) -> anyhow::Result<()> {
        if self.spec.tls.is_some() {
            // The harness's own client speaks plain TCP only; routes were checked already.
            return Ok(());
        }
        let http = self.servers[via].http_addr();
        let mut client = None;
        loop {
            let state = match self.statsz_round(via, &mut client, deadline) {
                Ok(None) => break,
                Ok(Some(state)) => state,
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                if let Some(client) = client {
                    let _ = client.close(http);
                }
                bail!("cluster did not converge in time: {state}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        match client {
            Some(client) => client.close(http),
            None => Ok(()),
        }
    }

    /// One STATSZ round for [`Cluster::wait_converged`]: `None` once converged, else what is
    /// still missing. Keeps the connection in `client` for the next round while it is usable.
    fn statsz_round(
        &self,
        via: usize,
        client: &mut Option<SysClient>,
        deadline: Instant,
    ) -> anyhow::Result<Option<String>> {
        let expected = self
            .servers
            .iter()
            .filter(|s| s.child.is_some() && !s.paused && self.in_system(s))
            .count();
        let mut c = match client.take() {
            Some(c) => c,
            None => SysClient::connect(self.client_addr(via), &self.system_auth()?)?,
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(REQUEST_WAIT);
        let (replies, complete) =
            c.request_all("$SYS.REQ.SERVER.PING.STATSZ", b"", expected, wait)?;
        if complete {
            *client = Some(c);
        } else {
            // A timed-out read leaves the stream mid-message: start afresh next round.
            let _ = c.close(self.servers[via].http_addr());
        }
        let counts: Vec<u64> = replies
            .iter()
            .map(|r| r["statsz"]["active_servers"].as_u64().unwrap_or(0))
            .collect();
        if counts.len() == expected && counts.iter().all(|&n| n >= expected as u64) {
            return Ok(None);
        }
        Ok(Some(format!(
            "{} of {expected} servers answered STATSZ, active_servers {counts:?}",
            counts.len()
        )))
    }

    fn system_auth(&self) -> anyhow::Result<SysAuth> {
        let user = &self.spec.system_user;
        Ok(match &self.operator {
            Some(setup) => {
                let minted = setup
                    .user("SYS", &user.name)
                    .ok_or_else(|| anyhow!("system user {} not minted", user.name))?;
                SysAuth::Creds {
                    jwt: minted.jwt.clone(),
                    key: Box::new(minted.key.clone()),
                }
            }
            None => SysAuth::UserPassword {
                user: user.name.clone(),
                password: user.password.clone(),
            },
        })
    }

    /// Sends a request as the system user through server `via` and gathers up to `expect`
    /// replies for at most `wait` (e.g. `$SYS.REQ.SERVER.PING.STATSZ`, which every server
    /// answers). A small synchronous client, independent of the code under test; its connection
    /// is gone from the server's connz when this returns.
    pub fn system_request(
        &self,
        via: usize,
        subject: &str,
        body: &[u8],
        expect: usize,
        wait: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let mut client = SysClient::connect(self.client_addr(via), &self.system_auth()?)?;
        let (replies, _) = client.request_all(subject, body, expect, wait)?;
        client.close(self.servers[via].http_addr())?;
        Ok(replies)
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The directory holding configuration, logs and `.creds` files.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The authentication mode.
    pub fn mode(&self) -> AuthMode {
        self.spec.mode
    }

    /// The client URLs, `nats://127.0.0.1:<port>` (`tls://` with TLS), in server order.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.client_url(i)).collect()
    }

    /// Server `i`'s client URL.
    pub fn client_url(&self, i: usize) -> String {
        let scheme = if self.spec.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Server `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.servers[i].client_port))
    }

    /// Server `i`'s `server_name` (`n1`, `n2`, ...).
    pub fn server_name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// Server `i`'s monitoring URL, `http://127.0.0.1:<port>`.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[i].http_port)
    }

    /// Server `i`'s process id, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].pid()
    }

    /// Server `i`'s log file.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.servers[i].log_path
    }

    /// The minted operator setup (operator mode only).
    pub fn operator(&self) -> Option<&OperatorSetup> {
        self.operator.as_ref()
    }

    /// The `.creds` file of `user` in `account` (operator mode only; the system account is `SYS`).
    pub fn creds_path(&self, account: &str, user: &str) -> Option<&Path> {
        self.creds
            .get(&(account.to_owned(), user.to_owned()))
            .map(PathBuf::as_path)
    }

    /// The system user's `.creds` file (operator mode only).
    pub fn system_creds_path(&self) -> Option<&Path> {
        self.creds_path("SYS", &self.spec.system_user.name)
    }

    /// The system user (name and, in config mode, password).
    pub fn system_user(&self) -> &UserSpec {
        &self.spec.system_user
    }

    /// A connwatch configuration for this cluster: a `[nats]` table with the servers and the
    /// system user's credentials. Tests append further sections.
    pub fn connwatch_toml(&self) -> String {
        let servers: Vec<String> = self.client_urls().iter().map(|u| toml_string(u)).collect();
        let mut out = format!("[nats]\nservers = [{}]\n", servers.join(", "));
        match self.system_creds_path() {
            Some(path) => {
                let _ = writeln!(out, "creds = {}", toml_string(&path.to_string_lossy()));
            }
            None => {
                let user = &self.spec.system_user;
                let _ = writeln!(out, "user = {}", toml_string(&user.name));
                let _ = writeln!(out, "password = {}", toml_string(&user.password));
            }
        }
        out
    }

    /// Addresses and files of the cluster, for `cluster.json`.
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo {
            cluster_name: self.spec.cluster_name.clone(),
            mode: self.spec.mode,
            servers: self
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| ServerInfo {
                    name: s.name.clone(),
                    client_url: self.client_url(i),
                    monitor_url: self.monitor_url(i),
                    route_url: format!("nats-route://127.0.0.1:{}", s.route_port),
                    pid: s.pid(),
                    config: s.config_path.clone(),
                    log: s.log_path.clone(),
                })
                .collect(),
            creds: self
                .creds
                .iter()
                .map(|((account, user), path)| (format!("{account}/{user}"), path.clone()))
                .collect(),
        }
    }

    /// GETs `path` (e.g. `/varz`) from server `i`'s monitoring port and parses the JSON body.
    pub fn monitor_get(&self, i: usize, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.servers[i].http_addr(), path)?;
        if status != 200 {
            bail!(
                "GET {path} on {} returned {status}: {body}",
                self.servers[i].name
            );
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path} returned invalid JSON"))
    }

    /// Open client connections on server `i` by `(account, authorized_user)`, from the server's
    /// own `/connz` (the ground truth tests compare against). Config mode reports connections of
    /// the global account without `account`: they are counted under `$G`. In operator mode both
    /// keys are public nkeys.
    pub fn connz_counts(&self, i: usize) -> anyhow::Result<BTreeMap<(String, String), u64>> {
        let connz = self.monitor_get(i, "/connz?auth=true&limit=10000000")?;
        let total = connz["total"].as_u64().unwrap_or(0);
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        if connections.len() as u64 != total {
            bail!(
                "connz returned {} of {total} connections",
                connections.len()
            );
        }
        let mut counts = BTreeMap::new();
        for conn in &connections {
            let account = conn["account"].as_str().unwrap_or("$G").to_owned();
            let user = conn["authorized_user"].as_str().unwrap_or("").to_owned();
            *counts.entry((account, user)).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Kills server `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        if let Some(mut child) = server.child.take() {
            // Fails only if it already exited, which is what we want anyway.
            let _ = child.kill();
            child.wait().context("failed to reap nats-server")?;
        }
        server.paused = false;
        Ok(())
    }

    /// Stops server `i` with SIGTERM (a clean shutdown) and waits for it to exit; SIGKILL after
    /// 10 s.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        let Some(mut child) = server.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            server.paused = false;
            return Ok(());
        }
        signal(child.id(), "TERM")?;
        if server.paused {
            // A stopped process only acts on SIGTERM once continued.
            signal(child.id(), "CONT")?;
            server.paused = false;
        }
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                bail!(
                    "nats-server {} ignored SIGTERM for {TERMINATE_TIMEOUT:?}; killed",
                    server.name
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// Freezes server `i` with SIGSTOP: its sockets stay open but it answers nothing.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        let pid = server
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", server.name))?;
        signal(pid, "STOP")?;
        server.paused = true;
        // kill(1) returns once the signal is sent; wait until the kernel shows it stopped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_stopped(pid) {
            if Instant::now() >= deadline {
                bail!("{} did not stop after SIGSTOP", server.name);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Continues server `i` after [`Cluster::pause`] with SIGCONT.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        let pid = server
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", server.name))?;
        signal(pid, "CONT")?;
        server.paused = false;
        Ok(())
    }

    /// Starts server `i` again with the same configuration (terminating it first if it still
    /// runs) and waits until its routes to the other running servers have formed and the servers
    /// count each other again (see [`Cluster::start`]).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.terminate(i)?;
        self.spawn(i)?;
        let deadline = Instant::now() + self.spec.start_timeout;
        self.wait_ready(i, deadline)?;
        // The leaf's own STATSZ sees only itself unless it shares the system account.
        let via = if self.servers[i].leaf { 0 } else { i };
        self.wait_converged(via, deadline)?;
        self.wait_jetstream(deadline)?;
        self.wait_leaf(deadline)
    }

    /// With JetStream: polls `/jsz` of every running server until each knows the meta leader
    /// and the leader has every other one current (streams can be created only then).
    fn wait_jetstream(&self, deadline: Instant) -> anyhow::Result<()> {
        if !self.spec.jetstream {
            return Ok(());
        }
        for (i, server) in self.servers.iter().enumerate() {
            if server.child.is_none() || server.paused {
                continue;
            }
            loop {
                let leader = self
                    .monitor_get(i, "/jsz")
                    .ok()
                    .and_then(|v| v["meta_cluster"]["leader"].as_str().map(str::to_owned));
                if leader.is_some_and(|l| !l.is_empty()) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("JetStream on {} has no meta leader in time", server.name);
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        self.wait_meta_peers(deadline)?;
        self.wait_placement(deadline)
    }

    /// The running JetStream servers (not paused, not the leaf).
    fn running_jetstream(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| {
                let s = &self.servers[i];
                s.child.is_some() && !s.paused && !s.leaf
            })
            .collect()
    }

    /// Waits until the meta leader has every other running server as a current peer: until
    /// then it may refuse to place a replicated stream ("no suitable peers for placement").
    fn wait_meta_peers(&self, deadline: Instant) -> anyhow::Result<()> {
        let running = self.running_jetstream();
        if running.len() < 2 {
            return Ok(());
        }
        loop {
            let ready = running.iter().any(|&i| {
                let Ok(jsz) = self.monitor_get(i, "/jsz") else {
                    return false;
                };
                let meta = &jsz["meta_cluster"];
                let name = &self.servers[i].name;
                let current: Vec<&str> = meta["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["current"].as_bool() == Some(true))
                    .filter_map(|r| r["name"].as_str())
                    .collect();
                meta["leader"].as_str() == Some(name.as_str())
                    && running
                        .iter()
                        .filter(|&&j| j != i)
                        .all(|&j| current.contains(&self.servers[j].name.as_str()))
            });
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the JetStream meta leader does not have every running server current in time"
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until a stream replicated on the running servers (at most 3) can be placed, by
    /// making one and deleting it. The meta leader places only on servers whose JetStream
    /// statistics it has heard (a STATSZ after they joined), which `/jsz` does not show: a
    /// test's replicated stream made before then is refused ("no suitable peers for placement,
    /// peer offline"). Skipped when [`JETSTREAM_USER`] has permissions of its own (it may not
    /// make streams) and with TLS.
    fn wait_placement(&self, deadline: Instant) -> anyhow::Result<()> {
        let running = self.running_jetstream();
        if running.len() < 2 || self.spec.jetstream_permissions.is_some() || self.spec.tls.is_some()
        {
            return Ok(());
        }
        let url = self.client_url(running[0]);
        let replicas = running.len().min(3);
        // Its own thread and runtime: the cluster is started from sync code, often inside a
        // test's runtime.
        std::thread::scope(|s| {
            s.spawn(|| probe_placement(&url, replicas, deadline))
                .join()
                .map_err(|_| anyhow!("the placement probe panicked"))?
        })
    }

    /// A `[jetstream]` table for connwatch: the JetStream account's user (see
    /// [`ClusterSpec::jetstream`](field@ClusterSpec::jetstream)).
    pub fn jetstream_toml(&self) -> String {
        format!(
            "[jetstream]\nuser = {}\npassword = {}\n",
            toml_string(JETSTREAM_USER),
            toml_string(JETSTREAM_PASSWORD)
        )
    }

    fn kill_all(&mut self) {
        for i in 0..self.servers.len() {
            let _ = self.kill(i);
        }
    }
}

/// Makes a stream of `replicas` in the JetStream account until it is placed or `deadline`
/// passes, then deletes it.
fn probe_placement(url: &str, replicas: usize, deadline: Instant) -> anyhow::Result<()> {
    use async_nats::jetstream::stream::{Config, StorageType};
    const NAME: &str = "TESTKIT_PLACEMENT";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::with_user_and_password(
            JETSTREAM_USER.into(),
            JETSTREAM_PASSWORD.into(),
        )
        .connect(url)
        .await?;
        let js = async_nats::jetstream::new(client);
        let config = Config {
            name: NAME.into(),
            subjects: vec!["testkit.placement".into()],
            num_replicas: replicas,
            storage: StorageType::Memory,
            ..Config::default()
        };
        loop {
            match js.create_stream(config.clone()).await {
                Ok(_) => {
                    js.delete_stream(NAME).await?;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!("no stream of {replicas} replicas could be placed in time: {e}")
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

enum SysAuth {
    UserPassword { user: String, password: String },
    Creds { jwt: String, key: Box<KeyPair> },
}

/// A minimal synchronous NATS client for the harness's own system-account requests.
struct SysClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    seq: u64,
    cid: Option<u64>,
}

impl SysClient {
    fn connect(addr: SocketAddr, auth: &SysAuth) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
            .with_context(|| format!("failed to connect to {addr}"))?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
        let mut client = SysClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            seq: 0,
            cid: None,
        };
        let info = client.read_line()?;
        let info: Value = info
            .strip_prefix("INFO ")
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| anyhow!("{addr} sent no INFO"))?;
        client.cid = info["client_id"].as_u64();
        let mut connect = serde_json::json!({
            "verbose": false, "pedantic": false, "protocol": 1,
            "lang": "rust", "version": "0", "name": "connwatch-dev-harness",
        });
        match auth {
            SysAuth::UserPassword { user, password } => {
                connect["user"] = user.as_str().into();
                connect["pass"] = password.as_str().into();
            }
            SysAuth::Creds { jwt, key } => {
                connect["jwt"] = jwt.as_str().into();
                if let Some(nonce) = info["nonce"].as_str() {
                    let sig = key.sign(nonce.as_bytes()).context("failed to sign nonce")?;
                    connect["sig"] = URL_SAFE_NO_PAD.encode(sig).into();
                }
            }
        }
        write!(
            client.writer,
            "CONNECT {connect}\r\nSUB {INBOX_PREFIX}.* 1\r\nPING\r\n"
        )?;
        loop {
            let line = client.read_line()?;
            if line == "PONG" {
                return Ok(client);
            }
            if line.starts_with("-ERR") {
                bail!("{addr} refused the system user: {line}");
            }
        }
    }

    /// Closes the connection and waits until the server (monitored at `http`) no longer lists
    /// it, so the harness's own connection never shows up in a test's connz counts.
    fn close(self, http: SocketAddr) -> anyhow::Result<()> {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        let Some(cid) = self.cid else {
            return Ok(());
        };
        let deadline = Instant::now() + HTTP_TIMEOUT;
        loop {
            let (_, body) = http_get(http, &format!("/connz?cid={cid}"))?;
            let connz: Value = serde_json::from_str(&body).context("connz is not JSON")?;
            if connz["connections"].as_array().is_none_or(Vec::is_empty) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the server still lists the harness connection {cid} after closing");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end().to_owned())
    }

    /// Publishes a request and gathers replies until `expect` arrived or `wait` passed; also
    /// says whether the stream is still usable (false after a read timed out mid-way).
    fn request_all(
        &mut self,
        subject: &str,
        body: &[u8],
        expect: usize,
        wait: Duration,
    ) -> anyhow::Result<(Vec<Value>, bool)> {
        self.seq += 1;
        let inbox = format!("{INBOX_PREFIX}.{}", self.seq);
        write!(self.writer, "PUB {subject} {inbox} {}\r\n", body.len())?;
        self.writer.write_all(body)?;
        self.writer.write_all(b"\r\n")?;
        let deadline = Instant::now() + wait;
        let mut replies = Vec::new();
        while replies.len() < expect {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((replies, false));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let line = match self.read_line() {
                Ok(line) => line,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok((replies, false));
                }
                Err(err) => return Err(err.into()),
            };
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n")?;
            } else if let Some(args) = line.strip_prefix("MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let args: Vec<&str> = args.split_whitespace().collect();
                let len: usize = args
                    .last()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow!("malformed MSG line: {line}"))?;
                let mut payload = vec![0; len + 2];
                self.reader.read_exact(&mut payload)?;
                payload.truncate(len);
                if args.first() == Some(&inbox.as_str()) {
                    replies.push(serde_json::from_slice(&payload)?);
                }
            } else if line.starts_with("-ERR") {
                bail!("server error: {line}");
            }
        }
        Ok((replies, true))
    }
}

/// Checks `/healthz` and that `/routez` has routes to every peer, one of them the dedicated
/// system-account route (nats-server 2.10+ pools routes: several per peer, plus one per pinned
/// account).
fn readiness(
    http: SocketAddr,
    peers: &BTreeSet<String>,
    system_account: &str,
) -> anyhow::Result<()> {
    let (status, body) = http_get(http, "/healthz")?;
    if status != 200 {
        bail!("healthz {status}: {}", body.trim());
    }
    if peers.is_empty() {
        return Ok(());
    }
    let (_, body) = http_get(http, "/routez")?;
    let routez: Value = serde_json::from_str(&body).context("routez is not JSON")?;
    let mut pooled = BTreeSet::new();
    let mut system = BTreeSet::new();
    for route in routez["routes"].as_array().into_iter().flatten() {
        let Some(name) = route["remote_name"].as_str() else {
            continue;
        };
        match route["account"].as_str() {
            Some(account) if account == system_account => system.insert(name.to_owned()),
            Some(_) => false,
            None => pooled.insert(name.to_owned()),
        };
    }
    let missing: Vec<&String> = peers
        .iter()
        .filter(|p| !pooled.contains(*p) || !system.contains(*p))
        .collect();
    if !missing.is_empty() {
        bail!("routes to {missing:?} not formed yet");
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET against a loopback monitoring port: returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("failed to read GET {path} from {addr}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line from {addr}"))?;
    Ok((status, body.to_owned()))
}

/// The nats-server binary: `$NATS_SERVER_BIN`, else `nats-server` on `PATH`.
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{NATS_SERVER_BIN_ENV}={} is not a file: point it at a nats-server binary or \
                 unset it and run scripts/install-nats-server.sh",
                path.display()
            );
        }
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "nats-server not found on PATH (nor {NATS_SERVER_BIN_ENV} set): \
                 run scripts/install-nats-server.sh"
            )
        })
}

/// Picks `n` distinct free loopback ports by binding them all at once, below the kernel's
/// ephemeral range when there is room: the kernel never hands those out as the local port of
/// a client connection, so a server stopped for a restart finds its ports free again (with
/// `127.0.0.1:0` a load generator's connection could take one meanwhile: "address already in
/// use" at the restart).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    let mut listeners = Vec::with_capacity(n);
    if low > FLOOR + 1_000 {
        let span = low - FLOOR;
        // A start of its own for each process, so concurrent test binaries rarely meet.
        let seed = std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(0, seed % span + 1, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..span {
            if listeners.len() == n {
                break;
            }
            let port = FLOOR + NEXT.fetch_add(1, Ordering::Relaxed) % span;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
                listeners.push(l);
            }
        }
    }
    while listeners.len() < n {
        listeners
            .push(TcpListener::bind("127.0.0.1:0").context("failed to reserve loopback ports")?);
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Whether process `pid` is stopped by a signal (state `T` in `/proc/<pid>/stat`).
fn process_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "T")
        })
        .unwrap_or(false)
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("failed to run kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed ({status})");
    }
    Ok(())
}

/// A double-quoted nats-server configuration string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_without_processes(mode: AuthMode) -> Cluster {
        let spec = ClusterSpec::new("/tmp/connwatch-unit").mode(mode).account(
            AccountSpec::new("APP")
                .user("app", "pw\"1")
                .max_connections(7),
        );
        let mut cluster = Cluster {
            binary: PathBuf::from("nats-server"),
            servers: Vec::new(),
            operator: None,
            creds: BTreeMap::new(),
            spec,
        };
        cluster.servers = (0..3)
            .map(|i| Server {
                name: format!("n{}", i + 1),
                cluster: "connwatch-dev".into(),
                client_port: 4000 + i,
                http_port: 5000 + i,
                route_port: 6000 + i,
                config_path: PathBuf::from(format!("/x/n{i}.conf")),
                log_path: PathBuf::from(format!("/x/n{i}.log")),
                stderr_path: PathBuf::from(format!("/x/n{i}.stderr")),
                child: None,
                paused: false,
                ..Server::default()
            })
            .collect();
        cluster
    }

    #[test]
    fn config_routes_to_the_other_servers_only() {
        let cluster = cluster_without_processes(AuthMode::Config);
        let config = cluster.render_server_config(1);
        assert!(config.contains("server_name: n2\n"));
        assert!(config.contains("listen: 127.0.0.1:4001\n"));
        assert!(
            config.contains("routes: [nats-route://127.0.0.1:6000, nats-route://127.0.0.1:6002]")
        );
        assert!(config.contains(r#"{user: "app", password: "pw\"1"}"#));
        assert!(config.contains("limits { max_connections: 7 }"));
        assert!(config.contains("system_account: SYS\n"));
        assert!(!config.contains("max_connections: 65536"));
    }

    #[test]
    fn connwatch_toml_has_servers_and_system_user() {
        let cluster = cluster_without_processes(AuthMode::Config);
        let parsed: toml::Value = toml::from_str(&cluster.connwatch_toml()).unwrap();
        let nats = &parsed["nats"];
        assert_eq!(nats["servers"].as_array().unwrap().len(), 3);
        assert_eq!(nats["servers"][2].as_str(), Some("nats://127.0.0.1:4002"));
        assert_eq!(nats["user"].as_str(), Some("sys"));
        assert_eq!(nats["password"].as_str(), Some("sys-dev-password"));
    }
}
