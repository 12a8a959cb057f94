//! A finished burst as its `connection_cap_enforced` advisory. Pure.

use chrono::{DateTime, Utc};

use super::cap::CapSource;
use super::rounds::Finished;
use crate::advisory::{
    Advisory, CapChurn, CappedConnection, Completeness, ConnectionCapEnforced, Envelope, Message,
};
use crate::stamp::Stamp;

/// The setting a cap comes from, in words.
fn source_text(source: CapSource) -> &'static str {
    match source {
        CapSource::User => "its [[enforce.caps]] entry",
        CapSource::Account => "its account's [[enforce.caps]] entry",
        CapSource::Default => "enforce.max_connections_per_user",
    }
}

/// The most closed connections an advisory lists; `closed_more` counts the others. A burst
/// closes at most `enforce.max_kicks_per_sec` × 5 s, and each listed one is ~200 bytes: past
/// this the advisory could outgrow `max_payload` and be dropped, losing the record of what
/// was done.
pub const MAX_CLOSED_LISTED: usize = 100;

/// The advisory body of a finished burst.
pub fn body(f: &Finished, dry_run: bool) -> ConnectionCapEnforced {
    let n = f.closed.len() as u64;
    let before = f.after + n;
    let reconnecting = f.bursts_last_minute > 1;
    let mut message = if dry_run {
        format!(
            "dry run: would close {n} of {before} connections beyond the cap of {} ({}); nothing was closed",
            f.cap.max,
            source_text(f.cap.source)
        )
    } else {
        format!(
            "closed {n} of {before} connections beyond the cap of {} ({})",
            f.cap.max,
            source_text(f.cap.source)
        )
    };
    if f.failed > 0 {
        message.push_str(&format!("; {} KICKs failed and are tried again", f.failed));
    }
    if reconnecting {
        message.push_str(&format!(
            "; its clients keep reconnecting at the cap ({} closed in the last minute): fix the client, raise the cap, or revoke the credential",
            f.closed_last_minute
        ));
    }
    ConnectionCapEnforced {
        account: f.account.clone(),
        account_name: f.account_name.clone(),
        user: f.user.clone(),
        user_name: f.user_name.clone(),
        cap: f.cap.max,
        cap_source: f.cap.source,
        dry_run,
        before,
        after: f.after,
        closed: f
            .closed
            .iter()
            .take(MAX_CLOSED_LISTED)
            .map(|c| CappedConnection {
                server: c.server.to_string(),
                server_id: c.server_id.to_string(),
                cid: c.cid,
                name: c.name.to_string(),
                ip: c.ip.to_string(),
                start: c.start.and_then(Stamp::time).unwrap_or_default(),
            })
            .collect(),
        closed_more: n.saturating_sub(MAX_CLOSED_LISTED as u64),
        failed: f.failed,
        since: f.started,
        churn: CapChurn {
            closed_last_minute: f.closed_last_minute,
            bursts_last_minute: f.bursts_last_minute,
            reconnecting,
        },
        message,
    }
}

/// The `connection_cap_enforced` advisory of a finished burst, on
/// `<prefix>.connection_cap_enforced.<account>.<user>`.
pub fn advisory(
    prefix: &str,
    f: &Finished,
    dry_run: bool,
    sweep: &Completeness,
    now: DateTime<Utc>,
) -> Advisory {
    Advisory::new(
        prefix,
        &Message::ConnectionCapEnforced(Envelope::new(body(f, dry_run), sweep, now)),
        &[f.account.clone(), f.user.clone()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::Cap;
    use crate::snapshot::Connection;

    fn finished(closed: usize, bursts: u64) -> Finished {
        Finished {
            account: "APP".into(),
            account_name: None,
            user: "u".into(),
            user_name: None,
            cap: Cap {
                max: 50,
                source: CapSource::User,
            },
            started: Utc::now(),
            after: 50,
            closed: vec![
                Connection {
                    start: Some(Stamp::of(Utc::now())),
                    ..Connection::default()
                };
                closed
            ],
            failed: 0,
            closed_last_minute: closed as u64,
            bursts_last_minute: bursts,
        }
    }

    #[test]
    fn the_body_says_what_was_closed_and_whether_clients_keep_coming_back() {
        let b = body(&finished(30, 1), false);
        assert_eq!((b.before, b.after, b.closed.len()), (80, 50, 30));
        assert!(!b.churn.reconnecting);
        assert!(b.message.starts_with("closed 30 of 80"), "{}", b.message);
        let b = body(&finished(1, 3), true);
        assert!(b.dry_run && b.churn.reconnecting);
        assert!(
            b.message.starts_with("dry run: would close 1"),
            "{}",
            b.message
        );
        assert!(b.message.contains("keep reconnecting"), "{}", b.message);
        let a = advisory(
            "cw",
            &finished(2, 1),
            false,
            &Completeness::of(&Default::default()),
            Utc::now(),
        );
        assert_eq!(a.subject, "cw.connection_cap_enforced.APP.u");
        assert!(matches!(
            Message::decode(a.body).unwrap(),
            Message::ConnectionCapEnforced(_)
        ));
    }

    #[test]
    fn a_large_burst_lists_the_oldest_closed_and_counts_the_others() {
        let mut f = finished(MAX_CLOSED_LISTED + 150, 1);
        for (i, c) in f.closed.iter_mut().enumerate() {
            c.cid = i as u64;
            c.name = "a-client-name-of-some-length".into();
            c.server_id = "NDZQJDV4ZZRQPNX4T5RUQEYFRPGNEQ2OY3CPOCC4EG6BKBKXNWZZOEBG".into();
        }
        let b = body(&f, false);
        assert_eq!(
            (b.before, b.after, b.closed.len(), b.closed_more),
            (MAX_CLOSED_LISTED as u64 + 200, 50, MAX_CLOSED_LISTED, 150)
        );
        let cids: Vec<u64> = b.closed.iter().map(|c| c.cid).collect();
        assert_eq!(cids, (0..MAX_CLOSED_LISTED as u64).collect::<Vec<_>>());
        assert!(b.message.starts_with("closed 250 of 300"), "{}", b.message);
        // 5 s of closes at 10,000 a second still makes an advisory far below 1 MiB.
        let f = finished(50_000, 1);
        let a = advisory(
            "cw",
            &f,
            false,
            &Completeness::of(&Default::default()),
            Utc::now(),
        );
        let bytes = serde_json::to_vec(&a.body).unwrap().len();
        assert!(bytes < 64 * 1024, "{bytes} bytes");
        let Message::ConnectionCapEnforced(e) = Message::decode(a.body).unwrap() else {
            panic!("not a cap advisory")
        };
        assert_eq!(e.body.closed_more, 50_000 - MAX_CLOSED_LISTED as u64);
    }
}
