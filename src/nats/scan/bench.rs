//! The scanner against the serde path on one realistic reply of 15,000 connections, printed
//! side by side (no assertion on time: BENCHMARKS.md, "Issue 16 point 3: the CONNZ scanner"):
//!
//! ```sh
//! cargo test --release --lib nats::scan::bench -- --ignored --nocapture
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::{reply, Head, ListStart, Visit};
use crate::bench::sorted_ns_per_conn;
use crate::nats::page::{parse_server_list, serde_reference};
use crate::nats::snappy::Payload;
use crate::nats::wire::{Rfc3339, ServerInfo, SweepConn};

/// Connections in the reply: one server's list at 45,000 over 3 servers.
const CONNS: usize = 15_000;

/// A reply as nats-server 2.15 writes one to `$SYS.REQ.SERVER.PING.CONNZ` with `auth: true`
/// (fields and order of its `ConnInfo`, compact, as captured from a server): 500 users in 20
/// accounts, one process name per user, every tenth user with tags.
fn realistic_reply(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 450);
    s.push_str(
        r#"{"server":{"name":"n1","host":"0.0.0.0","id":"NDA4HVMZWCIACLBVOTQXBV35MN23G6J2JUN3SH3ZJBFZJCHFA6XLZH5K","cluster":"c1","ver":"2.15.1","jetstream":false,"flags":0,"seq":42,"time":"2026-11-26T11:39:31.426977993Z"},"data":{"server_id":"NDA4HVMZWCIACLBVOTQXBV35MN23G6J2JUN3SH3ZJBFZJCHFA6XLZH5K","now":"2026-11-26T11:39:31.426977993Z","#,
    );
    s.push_str(&format!(
        r#""num_connections":{n},"total":{n},"offset":0,"limit":{n},"connections":["#
    ));
    for i in 0..n {
        let (user, acc) = (i % 500, i % 20);
        let tags = if user % 10 == 0 {
            r#","tags":["team:orders","env:prod"]"#
        } else {
            ""
        };
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            concat!(
                r#"{{"cid":{cid},"kind":"Client","type":"nats","ip":"10.{a}.{b}.{c}","port":{port},"#,
                r#""start":"2026-11-26T10:{m:02}:{sec:02}.{ns:09}Z","last_activity":"2026-11-26T11:{m:02}:{sec:02}.{ns:09}Z","#,
                r#""rtt":"{rtt}µs","uptime":"1h{m}m{sec}s","idle":"{sec}s","pending_bytes":0,"#,
                r#""in_msgs":{msgs},"out_msgs":{msgs},"in_bytes":{bytes},"out_bytes":{bytes},"subscriptions":{subs},"#,
                r#""name":"orders-worker-{user}","lang":"go","version":"1.37.0","#,
                r#""authorized_user":"app-user-{user}","account":"ACCOUNT{acc}","name_tag":"ACCOUNT{acc}"{tags}}}"#
            ),
            cid = i + 5,
            a = i / 65536 % 256,
            b = i / 256 % 256,
            c = i % 256,
            port = 30_000 + i % 30_000,
            m = i % 60,
            sec = i / 60 % 60,
            ns = (i * 7_919) % 1_000_000_000,
            rtt = 100 + i % 900,
            msgs = i % 7 * 1_000,
            bytes = i % 7 * 128_000,
            subs = 1 + i % 5,
            user = user,
            acc = acc,
            tags = tags,
        ));
    }
    s.push_str("]}}");
    s.into_bytes()
}

/// serde's half of `page`'s parse, without the conversion into `Connection`: the same
/// seeds' shape as plain derived types (connections as `SweepConn`, borrowed texts).
#[derive(Deserialize)]
struct SerdeReply<'a> {
    #[serde(default)]
    #[allow(dead_code)]
    server: ServerInfo,
    #[serde(borrow)]
    data: Option<SerdeData<'a>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct SerdeData<'a> {
    now: Option<Rfc3339>,
    #[serde(default)]
    total: u64,
    #[serde(default)]
    offset: i64,
    #[serde(borrow)]
    server_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    connections: Option<Vec<SweepConn<'a>>>,
}

/// The same with connections not kept: their cids only (`page`'s `CidOnly`).
#[derive(Deserialize)]
struct SerdeCids {
    data: Option<SerdeCidData>,
}

#[derive(Deserialize)]
struct SerdeCidData {
    connections: Option<Vec<CidOnly>>,
}

#[derive(Deserialize)]
struct CidOnly {
    #[serde(default)]
    cid: u64,
}

/// Reads every connection (`keep`) or only their cids: the connections' texts are looked at
/// (their lengths summed), as a user of the parse does, and let go (they borrow from the bytes
/// in hand), where serde's path keeps them in a vector.
struct Gather {
    keep: bool,
    conns: usize,
    text: usize,
    cids: Vec<u64>,
}

impl Visit for Gather {
    fn list(&mut self, _: &ListStart) -> bool {
        self.keep
    }
    fn conn(&mut self, c: &SweepConn<'_>) -> Result<(), String> {
        self.conns += 1;
        self.text += c.ip.len() + c.name.as_ref().map_or(0, |n| n.len());
        Ok(())
    }
    fn cid(&mut self, cid: u64) -> Result<(), String> {
        self.cids.push(cid);
        Ok(())
    }
}

/// The median ns of CPU per connection of `runs` runs of `f` (which returns the connections
/// it read).
fn ns_per_conn(runs: usize, mut f: impl FnMut() -> usize) -> f64 {
    let times = sorted_ns_per_conn(runs, || {
        let n = f();
        assert_eq!(n, CONNS, "every connection read");
        n
    });
    times[runs / 2]
}

#[test]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
fn scan_against_serde_on_15k_connections() {
    let payload = realistic_reply(CONNS);
    let runs = 31;
    let framed = crate::nats::snappy::framed(&payload);
    let gather = |keep: bool, from: Payload| {
        let mut into = Gather {
            keep,
            conns: 0,
            text: 0,
            cids: Vec::with_capacity(CONNS),
        };
        let head: Head = reply(from, &mut into).expect("the reply parses");
        assert_eq!(head.count, CONNS);
        assert!(!keep || into.text > 0);
        into.conns + into.cids.len()
    };
    let scan = |keep: bool| gather(keep, Payload::Plain(&payload));
    let serde_kept = || {
        let r: SerdeReply = serde_json::from_slice(&payload).expect("parses");
        r.data.and_then(|d| d.connections).map_or(0, |c| c.len())
    };
    let serde_cids = || {
        let r: SerdeCids = serde_json::from_slice(&payload).expect("parses");
        let cids = r.data.and_then(|d| d.connections).unwrap_or_default();
        cids.iter().filter(|c| c.cid > 0).count()
    };
    let page = || {
        let mut out = Vec::with_capacity(CONNS);
        parse_server_list(Payload::Plain(&payload), &mut out, CONNS).expect("parses");
        out.len()
    };
    // Warm up caches and the allocator, then alternate so neither side gets a quieter machine.
    for _ in 0..3 {
        scan(true);
        serde_kept();
    }
    let mut rows = Vec::new();
    for (what, serde_ns, scan_ns) in [
        (
            "connections kept (SweepConn)",
            ns_per_conn(runs, serde_kept),
            ns_per_conn(runs, || scan(true)),
        ),
        (
            "cids only (a partial page)",
            ns_per_conn(runs, serde_cids),
            ns_per_conn(runs, || scan(false)),
        ),
    ] {
        rows.push(format!(
            "| {what} | {serde_ns:.0} | {scan_ns:.0} | {:.1}× |",
            serde_ns / scan_ns
        ));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n{CONNS} connections, {:.0} bytes each; median of {runs} runs (thread CPU time); load average {}",
        payload.len() as f64 / CONNS as f64,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| parse | serde ns/conn | scan ns/conn | speed-up |\n| --- | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
    let serde_page = || {
        let mut out = Vec::with_capacity(CONNS);
        serde_reference::parse_server_list(Payload::Plain(&payload), &mut out, CONNS)
            .expect("parses");
        out.len()
    };
    println!(
        "| page::parse_server_list (+ conversion into Connection) | {:.0} | {:.0} | |",
        ns_per_conn(runs, serde_page),
        ns_per_conn(runs, page)
    );
    let census = || {
        let detect = crate::config::DetectConfig::default();
        let mut agg = crate::census::Aggregate::new(None, &detect);
        crate::nats::page::parse_server_census(Payload::Plain(&payload), &mut agg, CONNS)
            .expect("parses");
        agg.finish().connections as usize
    };
    println!(
        "| page::parse_server_census (the census while parsing, finished) | | {:.0} | |",
        ns_per_conn(runs, census)
    );
    // Snappy: decompressed whole into a fresh buffer, then parsed (as before), against read
    // a chunk at a time through the window.
    let mut kept = Vec::new();
    let whole = || {
        let mut u = crate::nats::snappy::Unframer::new(&framed);
        let mut at = 0;
        loop {
            match u.next_into(&mut kept, at).expect("inflates") {
                0 => break,
                n => at += n,
            }
        }
        gather(true, Payload::Plain(&kept[..at]))
    };
    println!(
        "| snappy reply ({:.0} bytes/conn framed): decompressed whole into a buffer kept from reply to reply, then scanned / scanned through the window | {:.0} | {:.0} | |",
        framed.len() as f64 / CONNS as f64,
        ns_per_conn(runs, whole),
        ns_per_conn(runs, || gather(true, Payload::Snappy(&framed)))
    );
}
