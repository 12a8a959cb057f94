//! What connwatch remembers between sweeps and across restarts (`state.file`): the servers it
//! has seen, the findings that are firing, and recent connection counts.
//!
//! A server that stops answering is still expected for `sweep.forget_servers_after`, so its
//! silence makes a sweep partial and names it, instead of quietly shrinking the cluster.
//! Firing findings are kept so that a restart does not announce them all again.
//!
//! **One writer at a time.** Every write takes an exclusive lock on `<state.file>.lock`
//! ([`StateLock`]) and replaces the file atomically (a temporary file of its own, then a
//! rename), so the file is never torn. `connwatch run` holds the lock for as long as it runs (it
//! rewrites the file every round from what it holds in memory): a second `run` on the same file
//! does not start, `connwatch kick --forget` refuses (its change would be overwritten), and
//! `report`, `kick` and `top` leave the file to `run` (with a warning) instead of racing it.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kick::Kicked;
use crate::lifecycle::Lifecycle;
use crate::rules::growth::History;

/// Everything in the state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Servers seen by earlier sweeps.
    #[serde(default)]
    pub servers: KnownServers,
    /// Findings that are firing.
    #[serde(default)]
    pub findings: Lifecycle,
    /// Connection counts of recent complete sweeps.
    #[serde(default)]
    pub history: History,
    /// Clients connwatch kicked, to notice them coming back.
    #[serde(default)]
    pub kicked: Kicked,
}

impl State {
    /// Loads from a JSON file; a missing file is an empty state.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Loads the configured state file, or starts empty (with a warning) when it is unreadable.
    pub fn load_or_default(path: Option<&Path>) -> Self {
        let Some(path) = path else {
            return Self::default();
        };
        Self::load(path).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "cannot read state file; starting without it");
            Self::default()
        })
    }

    /// Saves to a JSON file atomically (a temporary file of this process, then a rename), under
    /// the file's lock ([`StateLock`]): held by this process already (`connwatch run`), or
    /// taken for the write. Fails (`WouldBlock`, the message names the holder) when another
    /// process holds it.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let _lock = if StateLock::held_here(path) {
            None
        } else {
            Some(StateLock::acquire(path, "a one-off command")?)
        };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, path)
    }

    /// Saves to the configured state file, if any; a failure is logged, never fatal.
    pub fn save_to(&self, path: Option<&Path>) {
        if let Some(path) = path {
            match self.save(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tracing::warn!(file = %path.display(), error = %e, "state file not written: another connwatch owns it");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot write state file");
                }
            }
        }
    }
}

/// The state files this process holds the lock of.
fn held() -> &'static Mutex<HashSet<PathBuf>> {
    static HELD: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    HELD.get_or_init(Mutex::default)
}

/// The exclusive right to write a state file: a lock (`flock`) on `<state.file>.lock`, which
/// holds who took it (pid and what) for the others' messages. The kernel lets it go when its
/// process ends, however it ends: a crash leaves no stale lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    state: PathBuf,
}

impl StateLock {
    /// The lock file of the state file `state`.
    pub fn path_of(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock of `state` for `what` (e.g. `connwatch run`), without waiting: when
    /// another process holds it, a `WouldBlock` error naming that process.
    pub fn acquire(state: &Path, what: &str) -> std::io::Result<Self> {
        if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let path = Self::path_of(state);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process"
                } else {
                    holder
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by {holder} (lock {})",
                        state.display(),
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        file.set_len(0)?;
        write!(file, "{what} (pid {})", std::process::id())?;
        held()
            .lock()
            .expect("held lock")
            .insert(state.to_path_buf());
        Ok(Self {
            _file: file,
            state: state.to_path_buf(),
        })
    }

    /// Whether this process holds the lock of `state`.
    pub fn held_here(state: &Path) -> bool {
        held().lock().expect("held lock").contains(state)
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        held().lock().expect("held lock").remove(&self.state);
    }
}

/// Servers seen by earlier sweeps, by server name (the id changes on restart; the name does not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownServers {
    /// Name → last time it answered, and its id then.
    pub servers: BTreeMap<String, KnownServer>,
}

/// One server seen before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownServer {
    /// Its id when last seen.
    pub id: String,
    /// When it last answered.
    pub last_seen: DateTime<Utc>,
    /// When it last came back with a new id (a restart).
    #[serde(default)]
    pub restarted_at: Option<DateTime<Utc>>,
    /// Its cluster when last seen, so a silent server is named with its cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// After a restart, the other servers count the old id for up to this long (nats-server drops
/// an orphan after 150 s and checks every 90 s).
pub const GHOST_WINDOW: chrono::Duration = chrono::Duration::seconds(300);

impl KnownServers {
    /// Records the servers that answered a sweep at `now`.
    pub fn saw<'a>(
        &mut self,
        now: DateTime<Utc>,
        servers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for (name, id) in servers {
            let restarted_at = match self.servers.get(name) {
                Some(k) if k.id != id => Some(now),
                Some(k) => k.restarted_at,
                None => None,
            };
            let server = KnownServer {
                id: id.to_string(),
                last_seen: now,
                restarted_at,
                cluster: self.servers.get(name).and_then(|k| k.cluster.clone()),
            };
            self.servers.insert(name.to_string(), server);
        }
    }

    /// Whether the server `name`, answering as `id`, restarted recently enough that the others
    /// may still count its old id.
    pub fn recently_restarted(&self, name: &str, id: &str, now: DateTime<Utc>) -> bool {
        self.servers
            .get(name)
            .is_some_and(|k| k.id != id || k.restarted_at.is_some_and(|t| now - t <= GHOST_WINDOW))
    }

    /// Drops servers not seen within `forget_after` of `now`.
    pub fn forget_old(&mut self, now: DateTime<Utc>, forget_after: Duration) {
        let horizon = chrono::Duration::from_std(forget_after).unwrap_or(chrono::Duration::MAX);
        self.servers
            .retain(|_, s| now.signed_duration_since(s.last_seen) <= horizon);
    }

    /// Records the clusters of servers seen (see [`KnownServer::cluster`]).
    pub fn placed<'a>(&mut self, places: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (name, cluster) in places {
            if let Some(k) = self.servers.get_mut(name) {
                k.cluster = Some(cluster.to_string());
            }
        }
    }

    /// Names of the servers still expected.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_at_a_time_and_the_others_are_told_who() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let lock = StateLock::acquire(&path, "connwatch run").unwrap();
        // Another holder (another open file: flock conflicts even within one process).
        let err = StateLock::acquire(&path, "connwatch kick --forget").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "in use by connwatch run (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        // The holder writes; the file is whole JSON, with no temporary file left.
        State::default().save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), State::default());
        drop(lock);
        assert!(!StateLock::held_here(&path));
        // Free again: a one-off write takes the lock for itself and lets it go.
        State::default().save(&path).unwrap();
        let again = StateLock::acquire(&path, "connwatch run");
        assert!(again.is_ok());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_restarted_server_is_one_server() {
        let mut k = KnownServers::default();
        k.saw(t(0), [("n1", "OLD")]);
        k.saw(t(10), [("n1", "NEW")]);
        assert_eq!(k.servers.len(), 1);
        assert_eq!(k.servers["n1"].id, "NEW");
        assert!(k.recently_restarted("n1", "NEW", t(10)));
        assert!(k.recently_restarted("n1", "NEW", t(300)));
        assert!(!k.recently_restarted("n1", "NEW", t(311)));
        assert!(k.recently_restarted("n1", "NEWER", t(1000)));
    }

    #[test]
    fn old_servers_are_forgotten() {
        let mut k = KnownServers::default();
        k.saw(t(0), [("n1", "A")]);
        k.saw(t(100), [("n2", "B")]);
        k.forget_old(t(150), Duration::from_secs(60));
        assert_eq!(k.names().collect::<Vec<_>>(), vec!["n2"]);
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let mut s = State::default();
        s.servers.saw(t(0), [("n1", "A")]);
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(State::load(&path).is_err());
        assert_eq!(State::load_or_default(Some(&path)), State::default());
    }
}
