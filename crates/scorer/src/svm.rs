//! One-class SVM detector (linfa-svm, Gaussian kernel). The raw score is how far a row
//! falls outside the learned support: `rho - Σ αᵢ k(svᵢ, x)`.

use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The support vectors and weights of a fitted one-class SVM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OcsvmParams {
    /// Kernel width: k(a, b) = exp(-|a - b|² / eps).
    pub eps: f64,
    /// ν: upper bound on the fraction of training rows outside the support.
    pub nu: f64,
    /// Offset of the decision function.
    pub rho: f64,
    /// Weight of each support vector.
    pub alpha: Vec<f64>,
    /// Standardised support vectors.
    pub support_vectors: Vec<Vec<f64>>,
}

pub(crate) fn fit(z: ArrayView2<f64>, nu: f64, max_rows: usize) -> Result<OcsvmParams, ModelError> {
    let step = z.nrows().div_ceil(max_rows).max(1);
    let rows: Vec<_> = z.outer_iter().step_by(step).collect();
    let d = z.ncols();
    let x = Array2::from_shape_fn((rows.len(), d), |(i, j)| rows[i][j]);
    // sklearn's gamma = 1 / (features x variance); the features are standardised.
    let eps = d as f64;
    let targets = Array1::from_elem(x.nrows(), ());
    let svm: Svm<f64, bool> = Svm::<f64, linfa::dataset::Pr>::params()
        .nu_weight(nu)
        .gaussian_kernel(eps)
        .fit(&DatasetBase::new(x, targets))
        .map_err(|e| ModelError::Training(format!("one-class svm: {e}")))?;
    // linfa keeps the support vectors private; its serde form exposes them.
    let v = serde_json::to_value(&svm).map_err(|e| ModelError::Training(e.to_string()))?;
    let bad = || ModelError::Training("one-class svm: unexpected linfa-svm model layout".into());
    let alpha_all: Vec<f64> = serde_json::from_value(v["alpha"].clone()).map_err(|_| bad())?;
    let rho = v["rho"].as_f64().ok_or_else(bad)?;
    let sv: Array2<f64> =
        serde_json::from_value(v["sep_hyperplane"]["WeightedCombination"].clone())
            .map_err(|_| bad())?;
    // The same cut linfa applies in `weighted_sum`.
    let alpha: Vec<f64> = alpha_all
        .into_iter()
        .filter(|a| a.abs() > 100.0 * f64::EPSILON)
        .collect();
    if alpha.len() != sv.nrows() {
        return Err(bad());
    }
    Ok(OcsvmParams {
        eps,
        nu,
        rho,
        alpha,
        support_vectors: sv.outer_iter().map(|r| r.to_vec()).collect(),
    })
}

impl OcsvmParams {
    pub(crate) fn validate(&self, n: usize) -> Result<(), String> {
        if self.support_vectors.is_empty() || self.support_vectors.len() != self.alpha.len() {
            return Err(format!(
                "one-class svm has {} support vectors and {} weights",
                self.support_vectors.len(),
                self.alpha.len()
            ));
        }
        if self.support_vectors.iter().any(|r| r.len() != n) {
            return Err(format!(
                "one-class svm support vectors do not have {n} features"
            ));
        }
        let finite = self
            .support_vectors
            .iter()
            .flatten()
            .chain(&self.alpha)
            .chain([&self.rho])
            .all(|v| v.is_finite());
        if !finite || self.eps.is_nan() || self.eps <= 0.0 {
            return Err("one-class svm has non-finite parameters".into());
        }
        Ok(())
    }

    fn decision(&self, x: ArrayView1<f64>) -> (f64, usize) {
        let mut sum = 0.0;
        let (mut best, mut best_d) = (0, f64::INFINITY);
        for (i, (sv, a)) in self.support_vectors.iter().zip(&self.alpha).enumerate() {
            let d2: f64 = sv
                .iter()
                .zip(x.iter())
                .map(|(s, v)| (s - v) * (s - v))
                .sum();
            sum += a * (-d2 / self.eps).exp();
            if d2 < best_d {
                (best, best_d) = (i, d2);
            }
        }
        (self.rho - sum, best)
    }

    pub(crate) fn raw(&self, z: ArrayView2<f64>) -> Array1<f64> {
        z.outer_iter().map(|x| self.decision(x).0).collect()
    }

    /// Squared differences to the nearest support vector: which features carry the row
    /// out of the support.
    pub(crate) fn terms(&self, z: &[f64]) -> Vec<f64> {
        let (_, i) = self.decision(ArrayView1::from(z));
        z.iter()
            .zip(&self.support_vectors[i])
            .map(|(a, b)| (a - b) * (a - b))
            .collect()
    }
}
