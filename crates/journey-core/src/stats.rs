//! Significance of a 2×2 table, for moments of truth (docs/semantics.md §6 "Moments of truth").
//!
//! The table is `[[a, b], [c, d]]`: `a` journeys touched the touchpoint and converted, `b`
//! touched it and did not, `c` did not touch it and converted, `d` neither. Distributions come
//! from `statrs`.

use statrs::distribution::{ContinuousCDF, Discrete, Hypergeometric, Normal};

/// Relative tolerance under which a table counts as "as likely as the observed one" in the
/// two-sided Fisher test: R's `fisher.test` uses the same `1 + 1e-7`.
const TIE: f64 = 1.0 + 1e-7;

/// Two-sided p-value of Fisher's exact test: the probability, under independence and with
/// the margins fixed, of every table no more likely than the observed one (the sum of the
/// hypergeometric probabilities `P(X = x) ≤ P(X = a)`, as R's `fisher.test` and SciPy's
/// `fisher_exact` compute it). `None` when a margin is zero (no test is possible). Exact up to
/// floating point: terms smaller than 1e-17 of the observed probability are left out, and a
/// p-value below about 1e-308 is 0.
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> Option<f64> {
    let n1 = a.checked_add(b)?; // touched
    let k = a.checked_add(c)?; // converted
    let n = n1.checked_add(c.checked_add(d)?)?;
    if n1 == 0 || n1 == n || k == 0 || k == n {
        return None;
    }
    let h = Hypergeometric::new(n, k, n1).ok()?;
    let lo = (n1 + k).saturating_sub(n);
    let hi = n1.min(k);
    // Mode of the hypergeometric distribution, computed without overflow.
    let mode = (((n1 as f64 + 1.0) * (k as f64 + 1.0)) / (n as f64 + 2.0)).floor() as u64;
    let mode = mode.clamp(lo, hi);
    let ln_mode = h.ln_pmf(mode);
    // Probabilities relative to the mode's, walked outwards by the ratio of neighbours: the
    // distribution is unimodal, so each side only decreases and can stop once negligible.
    let obs = (h.ln_pmf(a) - ln_mode).exp();
    let (nf, kf, n1f) = (n as f64, k as f64, n1 as f64);
    let mut sum = if 1.0 <= obs * TIE { 1.0 } else { 0.0 };
    let negligible = |t: f64| t == 0.0 || t < obs * 1e-17;
    let mut t = 1.0;
    let mut x = mode;
    while x < hi {
        let xf = x as f64;
        t *= (kf - xf) * (n1f - xf) / ((xf + 1.0) * (nf - kf - n1f + xf + 1.0));
        x += 1;
        if t <= obs * TIE {
            sum += t;
        }
        if negligible(t) {
            break;
        }
    }
    let mut t = 1.0;
    let mut x = mode;
    while x > lo {
        let xf = x as f64;
        t *= xf * (nf - kf - n1f + xf) / ((kf - xf + 1.0) * (n1f - xf + 1.0));
        x -= 1;
        if t <= obs * TIE {
            sum += t;
        }
        if negligible(t) {
            break;
        }
    }
    let p = (ln_mode.exp() * sum).min(1.0);
    p.is_finite().then_some(p)
}

/// The odds ratio `(a·d)/(b·c)` with its 95 % confidence interval by Woolf's logit method:
/// `exp(ln OR ± z·√(1/a + 1/b + 1/c + 1/d))`, `z` the normal 97.5 % quantile. `None` when a
/// cell is zero: the ratio is then 0 or infinite and the interval undefined.
pub fn odds_ratio(a: u64, b: u64, c: u64, d: u64) -> Option<(f64, [f64; 2])> {
    if a == 0 || b == 0 || c == 0 || d == 0 {
        return None;
    }
    let (a, b, c, d) = (a as f64, b as f64, c as f64, d as f64);
    let ln_or = (a.ln() + d.ln()) - (b.ln() + c.ln());
    let se = (1.0 / a + 1.0 / b + 1.0 / c + 1.0 / d).sqrt();
    let z = Normal::standard().inverse_cdf(0.975);
    let ci = [(ln_or - z * se).exp(), (ln_or + z * se).exp()];
    let or = ln_or.exp();
    (or.is_finite() && ci.iter().all(|x| x.is_finite())).then_some((or, ci))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-300)
    }

    /// Two-sided p-value by summing every table of the support, straight from the
    /// definition with `statrs`' probabilities: the reference for the walk.
    fn brute(a: u64, b: u64, c: u64, d: u64) -> f64 {
        let (n1, k, n) = (a + b, a + c, a + b + c + d);
        let h = Hypergeometric::new(n, k, n1).unwrap();
        let obs = h.ln_pmf(a).exp();
        ((n1 + k).saturating_sub(n)..=n1.min(k))
            .map(|x| h.ln_pmf(x).exp())
            .filter(|&p| p <= obs * TIE)
            .sum::<f64>()
            .min(1.0)
    }

    #[test]
    fn fisher_matches_published_values() {
        // Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70 (R: 0.4857).
        assert!(close(fisher_exact(3, 1, 1, 3).unwrap(), 34.0 / 70.0));
        // [[1, 9], [11, 3]]: R's fisher.test gives p-value = 0.002759.
        let p = fisher_exact(1, 9, 11, 3).unwrap();
        assert!((p - 0.002759).abs() < 5e-7, "{p}");
        // Perfect separation in a small table: [[5, 0], [0, 5]]: 2/252.
        assert!(close(fisher_exact(5, 0, 0, 5).unwrap(), 2.0 / 252.0));
    }

    #[test]
    fn fisher_equals_the_sum_over_the_support() {
        for &(a, b, c, d) in &[
            (10, 20, 30, 40),
            (0, 7, 12, 3),
            (50, 50, 50, 50),
            (120, 30, 200, 400),
            (3, 0, 9, 1),
            (1, 1000, 2, 1500),
        ] {
            let (got, want) = (fisher_exact(a, b, c, d).unwrap(), brute(a, b, c, d));
            assert!(close(got, want), "{:?}: {got} vs {want}", (a, b, c, d));
        }
    }

    #[test]
    fn fisher_needs_both_margins() {
        assert_eq!(fisher_exact(0, 0, 3, 4), None, "nobody touched");
        assert_eq!(fisher_exact(3, 4, 0, 0), None, "everybody touched");
        assert_eq!(fisher_exact(0, 3, 0, 4), None, "nobody converted");
    }

    #[test]
    fn fisher_is_fast_and_tiny_on_large_skewed_tables() {
        let p = fisher_exact(400_000, 100_000, 100_000, 400_000).unwrap();
        assert_eq!(p, 0.0, "far below 1e-308");
        let p = fisher_exact(250_300, 249_700, 249_700, 250_300).unwrap();
        assert!(p > 0.0 && p < 1.0, "{p}");
    }

    #[test]
    fn odds_ratio_and_woolf_interval() {
        // [[10, 20], [30, 40]]: OR = 400/600; se = sqrt(1/10+1/20+1/30+1/40).
        let (or, ci) = odds_ratio(10, 20, 30, 40).unwrap();
        assert!(close(or, 400.0 / 600.0));
        let se = (0.1f64 + 0.05 + 1.0 / 30.0 + 0.025).sqrt();
        assert!(close(ci[0], (or.ln() - 1.959963984540054 * se).exp()));
        assert!(close(ci[1], (or.ln() + 1.959963984540054 * se).exp()));
        assert_eq!(odds_ratio(0, 1, 2, 3), None);
    }
}
