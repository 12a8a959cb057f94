//! The census counted from a live view's connections (45,000 over 3 servers, as
//! `connwatch-bench` loads them), and the text look-up it is made of, side by side with the
//! `str` comparison it replaced. Prints ns of CPU; no assertion on time (BENCHMARKS.md, "Fewer
//! and cheaper text look-ups"):
//!
//! ```sh
//! cargo test --release --lib census::bench -- --ignored --nocapture
//! ```

use std::time::Duration;

use hashbrown::HashMap;

use super::Aggregate;
use crate::bench::sorted_ns_per_conn;
use crate::config::DetectConfig;
use crate::intern::{FxBuild, Interner, Str, Text};
use crate::snapshot::Connection;
use crate::stamp::Stamp;

const CONNS: usize = 45_000;

/// A view's shape: `connwatch-bench`'s load is 10% on one hot user, the rest over 50
/// accounts of 10 users, round robin over the servers.
#[derive(Clone, Copy)]
struct Shape {
    servers: usize,
    /// Distinct client IPs.
    ips: usize,
    /// Accounts and users named by 56-character keys (operator mode), not short names.
    nkeys: bool,
    /// The hot user's connections idle for an hour or more without a message (suspects).
    leak: bool,
}

const BENCH: Shape = Shape {
    servers: 3,
    ips: 1,
    nkeys: false,
    leak: false,
};

fn view(shape: Shape) -> Vec<Connection> {
    let mut texts = Interner::default();
    let hot = CONNS / 10;
    let mut out: Vec<Connection> = (0..CONNS)
        .map(|i| {
            let (account, user) = if i < hot {
                ("A00".to_string(), "hot".to_string())
            } else {
                let a = (i - hot) % 50;
                (
                    format!("A{a:02}"),
                    format!("a{a:02}u{}", (i - hot) / 50 % 10),
                )
            };
            let (account, user) = if shape.nkeys {
                (format!("A{account:A>55}"), format!("U{user:U>55}"))
            } else {
                (account, user)
            };
            let server = format!("n{}", i % shape.servers);
            let ip = i % shape.ips;
            let (idle, msgs) = if shape.leak && i < hot {
                (3_600 + (i as u64 * 7_919) % 3_600, 0)
            } else {
                (1, 1)
            };
            Connection {
                server: texts.get(&server),
                server_id: texts.get(&format!("ID{server}")),
                cid: i as u64,
                kind: texts.get("Client"),
                ip: texts.get(&format!("10.0.{}.{}", ip / 256, ip % 256)),
                start: Some(Stamp::new(1_700_000_000 + i as i64, 0)),
                idle: Duration::from_secs(idle),
                in_msgs: msgs,
                name: texts.get(""),
                account: texts.get(&account),
                user: texts.get(&user),
                ..Connection::default()
            }
        })
        .collect();
    // A view holds each server's connections apart, in no order within.
    out.sort_by_key(|c| {
        (
            c.server.to_string(),
            c.cid.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    });
    out
}

/// Median and quartiles of `runs` runs of `f`, in ns a connection.
fn ns_per_conn(runs: usize, mut f: impl FnMut()) -> String {
    let times = sorted_ns_per_conn(runs, || {
        f();
        CONNS
    });
    let q = |at: usize| times[at * (runs - 1) / 4];
    format!("{:.0} ({:.0}–{:.0})", q(2), q(1), q(3))
}

#[test]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
fn count_a_view_and_look_up_its_texts() {
    let detect = DetectConfig::default();
    let runs = 41;
    println!("\nns a connection, median (quartiles) of {runs} runs, thread CPU time");
    println!("| view | census (add each, finish) |\n| --- | ---: |");
    for (what, shape) in [
        ("short names, one IP", BENCH),
        (
            "56-character account and user keys, one IP",
            Shape {
                nkeys: true,
                ..BENCH
            },
        ),
        (
            "short names, an IP per connection",
            Shape {
                ips: CONNS,
                ..BENCH
            },
        ),
        (
            "short names, one IP, 48 servers",
            Shape {
                servers: 48,
                ..BENCH
            },
        ),
        (
            "short names, one IP, the hot user's 4,500 idle (a leak)",
            Shape {
                leak: true,
                ..BENCH
            },
        ),
    ] {
        let conns = view(shape);
        let ns = ns_per_conn(runs, || {
            let mut agg = Aggregate::new(Some("SYS"), &detect);
            for c in &conns {
                agg.add(&c.view());
            }
            assert_eq!(agg.finish().connections, CONNS as u64);
        });
        println!("| {what} | {ns} |");
    }
    // The look-ups themselves: each connection's user, server and IP in maps keyed by text.
    let conns = view(BENCH);
    let keys = |f: fn(&Connection) -> &Str| -> HashMap<Str, u64, FxBuild> {
        conns
            .iter()
            .map(|c| (Str::from(f(c).as_str()), 0))
            .collect()
    };
    let fields: [fn(&Connection) -> &Str; 3] = [|c| &c.user, |c| &c.server, |c| &c.ip];
    let mut maps: Vec<_> = fields.iter().map(|f| keys(*f)).collect();
    let mut look_up = |inline: bool| {
        for c in &conns {
            for (map, f) in maps.iter_mut().zip(fields) {
                let text = f(c).as_str();
                let n = if inline {
                    map.get_mut(&Text(text))
                } else {
                    map.get_mut(text)
                };
                *n.expect("a key") += 1;
            }
        }
    };
    let str_eq = ns_per_conn(runs, || look_up(false));
    let inline = ns_per_conn(runs, || look_up(true));
    println!("\n| 3 look-ups (user, server, IP) | `str` == (memcmp) | `same_text` |");
    println!("| --- | ---: | ---: |\n| ns a connection | {str_eq} | {inline} |");
}
