//! Summaries of a run: quantiles, spread across backends, latency percentiles.

/// The `q`-quantile (0..=1) of `v`, by the nearest-rank method; NaN when empty. Sorts `v`.
pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// How uneven a set of per-backend figures is.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Spread {
    pub(crate) mean: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// The 99th percentile across backends.
    pub(crate) p99: f64,
}

impl Spread {
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        let p99 = quantile(&mut v, 0.99);
        Spread {
            mean: mean(&v),
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            p99,
        }
    }

    pub(crate) fn max_over_mean(&self) -> f64 {
        self.max / self.mean
    }

    pub(crate) fn p99_over_mean(&self) -> f64 {
        self.p99 / self.mean
    }
}

/// Request latencies in microseconds, summarised on demand.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latencies {
    us: Vec<u32>,
}

impl Latencies {
    pub(crate) fn push(&mut self, ns: u64) {
        self.us.push((ns / 1_000).min(u64::from(u32::MAX)) as u32);
    }

    pub(crate) fn extend(&mut self, other: &Latencies) {
        self.us.extend_from_slice(&other.us);
    }

    /// The `q`-quantile in milliseconds (NaN when empty).
    pub(crate) fn ms(&mut self, q: f64) -> f64 {
        if self.us.is_empty() {
            return f64::NAN;
        }
        let n = self.us.len();
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        let (_, v, _) = self.us.select_nth_unstable(i);
        f64::from(*v) / 1_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_spread() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert_eq!((s.min, s.max, s.mean), (1.0, 3.0, 2.0));
        assert_eq!(s.max_over_mean(), 1.5);
        let mut l = Latencies::default();
        for ms in 1..=1000u64 {
            l.push(ms * 1_000_000);
        }
        assert_eq!(l.ms(0.99), 990.0);
        assert_eq!(l.ms(0.999), 999.0);
    }
}
