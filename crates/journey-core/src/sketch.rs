//! A DDSketch for durations: quantiles with 1 % relative error, exact count, sum, min and max,
//! and an exact, order-independent merge.

use serde::{Deserialize, Serialize};

/// Relative accuracy of every quantile.
pub const RELATIVE_ERROR: f64 = 0.01;
const GAMMA: f64 = (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR);

#[inline]
fn ln_gamma() -> f64 {
    GAMMA.ln()
}

/// The bin of one value; `None` for zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bin(Option<i32>);

impl Bin {
    #[inline]
    pub fn of(value: u64) -> Bin {
        Bin((value > 0).then(|| ((value as f64).ln() / ln_gamma()).ceil() as i32))
    }
}

/// Sparse log-bucketed histogram of non-negative integer values (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch {
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
    zeros: u64,
    /// `(bin index, count)`, ascending by index.
    bins: Vec<(i32, u64)>,
}

impl Sketch {
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    pub fn add(&mut self, value: u64) {
        self.add_n(value, 1);
    }

    /// Adds a value whose bin was computed by [`Bin::of`], so that recording one value in
    /// several sketches (minute and hour buckets) takes one logarithm.
    #[inline]
    pub fn add_binned(&mut self, value: u64, bin: Bin) {
        self.record(value, 1, bin);
    }

    fn add_n(&mut self, value: u64, n: u64) {
        self.record(value, n, Bin::of(value));
    }

    fn record(&mut self, value: u64, n: u64, bin: Bin) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += n;
        self.sum = self.sum.saturating_add(value.saturating_mul(n));
        self.record_bin(n, bin);
    }

    #[inline]
    fn record_bin(&mut self, n: u64, bin: Bin) {
        let Some(key) = bin.0 else {
            self.zeros += n;
            return;
        };
        match self.bins.binary_search_by_key(&key, |b| b.0) {
            Ok(i) => self.bins[i].1 += n,
            Err(i) => self.bins.insert(i, (key, n)),
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.zeros += other.zeros;
        // In place, by binary search: an hour bucket absorbs each of its minutes at roll-up,
        // and holds far more bins than a minute, most of the minute's keys among them.
        let (a, b) = (&mut self.bins, &other.bins);
        let mut added = 0;
        let mut from = 0;
        for &(key, n) in b {
            match a[from..].binary_search_by_key(&key, |x| x.0) {
                Ok(i) => {
                    from += i;
                    a[from].1 += n;
                    from += 1;
                }
                Err(i) => {
                    from += i;
                    added += 1;
                }
            }
        }
        if added == 0 {
            return;
        }
        // Merge from the back into the grown vector: with exactly `added` new keys the write
        // position meets the unread part of `a` when `b` runs out, so nothing needs moving.
        let mut i = a.len();
        a.resize(i + added, (0, 0));
        let mut k = a.len();
        for &(key, n) in b.iter().rev() {
            while i > 0 && a[i - 1].0 > key {
                k -= 1;
                i -= 1;
                a[k] = a[i];
            }
            k -= 1;
            if i > 0 && a[i - 1].0 == key {
                // Already added in place above.
                i -= 1;
                a[k] = a[i];
            } else {
                a[k] = (key, n);
            }
        }
        debug_assert_eq!(i, k);
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), within [`RELATIVE_ERROR`] of a true sample value.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for &(key, n) in &self.bins {
            seen += n;
            if seen > rank {
                let v = 2.0 * GAMMA.powi(key) / (GAMMA + 1.0);
                return Some(v.clamp(self.min as f64, self.max as f64));
            }
        }
        Some(self.max as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_within_relative_error() {
        let mut s = Sketch::default();
        for v in 1..=10_000u64 {
            s.add(v);
        }
        for q in [0.5f64, 0.9, 0.99] {
            let exact = (q * 9_999.0).floor() + 1.0;
            let got = s.quantile(q).unwrap();
            assert!(
                (got - exact).abs() / exact <= RELATIVE_ERROR + 1e-9,
                "q={q} got={got} exact={exact}"
            );
        }
        assert_eq!(s.count(), 10_000);
        assert_eq!(s.min(), Some(1));
        assert_eq!(s.max(), Some(10_000));
        assert_eq!(s.mean(), Some(5000.5));
    }

    #[test]
    fn zeros_and_empty() {
        let mut s = Sketch::default();
        assert_eq!(s.quantile(0.5), None);
        s.add(0);
        s.add(0);
        s.add(100);
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!((s.quantile(1.0).unwrap() - 100.0).abs() <= 1.0);
    }

    proptest! {
        #[test]
        fn merge_equals_adding_everything(a in prop::collection::vec(0u64..10_000_000, 0..50),
                                          b in prop::collection::vec(0u64..10_000_000, 0..50)) {
            let mut left = Sketch::default();
            a.iter().for_each(|v| left.add(*v));
            let mut right = Sketch::default();
            b.iter().for_each(|v| right.add(*v));
            let mut all = Sketch::default();
            b.iter().chain(&a).for_each(|v| all.add(*v));
            let mut merged = left.clone();
            merged.merge(&right);
            prop_assert_eq!(&merged, &all);
            right.merge(&left);
            prop_assert_eq!(&right, &all);
        }

        /// Small values share bins, so the in-place merge adds into existing keys as well as
        /// inserting new ones between them.
        #[test]
        fn merge_of_overlapping_bins_equals_adding_everything(
            a in prop::collection::vec(0u64..300, 0..80),
            b in prop::collection::vec(0u64..300, 0..80),
        ) {
            let sketch = |vs: &[u64]| {
                let mut s = Sketch::default();
                vs.iter().for_each(|v| s.add(*v));
                s
            };
            let mut merged = sketch(&a);
            merged.merge(&sketch(&b));
            prop_assert_eq!(&merged, &sketch(&[a.as_slice(), b.as_slice()].concat()));
        }
    }
}
