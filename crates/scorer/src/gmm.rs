//! Gaussian mixture detector: fitted with linfa-clustering, scored as negative log-likelihood.

use linfa::prelude::*;
use linfa_clustering::GaussianMixtureModel;
use linfa_linalg::cholesky::Cholesky;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Parameters of a fitted mixture (full covariances, stored as precision matrices).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GmmParams {
    /// Component weights (sum to 1).
    pub weights: Vec<f64>,
    /// Component means, one row per component.
    pub means: Vec<Vec<f64>>,
    /// Component precision matrices (inverse covariances).
    pub precisions: Vec<Vec<Vec<f64>>>,
}

pub(crate) fn fit(
    z: ArrayView2<f64>,
    components: usize,
    seed: u64,
) -> Result<GmmParams, ModelError> {
    let ds = DatasetBase::from(z.to_owned());
    let rng = Xoshiro256Plus::seed_from_u64(seed);
    let gmm = GaussianMixtureModel::params_with_rng(components, rng)
        .n_runs(3)
        .tolerance(1e-4)
        .reg_covariance(1e-4)
        .max_n_iterations(300)
        .fit(&ds)
        .map_err(|e| ModelError::Training(e.to_string()))?;
    Ok(GmmParams {
        weights: gmm.weights().to_vec(),
        means: gmm.means().outer_iter().map(|r| r.to_vec()).collect(),
        precisions: gmm
            .precisions()
            .outer_iter()
            .map(|m| m.outer_iter().map(|r| r.to_vec()).collect())
            .collect(),
    })
}

impl GmmParams {
    pub(crate) fn validate(&self, n: usize) -> Result<(), String> {
        let k = self.weights.len();
        if k == 0 || self.means.len() != k || self.precisions.len() != k {
            return Err(format!(
                "gmm needs equal numbers of weights, means and precisions, got {k}, {}, {}",
                self.means.len(),
                self.precisions.len()
            ));
        }
        for (i, (m, p)) in self.means.iter().zip(&self.precisions).enumerate() {
            if m.len() != n || p.len() != n || p.iter().any(|r| r.len() != n) {
                return Err(format!(
                    "gmm component {i} does not have {n} features (model expects {n})"
                ));
            }
        }
        if self
            .weights
            .iter()
            .chain(self.means.iter().flatten())
            .chain(self.precisions.iter().flatten().flatten())
            .any(|v| !v.is_finite())
        {
            return Err("gmm has non-finite parameters".into());
        }
        for (i, _) in self.precisions.iter().enumerate() {
            self.precision(i).cholesky().map_err(|_| {
                format!("gmm component {i}: precision matrix is not positive definite")
            })?;
        }
        Ok(())
    }

    fn precision(&self, i: usize) -> Array2<f64> {
        let n = self.means[i].len();
        Array2::from_shape_fn((n, n), |(r, c)| self.precisions[i][r][c])
    }

    /// Each feature's share of the squared Mahalanobis distance of standardised row `z`
    /// to the component that explains it best: `d_i (P d)_i / dᵀPd` with `d = z - μ`.
    /// Negative terms (a feature pulling the row back towards the component, through its
    /// correlations) count as zero; the shares sum to 1. Empty when a feature is missing.
    pub(crate) fn contributions(&self, z: &[f64]) -> Vec<f64> {
        if z.iter().any(|v| !v.is_finite()) {
            return vec![];
        }
        let x = Array1::from(z.to_vec());
        let best = (0..self.weights.len())
            .map(|i| {
                let p = self.precision(i);
                let d = &x - &Array1::from(self.means[i].clone());
                let pd = p.dot(&d);
                let maha = d.dot(&pd);
                let log_det_p = p.cholesky().map_or(f64::NAN, |l| {
                    2.0 * l.diag().iter().map(|v| v.ln()).sum::<f64>()
                });
                (self.weights[i].ln() + 0.5 * (log_det_p - maha), d, pd)
            })
            .filter(|t| t.0.is_finite())
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, d, pd)) = best else {
            return vec![];
        };
        let terms: Vec<f64> = d
            .iter()
            .zip(pd.iter())
            .map(|(a, b)| (a * b).max(0.0))
            .collect();
        let total: f64 = terms.iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return vec![0.0; terms.len()];
        }
        terms.iter().map(|t| t / total).collect()
    }

    /// Negative log-likelihood of each standardised row (NaN rows give NaN).
    pub(crate) fn neg_log_likelihood(&self, z: ArrayView2<f64>) -> Array1<f64> {
        let n = z.ncols() as f64;
        let comps: Vec<(f64, Array1<f64>, Array2<f64>, f64)> = (0..self.weights.len())
            .map(|i| {
                let p = self.precision(i);
                // log|P| from the Cholesky factor (validated positive definite at load; should
                // it not be, the scores are NaN, i.e. NULL in SQL, rather than a panic).
                let log_det_p = p.cholesky().map_or(f64::NAN, |l| {
                    2.0 * l.diag().iter().map(|d| d.ln()).sum::<f64>()
                });
                (
                    self.weights[i].ln(),
                    Array1::from(self.means[i].clone()),
                    p,
                    log_det_p,
                )
            })
            .collect();
        let log2pi = (2.0 * std::f64::consts::PI).ln();
        z.axis_iter(Axis(0))
            .map(|x| {
                let terms: Vec<f64> = comps
                    .iter()
                    .map(|(lw, mu, p, ldp)| {
                        let d = &x - mu;
                        let maha = d.dot(&p.dot(&d));
                        lw + 0.5 * (ldp - n * log2pi - maha)
                    })
                    .collect();
                let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln();
                -lse
            })
            .collect()
    }
}
