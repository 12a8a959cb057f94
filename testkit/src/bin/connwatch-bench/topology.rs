//! The floor of a bounded sweep (`sweep.max_in_flight`): what a super-cluster sweep costs when
//! servers are asked a few at a time with directed requests instead of one PING to all.

use super::{connz_req, floor_probe, time_floor, Measured, MethodArgs, Raw};

/// `floor-bounded`: a bare client sending connwatch's bounded requests (a STATSZ ping, then one
/// directed CONNZ per server from offset 0 for its `total` + headroom, `--max-in-flight` servers
/// at a time, the next one asked as each STATSZ reply or CONNZ reply arrives), every reply byte
/// received and thrown away.
pub(super) fn floor_bounded(a: &MethodArgs) -> anyhow::Result<Measured> {
    let mut raw = Raw::connect(&a.servers[0], &a.user, &a.password)?;
    let servers = floor_probe(&mut raw, a.servers.len())?;
    let at_once = a.max_in_flight.max(1);
    let m = Measured {
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
    time_floor(a, &mut raw, m, sweep)
}
