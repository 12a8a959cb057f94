//! Secrets and credential files: a secret is never printed or logged, and a credentials file
//! is checked before connwatch tries it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{de_stringish, Config};

/// A secret string: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for handing to the NATS client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_stringish(d).map(Secret)
    }
}

/// Checks that a `.creds` file is readable and holds a user JWT and an nkey seed.
pub fn check_creds_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let has_jwt = text.contains("BEGIN NATS USER JWT");
    let has_seed = text.contains("BEGIN USER NKEY SEED");
    if !has_jwt || !has_seed {
        return Err(format!(
            "{} is not a NATS .creds file (it needs a `BEGIN NATS USER JWT` and a `BEGIN USER NKEY SEED` block)",
            path.display()
        ));
    }
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .ok_or_else(|| {
            format!(
                "{} holds no user nkey seed (a line starting with SU)",
                path.display()
            )
        })?;
    nkeys::KeyPair::from_seed(seed)
        .map_err(|e| format!("{}: invalid nkey seed: {e}", path.display()))?;
    Ok(())
}

/// Checks that a seed file is readable and holds a user nkey seed.
pub fn check_seed_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(format!(
            "{} does not hold a user nkey seed (SU...)",
            path.display()
        ));
    }
    nkeys::KeyPair::from_seed(seed)
        .map_err(|e| format!("{}: invalid nkey seed: {e}", path.display()))?;
    Ok(())
}

/// The credential files (`nats.creds`, `nats.nkey`) that users other than the owner can read.
pub fn loose_credential_files(c: &Config) -> Vec<(&'static str, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    [("nats.creds", &c.nats.creds), ("nats.nkey", &c.nats.nkey)]
        .into_iter()
        .filter_map(|(key, path)| {
            let path = path.as_ref()?;
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            (mode & 0o044 != 0).then(|| (key, path.clone()))
        })
        .collect()
}
