//! PCA detector (linfa-reduction): Hotelling's T² in the principal subspace, the squared
//! prediction error Q off it, or both.

use linfa::prelude::*;
use linfa_reduction::Pca;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::{quantile, ModelError};

/// Which PCA statistic is the raw score.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PcaStatistic {
    /// Hotelling's T²: distance inside the principal subspace, in units of each component's variance.
    T2,
    /// Squared prediction error: distance from the principal subspace.
    Q,
    /// The larger of T² and Q, each divided by its own training limit (either one firing fires).
    T2Q,
}

/// A fitted PCA detector over standardised features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PcaParams {
    /// The statistic scored.
    pub statistic: PcaStatistic,
    /// Training mean of the standardised features (close to zero).
    pub center: Vec<f64>,
    /// Retained principal axes, one row per component.
    pub components: Vec<Vec<f64>>,
    /// Variance of the training data along each retained axis.
    pub variances: Vec<f64>,
    /// Training limit of T² (its quantile), used to put T² and Q on one scale.
    pub t2_limit: f64,
    /// Training limit of Q.
    pub q_limit: f64,
}

pub(crate) fn fit(
    z: ArrayView2<f64>,
    statistic: PcaStatistic,
    explained: f64,
    quantile_level: f64,
) -> Result<PcaParams, ModelError> {
    let (n, d) = z.dim();
    let center = z.mean_axis(Axis(0)).expect("rows > 0");
    let total: f64 = z.var_axis(Axis(0), 1.0).sum();
    // linfa-reduction's truncated SVD wants fewer components than features.
    let size = d.saturating_sub(1).max(1);
    let pca = Pca::params(size)
        .fit(&DatasetBase::from(z.to_owned()))
        .map_err(|e| ModelError::Training(format!("pca: {e}")))?;
    let sigma = pca.singular_values();
    let vars: Vec<f64> = sigma.iter().map(|s| s * s / (n as f64 - 1.0)).collect();
    // Keep the fewest components that explain `explained` of the total variance, and
    // leave at least one dimension for Q.
    let mut k = 0;
    let mut acc = 0.0;
    while k < vars.len() && acc < explained * total {
        acc += vars[k];
        k += 1;
    }
    let k = k.clamp(1, size);
    let comps = pca.components();
    let mut p = PcaParams {
        statistic,
        center: center.to_vec(),
        components: (0..k).map(|i| comps.row(i).to_vec()).collect(),
        variances: vars[..k].iter().map(|v| v.max(1e-12)).collect(),
        t2_limit: 1.0,
        q_limit: 1.0,
    };
    let (t2, q) = p.statistics(z);
    p.t2_limit = quantile(t2.to_vec(), quantile_level).max(1e-12);
    p.q_limit = quantile(q.to_vec(), quantile_level).max(1e-12);
    Ok(p)
}

impl PcaParams {
    pub(crate) fn validate(&self, n: usize) -> Result<(), String> {
        if self.center.len() != n || self.components.iter().any(|c| c.len() != n) {
            return Err(format!("pca axes do not have {n} features"));
        }
        if self.components.is_empty() || self.components.len() != self.variances.len() {
            return Err(format!(
                "pca has {} components and {} variances",
                self.components.len(),
                self.variances.len()
            ));
        }
        let finite = self
            .center
            .iter()
            .chain(self.components.iter().flatten())
            .all(|v| v.is_finite());
        let positive = self
            .variances
            .iter()
            .chain([&self.t2_limit, &self.q_limit])
            .all(|v| v.is_finite() && *v > 0.0);
        if !(finite && positive) {
            return Err("pca has non-finite parameters or non-positive variances".into());
        }
        Ok(())
    }

    fn axes(&self) -> Array2<f64> {
        let (k, d) = (self.components.len(), self.center.len());
        Array2::from_shape_fn((k, d), |(i, j)| self.components[i][j])
    }

    /// T² and Q of each standardised row.
    fn statistics(&self, z: ArrayView2<f64>) -> (Array1<f64>, Array1<f64>) {
        let p = self.axes();
        let c = &z - &ArrayView1::from(&self.center);
        let t = c.dot(&p.t());
        let resid = &c - &t.dot(&p);
        let var = ArrayView1::from(&self.variances);
        let t2 = (&t * &t / var).sum_axis(Axis(1));
        let q = (&resid * &resid).sum_axis(Axis(1));
        (t2, q)
    }

    pub(crate) fn raw(&self, z: ArrayView2<f64>) -> Array1<f64> {
        let (t2, q) = self.statistics(z);
        match self.statistic {
            PcaStatistic::T2 => t2,
            PcaStatistic::Q => q,
            PcaStatistic::T2Q => ndarray::Zip::from(&t2)
                .and(&q)
                .map_collect(|a, b| (a / self.t2_limit).max(b / self.q_limit)),
        }
    }

    /// Per-feature terms of the statistic that dominates the score of row `z`.
    pub(crate) fn terms(&self, z: &[f64]) -> Vec<f64> {
        let p = self.axes();
        let c = Array1::from(z.to_vec()) - ArrayView1::from(&self.center);
        let t = p.dot(&c);
        let resid = &c - &t.dot(&p);
        let t2: f64 = t.iter().zip(&self.variances).map(|(a, v)| a * a / v).sum();
        let q: f64 = resid.iter().map(|e| e * e).sum();
        let use_t2 = match self.statistic {
            PcaStatistic::T2 => true,
            PcaStatistic::Q => false,
            PcaStatistic::T2Q => t2 / self.t2_limit >= q / self.q_limit,
        };
        if use_t2 {
            // c_i (M c)_i with M = Pᵀ Λ⁻¹ P: the same split as a Mahalanobis distance.
            let scaled = &t / &ArrayView1::from(&self.variances);
            let mc = scaled.dot(&p);
            c.iter().zip(mc.iter()).map(|(a, b)| a * b).collect()
        } else {
            resid.iter().map(|e| e * e).collect()
        }
    }
}
