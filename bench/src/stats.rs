//! Figures from samples (median, p99, rate), and how they are printed.

use std::time::Duration;

use serde::Serialize;

/// What one sample of a workload is, which decides its rate unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    /// One operation per sample: rate in ops/s from the median.
    Op,
    /// One transfer of this many bytes per sample: rate in MB/s (10^6 bytes) from the median.
    Bytes(u64),
    /// Per-operation latencies of a concurrent run: rate in ops/s from the whole run's wall time.
    Concurrent,
}

/// The summary of one side (ours, stock or the floor) of a workload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    /// Number of timed samples.
    pub(crate) n: usize,
    /// Median, nanoseconds.
    pub(crate) median_ns: f64,
    /// 99th percentile (nearest rank), nanoseconds.
    pub(crate) p99_ns: f64,
    /// Smallest sample, nanoseconds.
    pub(crate) min_ns: f64,
    /// ops/s or MB/s (see `unit`).
    pub(crate) rate: f64,
    /// How to read `rate`.
    pub(crate) unit: Unit,
}

impl Figure {
    /// Summarises samples (nanoseconds). `wall` is the whole run's duration and `ops` the
    /// operations completed, for [`Unit::Concurrent`].
    pub(crate) fn new(mut samples: Vec<u64>, unit: Unit, wall: Option<(Duration, u64)>) -> Figure {
        samples.sort_unstable();
        let pick = |q: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1] as f64
        };
        let median_ns = pick(0.5);
        let rate = match (unit, wall) {
            (Unit::Op, _) => 1e9 / median_ns,
            (Unit::Bytes(b), _) => b as f64 / median_ns * 1e3,
            (Unit::Concurrent, Some((wall, ops))) => ops as f64 / wall.as_secs_f64(),
            (Unit::Concurrent, None) => f64::NAN,
        };
        Figure {
            n: samples.len(),
            median_ns,
            p99_ns: pick(0.99),
            min_ns: samples.first().map_or(f64::NAN, |&s| s as f64),
            rate,
            unit,
        }
    }

    /// The rate with its unit, for the table.
    pub(crate) fn rate_text(&self) -> String {
        match self.unit {
            Unit::Bytes(_) => format!("{} MB/s", group(self.rate)),
            Unit::Op | Unit::Concurrent => format!("{} ops/s", group(self.rate)),
        }
    }
}

/// A duration in nanoseconds, with a unit that keeps three or four significant digits.
pub(crate) fn time_text(ns: f64) -> String {
    if !ns.is_finite() {
        "-".to_owned()
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

/// A number rounded to an integer (or to three significant digits below 100), with thin
/// thousands separators.
pub(crate) fn group(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_owned();
    }
    if x < 100.0 {
        return format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned();
    }
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio for the table: two significant digits below 10, else an integer.
pub(crate) fn ratio_text(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() && r >= 10.0 => format!("{r:.0}"),
        Some(r) if r.is_finite() && r >= 1.0 => format!("{r:.2}"),
        Some(r) if r.is_finite() => format!("{r:.3}"),
        _ => "-".to_owned(),
    }
}

/// Prints rows as a left-aligned first column and right-aligned others.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from("|");
        for (i, cell) in cells.iter().enumerate().take(cols) {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i == 0 || i == cols - 1 {
                s.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            } else {
                s.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
            }
        }
        println!("{s}");
    };
    line(header.to_vec());
    let mut sep = String::from("|");
    for (i, w) in width.iter().enumerate() {
        if i == 0 || i == cols - 1 {
            sep.push_str(&format!("{}|", "-".repeat(w + 2)));
        } else {
            sep.push_str(&format!("{}:|", "-".repeat(w + 1)));
        }
    }
    println!("{sep}");
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_by_nearest_rank() {
        let f = Figure::new((1..=100).collect(), Unit::Op, None);
        assert_eq!(f.median_ns, 50.0);
        assert_eq!(f.p99_ns, 99.0);
        assert_eq!(f.min_ns, 1.0);
        let f = Figure::new(vec![1_000_000], Unit::Bytes(1_000_000), None);
        assert!((f.rate - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn number_text() {
        assert_eq!(group(1_234_567.4), "1,234,567");
        assert_eq!(group(12.5), "12.5");
        assert_eq!(time_text(12_345.0), "12.3 µs");
        assert_eq!(time_text(12_345_678.0), "12.35 ms");
        assert_eq!(ratio_text(Some(0.0512)), "0.051");
    }
}
