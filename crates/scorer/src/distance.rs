//! Distance detectors: k-means (distance to the nearest centroid, linfa-clustering) and
//! k-nearest neighbours (mean distance to the k closest training rows, linfa-nn).

use linfa::prelude::*;
use linfa_clustering::KMeans;
use linfa_nn::{distance::L2Dist, CommonNearestNeighbour, NearestNeighbour};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Centroids of a k-means clustering of the standardised training rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KmeansParams {
    /// One row per cluster.
    pub centroids: Vec<Vec<f64>>,
}

/// Reference rows for the k-nearest-neighbour distance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KnnParams {
    /// Neighbours averaged.
    pub k: usize,
    /// Standardised training rows (evenly thinned to at most [`crate::MAX_REFERENCE_ROWS`]).
    pub points: Vec<Vec<f64>>,
}

pub(crate) fn fit_kmeans(
    z: ArrayView2<f64>,
    clusters: usize,
    seed: u64,
) -> Result<KmeansParams, ModelError> {
    let rng = Xoshiro256Plus::seed_from_u64(seed);
    let m = KMeans::params_with_rng(clusters, rng)
        .n_runs(5)
        .tolerance(1e-5)
        .max_n_iterations(300)
        .fit(&DatasetBase::from(z.to_owned()))
        .map_err(|e| ModelError::Training(format!("k-means: {e}")))?;
    Ok(KmeansParams {
        centroids: m.centroids().outer_iter().map(|r| r.to_vec()).collect(),
    })
}

fn rows(v: &[Vec<f64>]) -> Array2<f64> {
    let d = v.first().map_or(0, |r| r.len());
    Array2::from_shape_fn((v.len(), d), |(i, j)| v[i][j])
}

fn validate_rows(what: &str, v: &[Vec<f64>], n: usize) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what}: no rows"));
    }
    if v.iter().any(|r| r.len() != n) {
        return Err(format!("{what}: rows do not have {n} features"));
    }
    if v.iter().flatten().any(|x| !x.is_finite()) {
        return Err(format!("{what}: non-finite values"));
    }
    Ok(())
}

/// Index and squared distance of the row of `refs` nearest to `x`.
fn nearest(refs: &Array2<f64>, x: ArrayView1<f64>) -> (usize, f64) {
    refs.outer_iter()
        .map(|c| (&c - &x).mapv(|d| d * d).sum())
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN))
}

impl KmeansParams {
    pub(crate) fn validate(&self, n: usize) -> Result<(), String> {
        validate_rows("k-means centroids", &self.centroids, n)
    }

    pub(crate) fn raw(&self, z: ArrayView2<f64>) -> Array1<f64> {
        let c = rows(&self.centroids);
        z.outer_iter().map(|x| nearest(&c, x).1.sqrt()).collect()
    }

    pub(crate) fn terms(&self, z: &[f64]) -> Vec<f64> {
        let c = rows(&self.centroids);
        let x = ArrayView1::from(z);
        let (i, _) = nearest(&c, x);
        (&x - &c.row(i)).mapv(|d| d * d).to_vec()
    }
}

impl KnnParams {
    pub(crate) fn fit(z: ArrayView2<f64>, k: usize, max_rows: usize) -> KnnParams {
        let step = z.nrows().div_ceil(max_rows).max(1);
        KnnParams {
            k: k.max(1),
            points: z.outer_iter().step_by(step).map(|r| r.to_vec()).collect(),
        }
    }

    pub(crate) fn validate(&self, n: usize) -> Result<(), String> {
        if self.k == 0 || self.k >= self.points.len() {
            return Err(format!(
                "knn needs 0 < k < {} reference rows, got k = {}",
                self.points.len(),
                self.k
            ));
        }
        validate_rows("knn reference rows", &self.points, n)
    }

    /// Mean distance to the k nearest reference rows; `skip_self` leaves out an exact
    /// match (the row itself, when scoring the training data).
    pub(crate) fn raw_with(&self, z: ArrayView2<f64>, skip_self: bool) -> Array1<f64> {
        let refs = rows(&self.points);
        let Ok(index) = CommonNearestNeighbour::KdTree.from_batch(&refs, L2Dist) else {
            return Array1::from_elem(z.nrows(), f64::NAN);
        };
        let want = self.k + usize::from(skip_self);
        z.outer_iter()
            .map(|x| {
                if x.iter().any(|v| !v.is_finite()) {
                    return f64::NAN;
                }
                let Ok(found) = index.k_nearest(x, want) else {
                    return f64::NAN;
                };
                let d: Vec<f64> = found
                    .iter()
                    .map(|(p, _)| (p - &x).mapv(|v| v * v).sum().sqrt())
                    .collect();
                let d = if skip_self {
                    &d[1.min(d.len())..]
                } else {
                    &d[..]
                };
                d.iter().take(self.k).sum::<f64>() / self.k as f64
            })
            .collect()
    }

    pub(crate) fn raw(&self, z: ArrayView2<f64>) -> Array1<f64> {
        self.raw_with(z, false)
    }

    pub(crate) fn terms(&self, z: &[f64]) -> Vec<f64> {
        let refs = rows(&self.points);
        let x = ArrayView1::from(z);
        let (i, _) = nearest(&refs, x);
        (&x - &refs.row(i)).mapv(|d| d * d).to_vec()
    }
}
