//! Why a user holds so many connections, read from how they spread, in words with the numbers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::census::{ProcessCount, UserCensus};

/// A user's churn: its connections closed (and, from the live census's events, opened) in a
/// recent window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Churn {
    /// Connections of the user closed in the window.
    pub closed: u64,
    /// The window in seconds: the last minute with the live census, else the time since the
    /// previous sweep (closed connections read from the servers, CONNZ `state: 1`).
    pub window_secs: u64,
    /// The most common close reason in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_reason: Option<TopReason>,
    /// Connections of the user opened in the window (live census only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connects: Option<u64>,
    /// Of those closed, how many lived less than 5 seconds (live census only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_lived: Option<u64>,
}

/// A close reason and how many closed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TopReason {
    /// The reason, as the server gives it (`Client Closed`, `Stale Connection`, ...).
    pub reason: String,
    /// How many closed with it.
    pub count: u64,
}

/// The churn of a user from its closed connections (stop time, reason): those closed after
/// `since` (the previous sweep) and up to `now`.
pub fn churn(
    closed: &[(DateTime<Utc>, String)],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Churn {
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    let mut n = 0;
    for (_, reason) in closed.iter().filter(|(stop, _)| *stop > since) {
        n += 1;
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    let top_reason = reasons
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(r, k)| TopReason {
            reason: r.to_string(),
            count: k,
        });
    Churn {
        closed: n,
        window_secs: (now - since).num_seconds().max(0) as u64,
        top_reason,
        connects: None,
        short_lived: None,
    }
}

/// The patterns a diagnosis recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// One process (IP + client name) holds most of the connections.
    OneProcessLeak,
    /// Most of one process's connections were used once right after connecting and then
    /// left open: a new connection per request (or publish, or subscription).
    ConnectionPerRequest,
    /// Many IPs with one or two connections each: one credential shared by replicas.
    SharedCredential,
    /// A few connections from each of several processes.
    SeveralPerProcess,
    /// Many connections closed in the churn window (the last minute with the live census,
    /// else since the previous sweep).
    ReconnectLoop,
    /// Most connections have no client name.
    UnnamedConnections,
}

/// A likely cause, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cause {
    /// Which pattern.
    pub cause: CauseKind,
    /// What it means and what to do, in words.
    #[schemars(length(min = 1))]
    pub message: String,
}

/// Why the user holds so many connections, in words with the numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Diagnosis {
    /// The causes, most telling first, in one paragraph.
    #[schemars(length(min = 1))]
    pub summary: String,
    /// Each likely cause on its own; empty when no pattern fits.
    pub causes: Vec<Cause>,
    /// The user's churn, when known: with the live census, from the connect and disconnect
    /// events of the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
}

/// A process (IP + client name) holding this share of the connections, and at least
/// [`MIN_LEAK`] of them, is leaking.
const ONE_PROCESS_SHARE: f64 = 0.5;
const MIN_LEAK: u64 = 10;
/// Many IPs with at most this many connections each means one credential shared by replicas.
const SHARED_MAX_PER_IP: u64 = 2;
const SHARED_MIN_IPS: u64 = 10;
/// Several IPs each holding between these many connections means several per process.
const SEVERAL_MIN: u64 = 3;
const SEVERAL_MAX: u64 = 20;
/// Closed connections in the churn window above this share of the open ones (and at least
/// [`MIN_CHURN`]) means a reconnect loop.
const CHURN_SHARE: f64 = 0.1;
const MIN_CHURN: u64 = 10;
/// Unnamed connections above this share are worth naming.
const UNNAMED_SHARE: f64 = 0.5;

/// More than this share of the top process's connections used once and left means a
/// connection per request (and at least [`MIN_LEAK`] of them).
const PER_REQUEST_SHARE: f64 = 0.5;

/// `client name "x" at 10.0.0.7`, or `no client name at 10.0.0.7`.
fn process_label(p: &ProcessCount) -> String {
    if p.name.is_empty() {
        format!("no client name at {}", p.ip)
    } else {
        format!("client name \"{}\" at {}", p.name, p.ip)
    }
}

/// Diagnoses a user from its census and its churn.
pub fn diagnose(u: &UserCensus, churn: Option<&Churn>) -> Diagnosis {
    let n = u.connections.max(1);
    let s = &u.spread;
    let mut causes = Vec::new();
    if let Some(top) = s.top_process.as_ref().filter(|t| {
        t.connections >= MIN_LEAK && t.connections as f64 >= ONE_PROCESS_SHARE * n as f64
    }) {
        causes.push(Cause {
            cause: CauseKind::OneProcessLeak,
            message: format!(
                "{} of {} connections come from one process ({}): a leak inside one process, which opens connections and never closes them; create one connection at startup and reuse it",
                top.connections,
                u.connections,
                process_label(top)
            ),
        });
    }
    if let Some(top) = s.top_process.as_ref().filter(|t| {
        t.used_once >= MIN_LEAK && t.used_once as f64 > PER_REQUEST_SHARE * t.connections as f64
    }) {
        causes.push(Cause {
            cause: CauseKind::ConnectionPerRequest,
            message: format!(
                "{} of the {} connections from {} were used once right after connecting and then left open (pattern used_once): a new connection for each request, publish or subscription that is never closed; create one connection when the process starts and reuse it everywhere (a singleton), or close each connection when its work is done",
                top.used_once,
                top.connections,
                process_label(top)
            ),
        });
    }
    if s.ips >= SHARED_MIN_IPS && s.max_per_ip <= SHARED_MAX_PER_IP {
        causes.push(Cause {
            cause: CauseKind::SharedCredential,
            message: format!(
                "{} connections from {} distinct IPs, at most {} each: one credential shared by many replicas; issue per-instance credentials so each replica is its own user",
                u.connections, s.ips, s.max_per_ip
            ),
        });
    }
    if s.ips >= 2 && (SEVERAL_MIN..=SEVERAL_MAX).contains(&s.median_per_ip) {
        causes.push(Cause {
            cause: CauseKind::SeveralPerProcess,
            message: format!(
                "{} IPs hold a median of {} connections each: several connections per process across replicas; one connection per process is enough, NATS multiplexes everything over it",
                s.ips, s.median_per_ip
            ),
        });
    }
    if let Some(c) =
        churn.filter(|c| c.closed >= MIN_CHURN && c.closed as f64 >= CHURN_SHARE * n as f64)
    {
        let reason = c
            .top_reason
            .as_ref()
            .map(|r| format!(", most often \"{}\" ({})", r.reason, r.count))
            .unwrap_or_default();
        let live = match (c.connects, c.short_lived) {
            (Some(opened), Some(short)) => {
                format!(" ({short} of them lived less than 5s; {opened} opened)")
            }
            _ => String::new(),
        };
        causes.push(Cause {
            cause: CauseKind::ReconnectLoop,
            message: format!(
                "{} connections of this user closed in the last {}s{live}{reason} while {} are open: a reconnect loop that opens a new connection before the old one is gone; use the client library's own reconnect instead of connecting again",
                c.closed, c.window_secs, u.connections
            ),
        });
    }
    if s.unnamed as f64 > UNNAMED_SHARE * n as f64 {
        causes.push(Cause {
            cause: CauseKind::UnnamedConnections,
            message: format!(
                "{} of {} connections have no client name: give every connection a descriptive name (e.g. nats.Name(\"order-service\")) so they can be told apart",
                s.unnamed, u.connections
            ),
        });
    }
    let summary = if causes.is_empty() {
        format!(
            "{} connections over {} processes and {} IPs, with no single pattern; check whether each process opens more than one connection",
            u.connections, s.processes, s.ips
        )
    } else {
        causes
            .iter()
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>()
            .join(". ")
    };
    Diagnosis {
        summary,
        causes,
        churn: churn.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::{ProcessCount, Spread};

    fn user(connections: u64, spread: Spread) -> UserCensus {
        UserCensus {
            connections,
            spread,
            ..UserCensus::default()
        }
    }

    fn causes(d: &Diagnosis) -> Vec<CauseKind> {
        d.causes.iter().map(|c| c.cause).collect()
    }

    #[test]
    fn one_process_holding_most_connections_is_a_leak() {
        let top = ProcessCount {
            ip: "10.0.0.7".into(),
            name: "invoice-worker".into(),
            connections: 480,
            used_once: 0,
        };
        let u = user(
            500,
            Spread {
                processes: 3,
                top_process: Some(top),
                ips: 3,
                max_per_ip: 480,
                median_per_ip: 10,
                unnamed: 0,
            },
        );
        let d = diagnose(&u, None);
        assert_eq!(
            causes(&d),
            vec![CauseKind::OneProcessLeak, CauseKind::SeveralPerProcess]
        );
        assert!(d.summary.contains("480 of 500"), "{}", d.summary);
        assert!(d.summary.contains("10.0.0.7"));
        assert!(d.summary.contains("invoice-worker"));
    }

    #[test]
    fn a_process_whose_connections_were_used_once_is_a_connection_per_request() {
        let top = |used_once| ProcessCount {
            ip: "10.0.0.7".into(),
            name: "api".into(),
            connections: 150,
            used_once,
        };
        let u = |used_once| {
            user(
                150,
                Spread {
                    processes: 1,
                    top_process: Some(top(used_once)),
                    ips: 1,
                    max_per_ip: 150,
                    median_per_ip: 150,
                    unnamed: 0,
                },
            )
        };
        let d = diagnose(&u(140), None);
        assert_eq!(
            causes(&d),
            vec![CauseKind::OneProcessLeak, CauseKind::ConnectionPerRequest]
        );
        let msg = &d.causes[1].message;
        assert!(msg.contains("140 of the 150 connections"), "{msg}");
        assert!(msg.contains("client name \"api\" at 10.0.0.7"), "{msg}");
        assert!(msg.contains("create one connection when the process starts and reuse it"));
        // Half or fewer used once: the process leaks, but not one connection per request.
        assert_eq!(
            causes(&diagnose(&u(75), None)),
            vec![CauseKind::OneProcessLeak]
        );
    }

    #[test]
    fn many_ips_with_one_or_two_each_is_a_shared_credential() {
        let u = user(
            150,
            Spread {
                processes: 100,
                top_process: None,
                ips: 100,
                max_per_ip: 2,
                median_per_ip: 1,
                unnamed: 0,
            },
        );
        assert_eq!(
            causes(&diagnose(&u, None)),
            vec![CauseKind::SharedCredential]
        );
    }

    #[test]
    fn a_few_per_ip_is_several_per_process() {
        let u = user(
            200,
            Spread {
                processes: 50,
                top_process: None,
                ips: 50,
                max_per_ip: 5,
                median_per_ip: 4,
                unnamed: 0,
            },
        );
        assert_eq!(
            causes(&diagnose(&u, None)),
            vec![CauseKind::SeveralPerProcess]
        );
    }

    #[test]
    fn churn_is_a_reconnect_loop() {
        let u = user(
            120,
            Spread {
                processes: 1,
                ips: 1,
                max_per_ip: 120,
                median_per_ip: 120,
                ..Spread::default()
            },
        );
        let churn = Churn {
            closed: 40,
            window_secs: 30,
            top_reason: Some(TopReason {
                reason: "Stale Connection".into(),
                count: 38,
            }),
            connects: None,
            short_lived: None,
        };
        let d = diagnose(&u, Some(&churn));
        assert!(causes(&d).contains(&CauseKind::ReconnectLoop));
        assert!(
            d.summary
                .contains("40 connections of this user closed in the last 30s"),
            "{}",
            d.summary
        );
        assert!(d.summary.contains("Stale Connection"));
        let calm = Churn { closed: 5, ..churn };
        assert!(!causes(&diagnose(&u, Some(&calm))).contains(&CauseKind::ReconnectLoop));
    }

    #[test]
    fn live_churn_says_how_many_were_short_lived_and_is_kept_in_the_diagnosis() {
        let u = user(
            12,
            Spread {
                processes: 1,
                ips: 1,
                max_per_ip: 12,
                median_per_ip: 12,
                ..Spread::default()
            },
        );
        let churn = Churn {
            closed: 30,
            window_secs: 60,
            top_reason: Some(TopReason {
                reason: "Client Closed".into(),
                count: 30,
            }),
            connects: Some(36),
            short_lived: Some(29),
        };
        let d = diagnose(&u, Some(&churn));
        assert!(causes(&d).contains(&CauseKind::ReconnectLoop));
        assert!(
            d.summary.contains(
                "30 connections of this user closed in the last 60s (29 of them lived less than 5s; 36 opened)"
            ),
            "{}",
            d.summary
        );
        assert_eq!(d.churn, Some(churn));
        assert_eq!(diagnose(&u, None).churn, None);
    }

    #[test]
    fn churn_counts_what_closed_since_the_last_sweep() {
        let t = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let closed = vec![
            (t(5), "Client Closed".to_string()),
            (t(12), "Stale Connection".to_string()),
            (t(15), "Stale Connection".to_string()),
            (t(20), "Client Closed".to_string()),
            (t(25), "Stale Connection".to_string()),
        ];
        let c = churn(&closed, t(10), t(40));
        assert_eq!(c.closed, 4);
        assert_eq!(c.window_secs, 30);
        assert_eq!(
            c.top_reason,
            Some(TopReason {
                reason: "Stale Connection".into(),
                count: 3
            })
        );
    }

    #[test]
    fn mostly_unnamed_connections_are_called_out() {
        let u = user(
            300,
            Spread {
                processes: 1,
                ips: 1,
                max_per_ip: 300,
                median_per_ip: 300,
                unnamed: 300,
                ..Spread::default()
            },
        );
        assert!(causes(&diagnose(&u, None)).contains(&CauseKind::UnnamedConnections));
    }

    #[test]
    fn no_pattern_still_says_something() {
        let u = user(
            101,
            Spread {
                processes: 3,
                ips: 3,
                max_per_ip: 50,
                median_per_ip: 30,
                ..Spread::default()
            },
        );
        let d = diagnose(&u, None);
        assert!(d.causes.is_empty());
        assert!(d.summary.contains("101 connections over 3 processes"));
    }
}
