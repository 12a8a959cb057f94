//! The floor of a bounded sweep (`sweep.max_in_flight`): what a super-cluster sweep costs when
//! servers are asked a few at a time with directed requests instead of one PING to all.

use std::time::Instant;

use super::{
    connz_req, floor_probe, self_cpu, self_status_kb, servers_cpu_ms, Measured, MethodArgs, Raw,
};

/// `floor-bounded`: a bare client sending connwatch's bounded requests (a STATSZ ping, then one
/// directed CONNZ per server from offset 0 for its `total` + headroom, `--max-in-flight` servers
/// at a time, the next one asked as each STATSZ reply or CONNZ reply arrives), every reply byte
/// received and thrown away.
pub(super) fn floor_bounded(a: &MethodArgs) -> anyhow::Result<Measured> {
    let mut raw = Raw::connect(&a.servers[0], &a.user, &a.password)?;
    let servers = floor_probe(&mut raw, a.servers.len())?;
    let at_once = a.max_in_flight.max(1);
    let mut m = Measured {
        kind: a.kind.clone(),
        ..Measured::default()
    };
    let sweep = |raw: &mut Raw, m: &mut Measured| -> anyhow::Result<()> {
        raw.publish("$SYS.REQ.SERVER.PING.STATSZ", "_FLOOR.st", b"", None)?;
        let (mut requests, mut bytes) = (1, 0);
        let (mut statsz, mut next, mut outstanding, mut done) = (0, 0, 0, 0);
        while done < servers.len() || statsz < servers.len() {
            let msg = raw.next()?;
            bytes += msg.len;
            if msg.tag == "st" {
                statsz += 1;
            } else {
                outstanding -= 1;
                done += 1;
            }
            while next < statsz && outstanding < at_once {
                let (id, total) = &servers[next];
                let limit = connwatch::sweep::headroom(*total as u64) as usize + total;
                raw.publish(
                    &format!("$SYS.REQ.SERVER.{id}.CONNZ"),
                    &format!("_FLOOR.{next}"),
                    &connz_req(limit, 0),
                    None,
                )?;
                next += 1;
                outstanding += 1;
                requests += 1;
            }
        }
        m.bytes += bytes as f64;
        m.requests += requests as f64;
        Ok(())
    };
    sweep(&mut raw, &mut m)?; // warm-up
    m.bytes = 0.0;
    m.requests = 0.0;
    let (cpu0, srv0, t0) = (self_cpu(), servers_cpu_ms(&a.pids), Instant::now());
    for _ in 0..a.runs {
        let t = Instant::now();
        sweep(&mut raw, &mut m)?;
        m.wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let n = a.runs.max(1) as f64;
    m.window_ms = t0.elapsed().as_secs_f64() * 1000.0;
    m.server_cpu_ms_raw = (servers_cpu_ms(&a.pids) - srv0) / n;
    m.cpu_ms = (self_cpu() - cpu0).as_secs_f64() * 1000.0 / n;
    m.bytes /= n;
    m.requests /= n;
    m.peak_rss_kb = self_status_kb("VmHWM:");
    m.rss_end_kb = self_status_kb("VmRSS:");
    Ok(m)
}
