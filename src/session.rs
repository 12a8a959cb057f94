//! Connect and identify, for the daemon and the commands alike: a client connected as a
//! system-account user, the system account's name and connwatch's own connection (so that
//! neither is ever kicked), asked again every round while unknown.

use std::time::Duration;

use tracing::warn;

use crate::config::Config;
use crate::kick::Own;
use crate::nats::{self, lookup, ConnectError, RequestError, System};

/// Why connwatch does not know the system account: neither source answered with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the system account is unknown (USER.INFO: {user_info}; VARZ: {varz})")]
pub struct IdentityUnknown {
    /// What `$SYS.REQ.USER.INFO` gave instead.
    pub user_info: String,
    /// What `$SYS.REQ.SERVER.PING.VARZ` gave instead.
    pub varz: String,
}

/// A client connected as a system-account user, and what connwatch knows of who it is.
pub struct Session {
    /// System requests over the client.
    pub system: System,
    /// The system account (name or public key); `None` while unknown, and then nothing is
    /// kicked (see [`Session::kick_refusal`]).
    pub system_account: Option<String>,
    /// Why the system account is unknown, when it is.
    pub identity_error: Option<IdentityUnknown>,
}

impl Session {
    /// connwatch's own connection, from the server's INFO; `None` when the client has none.
    pub fn own(&self) -> Option<Own> {
        let info = self.system.client().server_info();
        (info.client_id != 0 && !info.server_id.is_empty()).then(|| Own {
            server_id: info.server_id.clone(),
            cid: info.client_id,
        })
    }

    /// Why nothing may be kicked now: connwatch does not know the system account or its own
    /// connection, so it cannot protect them (fail closed). `None` when kicking may go ahead.
    pub fn kick_refusal(&self) -> Option<String> {
        if let Some(e) = &self.identity_error {
            return Some(format!(
                "{e}: connwatch cannot protect system-account connections, so it kicks nothing"
            ));
        }
        if self.system_account.is_none() {
            return Some("the system account is unknown: connwatch kicks nothing".into());
        }
        if self.own().is_none() {
            return Some(
                "connwatch's own connection is unknown (no server INFO): connwatch kicks nothing"
                    .into(),
            );
        }
        None
    }

    /// Asks again for the system account while it is unknown (every round).
    pub async fn refresh_identity(&mut self, timeout: Duration) {
        if self.system_account.is_some() {
            return;
        }
        let (_, identity) = identity(&self.system, timeout).await;
        match identity {
            Ok(account) => {
                tracing::info!(system_account = %account, "system account now known");
                self.system_account = Some(account);
                self.identity_error = None;
            }
            Err(e) => self.identity_error = Some(e),
        }
    }
}

/// The user connwatch is (from USER.INFO, empty when unknown) and the system account: from
/// `$SYS.REQ.USER.INFO`, else from VARZ's `system_account`. VARZ is asked at the same time, so
/// a denied USER.INFO costs one timeout, and dropped as soon as USER.INFO answers.
async fn identity(system: &System, timeout: Duration) -> (String, Result<String, IdentityUnknown>) {
    let me = system.user_info(timeout);
    let varz = lookup::varz_system_account(system, timeout);
    tokio::pin!(me, varz);
    let mut varz_done = None;
    let me = loop {
        tokio::select! {
            m = &mut me => break m,
            v = &mut varz, if varz_done.is_none() => varz_done = Some(v),
        }
    };
    let (user, user_info) = match me {
        Ok(m) if !m.account.is_empty() => return (m.user, Ok(m.account)),
        Ok(m) => (m.user, "no account in the reply".to_string()),
        Err(e) => (String::new(), e.to_string()),
    };
    let varz = match varz_done {
        Some(v) => v,
        None => varz.await,
    };
    let varz = match varz {
        Ok(Some(account)) => return (user, Ok(account)),
        Ok(None) => "no server named its system_account".to_string(),
        Err(e) => e.to_string(),
    };
    let e = IdentityUnknown { user_info, varz };
    warn!(error = %e, "identity unknown: no kicks until it is known");
    (user, Err(e))
}

/// Connects and checks that the user can send system requests.
/// `events`, when given, counts the client's reconnects, disconnects and slow-consumer drops (see [`nats::connect`]).
pub async fn open(
    config: &Config,
    events: Option<nats::ConnectionEvents>,
) -> Result<Session, ConnectError> {
    let client = nats::connect(&config.nats, events).await?;
    let system = System::new(client);
    let timeout = config.sweep.timeout.min(Duration::from_secs(5));
    let (user, identity) = identity(&system, timeout).await;
    let account = identity.as_ref().cloned().unwrap_or_default();
    // A user outside the system account gets "no responders" here.
    match system
        .scatter(nats::PING_STATSZ, Default::default(), timeout, |_| true)
        .await
    {
        Err(RequestError::NoResponders) => {
            return Err(ConnectError::NotSystemAccount { user, account });
        }
        Ok(replies) if replies.is_empty() => {
            return Err(ConnectError::NotSystemAccount { user, account });
        }
        _ => {}
    }
    let (system_account, identity_error) = match identity {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e)),
    };
    Ok(Session {
        system,
        system_account,
        identity_error,
    })
}
