//! Tail probabilities in log space, so that a window a thousand standard deviations out
//! still gets a finite, ordered score instead of a probability that underflows to 0.

use std::f64::consts::{LN_10, PI};

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-14).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// ln Q(a, x), the log of the regularised upper incomplete gamma function, for a > 0,
/// x ≥ 0 (series below a + 1, Lentz's continued fraction above).
pub fn ln_gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let lead = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // P by its series; Q = 1 − P.
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        let p = (lead + sum.ln()).exp();
        return (1.0 - p).max(f64::MIN_POSITIVE).ln();
    }
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    lead + h.ln()
}

/// −log10 of P(χ²_k ≥ q): how surprising a sum of `k` squared standard normal
/// deviations as large as `q` is. 0 for q ≤ 0.
pub fn chi2_surprise(q: f64, k: usize) -> f64 {
    if q.is_nan() || k == 0 {
        return f64::NAN;
    }
    if q <= 0.0 {
        return 0.0;
    }
    (-ln_gamma_q(k as f64 / 2.0, q / 2.0) / LN_10).max(0.0)
}

/// −log10 of P(Z ≥ z) for a standard normal Z (one-sided upper tail).
pub fn normal_surprise(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    if z <= 0.0 {
        // P ≥ 0.5: at most log10(2).
        let p = 1.0 - 0.5 * erfc(-z / std::f64::consts::SQRT_2);
        return -p.log10();
    }
    // Q(z) = Γ(1/2, z²/2) / (2 √π) = Q(1/2, z²/2) / 2.
    -(ln_gamma_q(0.5, z * z / 2.0) - std::f64::consts::LN_2) / LN_10
}

/// Complementary error function (via the incomplete gamma function).
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        2.0 - erfc(-x)
    } else {
        ln_gamma_q(0.5, x * x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Γ(5) = 24, Γ(1/2) = √π.
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-12);
        // χ²₁ ≥ 3.841459 has p = 0.05; χ²₂ ≥ q has p = exp(−q/2).
        assert!((chi2_surprise(3.841_458_820_694_124, 1) - (-(0.05f64).log10())).abs() < 1e-9);
        for q in [0.1, 1.0, 5.0, 30.0, 300.0, 3000.0] {
            let want = q / 2.0 / LN_10;
            assert!(
                (chi2_surprise(q, 2) - want).abs() < 1e-9 * want.max(1.0),
                "{q}"
            );
        }
        // One-sided normal: P(Z ≥ 1.959964) = 0.025, P(Z ≥ 0) = 0.5.
        assert!((normal_surprise(1.959_963_984_540_054) - (-(0.025f64).log10())).abs() < 1e-9);
        assert!((normal_surprise(0.0) - 2f64.log10()).abs() < 1e-12);
        // Far out the score keeps growing instead of saturating.
        assert!(normal_surprise(40.0) > 300.0 && normal_surprise(60.0) > normal_surprise(40.0));
        assert!(chi2_surprise(1e6, 3) > 1e5);
    }

    #[test]
    fn monotone_in_q() {
        for k in 1..8 {
            let mut last = -1.0;
            for i in 0..400 {
                let s = chi2_surprise(i as f64 * 0.25, k);
                assert!(s >= last - 1e-12, "k {k} q {}", i as f64 * 0.25);
                last = s;
            }
        }
    }
}
