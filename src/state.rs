//! What connwatch remembers between sweeps and across restarts: the servers it has seen.
//!
//! A server that stops answering is still expected for `sweep.forget_servers_after`, so its
//! silence makes a sweep partial and names it, instead of quietly shrinking the cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
}

impl KnownServers {
    /// Records the servers that answered a sweep at `now`.
    pub fn saw<'a>(
        &mut self,
        now: DateTime<Utc>,
        servers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for (name, id) in servers {
            self.servers.insert(
                name.to_string(),
                KnownServer {
                    id: id.to_string(),
                    last_seen: now,
                },
            );
        }
    }

    /// Drops servers not seen within `forget_after` of `now`.
    pub fn forget_old(&mut self, now: DateTime<Utc>, forget_after: Duration) {
        let horizon = chrono::Duration::from_std(forget_after).unwrap_or(chrono::Duration::MAX);
        self.servers
            .retain(|_, s| now.signed_duration_since(s.last_seen) <= horizon);
    }

    /// Names of the servers still expected.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// Loads from a JSON file; a missing file is an empty memory.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves to a JSON file atomically (write, then rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(KnownServers::load(&path).unwrap(), KnownServers::default());
        let mut k = KnownServers::default();
        k.saw(t(0), [("n1", "A")]);
        k.save(&path).unwrap();
        assert_eq!(KnownServers::load(&path).unwrap(), k);
    }
}
