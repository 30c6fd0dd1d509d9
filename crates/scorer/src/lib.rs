//! Anomaly models for Forewarn: training with linfa, self-describing model files,
//! and scoring normalised so that 1.0 is the alarm threshold.
//!
//! This crate is pure computation: no async runtime, no network. Files are read
//! and written by the caller-facing helpers [`Model::load`] and [`Model::save`].

mod distance;
mod gmm;
pub mod metrics;
pub mod online;
mod pca;
mod registry;
pub mod score_tail;
pub mod seasonal;
mod svm;
pub mod tail;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use distance::{KmeansParams, KnnParams};
pub use gmm::GmmParams;
pub use online::{OnlineDetectors, OnlineSpec, OnlineState, Surprise};
pub use pca::{PcaParams, PcaStatistic};
pub use registry::{ModelRegistry, ReloadReport};
pub use score_tail::ScoreTail;
pub use seasonal::Season;
pub use svm::OcsvmParams;

/// Version of the model file format this build writes and the newest it reads.
/// Version 2 added the PCA, k-means, kNN, one-class SVM and robust kinds, and `key`.
pub const FORMAT_VERSION: u32 = 2;

/// Why a model cannot give surprises.
pub const NO_TAIL: &str = "it keeps no tail of its training scores (it was trained by an earlier build): train it again with forewarn train";

/// The model kinds this build reads, as written in the files' `detector.kind`.
pub const KINDS: &[&str] = &["gmm", "pca", "kmeans", "knn", "ocsvm", "robust"];

/// kNN and one-class SVM keep (a thinned copy of) their training rows; this bounds the
/// model file and the scoring cost.
pub const MAX_REFERENCE_ROWS: usize = 2000;

/// Errors from training, loading and scoring models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid model file; `reason` says what is wrong.
    #[error("{path}: invalid model file: {reason}")]
    Invalid {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Scoring was called with the wrong number of features.
    #[error("model '{model}' takes {expected} features ({names}), got {got}")]
    FeatureCount {
        /// Model name.
        model: String,
        /// Features the model was trained on.
        expected: usize,
        /// Their names.
        names: String,
        /// Features supplied.
        got: usize,
    },
    /// Training could not produce a model.
    #[error("training failed: {0}")]
    Training(String),
}

/// The detector inside a model. Every detector works on standardised features and
/// produces a raw score where larger means more anomalous.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detector {
    /// Gaussian mixture; the raw score is the negative log-likelihood.
    Gmm(GmmParams),
    /// Principal components; T², Q, or both.
    Pca(PcaParams),
    /// Distance to the nearest k-means centroid.
    Kmeans(KmeansParams),
    /// Mean distance to the k nearest training rows.
    Knn(KnnParams),
    /// One-class SVM with a Gaussian kernel.
    Ocsvm(OcsvmParams),
    /// Robust baseline: the largest |x - median| / (1.4826 MAD) over the features, with a
    /// median and MAD per key (device) when the model is keyed.
    Robust(RobustParams),
}

/// Per-key robust baselines; the model's scaler is the fleet-wide one, used for keys
/// not seen in training.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RobustParams {
    /// Median and scaled MAD per key.
    pub keys: BTreeMap<String, Scaler>,
}

impl Detector {
    fn kind(&self) -> &'static str {
        match self {
            Detector::Gmm(_) => "gmm",
            Detector::Pca(_) => "pca",
            Detector::Kmeans(_) => "kmeans",
            Detector::Knn(_) => "knn",
            Detector::Ocsvm(_) => "ocsvm",
            Detector::Robust(_) => "robust",
        }
    }

    fn validate(&self, n: usize) -> Result<(), String> {
        match self {
            Detector::Gmm(g) => g.validate(n),
            Detector::Pca(p) => p.validate(n),
            Detector::Kmeans(k) => k.validate(n),
            Detector::Knn(k) => k.validate(n),
            Detector::Ocsvm(s) => s.validate(n),
            Detector::Robust(r) => r
                .keys
                .iter()
                .try_for_each(|(k, s)| s.validate(n).map_err(|e| format!("key '{k}': {e}"))),
        }
    }

    /// Raw scores of standardised rows.
    fn raw(&self, z: ArrayView2<f64>) -> Array1<f64> {
        match self {
            Detector::Gmm(g) => g.neg_log_likelihood(z),
            Detector::Pca(p) => p.raw(z),
            Detector::Kmeans(k) => k.raw(z),
            Detector::Knn(k) => k.raw(z),
            Detector::Ocsvm(s) => s.raw(z),
            Detector::Robust(_) => z
                .outer_iter()
                .map(|r| {
                    if r.iter().any(|v| v.is_nan()) {
                        f64::NAN
                    } else {
                        r.iter().fold(0.0_f64, |m, v| m.max(v.abs()))
                    }
                })
                .collect(),
        }
    }

    /// Non-negative per-feature terms of the score of one standardised row.
    fn terms(&self, z: &[f64]) -> Vec<f64> {
        match self {
            Detector::Gmm(g) => g.contributions(z),
            Detector::Pca(p) => p.terms(z),
            Detector::Kmeans(k) => k.terms(z),
            Detector::Knn(k) => k.terms(z),
            Detector::Ocsvm(s) => s.terms(z),
            Detector::Robust(_) => z.iter().map(|v| v * v).collect(),
        }
    }
}

/// What to train: the detector kind and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelKind {
    /// Gaussian mixture with this many components.
    Gmm {
        /// Mixture components.
        components: usize,
    },
    /// PCA keeping the components that explain `explained` of the variance.
    Pca {
        /// Statistic scored.
        statistic: PcaStatistic,
        /// Fraction of variance the retained components explain.
        explained: f64,
    },
    /// k-means with this many clusters.
    Kmeans {
        /// Clusters.
        clusters: usize,
    },
    /// Mean distance to the `k` nearest training rows.
    Knn {
        /// Neighbours.
        k: usize,
    },
    /// One-class SVM with this ν.
    Ocsvm {
        /// Upper bound on the fraction of training rows outside the support.
        nu: f64,
    },
    /// Median/MAD baseline (per key when training is given keys).
    Robust,
}

impl FromStr for ModelKind {
    type Err = String;

    /// `gmm`, `pca` (T² and Q), `pca-t2`, `pca-q`, `kmeans`, `knn`, `ocsvm`, `robust`,
    /// with default settings.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "gmm" => ModelKind::Gmm { components: 4 },
            "pca" | "pca-t2q" => ModelKind::Pca {
                statistic: PcaStatistic::T2Q,
                explained: 0.9,
            },
            "pca-t2" => ModelKind::Pca {
                statistic: PcaStatistic::T2,
                explained: 0.9,
            },
            "pca-q" => ModelKind::Pca {
                statistic: PcaStatistic::Q,
                explained: 0.9,
            },
            "kmeans" => ModelKind::Kmeans { clusters: 4 },
            "knn" => ModelKind::Knn { k: 5 },
            "ocsvm" => ModelKind::Ocsvm { nu: 0.05 },
            "robust" => ModelKind::Robust,
            other => {
                return Err(format!(
                    "unknown model kind '{other}' (known: gmm, pca, pca-t2, pca-q, kmeans, knn, ocsvm, robust)"
                ))
            }
        })
    }
}

impl ModelKind {
    /// Every kind with its default settings, in the order reports list them.
    pub fn all() -> Vec<(&'static str, ModelKind)> {
        [
            "pca", "pca-t2", "pca-q", "gmm", "kmeans", "knn", "ocsvm", "robust",
        ]
        .iter()
        .map(|k| (*k, k.parse().expect("known kind")))
        .collect()
    }
}

/// Per-feature centring and scaling fitted on the training data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    /// Feature centres (means; medians for the robust kind).
    pub mean: Vec<f64>,
    /// Feature scales (standard deviations; 1.4826 MAD for the robust kind). Never zero:
    /// constant features get 1.
    pub std: Vec<f64>,
}

impl Scaler {
    fn standard(x: ArrayView2<f64>) -> Scaler {
        let mean = x.mean_axis(Axis(0)).expect("rows > 0");
        let std = x.std_axis(Axis(0), 0.0).mapv(nonzero);
        Scaler {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    fn robust(x: ArrayView2<f64>) -> Scaler {
        let (mean, std) = x
            .axis_iter(Axis(1))
            .map(|c| {
                let med = quantile(c.to_vec(), 0.5);
                let mad = quantile(c.iter().map(|v| (v - med).abs()).collect(), 0.5);
                (med, nonzero(1.4826 * mad))
            })
            .unzip();
        Scaler { mean, std }
    }

    fn validate(&self, n: usize) -> Result<(), String> {
        if self.mean.len() != n || self.std.len() != n {
            return Err(format!(
                "scaler has {} means and {} deviations for {n} features",
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err("scaler has non-finite or non-positive values".into());
        }
        Ok(())
    }

    fn apply(&self, x: ArrayView2<f64>) -> Array2<f64> {
        (&x - &ArrayView1::from(&self.mean)) / ArrayView1::from(&self.std)
    }
}

fn nonzero(s: f64) -> f64 {
    if s > 1e-12 {
        s
    } else {
        1.0
    }
}

/// How raw detector scores map to the normalised score.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Raw score that maps to 0.0 (the median training score).
    pub baseline: f64,
    /// Raw score that maps to 1.0 (the alarm threshold).
    pub threshold: f64,
    /// How the threshold was chosen, e.g. `quantile 0.999 x 1.5`.
    pub method: String,
    /// The training scores' upper tail, for scores as surprises
    /// (`anomaly_surprise`); absent in files trained before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<ScoreTail>,
}

/// Where a model came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// Training rows.
    pub rows: usize,
    /// SHA-256 of the training matrix (row-major little-endian f64s).
    pub fingerprint: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Forewarn version that trained it.
    pub forewarn_version: String,
}

/// A trained model: everything needed to score, and to check it is used correctly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Model {
    /// File format version.
    pub format_version: u32,
    /// Name used in SQL (`anomaly_score('name', ...)`).
    pub name: String,
    /// Ordered feature names.
    pub features: Vec<String>,
    /// For keyed models (robust baselines per device): the key column's name. In SQL the
    /// key is passed before the features: `anomaly_score('name', device, f1, ...)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Standardisation.
    pub scaler: Scaler,
    /// The detector.
    pub detector: Detector,
    /// Score normalisation.
    pub calibration: Calibration,
    /// Training provenance.
    pub provenance: Provenance,
}

/// Options for [`Model::train`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The detector and its settings.
    pub kind: ModelKind,
    /// Quantile of training scores used for the threshold.
    pub quantile: f64,
    /// Multiplier on the quantile's distance above the baseline, for headroom.
    pub margin: f64,
    /// Seed for the initialisation (training is deterministic for a seed).
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            kind: ModelKind::Gmm { components: 3 },
            quantile: 0.999,
            margin: 1.5,
            seed: 42,
        }
    }
}

impl Model {
    /// Trains a Gaussian-mixture model with `components` components (see [`Model::train`]).
    pub fn train_gmm(
        name: &str,
        features: Vec<String>,
        data: ArrayView2<f64>,
        opts: &TrainOptions,
    ) -> Result<Model, ModelError> {
        Self::train(name, features, data, opts)
    }

    /// Trains a model of `opts.kind` on `data` (rows = samples, columns = `features`),
    /// and sets its threshold from the training scores.
    pub fn train(
        name: &str,
        features: Vec<String>,
        data: ArrayView2<f64>,
        opts: &TrainOptions,
    ) -> Result<Model, ModelError> {
        Self::train_keyed(name, features, None, data, opts)
    }

    /// Like [`Model::train`]; with `keys` (a key column's name and each row's key) a
    /// robust model keeps one baseline per key.
    pub fn train_keyed(
        name: &str,
        features: Vec<String>,
        keys: Option<(&str, &[String])>,
        data: ArrayView2<f64>,
        opts: &TrainOptions,
    ) -> Result<Model, ModelError> {
        check_training(&features, data, opts.kind)?;
        if keys.is_some() && opts.kind != ModelKind::Robust {
            return Err(ModelError::Training(
                "only the robust kind keeps a baseline per key".into(),
            ));
        }
        let robust = opts.kind == ModelKind::Robust;
        let scaler = if robust {
            Scaler::robust(data)
        } else {
            Scaler::standard(data)
        };
        let z = scaler.apply(data);
        let q = opts.quantile.clamp(0.5, 1.0);
        let detector = match opts.kind {
            ModelKind::Gmm { components } => {
                Detector::Gmm(gmm::fit(z.view(), components, opts.seed)?)
            }
            ModelKind::Pca {
                statistic,
                explained,
            } => Detector::Pca(pca::fit(z.view(), statistic, explained, q)?),
            ModelKind::Kmeans { clusters } => {
                Detector::Kmeans(distance::fit_kmeans(z.view(), clusters, opts.seed)?)
            }
            ModelKind::Knn { k } => Detector::Knn(KnnParams::fit(z.view(), k, MAX_REFERENCE_ROWS)),
            ModelKind::Ocsvm { nu } => Detector::Ocsvm(svm::fit(z.view(), nu, MAX_REFERENCE_ROWS)?),
            ModelKind::Robust => Detector::Robust(RobustParams::default()),
        };
        let mut model = Model {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            features,
            key: None,
            scaler,
            detector,
            calibration: Calibration {
                baseline: 0.0,
                threshold: 1.0,
                method: String::new(),
                tail: None,
            },
            provenance: Provenance {
                rows: data.nrows(),
                fingerprint: fingerprint(data),
                created: forewarn_core::format_rfc3339(now_ms()),
                forewarn_version: env!("CARGO_PKG_VERSION").to_string(),
            },
        };
        let raw = match (&mut model.detector, keys) {
            (Detector::Robust(r), Some((column, row_keys))) => {
                if row_keys.len() != data.nrows() {
                    return Err(ModelError::Training(format!(
                        "{} keys for {} rows",
                        row_keys.len(),
                        data.nrows()
                    )));
                }
                let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for (i, k) in row_keys.iter().enumerate() {
                    groups.entry(k).or_default().push(i);
                }
                for (k, idx) in &groups {
                    // Too few rows for a median and MAD of its own: the key uses the fleet's.
                    if idx.len() >= 10 {
                        r.keys.insert(
                            k.to_string(),
                            Scaler::robust(data.select(Axis(0), idx).view()),
                        );
                    }
                }
                model.key = Some(column.to_string());
                let key_refs: Vec<Option<&str>> =
                    row_keys.iter().map(|k| Some(k.as_str())).collect();
                model.raw_keyed(&key_refs, data)
            }
            // Leave-one-out for kNN: a training row is its own nearest neighbour.
            (Detector::Knn(k), _) => k.raw_with(z.view(), true),
            (d, _) => d.raw(z.view()),
        };
        let tail = ScoreTail::fit(raw.as_slice().unwrap_or(&raw.to_vec()));
        model.calibration = Calibration {
            tail,
            ..calibrate(raw, q, opts.margin)
        };
        model.check()?;
        Ok(model)
    }

    /// Re-sets the threshold from labelled validation data: the raw score that maximises
    /// F1 over `x` with `labels` (true = anomaly). The baseline stays the training median.
    pub fn calibrate_with_labels(
        &mut self,
        x: ArrayView2<f64>,
        labels: &[bool],
    ) -> Result<(), ModelError> {
        self.calibrate_with_labels_keyed(None, x, labels)
    }

    /// Like [`Model::calibrate_with_labels`], with each row's key (device) for keyed
    /// models: every row is scored against its own key's baseline, as it will be live
    /// ([`Model::score_keyed`]), not the fleet's.
    pub fn calibrate_with_labels_keyed(
        &mut self,
        keys: Option<&[Option<&str>]>,
        x: ArrayView2<f64>,
        labels: &[bool],
    ) -> Result<(), ModelError> {
        self.check_width(x.ncols())?;
        if labels.len() != x.nrows() {
            return Err(ModelError::Training(format!(
                "{} labels for {} validation rows",
                labels.len(),
                x.nrows()
            )));
        }
        let raw = match keys {
            Some(k) if k.len() != x.nrows() => {
                return Err(ModelError::Training(format!(
                    "{} keys for {} validation rows",
                    k.len(),
                    x.nrows()
                )))
            }
            Some(k) => self.raw_keyed(k, x),
            None => self.detector.raw(self.scaler.apply(x).view()),
        };
        let mut pairs: Vec<(f64, bool)> = raw
            .iter()
            .zip(labels)
            .filter(|(r, _)| r.is_finite())
            .map(|(r, l)| (*r, *l))
            .collect();
        let positives = pairs.iter().filter(|p| p.1).count();
        if positives == 0 || positives == pairs.len() {
            return Err(ModelError::Training(
                "validation data needs both normal and anomalous rows".into(),
            ));
        }
        // Sweep thresholds from the top: flag every row scoring >= the candidate.
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut best = (f64::NEG_INFINITY, pairs[0].0);
        for i in 0..pairs.len() {
            if pairs[i].1 {
                tp += 1
            } else {
                fp += 1
            }
            let last_of_tie = i + 1 == pairs.len() || pairs[i + 1].0 < pairs[i].0;
            if last_of_tie {
                let fneg = positives - tp;
                let f1 = tp as f64 / (tp as f64 + (fp + fneg) as f64 / 2.0);
                if f1 > best.0 {
                    best = (f1, pairs[i].0);
                }
            }
        }
        let c = &mut self.calibration;
        // Rows scoring at the chosen value must reach 1.0.
        let threshold = best.1 - 1e-9 * best.1.abs().max(1.0);
        if threshold <= c.baseline {
            c.baseline = threshold - (c.threshold - c.baseline).abs().max(1e-6);
        }
        c.threshold = threshold;
        c.method = format!(
            "best F1 ({:.3}) on {} labelled validation rows",
            best.0,
            pairs.len()
        );
        self.check()
    }

    fn check_width(&self, got: usize) -> Result<(), ModelError> {
        if got != self.features.len() {
            return Err(ModelError::FeatureCount {
                model: self.name.clone(),
                expected: self.features.len(),
                names: self.features.join(", "),
                got,
            });
        }
        Ok(())
    }

    fn scaler_for(&self, key: Option<&str>) -> &Scaler {
        match (&self.detector, key) {
            (Detector::Robust(r), Some(k)) => r.keys.get(k).unwrap_or(&self.scaler),
            _ => &self.scaler,
        }
    }

    fn raw_keyed(&self, keys: &[Option<&str>], x: ArrayView2<f64>) -> Array1<f64> {
        if self.key.is_none() {
            return self.detector.raw(self.scaler.apply(x).view());
        }
        x.outer_iter()
            .zip(keys)
            .map(|(row, k)| {
                let row = row.insert_axis(Axis(0));
                self.detector.raw(self.scaler_for(*k).apply(row).view())[0]
            })
            .collect()
    }

    fn normalise(&self, raw: Array1<f64>) -> Array1<f64> {
        let c = &self.calibration;
        raw.mapv(|r| (r - c.baseline) / (c.threshold - c.baseline))
    }

    /// Normalised scores for each row of `x` (columns in [`Model::features`] order).
    /// Rows with a missing (NaN) feature score NaN. A keyed model uses its fleet-wide
    /// baseline here; see [`Model::score_keyed`].
    pub fn score(&self, x: ArrayView2<f64>) -> Result<Array1<f64>, ModelError> {
        self.check_width(x.ncols())?;
        Ok(self.normalise(self.detector.raw(self.scaler.apply(x).view())))
    }

    /// Like [`Model::score`], with each row's key (device) for keyed models.
    pub fn score_keyed(
        &self,
        keys: &[Option<&str>],
        x: ArrayView2<f64>,
    ) -> Result<Array1<f64>, ModelError> {
        self.check_width(x.ncols())?;
        Ok(self.normalise(self.raw_keyed(keys, x)))
    }

    /// Each row's score as a surprise: −log10 of the fraction of training windows that
    /// scored at least as high (extrapolated beyond them), on the online detectors'
    /// scale. NaN when a feature is missing; an error for a model without a score tail
    /// (trained before tails were kept).
    pub fn surprise_keyed(
        &self,
        keys: &[Option<&str>],
        x: ArrayView2<f64>,
    ) -> Result<Array1<f64>, ModelError> {
        self.check_width(x.ncols())?;
        let Some(tail) = &self.calibration.tail else {
            return Err(ModelError::Invalid {
                path: PathBuf::from(format!("model '{}'", self.name)),
                reason: NO_TAIL.into(),
            });
        };
        Ok(self.raw_keyed(keys, x).mapv(|r| tail.surprise(r)))
    }

    /// Which features make row `x` anomalous: each feature's share of the score (shares
    /// sum to 1), largest first. Empty when a feature is missing.
    pub fn contributions(&self, x: &[f64]) -> Result<Vec<(String, f64)>, ModelError> {
        self.contributions_keyed(None, x)
    }

    /// Like [`Model::contributions`], with the row's key for keyed models.
    pub fn contributions_keyed(
        &self,
        key: Option<&str>,
        x: &[f64],
    ) -> Result<Vec<(String, f64)>, ModelError> {
        self.check_width(x.len())?;
        if x.iter().any(|v| !v.is_finite()) {
            return Ok(vec![]);
        }
        let s = self.scaler_for(key);
        let z: Vec<f64> = x
            .iter()
            .zip(s.mean.iter().zip(&s.std))
            .map(|(v, (m, s))| (v - m) / s)
            .collect();
        let terms: Vec<f64> = self
            .detector
            .terms(&z)
            .into_iter()
            .map(|t| if t.is_finite() { t.max(0.0) } else { 0.0 })
            .collect();
        if terms.is_empty() {
            return Ok(vec![]);
        }
        let total: f64 = terms.iter().sum();
        let shares: Vec<f64> = if total > 0.0 {
            terms.iter().map(|t| t / total).collect()
        } else {
            vec![0.0; terms.len()]
        };
        let mut out: Vec<(String, f64)> = self.features.iter().cloned().zip(shares).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    }

    /// Scores one row.
    pub fn score_one(&self, x: &[f64]) -> Result<f64, ModelError> {
        let a = ArrayView2::from_shape((1, x.len()), x).expect("1 x n");
        Ok(self.score(a)?[0])
    }

    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json(path, &bytes)
    }

    /// Parses and validates model JSON; `path` is only used in messages.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Model, ModelError> {
        let invalid = |reason: String| ModelError::Invalid {
            path: path.into(),
            reason,
        };
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            invalid(format!(
                "not JSON ({e}); the file may be truncated or corrupted"
            ))
        })?;
        match v.get("format_version").and_then(|f| f.as_u64()) {
            None => return Err(invalid("no format_version field".into())),
            Some(n) if n > FORMAT_VERSION as u64 => {
                return Err(invalid(format!("format version {n} is newer than this Forewarn reads ({FORMAT_VERSION}); upgrade Forewarn")))
            }
            Some(_) => {}
        }
        match v.pointer("/detector/kind").and_then(|k| k.as_str()) {
            None => return Err(invalid("no detector.kind field".into())),
            Some(kind) if !KINDS.contains(&kind) => {
                return Err(invalid(format!(
                    "unknown model kind '{kind}' (known: {})",
                    KINDS.join(", ")
                )))
            }
            Some(_) => {}
        }
        let m: Model = serde_json::from_value(v).map_err(|e| invalid(e.to_string()))?;
        m.validate().map_err(invalid)?;
        Ok(m)
    }

    /// Checks a model built in code the way [`Model::load`] checks a file.
    pub fn check(&self) -> Result<(), ModelError> {
        self.validate().map_err(|reason| ModelError::Invalid {
            path: PathBuf::from(format!("model '{}'", self.name)),
            reason,
        })
    }

    fn validate(&self) -> Result<(), String> {
        let n = self.features.len();
        if n == 0 {
            return Err("no features".into());
        }
        self.scaler.validate(n)?;
        let c = &self.calibration;
        if !(c.baseline.is_finite() && c.threshold.is_finite() && c.threshold > c.baseline) {
            return Err(format!(
                "calibration needs finite baseline < threshold, got {} and {}",
                c.baseline, c.threshold
            ));
        }
        if let Some(t) = &c.tail {
            t.check()?;
        }
        if self.key.is_some() && !matches!(self.detector, Detector::Robust(_)) {
            return Err("only robust models can be keyed".into());
        }
        self.detector.validate(n)
    }

    /// Writes the model as pretty JSON, atomically (temporary file then rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let io = |source| ModelError::Io {
            path: path.into(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).expect("models serialise");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The detector kind, e.g. `gmm`.
    pub fn kind(&self) -> &'static str {
        self.detector.kind()
    }

    /// Arguments an SQL call passes after the model name: the key (if keyed) and the features.
    pub fn arity(&self) -> usize {
        self.features.len() + usize::from(self.key.is_some())
    }
}

fn check_training(
    features: &[String],
    data: ArrayView2<f64>,
    kind: ModelKind,
) -> Result<(), ModelError> {
    if data.ncols() != features.len() {
        return Err(ModelError::Training(format!(
            "{} feature names for {} columns",
            features.len(),
            data.ncols()
        )));
    }
    let min_rows = match kind {
        ModelKind::Robust => 10,
        _ => 10 * (features.len() + 1),
    };
    if data.nrows() < min_rows {
        return Err(ModelError::Training(format!(
            "{} rows are too few for {} features (need {min_rows})",
            data.nrows(),
            features.len()
        )));
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Training(
            "training data contains NaN or infinite values".into(),
        ));
    }
    Ok(())
}

/// The `q` quantile (nearest rank) of `v`; NaN for an empty vector.
pub(crate) fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

fn calibrate(raw: Array1<f64>, quantile_level: f64, margin: f64) -> Calibration {
    let v = raw.to_vec();
    let baseline = quantile(v.clone(), 0.5);
    let q = quantile(v, quantile_level);
    let threshold = baseline + (q - baseline).max(1e-9) * margin;
    Calibration {
        baseline,
        threshold,
        method: format!("median .. quantile {quantile_level} of training scores, x {margin}"),
        tail: None,
    }
}

fn fingerprint(x: ArrayView2<f64>) -> String {
    let mut h = Sha256::new();
    for v in x.iter() {
        h.update(v.to_le_bytes());
    }
    format!("sha256:{:x}", h.finalize())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256Plus;

    fn normal_data(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        // Two correlated features plus an independent one.
        let mut a = Array2::zeros((n, 3));
        for mut r in a.rows_mut() {
            let base: f64 = rng.gen_range(-1.0..1.0);
            r[0] = 10.0 + base + rng.gen_range(-0.1..0.1);
            r[1] = 50.0 + 5.0 * base + rng.gen_range(-0.5..0.5);
            r[2] = rng.gen_range(0.0..1.0);
        }
        a
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn contributions_name_the_feature_that_moved() {
        let train = normal_data(2000, 1);
        let m = Model::train_gmm("t", names(), train.view(), &TrainOptions::default()).unwrap();
        // c far outside its range, a and b normal and consistent.
        let c = m.contributions(&[10.0, 50.0, 4.0]).unwrap();
        assert_eq!(c[0].0, "c");
        assert!(c[0].1 > 0.9, "{c:?}");
        let total: f64 = c.iter().map(|x| x.1).sum();
        assert!((total - 1.0).abs() < 1e-9);
        // The broken a-b correlation is explained by a and b, not c.
        let c = m.contributions(&[10.9, 45.2, 0.5]).unwrap();
        assert_ne!(c[0].0, "c", "{c:?}");
        assert!(c.iter().find(|x| x.0 == "c").unwrap().1 < 0.1, "{c:?}");
        assert!(m.contributions(&[f64::NAN, 50.0, 0.5]).unwrap().is_empty());
    }

    #[test]
    fn planted_outliers_score_above_one_and_normal_rows_below() {
        let train = normal_data(2000, 1);
        let m = Model::train_gmm("t", names(), train.view(), &TrainOptions::default()).unwrap();
        let test = normal_data(500, 2);
        let s = m.score(test.view()).unwrap();
        let false_alarms = s.iter().filter(|v| **v > 1.0).count();
        assert!(false_alarms <= 2, "{false_alarms} false alarms");
        // Each feature inside its own range, but the correlation between a and b broken.
        assert!(m.score_one(&[10.9, 45.2, 0.5]).unwrap() > 1.0);
        assert!(m.score_one(&[10.0, 50.0, 0.5]).unwrap() < 1.0);
        assert!(matches!(
            m.score_one(&[1.0, 2.0]),
            Err(ModelError::FeatureCount {
                expected: 3,
                got: 2,
                ..
            })
        ));
    }

    fn opts(kind: &str) -> TrainOptions {
        TrainOptions {
            kind: kind.parse().unwrap(),
            ..TrainOptions::default()
        }
    }

    #[test]
    fn every_kind_flags_planted_outliers_and_round_trips() {
        let train = normal_data(1500, 11);
        let test = normal_data(400, 12);
        let dir = std::env::temp_dir().join(format!("fw-kinds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (kind, _) in ModelKind::all() {
            let m = Model::train(kind, names(), train.view(), &opts(kind)).unwrap();
            let s = m.score(test.view()).unwrap();
            let false_alarms = s.iter().filter(|v| **v > 1.0).count();
            assert!(
                false_alarms <= 8,
                "{kind}: {false_alarms} false alarms of 400"
            );
            // Far outside every feature's range: every kind must flag it, and name c.
            // (Q alone only sees what leaves the principal subspace, which c does not.)
            let far = [10.0, 50.0, 9.0];
            if kind == "pca-q" {
                continue;
            }
            assert!(m.score_one(&far).unwrap() > 1.0, "{kind}");
            let c = m.contributions(&far).unwrap();
            assert_eq!(c[0].0, "c", "{kind}: {c:?}");
            let total: f64 = c.iter().map(|x| x.1).sum();
            assert!((total - 1.0).abs() < 1e-9, "{kind}");
            assert!(
                m.score_one(&[f64::NAN, 50.0, 0.5]).unwrap().is_nan(),
                "{kind}"
            );
            // Bit-exact round trip through the file.
            let p = dir.join(format!("{kind}.json"));
            m.save(&p).unwrap();
            let back = Model::load(&p).unwrap();
            assert_eq!(back, m, "{kind}");
            assert_eq!(
                back.score(test.view()).unwrap().to_vec(),
                s.to_vec(),
                "{kind}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn multivariate_kinds_catch_a_broken_correlation() {
        let train = normal_data(2000, 1);
        // a and b each inside their range, but their correlation broken.
        for kind in ["pca", "pca-q", "gmm", "knn", "kmeans"] {
            let m = Model::train(kind, names(), train.view(), &opts(kind)).unwrap();
            assert!(m.score_one(&[10.9, 45.2, 0.5]).unwrap() > 1.0, "{kind}");
            assert!(m.score_one(&[10.0, 50.0, 0.5]).unwrap() < 1.0, "{kind}");
        }
    }

    #[test]
    fn robust_baseline_per_device() {
        // Two devices with different normal levels of one sensor.
        let mut rng = Xoshiro256Plus::seed_from_u64(5);
        let mut rows = Vec::new();
        let mut keys = Vec::new();
        for i in 0..400 {
            let (k, level) = if i % 2 == 0 { ("p1", 1.0) } else { ("p2", 5.0) };
            rows.push(level + rng.gen_range(-0.1..0.1));
            keys.push(k.to_string());
        }
        let x = Array2::from_shape_vec((400, 1), rows).unwrap();
        let o = opts("robust");
        let m = Model::train_keyed(
            "vib",
            vec!["v".into()],
            Some(("device", &keys)),
            x.view(),
            &o,
        )
        .unwrap();
        assert_eq!(m.key.as_deref(), Some("device"));
        assert_eq!(m.arity(), 2);
        let probe = Array2::from_shape_vec((2, 1), vec![5.0, 5.0]).unwrap();
        // 5.0 is normal for p2 and far out for p1.
        let s = m
            .score_keyed(&[Some("p1"), Some("p2")], probe.view())
            .unwrap();
        assert!(s[0] > 1.0 && s[1] < 1.0, "{s:?}");
        // Keyed training is refused for kinds that have no per-key state.
        assert!(Model::train_keyed(
            "x",
            vec!["v".into()],
            Some(("device", &keys)),
            x.view(),
            &opts("pca")
        )
        .is_err());
    }

    /// Validation of a keyed model scores each row against its device's baseline: with
    /// the fleet's, p2's normal level (5.0) would look as odd as p1's fault (1.6).
    #[test]
    fn keyed_validation_uses_each_devices_baseline() {
        let mut rng = Xoshiro256Plus::seed_from_u64(6);
        let (mut rows, mut keys) = (Vec::new(), Vec::new());
        for i in 0..400 {
            let (k, level) = if i % 2 == 0 { ("p1", 1.0) } else { ("p2", 5.0) };
            rows.push(level + rng.gen_range(-0.1..0.1));
            keys.push(k.to_string());
        }
        let x = Array2::from_shape_vec((400, 1), rows).unwrap();
        let mut m = Model::train_keyed(
            "vib",
            vec!["v".into()],
            Some(("device", &keys)),
            x.view(),
            &opts("robust"),
        )
        .unwrap();
        // Validation: p1 faulty at 1.6 (labelled), everything else normal.
        let mut v = Vec::new();
        let mut vk = Vec::new();
        let mut labels = Vec::new();
        for i in 0..200 {
            let (k, level, bad) = match i % 4 {
                0 => ("p1", 1.6, true),
                1 => ("p1", 1.0, false),
                _ => ("p2", 5.0, false),
            };
            v.push(level + rng.gen_range(-0.05..0.05));
            vk.push(Some(k));
            labels.push(bad);
        }
        let xv = Array2::from_shape_vec((200, 1), v).unwrap();
        let width = m.calibrate_with_labels_keyed(Some(&vk[..3]), xv.view(), &labels);
        assert!(width.is_err(), "3 keys for 200 rows");
        m.calibrate_with_labels_keyed(Some(&vk), xv.view(), &labels)
            .unwrap();
        assert!(
            m.calibration.method.starts_with("best F1 (1.000)"),
            "{:?}",
            m.calibration
        );
        let s = m.score_keyed(&vk, xv.view()).unwrap();
        let flagged: Vec<bool> = s.iter().map(|s| *s > 1.0).collect();
        assert_eq!(flagged, labels);
    }

    #[test]
    fn labelled_validation_sets_the_threshold() {
        let train = normal_data(1000, 21);
        let mut m = Model::train("t", names(), train.view(), &opts("pca")).unwrap();
        let mut val = normal_data(200, 22);
        let mut labels = vec![false; 200];
        for i in 0..20 {
            // Mild anomalies, below the quantile threshold but separable.
            val[[i, 2]] = 1.2;
            labels[i] = true;
        }
        let before = m.score(val.view()).unwrap();
        let f1_before = metrics::Confusion::count(
            &before.iter().map(|v| *v >= 1.0).collect::<Vec<_>>(),
            &labels,
        )
        .f1();
        m.calibrate_with_labels(val.view(), &labels).unwrap();
        let after = m.score(val.view()).unwrap();
        let pred: Vec<bool> = after.iter().map(|v| *v >= 1.0).collect();
        let c = metrics::Confusion::count(&pred, &labels);
        assert!(c.f1() > 0.9, "{c:?}");
        assert!(c.f1() > f1_before, "{} vs {f1_before}", c.f1());
        assert!(m.calibration.method.contains("best F1"));
    }

    #[test]
    fn file_round_trip_is_exact_and_bad_files_are_named() {
        let train = normal_data(300, 3);
        let m = Model::train_gmm("rt", names(), train.view(), &TrainOptions::default()).unwrap();
        let dir = std::env::temp_dir().join(format!("fw-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rt.json");
        m.save(&p).unwrap();
        let back = Model::load(&p).unwrap();
        assert_eq!(back, m);
        let text = std::fs::read_to_string(&p).unwrap();
        let cases = [
            (text[..text.len() / 2].to_string(), "not JSON"),
            (
                text.replace("\"format_version\": 2", "\"format_version\": 99"),
                "newer than this Forewarn",
            ),
            (
                text.replace("\"kind\": \"gmm\"", "\"kind\": \"lstm\""),
                "unknown model kind 'lstm'",
            ),
            (
                text.replacen("\"c\"", "\"c\", \"d\"", 1),
                "scaler has 3 means",
            ),
            (
                text.replace("\"threshold\": ", "\"threshold\": -1e300, \"x\": "),
                "baseline < threshold",
            ),
            (
                text.replace("\"detector\"", "\"detective\""),
                "no detector.kind",
            ),
            (String::new(), "not JSON"),
        ];
        for (body, want) in cases {
            let e = Model::from_json(&p, body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("rt.json"), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
