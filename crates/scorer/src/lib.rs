//! Anomaly models for Forewarn: training with linfa, self-describing model files,
//! and scoring normalised so that 1.0 is the alarm threshold.
//!
//! This crate is pure computation: no async runtime, no network. Files are read
//! and written by the caller-facing helpers [`Model::load`] and [`Model::save`].

mod gmm;
mod registry;

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use gmm::GmmParams;
pub use registry::ModelRegistry;

/// Version of the model file format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

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

/// The detector inside a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detector {
    /// Gaussian mixture; the raw score is the negative log-likelihood.
    Gmm(GmmParams),
}

impl Detector {
    fn kind(&self) -> &'static str {
        match self {
            Detector::Gmm(_) => "gmm",
        }
    }
}

/// Per-feature standardisation fitted on the training data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    /// Feature means.
    pub mean: Vec<f64>,
    /// Feature standard deviations (never zero: constant features get 1).
    pub std: Vec<f64>,
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
    /// Mixture components.
    pub components: usize,
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
            components: 3,
            quantile: 0.999,
            margin: 1.5,
            seed: 42,
        }
    }
}

impl Model {
    /// Trains a Gaussian-mixture model on `data` (rows = samples, columns = `features`).
    pub fn train_gmm(
        name: &str,
        features: Vec<String>,
        data: ArrayView2<f64>,
        opts: &TrainOptions,
    ) -> Result<Model, ModelError> {
        if data.ncols() != features.len() {
            return Err(ModelError::Training(format!(
                "{} feature names for {} columns",
                features.len(),
                data.ncols()
            )));
        }
        if data.nrows() < 10 * (features.len() + 1) {
            return Err(ModelError::Training(format!(
                "{} rows are too few for {} features",
                data.nrows(),
                features.len()
            )));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Training(
                "training data contains NaN or infinite values".into(),
            ));
        }
        let mean = data.mean_axis(Axis(0)).expect("rows > 0");
        let std = data
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 1e-12 { s } else { 1.0 });
        let scaler = Scaler {
            mean: mean.to_vec(),
            std: std.to_vec(),
        };
        let z = standardise(&scaler, data);
        let params = gmm::fit(z.view(), opts.components, opts.seed)?;
        let detector = Detector::Gmm(params);
        let raw = detector_scores(&detector, z.view());
        let calibration = calibrate(raw, opts.quantile, opts.margin);
        Ok(Model {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            features,
            scaler,
            detector,
            calibration,
            provenance: Provenance {
                rows: data.nrows(),
                fingerprint: fingerprint(data),
                created: forewarn_core::format_rfc3339(now_ms()),
                forewarn_version: env!("CARGO_PKG_VERSION").to_string(),
            },
        })
    }

    /// Normalised scores for each row of `x` (columns in [`Model::features`] order).
    /// Rows with a missing (NaN) feature score NaN.
    pub fn score(&self, x: ArrayView2<f64>) -> Result<Array1<f64>, ModelError> {
        if x.ncols() != self.features.len() {
            return Err(ModelError::FeatureCount {
                model: self.name.clone(),
                expected: self.features.len(),
                names: self.features.join(", "),
                got: x.ncols(),
            });
        }
        let z = standardise(&self.scaler, x);
        let raw = detector_scores(&self.detector, z.view());
        let c = &self.calibration;
        Ok(raw.mapv(|r| (r - c.baseline) / (c.threshold - c.baseline)))
    }

    /// Which features make row `x` anomalous: each feature's share of the score (shares
    /// sum to 1), largest first. Empty when a feature is missing.
    pub fn contributions(&self, x: &[f64]) -> Result<Vec<(String, f64)>, ModelError> {
        if x.len() != self.features.len() {
            return Err(ModelError::FeatureCount {
                model: self.name.clone(),
                expected: self.features.len(),
                names: self.features.join(", "),
                got: x.len(),
            });
        }
        let z: Vec<f64> = x
            .iter()
            .zip(self.scaler.mean.iter().zip(&self.scaler.std))
            .map(|(v, (m, s))| (v - m) / s)
            .collect();
        let shares = match &self.detector {
            Detector::Gmm(g) => g.contributions(&z),
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
        if let Some(kind) = v.pointer("/detector/kind").and_then(|k| k.as_str()) {
            if kind != "gmm" {
                return Err(invalid(format!("unknown model kind '{kind}' (known: gmm)")));
            }
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
        if self.scaler.mean.len() != n || self.scaler.std.len() != n {
            return Err(format!(
                "scaler has {} means and {} deviations for {n} features",
                self.scaler.mean.len(),
                self.scaler.std.len()
            ));
        }
        if self.scaler.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.scaler.mean.iter().any(|m| !m.is_finite())
        {
            return Err("scaler has non-finite or non-positive values".into());
        }
        let c = &self.calibration;
        if !(c.baseline.is_finite() && c.threshold.is_finite() && c.threshold > c.baseline) {
            return Err(format!(
                "calibration needs finite baseline < threshold, got {} and {}",
                c.baseline, c.threshold
            ));
        }
        match &self.detector {
            Detector::Gmm(g) => g.validate(n),
        }
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
}

fn standardise(s: &Scaler, x: ArrayView2<f64>) -> Array2<f64> {
    let mean = ArrayView1::from(&s.mean);
    let std = ArrayView1::from(&s.std);
    (&x - &mean) / std
}

fn detector_scores(d: &Detector, z: ArrayView2<f64>) -> Array1<f64> {
    match d {
        Detector::Gmm(g) => g.neg_log_likelihood(z),
    }
}

fn calibrate(mut raw: Array1<f64>, quantile: f64, margin: f64) -> Calibration {
    let v = raw.as_slice_mut().expect("contiguous");
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let baseline = at(0.5);
    let q = at(quantile.clamp(0.5, 1.0));
    let threshold = baseline + (q - baseline).max(1e-9) * margin;
    Calibration {
        baseline,
        threshold,
        method: format!("median .. quantile {quantile} of training scores, x {margin}"),
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
                text.replace("\"format_version\": 1", "\"format_version\": 99"),
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
