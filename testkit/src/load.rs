//! A raw NATS-protocol load generator: thousands of cheap client connections in one process.
//!
//! Each connection is a bare TCP socket that does the `INFO`/`CONNECT`/`PING`/`PONG` handshake
//! and then lives in a small tokio task that answers the server's keep-alive `PING`s (and,
//! optionally, publishes now and then), so the server sees real, non-stale clients.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Subject that connections publish to when [`LoadSpec::publish_every`] is set.
pub const LOAD_SUBJECT: &str = "connwatch.dev.load";

/// Connections handshaking at once.
const OPEN_CONCURRENCY: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LINE: usize = 1 << 20;

/// How load connections authenticate.
#[derive(Clone)]
pub enum LoadAuth {
    /// No credentials.
    None,
    /// Config-mode user and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// Operator mode: the user JWT and the user's nkey seed, which signs the server's nonce.
    Creds {
        /// User JWT.
        jwt: String,
        /// User nkey seed (`SU...`).
        seed: String,
    },
}

impl LoadAuth {
    /// User/password credentials.
    pub fn user_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self::UserPassword {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Reads a `.creds` file.
    pub fn from_creds_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let (jwt, seed) = super::jwt::parse_creds(&text)
            .with_context(|| format!("invalid creds file {}", path.display()))?;
        Ok(Self::Creds { jwt, seed })
    }
}

impl std::fmt::Debug for LoadAuth {
    // Never print passwords or seeds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword {{ user: {user:?} }}"),
            Self::Creds { .. } => f.write_str("Creds"),
        }
    }
}

/// What load to open.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server address: `nats://host:port` or `host:port`.
    pub server: String,
    /// Credentials for every connection.
    pub auth: LoadAuth,
    /// Client name sent in `CONNECT` (shown as `name` in CONNZ).
    pub name: Option<String>,
    /// Number of connections.
    pub count: usize,
    /// If set, each connection publishes a small message to [`LOAD_SUBJECT`] at this interval
    /// (first one straight away), so it is not idle.
    pub publish_every: Option<Duration>,
    /// If set, a connection the server closes (e.g. kicked) connects again after this delay,
    /// like a client library with reconnect enabled.
    pub reconnect: Option<Duration>,
    /// If set, connection `i` connects from its own loopback address, this one plus `i` (as
    /// a fleet whose every client is a host of its own); else from the system's choice.
    pub own_ips_from: Option<Ipv4Addr>,
}

impl LoadSpec {
    /// `count` idle, unnamed connections to `server`.
    pub fn new(server: impl Into<String>, auth: LoadAuth, count: usize) -> Self {
        Self {
            server: server.into(),
            auth,
            name: None,
            count,
            publish_every: None,
            reconnect: None,
            own_ips_from: None,
        }
    }

    /// Connects connection `i` from loopback address `first` plus `i` (any address of
    /// 127.0.0.0/8 is the loopback interface's on Linux): a client per IP, as a fleet of
    /// hosts or pods.
    pub fn own_ips_from(mut self, first: Ipv4Addr) -> Self {
        self.own_ips_from = Some(first);
        self
    }

    /// The address connection `i` connects from, when it has its own.
    fn source(&self, i: usize) -> Option<Ipv4Addr> {
        let first = u32::from(self.own_ips_from?);
        Some(Ipv4Addr::from(first.wrapping_add(i as u32)))
    }

    /// Sets the client name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Makes every connection connect again, after `delay`, when the server closes it.
    pub fn reconnect(mut self, delay: Duration) -> Self {
        self.reconnect = Some(delay);
        self
    }

    /// Makes every connection publish at this interval.
    pub fn publish_every(mut self, every: Duration) -> Self {
        self.publish_every = Some(every);
        self
    }
}

/// Open load connections. Dropping it closes them (asynchronously); [`Load::close`] closes them
/// and waits.
#[derive(Debug)]
pub struct Load {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    alive: Arc<AtomicUsize>,
    reconnects: Arc<AtomicUsize>,
}

/// Opens `spec.count` connections, at most 64 handshaking at once. Fails (closing any already
/// opened) if any connection fails; the error carries the server's `-ERR` text if it sent one.
pub async fn open(spec: LoadSpec) -> anyhow::Result<Load> {
    let addr = host_port(&spec.server).to_owned();
    let signer = match &spec.auth {
        LoadAuth::Creds { seed, .. } => Some(Arc::new(
            KeyPair::from_seed(seed).context("invalid user seed")?,
        )),
        _ => None,
    };
    let spec = Arc::new(spec);
    let mut load = Load {
        cancel: CancellationToken::new(),
        tasks: Vec::with_capacity(spec.count),
        alive: Arc::new(AtomicUsize::new(0)),
        reconnects: Arc::new(AtomicUsize::new(0)),
    };
    let mut handshakes = futures::stream::iter(0..spec.count)
        .map(|i| {
            let (spec, signer, addr) = (spec.clone(), signer.clone(), addr.clone());
            async move {
                let from = spec.source(i);
                tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    handshake(&addr, from, &spec, signer.as_deref()),
                )
                .await
                .map_err(|_| anyhow!("no PONG from {addr} within {HANDSHAKE_TIMEOUT:?}"))?
                .map(|conn| (conn, from))
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY);
    while let Some(result) = handshakes.next().await {
        match result {
            Ok((conn, from)) => {
                load.alive.fetch_add(1, Ordering::SeqCst);
                let guard = AliveGuard(load.alive.clone());
                let cancel = load.cancel.clone();
                let (spec, signer, addr) = (spec.clone(), signer.clone(), addr.clone());
                let (alive, reconnects) = (load.alive.clone(), load.reconnects.clone());
                load.tasks.push(tokio::spawn(async move {
                    let mut current = Some((conn, guard));
                    while let Some((conn, guard)) = current.take() {
                        // Errors here just end the connection; `Load::alive` shows it.
                        let _ = conn.serve(cancel.clone(), spec.publish_every).await;
                        drop(guard);
                        let Some(delay) = spec.reconnect.filter(|_| !cancel.is_cancelled()) else {
                            break;
                        };
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = cancel.cancelled() => break,
                        }
                        let again = tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            handshake(&addr, from, &spec, signer.as_deref()),
                        );
                        if let Ok(Ok(again)) = again.await {
                            alive.fetch_add(1, Ordering::SeqCst);
                            reconnects.fetch_add(1, Ordering::SeqCst);
                            current = Some((again, AliveGuard(alive.clone())));
                        }
                    }
                }));
            }
            Err(err) => {
                let opened = load.tasks.len();
                drop(handshakes);
                load.close().await;
                return Err(err.context(format!(
                    "load connection failed after {opened} of {} opened",
                    spec.count
                )));
            }
        }
    }
    Ok(load)
}

impl Load {
    /// Number of connections opened.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True if no connection was opened.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Number of connections still open (the server may have closed some, e.g. by a kick).
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }

    /// Times a closed connection connected again (with [`LoadSpec::reconnect`]).
    pub fn reconnects(&self) -> usize {
        self.reconnects.load(Ordering::SeqCst)
    }

    /// Closes every connection and waits until all sockets are closed.
    pub async fn close(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ticks `ticker`, or never completes without one.
async fn maybe_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// `nats://host:port/` -> `host:port`.
fn host_port(server: &str) -> &str {
    let s = server.strip_prefix("nats://").unwrap_or(server);
    s.trim_end_matches('/')
}

/// Reads `\r\n`-terminated protocol lines; cancel-safe (the only await is a plain `read`).
struct LineReader {
    reader: OwnedReadHalf,
    buf: Vec<u8>,
}

impl LineReader {
    async fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                bail!("protocol line longer than {MAX_LINE} bytes");
            }
            let mut chunk = [0u8; 4096];
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

struct Conn {
    lines: LineReader,
    writer: OwnedWriteHalf,
}

async fn handshake(
    addr: &str,
    from: Option<Ipv4Addr>,
    spec: &LoadSpec,
    signer: Option<&KeyPair>,
) -> anyhow::Result<Conn> {
    let stream = connect(addr, from)
        .await
        .with_context(|| format!("failed to connect to {addr} (from {from:?})"))?;
    let (reader, mut writer) = stream.into_split();
    let mut lines = LineReader {
        reader,
        buf: Vec::new(),
    };
    let info = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow!("{addr} closed the connection before INFO"))?;
    let info: Value = info
        .strip_prefix("INFO ")
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| anyhow!("{addr} sent no INFO: {info:?}"))?;

    let mut connect = json!({
        "verbose": false, "pedantic": false, "lang": "connwatch-load", "version": "0", "protocol": 1,
    });
    if let Some(name) = &spec.name {
        connect["name"] = json!(name);
    }
    match &spec.auth {
        LoadAuth::None => {}
        LoadAuth::UserPassword { user, password } => {
            connect["user"] = json!(user);
            connect["pass"] = json!(password);
        }
        LoadAuth::Creds { jwt, .. } => {
            connect["jwt"] = json!(jwt);
            if let (Some(nonce), Some(signer)) = (info["nonce"].as_str(), signer) {
                let sig = signer
                    .sign(nonce.as_bytes())
                    .context("failed to sign nonce")?;
                connect["sig"] = json!(URL_SAFE_NO_PAD.encode(sig));
            }
        }
    }
    writer
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .await?;
    loop {
        match lines.next_line().await? {
            Some(line) if line == "PONG" => return Ok(Conn { lines, writer }),
            Some(line) if line.starts_with("-ERR") => {
                bail!("{addr} refused the connection: {line}")
            }
            Some(_) => {} // INFO updates, +OK
            None => bail!("{addr} closed the connection before PONG"),
        }
    }
}

/// A TCP connection to `addr`, from `from` when given.
async fn connect(addr: &str, from: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let to = tokio::net::lookup_host(addr)
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| std::io::Error::other(format!("{addr} has no IPv4 address")))?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

impl Conn {
    /// Answers PINGs (and publishes, if asked) until cancelled or the server closes.
    async fn serve(
        mut self,
        cancel: CancellationToken,
        publish_every: Option<Duration>,
    ) -> anyhow::Result<()> {
        let mut ticker = publish_every.map(tokio::time::interval);
        let publish = format!("PUB {LOAD_SUBJECT} 14\r\nconnwatch-load\r\n");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                line = self.lines.next_line() => match line? {
                    Some(line) if line == "PING" => self.writer.write_all(b"PONG\r\n").await?,
                    Some(line) if line.starts_with("-ERR") => bail!("server error: {line}"),
                    Some(_) => {}
                    None => break,
                },
                _ = maybe_tick(&mut ticker) => {
                    self.writer.write_all(publish.as_bytes()).await?;
                }
            }
        }
        let _ = self.writer.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_accept_nats_scheme_and_plain_addresses() {
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(host_port("nats://127.0.0.1:4222/"), "127.0.0.1:4222");
        assert_eq!(host_port("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = LoadAuth::user_password("u", "hunter2");
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn line_reader_splits_protocol_lines() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"INFO {}\r\nPI").await.unwrap();
            s.write_all(b"NG\r\n").await.unwrap();
        });
        let (reader, _writer) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut lines = LineReader {
            reader,
            buf: Vec::new(),
        };
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("INFO {}"));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("PING"));
        server.await.unwrap();
        assert_eq!(lines.next_line().await.unwrap(), None);
    }
}
