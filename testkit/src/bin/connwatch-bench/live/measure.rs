//! The live benches' arithmetic: plain functions over plain data, unit tested.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One series of a Prometheus text exposition (`name` or `name{labels}` exactly as exposed).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// Every series of one metric name, summed (0 when there is none).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let base = k.split('{').next()?;
            (base == name).then(|| v.parse::<f64>().ok())?
        })
        // An empty f64 sum is -0.0.
        .fold(0.0, |a, b| a + b)
}

/// Every series of one metric name: its labels (`{...}`, or "" without) → value.
pub fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let labels = k.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| Some((labels.to_string(), v.parse().ok()?)))?
        })
        .collect()
}

/// Connections per (account, user, server name) in a census (`connwatch.census`) answer.
pub fn census_by_server(census: &Value) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for u in census["users"].as_array().into_iter().flatten() {
        let (acc, user) = (
            u["account"].as_str().unwrap_or("").to_string(),
            u["user"].as_str().unwrap_or("").to_string(),
        );
        for (server, n) in u["by_server"].as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 {
                out.insert((acc.clone(), user.clone(), server.clone()), n);
            }
        }
    }
    out
}

/// Where two counts differ, as `account/user@server: live vs oracle` (at most 5).
pub fn difference(
    live: &BTreeMap<(String, String, String), u64>,
    oracle: &BTreeMap<(String, String, String), u64>,
) -> String {
    let mut keys: Vec<_> = live.keys().chain(oracle.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| live.get(*k) != oracle.get(*k))
        .take(5)
        .map(|k| {
            format!(
                "{}/{}@{}: census {} vs connz {}",
                k.0,
                k.1,
                k.2,
                live.get(k).copied().unwrap_or(0),
                oracle.get(k).copied().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The nearest-rank percentile `q` (0..=1) of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A deterministic pseudo-random number in [0, 1) from a seed (splitmix64).
pub fn splitmix(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The median and quartiles (nearest rank) of repeated measurements.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// How many measurements.
    pub n: usize,
}

impl Spread {
    /// The spread of `samples`.
    pub fn of(samples: &[f64]) -> Spread {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Spread {
            q1: percentile(&v, 0.25),
            median: percentile(&v, 0.5),
            q3: percentile(&v, 0.75),
            n: v.len(),
        }
    }

    /// `(q1, median, q3)` through `f` (monotonic).
    fn map(self, f: impl Fn(f64) -> f64) -> [f64; 3] {
        [f(self.q1), f(self.median), f(self.q3)]
    }
}

/// What connwatch adds to the servers, from its measured parts: per connect+close pair
/// delivered as events, the subscription's fixed cost, and one full sweep.
#[derive(Debug, Clone, Serialize)]
pub struct CostModel {
    /// Servers' CPU per connect+close pair delivered to the live subscriber, ms.
    pub pair_cpu_ms: Spread,
    /// Servers' output per pair delivered, bytes.
    pub pair_bytes: Spread,
    /// The subscription's fixed cost with no churn, servers' CPU ms a second.
    pub idle_cpu_ms_per_s: Spread,
    /// Its fixed output, bytes a second.
    pub idle_bytes_per_s: Spread,
    /// One full sweep, servers' CPU ms.
    pub sweep_cpu_ms: Spread,
    /// One full sweep, servers' output bytes.
    pub sweep_bytes: Spread,
    /// Reconciling sweeps an hour with the live census.
    pub reconciles_per_hour: f64,
    /// Sweeps an hour of the sweeps-only baseline.
    pub sweeps_per_hour: f64,
}

/// Costs an hour at one churn rate: `[low, median, high]` each (from the quartiles of the
/// parts), ratios `[pessimistic, median, optimistic]`.
#[derive(Debug, Clone, Serialize)]
pub struct PerHour {
    /// Connects (and as many disconnects) a second.
    pub rate: f64,
    /// Live + reconciles, servers' CPU seconds an hour.
    pub live_cpu_s: [f64; 3],
    /// Sweeps alone, servers' CPU seconds an hour.
    pub sweeps_cpu_s: [f64; 3],
    /// Sweeps ÷ live, CPU.
    pub cpu_ratio: [f64; 3],
    /// Live + reconciles, servers' output MB an hour.
    pub live_out_mb: [f64; 3],
    /// Sweeps alone, servers' output MB an hour.
    pub sweeps_out_mb: [f64; 3],
    /// Sweeps ÷ live, bytes.
    pub bytes_ratio: [f64; 3],
}

/// `[pessimistic, median, optimistic]` of `sweeps ÷ live` from their `[low, median, high]`.
fn ratios(sweeps: [f64; 3], live: [f64; 3]) -> [f64; 3] {
    let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    [
        r(sweeps[0], live[2]),
        r(sweeps[1], live[1]),
        r(sweeps[2], live[0]),
    ]
}

impl CostModel {
    /// The costs an hour at `rate` connects+disconnects a second.
    pub fn per_hour(&self, rate: f64) -> PerHour {
        let rec = self.reconciles_per_hour;
        let pair = self.pair_cpu_ms.map(|x| x * rate * 3.6);
        let idle = self.idle_cpu_ms_per_s.map(|x| x.max(0.0) * 3.6);
        let sweep = self.sweep_cpu_ms.map(|x| x / 1000.0);
        let live_cpu_s: [f64; 3] = std::array::from_fn(|i| rec * sweep[i] + idle[i] + pair[i]);
        let sweeps_cpu_s = sweep.map(|x| x * self.sweeps_per_hour);
        let pair_b = self.pair_bytes.map(|x| x * rate * 3600.0 / 1e6);
        let idle_b = self.idle_bytes_per_s.map(|x| x.max(0.0) * 3600.0 / 1e6);
        let sweep_b = self.sweep_bytes.map(|x| x / 1e6);
        let live_out_mb: [f64; 3] =
            std::array::from_fn(|i| rec * sweep_b[i] + idle_b[i] + pair_b[i]);
        let sweeps_out_mb = sweep_b.map(|x| x * self.sweeps_per_hour);
        PerHour {
            rate,
            cpu_ratio: ratios(sweeps_cpu_s, live_cpu_s),
            bytes_ratio: ratios(sweeps_out_mb, live_out_mb),
            live_cpu_s,
            sweeps_cpu_s,
            live_out_mb,
            sweeps_out_mb,
        }
    }

    /// The rate (connects a second) at which live + reconciles costs as much CPU as the
    /// sweeps, from the medians; `None` when the pairs cost nothing measurable.
    pub fn crossover(&self) -> Option<f64> {
        let s = self.sweep_cpu_ms.median;
        let fixed = self.reconciles_per_hour * s + self.idle_cpu_ms_per_s.median.max(0.0) * 3600.0;
        let per_rate = self.pair_cpu_ms.median * 3600.0;
        (per_rate > 0.0).then(|| ((self.sweeps_per_hour * s - fixed) / per_rate).max(0.0))
    }

    /// The markdown summary: the parts, then one row per rate.
    pub fn table(&self, size: usize, rates: &[f64], pair_alone_ms: Spread) -> String {
        let sp = |s: Spread, k: f64, d: usize| {
            format!(
                "{:.d$} [{:.d$}–{:.d$}] (n={})",
                s.median * k,
                s.q1 * k,
                s.q3 * k,
                s.n
            )
        };
        let mut out = format!(
            "\nlive-cost at {size} connections: median [quartiles] of paired measurements\n\n\
             - servers' CPU per connect+close pair delivered to the live subscriber: {} ms \
             (the pair itself, without it: {} ms)\n\
             - servers' output per pair delivered: {} bytes\n\
             - the subscription's fixed cost with no churn: {} ms/s CPU, {} bytes/s\n\
             - one full sweep: {} ms CPU, {} MB output\n\
             - crossover (CPU, medians): {}\n\n",
            sp(self.pair_cpu_ms, 1.0, 3),
            sp(pair_alone_ms, 1.0, 3),
            sp(self.pair_bytes, 1.0, 0),
            sp(self.idle_cpu_ms_per_s, 1.0, 2),
            sp(self.idle_bytes_per_s, 1.0, 0),
            sp(self.sweep_cpu_ms, 1.0, 0),
            sp(self.sweep_bytes, 1e-6, 1),
            self.crossover()
                .map(|r| format!("{r:.0} connects+disconnects/s"))
                .unwrap_or_else(|| "none measured".into()),
        );
        out.push_str(&format!(
            "| churn (connects+disconnects/s) | live + {:.0} reconciles (CPU s/h) | sweeps, {:.0}/h (CPU s/h) | sweeps ÷ live (CPU) | live (MB/h) | sweeps (MB/h) | sweeps ÷ live (bytes) |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.reconciles_per_hour, self.sweeps_per_hour
        ));
        let range = |v: [f64; 3], d: usize| format!("{:.d$} [{:.d$}–{:.d$}]", v[1], v[0], v[2]);
        let ratio = |v: [f64; 3]| format!("**{:.1}×** ({:.1}–{:.1}×)", v[1], v[0], v[2]);
        for &rate in rates {
            let h = self.per_hour(rate);
            out.push_str(&format!(
                "| {rate} | {} | {} | {} | {} | {} | {} |\n",
                range(h.live_cpu_s, 1),
                range(h.sweeps_cpu_s, 1),
                ratio(h.cpu_ratio),
                range(h.live_out_mb, 0),
                range(h.sweeps_out_mb, 0),
                ratio(h.bytes_ratio),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metrics_are_read_exactly_and_summed_over_labels() {
        let text = "# HELP x\nconnwatch_sweeps_total 3\nconnwatch_sweeps_total_x 9\n\
                    g{reason=\"a\"} 1\ng{reason=\"b\"} 2\n";
        assert_eq!(metric(text, "connwatch_sweeps_total"), Some(3.0));
        assert_eq!(metric(text, "g{reason=\"b\"}"), Some(2.0));
        assert_eq!(metric(text, "missing"), None);
        assert_eq!(metric_sum(text, "g"), 3.0);
        assert_eq!(metric_sum(text, "connwatch_sweeps_total"), 3.0);
        assert_eq!(metric_sum(text, "missing").to_string(), "0");
        let g = series(text, "g");
        assert_eq!(g.len(), 2);
        assert_eq!(g["{reason=\"b\"}"], 2.0);
        assert_eq!(series(text, "connwatch_sweeps_total").len(), 1);
    }

    #[test]
    fn census_counts_by_server_and_their_difference() {
        let census = json!({"users": [
            {"account": "A", "user": "u", "by_server": {"n1": 2, "n2": 0}},
            {"account": "A", "user": "v", "by_server": {"n3": 1}}]});
        let live = census_by_server(&census);
        assert_eq!(live.len(), 2);
        let mut oracle = live.clone();
        assert_eq!(difference(&live, &oracle), "");
        oracle.insert(("A".into(), "v".into(), "n3".into()), 2);
        assert_eq!(difference(&live, &oracle), "A/v@n3: census 1 vs connz 2");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn splitmix_is_in_the_unit_interval_and_spread() {
        let v: Vec<f64> = (0..1000).map(splitmix).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }

    #[test]
    fn costs_an_hour_combine_the_parts_and_ratios_span_their_quartiles() {
        let exact = |x: f64| Spread::of(&[x, x, x]);
        let m = CostModel {
            pair_cpu_ms: Spread::of(&[0.1, 0.2, 0.3, 0.4]),
            pair_bytes: exact(8000.0),
            idle_cpu_ms_per_s: exact(-0.5),
            idle_bytes_per_s: exact(100.0),
            sweep_cpu_ms: exact(500.0),
            sweep_bytes: exact(50e6),
            reconciles_per_hour: 4.0,
            sweeps_per_hour: 120.0,
        };
        let h = m.per_hour(10.0);
        // Sweeps: 120 × 0.5 s; live: 4 × 0.5 s + 0 (a negative fixed part counts as 0) +
        // 10/s × 3600 s × (0.1 | 0.2 | 0.3) ms.
        assert_eq!(h.sweeps_cpu_s, [60.0, 60.0, 60.0]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(h.live_cpu_s[0], 2.0 + 3.6), "{h:?}");
        assert!(close(h.live_cpu_s[1], 2.0 + 7.2), "{h:?}");
        assert!(close(h.live_cpu_s[2], 2.0 + 10.8), "{h:?}");
        assert!(close(h.cpu_ratio[0], 60.0 / 12.8) && close(h.cpu_ratio[2], 60.0 / 5.6));
        // Bytes: 6,000 MB/h of sweeps; live 200 + 0.36 + 288 MB/h.
        assert!(close(h.sweeps_out_mb[1], 6000.0));
        assert!(close(h.live_out_mb[1], 200.0 + 0.36 + 288.0), "{h:?}");
        // Crossover: 60 = 2 + r × 3.6 × 0.2.
        assert!(close(m.crossover().unwrap(), 58.0 / 0.72));
        let table = m.table(45_000, &[0.0, 10.0], exact(1.0));
        assert!(
            table.contains("| 10 | 9.2 [5.6–12.8] | 60.0 [60.0–60.0] | **6.5×** (4.7–10.7×) |"),
            "{table}"
        );
    }
}
