//! Numbers for people: rounded to what a reader takes in at a glance. Text output only; JSON
//! keeps its own precision.

/// Significant figures kept in numbers shown to people.
const SIGNIFICANT: i32 = 3;

/// A signed rate rounded to 3 significant figures, with thousands separators:
/// `+28,800`, `+60`, `-2.5`, `+0.123`, `+0`.
pub fn signed_rate(rate: f64) -> String {
    if !rate.is_finite() {
        return format!("{rate:+}");
    }
    let (rounded, decimals) = round_significant(rate);
    let sign = if rounded < 0.0 { '-' } else { '+' };
    let digits = format!("{:.decimals$}", rounded.abs());
    let digits = if digits.contains('.') {
        digits.trim_end_matches('0').trim_end_matches('.')
    } else {
        &digits
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let mut out = format!("{sign}{}", group_thousands(whole));
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out
}

/// `x` rounded to [`SIGNIFICANT`] figures, and how many decimals that leaves.
fn round_significant(x: f64) -> (f64, usize) {
    if x == 0.0 {
        return (0.0, 0);
    }
    let magnitude = x.abs().log10().floor() as i32;
    let shift = SIGNIFICANT - 1 - magnitude;
    let scale = 10f64.powi(shift);
    ((x * scale).round() / scale, shift.max(0) as usize)
}

/// `1234567` → `1,234,567`.
fn group_thousands(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_at_a_glance() {
        for (rate, text) in [
            (28808.64, "+28,800"),
            (60.0, "+60"),
            (-2.5, "-2.5"),
            (0.1234, "+0.123"),
            (999.96, "+1,000"),
            (1_234_567.0, "+1,230,000"),
            (-45_678.9, "-45,700"),
            (12.34, "+12.3"),
            (0.0, "+0"),
            (-0.0, "+0"),
            (-0.0004, "-0.0004"),
        ] {
            assert_eq!(signed_rate(rate), text, "{rate}");
        }
    }
}
