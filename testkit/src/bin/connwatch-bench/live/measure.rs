//! The live benches' arithmetic: plain functions over plain data, unit tested.

use std::collections::BTreeMap;
use std::fmt::Write;

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

/// Least-squares line `y = a + b·x` through the points; `(a, b)`.
pub fn fit_line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.is_empty() {
        return (0.0, 0.0);
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

/// The rate where `a + b·rate` reaches `flat`; `None` when it never does (b ≤ 0).
pub fn crossover(a: f64, b: f64, flat: f64) -> Option<f64> {
    (b > 0.0).then(|| ((flat - a) / b).max(0.0))
}

/// Servers' rates over one measuring window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// Length of the window.
    pub seconds: f64,
    /// The three servers' CPU, ms per second.
    pub cpu_ms_per_s: f64,
    /// VARZ `out_bytes` summed over the servers, per second.
    pub out_bytes_per_s: f64,
    /// VARZ `in_bytes` summed over the servers, per second.
    pub in_bytes_per_s: f64,
}

impl Rates {
    /// The rates over this window and `other` together (weighted by their lengths).
    pub fn merge(self, other: Rates) -> Rates {
        let s = self.seconds + other.seconds;
        if s <= 0.0 {
            return self;
        }
        let w = |a: f64, b: f64| (a * self.seconds + b * other.seconds) / s;
        Rates {
            seconds: s,
            cpu_ms_per_s: w(self.cpu_ms_per_s, other.cpu_ms_per_s),
            out_bytes_per_s: w(self.out_bytes_per_s, other.out_bytes_per_s),
            in_bytes_per_s: w(self.in_bytes_per_s, other.in_bytes_per_s),
        }
    }
}

/// One churn rate's three phases.
#[derive(Debug, Clone, Serialize)]
pub struct CostPoint {
    /// Connects (and disconnects) a second.
    pub rate: f64,
    /// No connwatch.
    pub none: Rates,
    /// Live census between reconciling sweeps.
    pub live: Rates,
    /// Sweeps alone; its window holds `sweeps_in_window` whole intervals.
    pub sweeps: Rates,
    /// Sweeps in the sweeps phase's window.
    pub sweeps_in_window: f64,
    /// Sweeps that ran inside the live window (0 expected).
    pub live_sweeps: f64,
    /// Events the live census applied in its window.
    pub events: f64,
    /// Reconciling sweeps an hour with the live census.
    pub reconciles_per_hour: f64,
    /// Sweeps an hour of the sweep-only configuration compared with (120: every 30 s).
    pub sweeps_per_hour: f64,
}

/// What one point costs per hour, added over no connwatch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerHour {
    /// Churn rate.
    pub rate: f64,
    /// Servers' CPU seconds an hour: live events and probes alone.
    pub live_events_cpu_s: f64,
    /// ... plus the reconciling sweeps (at the measured cost of one sweep).
    pub live_cpu_s: f64,
    /// Sweeps alone.
    pub sweeps_cpu_s: f64,
    /// Servers' CPU of one full sweep, ms.
    pub per_sweep_cpu_ms: f64,
    /// Servers' out bytes an hour (MB): live with reconciles, and sweeps alone.
    pub live_out_mb: f64,
    /// Sweeps alone, MB an hour.
    pub sweeps_out_mb: f64,
}

impl CostPoint {
    /// The per-hour costs connwatch adds at this point.
    pub fn per_hour(&self) -> PerHour {
        let sweep_window = self.sweeps.seconds / self.sweeps_in_window.max(1.0);
        let per_sweep_cpu_ms = (self.sweeps.cpu_ms_per_s - self.none.cpu_ms_per_s) * sweep_window;
        let per_sweep_bytes =
            (self.sweeps.out_bytes_per_s - self.none.out_bytes_per_s) * sweep_window;
        let live_events_cpu_s = (self.live.cpu_ms_per_s - self.none.cpu_ms_per_s) * 3.6;
        PerHour {
            rate: self.rate,
            live_events_cpu_s,
            live_cpu_s: live_events_cpu_s + self.reconciles_per_hour * per_sweep_cpu_ms / 1000.0,
            sweeps_cpu_s: self.sweeps_per_hour * per_sweep_cpu_ms / 1000.0,
            per_sweep_cpu_ms,
            live_out_mb: ((self.live.out_bytes_per_s - self.none.out_bytes_per_s) * 3600.0
                + self.reconciles_per_hour * per_sweep_bytes)
                / 1e6,
            sweeps_out_mb: self.sweeps_per_hour * per_sweep_bytes / 1e6,
        }
    }
}

/// The fit over all points and the crossover.
#[derive(Debug, Clone, Serialize)]
pub struct CostSummary {
    /// Per-hour costs of each point.
    pub per_hour: Vec<PerHour>,
    /// Live CPU s/h ≈ `a + b · rate`.
    pub live_cpu_a: f64,
    /// Servers' CPU seconds an hour per connect+disconnect a second.
    pub live_cpu_b: f64,
    /// Sweeps' CPU s/h, mean over the points (it does not depend on churn).
    pub sweeps_cpu_s: f64,
    /// Churn rate where live costs the servers as much CPU as the sweeps.
    pub crossover_rate: Option<f64>,
}

/// Fits the live cost against the churn rate and finds where it meets the sweeps'.
pub fn cost_summary(points: &[CostPoint]) -> CostSummary {
    let per_hour: Vec<PerHour> = points.iter().map(CostPoint::per_hour).collect();
    let (a, b) = fit_line(
        &per_hour
            .iter()
            .map(|p| (p.rate, p.live_cpu_s))
            .collect::<Vec<_>>(),
    );
    let sweeps =
        per_hour.iter().map(|p| p.sweeps_cpu_s).sum::<f64>() / per_hour.len().max(1) as f64;
    CostSummary {
        live_cpu_a: a,
        live_cpu_b: b,
        sweeps_cpu_s: sweeps,
        crossover_rate: crossover(a, b, sweeps),
        per_hour,
    }
}

/// The cost table (Markdown).
pub fn cost_table(size: usize, points: &[CostPoint], s: &CostSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Added server cost at {size} connections (per hour)\n"
    );
    let per_hour = points.first().map(|p| p.sweeps_per_hour).unwrap_or(0.0);
    let _ = writeln!(out, "| churn (connects+disconnects/s) | servers' CPU, no connwatch (ms/s) | live: events + probes (CPU s/h) | live + reconciles (CPU s/h) | sweeps, {per_hour:.0}/h (CPU s/h) | one sweep (CPU ms) | sweeps ÷ live | live out bytes (MB/h) | sweeps out bytes (MB/h) | events in the live windows | sweeps in them |");
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (p, h) in points.iter().zip(&s.per_hour) {
        let ratio = if h.live_cpu_s > 0.0 {
            format!("{:.1}×", h.sweeps_cpu_s / h.live_cpu_s)
        } else {
            "∞ (live ≤ 0: below the noise)".into()
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {ratio} | {:.1} | {:.1} | {:.0} | {:.0} |",
            p.rate,
            p.none.cpu_ms_per_s,
            h.live_events_cpu_s,
            h.live_cpu_s,
            h.sweeps_cpu_s,
            h.per_sweep_cpu_ms,
            h.live_out_mb,
            h.sweeps_out_mb,
            p.events,
            p.live_sweeps
        );
    }
    let _ = writeln!(
        out,
        "\nlive ≈ {:.1} + {:.2} × rate CPU s/h (least squares); sweeps {:.1} CPU s/h; crossover: {}",
        s.live_cpu_a,
        s.live_cpu_b,
        s.sweeps_cpu_s,
        s.crossover_rate
            .map(|r| format!("{r:.0} connects+disconnects a second"))
            .unwrap_or_else(|| "none (live does not grow with churn here)".into())
    );
    if size != 45_000 && size > 0 {
        let k = 45_000.0 / size as f64;
        let _ = writeln!(
            out,
            "at 45,000 (sweeps scale with connections, events do not): sweeps ≈ {:.1} CPU s/h, crossover ≈ {}",
            s.sweeps_cpu_s * k,
            crossover(s.live_cpu_a, s.live_cpu_b, s.sweeps_cpu_s * k)
                .map(|r| format!("{r:.0}/s"))
                .unwrap_or_else(|| "none".into())
        );
    }
    out
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
    fn merged_rates_weigh_by_window_length() {
        let a = Rates {
            seconds: 10.0,
            cpu_ms_per_s: 10.0,
            out_bytes_per_s: 100.0,
            in_bytes_per_s: 0.0,
        };
        let b = Rates {
            seconds: 30.0,
            cpu_ms_per_s: 30.0,
            out_bytes_per_s: 0.0,
            in_bytes_per_s: 4.0,
        };
        let m = Rates::default().merge(a).merge(b);
        assert_eq!(m.seconds, 40.0);
        assert_eq!(m.cpu_ms_per_s, 25.0);
        assert_eq!(m.out_bytes_per_s, 25.0);
        assert_eq!(m.in_bytes_per_s, 3.0);
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
    fn line_fit_and_crossover() {
        let (a, b) = fit_line(&[(1.0, 12.0), (10.0, 30.0), (100.0, 210.0)]);
        assert!((a - 10.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9, "{a} {b}");
        assert_eq!(crossover(a, b, 110.0), Some(50.0));
        assert_eq!(crossover(10.0, 0.0, 110.0), None);
        assert_eq!(crossover(200.0, 1.0, 110.0), Some(0.0));
    }

    #[test]
    fn per_hour_costs_subtract_the_baseline_and_charge_reconciles() {
        let r = |cpu: f64, out: f64| Rates {
            seconds: 60.0,
            cpu_ms_per_s: cpu,
            out_bytes_per_s: out,
            in_bytes_per_s: 0.0,
        };
        let p = CostPoint {
            rate: 10.0,
            none: r(100.0, 1000.0),
            live: r(101.0, 1100.0),
            // Two sweeps in 60 s adding 20 ms/s: 600 ms a sweep.
            sweeps: r(120.0, 2000.0),
            sweeps_in_window: 2.0,
            live_sweeps: 0.0,
            events: 1200.0,
            reconciles_per_hour: 12.0,
            sweeps_per_hour: 120.0,
        };
        let h = p.per_hour();
        assert!((h.per_sweep_cpu_ms - 600.0).abs() < 1e-9);
        assert!((h.live_events_cpu_s - 3.6).abs() < 1e-9);
        assert!((h.live_cpu_s - (3.6 + 7.2)).abs() < 1e-9);
        assert!((h.sweeps_cpu_s - 72.0).abs() < 1e-9);
        assert!((h.sweeps_out_mb - 3.6).abs() < 1e-9);
        assert!((h.live_out_mb - (0.36 + 12.0 * 30_000.0 / 1e6)).abs() < 1e-9);
        let s = cost_summary(std::slice::from_ref(&p));
        // One point: no slope, no crossover.
        assert_eq!(s.crossover_rate, None);
        let table = cost_table(15_000, &[p], &s);
        assert!(
            table.contains("| 10 | 100 | 3.6 | 10.8 | 72.0 | 600 | 6.7× |"),
            "{table}"
        );
        assert!(table.contains("at 45,000"), "{table}");
    }
}
