//! The Numenta Anomaly Benchmark (NAB v1.1) score of a set of alert timestamps.
//!
//! This reproduces the rules of the reference script `tools/nab_score.py` (kept
//! outside the repository, next to the NAB data), which follows NAB's own scorer:
//!
//! * **Rows.** NAB's unit of detection is a data row. A detection time is mapped to the
//!   first row, *in file order*, whose timestamp is at or after it (a few NAB files
//!   repeat timestamps or go backwards: the first row from the top whose timestamp is
//!   `>=` the detection is used). Detections later than the last row are dropped;
//!   several detections on one row count once.
//! * **Probation.** Rows `i < P`, `P = min(floor(0.15 N), 0.15 * 5000)` (at most 750
//!   rows), are not scored. A window ending inside the probation is not counted.
//! * **Windows.** Each `[start, end]` bound is the first row carrying exactly that
//!   timestamp; a bound matching no row is snapped inwards (the start to the first row
//!   at or after it, the end to the last row before the first row later than it). A
//!   window holding no row is dropped; windows sharing rows are merged.
//! * **Scaled sigmoid** `A(x) = 2 / (1 + exp(5x)) - 1`, `A(x) = -1` for `x > 3`.
//! * **TP.** Only the earliest scored detection `d` in a window of rows `s..=e` (width
//!   `W`) counts: `tp * A(-(e - d + 1) / W) / A(-1)`; a detection on the first row earns
//!   exactly `tp`.
//! * **FN.** A counted window with no detection costs `-fn`.
//! * **FP.** A detection outside every window costs `fp * A((d - e) / (W - 1))`, with
//!   `e`, `W` the end and width of the latest window ending before it, or `-fp` when no
//!   window ends before it or that window has width 1.
//! * **Normalisation** over files: `100 (S - S_null) / (S_perfect - S_null)` with `S`
//!   the sum of raw file scores, `S_null = -fn * counted windows` and
//!   `S_perfect = tp * windows`.
//!
//! Times are milliseconds (NAB's zone-less timestamps read as UTC). The scoring
//! functions are pure; [`load_corpus`] and friends read NAB's directory layout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Share of a file's rows in probation.
pub const PROBATION_PERCENT: f64 = 0.15;
/// The probation is capped at `PROBATION_PERCENT * PROBATION_CAP_FACTOR` (750) rows.
pub const PROBATION_CAP_FACTOR: f64 = 5000.0;

/// Errors of the NAB helpers.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    /// A profile name that is not one of NAB's three.
    #[error(
        "unknown NAB profile '{0}'; choose from standard, reward_low_FP_rate, reward_low_FN_rate"
    )]
    UnknownProfile(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{what} is not valid JSON: {source}")]
    Json {
        /// What was parsed (usually a path).
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Input that parses but does not have NAB's shape (bad timestamp, bad window...).
    #[error("{what}: {message}")]
    Format {
        /// Where (file name, line).
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// NAB's cost matrix (`config/profiles.json`): the weights of a true positive, a false
/// negative and a false positive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NabProfile {
    /// `tpWeight`.
    pub tp: f64,
    /// `fnWeight`.
    pub fn_: f64,
    /// `fpWeight`.
    pub fp: f64,
}

impl NabProfile {
    /// The names [`NabProfile::by_name`] accepts, in NAB's order.
    pub const NAMES: [&'static str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

    /// `standard`: TP 1, FN 1, FP 0.11.
    pub fn standard() -> NabProfile {
        NabProfile {
            tp: 1.0,
            fn_: 1.0,
            fp: 0.11,
        }
    }

    /// `reward_low_FP_rate`: TP 1, FN 1, FP 0.22.
    pub fn reward_low_fp_rate() -> NabProfile {
        NabProfile {
            tp: 1.0,
            fn_: 1.0,
            fp: 0.22,
        }
    }

    /// `reward_low_FN_rate`: TP 1, FN 2, FP 0.11.
    pub fn reward_low_fn_rate() -> NabProfile {
        NabProfile {
            tp: 1.0,
            fn_: 2.0,
            fp: 0.11,
        }
    }

    /// A profile by its NAB name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
    pub fn by_name(name: &str) -> Result<NabProfile, NabError> {
        match name {
            "standard" => Ok(Self::standard()),
            "reward_low_FP_rate" => Ok(Self::reward_low_fp_rate()),
            "reward_low_FN_rate" => Ok(Self::reward_low_fn_rate()),
            other => Err(NabError::UnknownProfile(other.to_string())),
        }
    }
}

/// One NAB data file: its row timestamps in file order and its labelled windows.
#[derive(Debug, Clone, PartialEq)]
pub struct NabFile {
    /// NAB's relative name, e.g. `realTraffic/speed_7578.csv`.
    pub name: String,
    /// Timestamp of each row, in file order (ms; not necessarily increasing).
    pub row_times: Vec<i64>,
    /// Labelled anomaly windows as `[start, end]` timestamps (ms), as in
    /// `combined_windows.json`.
    pub windows: Vec<(i64, i64)>,
}

/// Timestamp to row lookups in file order.
#[derive(Debug, Clone)]
struct RowIndex {
    /// Largest timestamp among rows `0..=i`.
    running_max: Vec<i64>,
    /// First row carrying each timestamp.
    first_exact: HashMap<i64, usize>,
}

impl RowIndex {
    fn new(times: &[i64]) -> RowIndex {
        let mut running_max = Vec::with_capacity(times.len());
        let mut top = i64::MIN;
        let mut first_exact = HashMap::with_capacity(times.len());
        for (i, &t) in times.iter().enumerate() {
            top = top.max(t);
            running_max.push(top);
            first_exact.entry(t).or_insert(i);
        }
        RowIndex {
            running_max,
            first_exact,
        }
    }

    /// First row (file order) with timestamp `>= t`; the row count if none.
    fn at_or_after(&self, t: i64) -> usize {
        self.running_max.partition_point(|&m| m < t)
    }

    /// Last row before the first row whose timestamp is `> t` (-1 if none).
    fn last_before_passing(&self, t: i64) -> i64 {
        self.running_max.partition_point(|&m| m <= t) as i64 - 1
    }
}

/// A labelled window located on rows (after snapping and merging).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NabWindow {
    /// First row of the window (inclusive).
    pub first_row: usize,
    /// Last row of the window (inclusive).
    pub last_row: usize,
    /// The labelled windows (as given) that make it up: more than one when merged.
    pub labels: Vec<(i64, i64)>,
}

impl NabWindow {
    /// Rows in the window.
    pub fn width(&self) -> usize {
        self.last_row - self.first_row + 1
    }
}

/// Something in the input the scorer had to adjust (the script's warnings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NabNote {
    /// A window bound matched no row exactly and was snapped inwards to these rows.
    Snapped {
        /// The window as given.
        window: (i64, i64),
        /// First row used.
        first_row: usize,
        /// Last row used.
        last_row: usize,
    },
    /// A window holds no row and is ignored.
    EmptyWindow((i64, i64)),
    /// Two windows share rows and were merged.
    Merged {
        /// The earlier window's first label.
        first: (i64, i64),
        /// The window merged into it.
        second: (i64, i64),
    },
}

/// How a window was scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum WindowOutcome {
    /// The window ends inside the probation: neither TP nor FN.
    InProbation,
    /// No scored detection in the window: `-fn`.
    Missed,
    /// The earliest scored detection in the window.
    Detected {
        /// Its row.
        row: usize,
        /// Rows from it to the window's last row.
        rows_before_end: usize,
    },
}

/// The score of one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowScore {
    /// The window.
    pub window: NabWindow,
    /// What happened in it.
    pub outcome: WindowOutcome,
    /// Its contribution to the raw score.
    pub score: f64,
}

/// A detection outside every window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FalsePositive {
    /// Its row.
    pub row: usize,
    /// Its (negative) contribution to the raw score.
    pub score: f64,
}

/// NAB's row counts (rows after the probation only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NabRowCounts {
    /// Detection rows inside a window.
    pub tp: i64,
    /// Detection rows outside every window.
    pub fp: i64,
    /// Window rows without a detection.
    pub fn_: i64,
    /// Other rows.
    pub tn: i64,
    /// Rows after the probation.
    pub scored_rows: i64,
}

/// The NAB score of one file under one profile, with its parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NabFileScore {
    /// The file's NAB name.
    pub name: String,
    /// The profile used.
    pub profile: NabProfile,
    /// Data rows.
    pub rows: usize,
    /// Probation length: rows with index below this are not scored.
    pub probation: f64,
    /// Detection times given.
    pub detections_given: usize,
    /// Detections later than the last row (dropped).
    pub detections_after_last_row: usize,
    /// Distinct rows the detections map to (probation included).
    pub detection_rows: usize,
    /// Of those, rows in the probation.
    pub detection_rows_in_probation: usize,
    /// Windows counted (not ending in the probation).
    pub windows_counted: usize,
    /// Counted windows with a detection.
    pub windows_detected: usize,
    /// Per window, in row order.
    pub windows: Vec<WindowScore>,
    /// Detections outside every window, in row order.
    pub false_positives: Vec<FalsePositive>,
    /// Sum of the TP terms.
    pub tp_score: f64,
    /// Sum of the FN terms.
    pub fn_score: f64,
    /// Sum of the FP terms.
    pub fp_score: f64,
    /// Raw file score: `tp_score + fn_score + fp_score`.
    pub raw: f64,
    /// Score of a detector that never fires: `-fn * windows_counted`.
    pub null: f64,
    /// Score of a perfect detector: `tp * windows`.
    pub perfect: f64,
    /// NAB's row counts.
    pub counts: NabRowCounts,
    /// Adjustments made to the input.
    pub notes: Vec<NabNote>,
}

/// NAB's probation length for a file of `n_rows` rows.
pub fn probation_rows(n_rows: usize) -> f64 {
    (PROBATION_PERCENT * n_rows as f64)
        .floor()
        .min(PROBATION_PERCENT * PROBATION_CAP_FACTOR)
}

/// NAB's scaled sigmoid: about +1 at -1 (a window's start), 0 at 0 (its end), towards
/// -1 after it, and exactly -1 beyond 3.
pub fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 {
        return -1.0;
    }
    2.0 * (1.0 / (1.0 + (5.0 * position).exp())) - 1.0
}

/// Locates `file`'s windows on its rows: bounds are the first row carrying exactly that
/// timestamp (snapped inwards when none does); windows without rows are dropped and
/// windows sharing rows merged. Returns the windows in row order and the notes.
pub fn locate_windows(file: &NabFile) -> (Vec<NabWindow>, Vec<NabNote>) {
    locate_with(file, &RowIndex::new(&file.row_times))
}

fn locate_with(file: &NabFile, index: &RowIndex) -> (Vec<NabWindow>, Vec<NabNote>) {
    let mut notes = Vec::new();
    let mut located = Vec::new();
    for &(t0, t1) in &file.windows {
        let lo = index.first_exact.get(&t0).map(|&i| i as i64);
        let hi = index.first_exact.get(&t1).map(|&i| i as i64);
        let (lo, hi) = match (lo, hi) {
            (Some(lo), Some(hi)) => (lo, hi),
            (lo, hi) => {
                let lo = lo.unwrap_or_else(|| index.at_or_after(t0) as i64);
                let hi = hi.unwrap_or_else(|| index.last_before_passing(t1));
                if hi >= lo {
                    notes.push(NabNote::Snapped {
                        window: (t0, t1),
                        first_row: lo as usize,
                        last_row: hi as usize,
                    });
                }
                (lo, hi)
            }
        };
        if hi < lo {
            notes.push(NabNote::EmptyWindow((t0, t1)));
            continue;
        }
        located.push(NabWindow {
            first_row: lo as usize,
            last_row: hi as usize,
            labels: vec![(t0, t1)],
        });
    }
    // Stable, like Python's sort.
    located.sort_by_key(|w| (w.first_row, w.last_row));
    let mut merged: Vec<NabWindow> = Vec::with_capacity(located.len());
    for w in located {
        match merged.last_mut() {
            Some(prev) if w.first_row <= prev.last_row => {
                notes.push(NabNote::Merged {
                    first: prev.labels[0],
                    second: w.labels[0],
                });
                prev.last_row = prev.last_row.max(w.last_row);
                prev.labels.extend(w.labels);
            }
            _ => merged.push(w),
        }
    }
    (merged, notes)
}

/// Maps detection times to rows: the sorted distinct rows, and the number of detections
/// later than the last row.
pub fn map_detections(file: &NabFile, detections_ms: &[i64]) -> (Vec<usize>, usize) {
    map_with(
        &RowIndex::new(&file.row_times),
        file.row_times.len(),
        detections_ms,
    )
}

fn map_with(index: &RowIndex, n: usize, detections_ms: &[i64]) -> (Vec<usize>, usize) {
    let mut rows = Vec::with_capacity(detections_ms.len());
    let mut unmapped = 0;
    for &t in detections_ms {
        let i = index.at_or_after(t);
        if i >= n {
            unmapped += 1;
        } else {
            rows.push(i);
        }
    }
    rows.sort_unstable();
    rows.dedup();
    (rows, unmapped)
}

/// Scores one file's detections (alert times, ms) under `profile`.
pub fn score_file(file: &NabFile, detections_ms: &[i64], profile: &NabProfile) -> NabFileScore {
    let index = RowIndex::new(&file.row_times);
    let (windows, notes) = locate_with(file, &index);
    let n = file.row_times.len();
    let (rows, unmapped) = map_with(&index, n, detections_ms);
    let p = probation_rows(n);
    let max_tp = scaled_sigmoid(-1.0);

    let mut earliest: Vec<Option<usize>> = vec![None; windows.len()];
    let mut hits_in_windows = 0i64;
    let mut false_positives = Vec::new();
    for &d in &rows {
        if (d as f64) < p {
            continue;
        }
        // Latest window starting at or before d.
        let k = windows.partition_point(|w| w.first_row <= d);
        if k > 0 && d <= windows[k - 1].last_row {
            hits_in_windows += 1;
            earliest[k - 1].get_or_insert(d);
            continue;
        }
        // Latest window ending before d.
        let j = windows.partition_point(|w| w.last_row < d);
        let unweighted = match j.checked_sub(1).map(|j| &windows[j]) {
            Some(w) if w.width() > 1 => {
                scaled_sigmoid((d - w.last_row) as f64 / (w.width() - 1) as f64)
            }
            _ => -1.0,
        };
        false_positives.push(FalsePositive {
            row: d,
            score: unweighted * profile.fp,
        });
    }

    let mut tp_score = 0.0;
    let mut fn_score = 0.0;
    let mut null = 0.0;
    let mut windows_counted = 0;
    let mut windows_detected = 0;
    let mut scored_window_rows = 0i64;
    let first_scored = p.ceil() as i64;
    let mut scored = Vec::with_capacity(windows.len());
    for (w, first) in windows.into_iter().zip(earliest) {
        if (w.last_row as f64) < p {
            scored.push(WindowScore {
                window: w,
                outcome: WindowOutcome::InProbation,
                score: 0.0,
            });
            continue;
        }
        windows_counted += 1;
        scored_window_rows += w.last_row as i64 - (w.first_row as i64).max(first_scored) + 1;
        null += -profile.fn_;
        let (outcome, score) = match first {
            None => {
                fn_score += -profile.fn_;
                (WindowOutcome::Missed, -profile.fn_)
            }
            Some(d) => {
                let position = -((w.last_row - d + 1) as f64) / w.width() as f64;
                let part = scaled_sigmoid(position) * profile.tp / max_tp;
                let part = if part > -profile.fn_ {
                    part
                } else {
                    -profile.fn_
                };
                tp_score += part;
                windows_detected += 1;
                (
                    WindowOutcome::Detected {
                        row: d,
                        rows_before_end: w.last_row - d,
                    },
                    part,
                )
            }
        };
        scored.push(WindowScore {
            window: w,
            outcome,
            score,
        });
    }

    let fp_score = false_positives.iter().fold(0.0, |s, f| s + f.score);
    let raw = tp_score + fn_score + fp_score;
    let scored_rows = if (n as f64) > p {
        n as i64 - first_scored
    } else {
        0
    };
    let fp_rows = false_positives.len() as i64;
    let counts = NabRowCounts {
        tp: hits_in_windows,
        fp: fp_rows,
        fn_: scored_window_rows - hits_in_windows,
        tn: scored_rows - scored_window_rows - fp_rows,
        scored_rows,
    };
    NabFileScore {
        name: file.name.clone(),
        profile: *profile,
        rows: n,
        probation: p,
        detections_given: detections_ms.len(),
        detections_after_last_row: unmapped,
        detection_rows: rows.len(),
        detection_rows_in_probation: rows.iter().filter(|&&d| (d as f64) < p).count(),
        windows_counted,
        windows_detected,
        perfect: profile.tp * scored.len() as f64,
        windows: scored,
        false_positives,
        tp_score,
        fn_score,
        fp_score,
        raw,
        null,
        counts,
        notes,
    }
}

/// Totals over several files scored under one profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NabTotals {
    /// `S`: sum of the raw file scores.
    pub raw: f64,
    /// `S_null`: sum of the files' null scores.
    pub null: f64,
    /// `S_perfect`: `tp` times the number of windows.
    pub perfect: f64,
    /// Windows (after merging).
    pub windows: usize,
    /// Windows detected.
    pub windows_detected: usize,
    /// False-positive detection rows.
    pub false_positives: usize,
    /// The normalised NAB score, `100 (S - S_null) / (S_perfect - S_null)`: 0 for a
    /// detector that never fires, 100 for a perfect one; NaN without counted windows.
    pub score: f64,
}

impl NabTotals {
    /// Sums `files` (all scored under the same profile).
    pub fn of(files: &[NabFileScore]) -> NabTotals {
        let raw = files.iter().fold(0.0, |s, f| s + f.raw);
        let null = files.iter().fold(0.0, |s, f| s + f.null);
        let windows: usize = files.iter().map(|f| f.windows.len()).sum();
        let perfect = files.first().map_or(0.0, |f| f.profile.tp) * windows as f64;
        let score = if perfect == null {
            f64::NAN
        } else {
            100.0 * (raw - null) / (perfect - null)
        };
        NabTotals {
            raw,
            null,
            perfect,
            windows,
            windows_detected: files.iter().map(|f| f.windows_detected).sum(),
            false_positives: files.iter().map(|f| f.false_positives.len()).sum(),
            score,
        }
    }
}

/// The normalised NAB score (0 to 100) of files scored under one profile.
pub fn normalised(files: &[NabFileScore]) -> f64 {
    NabTotals::of(files).score
}

/// Scores every file of a corpus; `detections` maps a file name to its alert times (a
/// file without an entry never fired).
pub fn score_corpus(
    files: &[NabFile],
    detections: &BTreeMap<String, Vec<i64>>,
    profile: &NabProfile,
) -> Vec<NabFileScore> {
    files
        .iter()
        .map(|f| {
            let d = detections.get(&f.name).map_or(&[][..], Vec::as_slice);
            score_file(f, d, profile)
        })
        .collect()
}

// --------------------------------------------------------------------------
// Reading NAB's layout (`data/<category>/<file>.csv`, `labels/combined_windows.json`)
// --------------------------------------------------------------------------

fn parse_time(text: &str, what: &dyn Fn() -> String) -> Result<i64, NabError> {
    forewarn_core::parse_rfc3339(text).ok_or_else(|| NabError::Format {
        what: what(),
        message: format!("cannot parse timestamp '{text}'"),
    })
}

/// Parses `combined_windows.json`: file name to `[start, end]` windows (ms).
pub fn parse_windows_json(text: &str) -> Result<BTreeMap<String, Vec<(i64, i64)>>, NabError> {
    let raw: BTreeMap<String, Vec<Vec<String>>> =
        serde_json::from_str(text).map_err(|source| NabError::Json {
            what: "windows file".into(),
            source,
        })?;
    let mut out = BTreeMap::new();
    for (name, windows) in raw {
        let mut located = Vec::with_capacity(windows.len());
        for pair in windows {
            let [a, b] = pair.as_slice() else {
                return Err(NabError::Format {
                    what: name.clone(),
                    message: format!("window {pair:?} is not a [start, end] pair"),
                });
            };
            let what = || name.clone();
            located.push((parse_time(a, &what)?, parse_time(b, &what)?));
        }
        out.insert(name, located);
    }
    Ok(out)
}

/// Parses a NAB data CSV (a header with a `timestamp` column, else the first column):
/// the row timestamps in file order. `source` names the file in errors.
pub fn parse_row_times(text: &str, source: &str) -> Result<Vec<i64>, NabError> {
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map(|(_, h)| h)
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| NabError::Format {
            what: source.to_string(),
            message: "empty file".into(),
        })?;
    let col = header
        .split(',')
        .position(|h| h.trim().trim_matches('"') == "timestamp")
        .unwrap_or(0);
    let mut times = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let what = || format!("{source}:{}", i + 1);
        let field = line.split(',').nth(col).ok_or_else(|| NabError::Format {
            what: what(),
            message: "no timestamp column".into(),
        })?;
        times.push(parse_time(field.trim().trim_matches('"'), &what)?);
    }
    Ok(times)
}

fn read(path: &Path) -> Result<String, NabError> {
    std::fs::read_to_string(path).map_err(|source| NabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `combined_windows.json`.
pub fn load_windows(path: &Path) -> Result<BTreeMap<String, Vec<(i64, i64)>>, NabError> {
    parse_windows_json(&read(path)?).map_err(|e| match e {
        NabError::Json { source, .. } => NabError::Json {
            what: path.display().to_string(),
            source,
        },
        other => other,
    })
}

/// Relative (`/`-separated) names of the CSV files under `data_dir`, sorted.
pub fn list_data_files(data_dir: &Path) -> Result<Vec<String>, NabError> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), NabError> {
        let io = |source| NabError::Io {
            path: dir.to_path_buf(),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type().map_err(io)?.is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else if name.ends_with(".csv") && !name.starts_with('.') {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(data_dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Reads a NAB corpus laid out as `root/data/<category>/<file>.csv` and
/// `root/labels/combined_windows.json`: every data file with an entry in the windows
/// file, sorted by name (the files the reference script scores by default).
pub fn load_corpus(root: &Path) -> Result<Vec<NabFile>, NabError> {
    let windows = load_windows(&root.join("labels").join("combined_windows.json"))?;
    let data_dir = root.join("data");
    let mut files = Vec::new();
    for name in list_data_files(&data_dir)? {
        let Some(w) = windows.get(&name) else {
            continue;
        };
        let path = name
            .split('/')
            .fold(data_dir.clone(), |p, part| p.join(part));
        let row_times = parse_row_times(&read(&path)?, &name)?;
        files.push(NabFile {
            name,
            row_times,
            windows: w.clone(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    /// `n` rows at 0, 10, 20, ... ms.
    fn file(n: usize, windows: &[(usize, usize)]) -> NabFile {
        NabFile {
            name: "f.csv".into(),
            row_times: (0..n as i64).map(|i| i * 10).collect(),
            windows: windows
                .iter()
                .map(|&(a, b)| (a as i64 * 10, b as i64 * 10))
                .collect(),
        }
    }

    fn at(row: usize) -> i64 {
        row as i64 * 10
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probation_rows(100), 15.0);
        assert_eq!(probation_rows(4032), 604.0);
        assert_eq!(probation_rows(10_000), 750.0);
        assert_eq!(probation_rows(0), 0.0);
    }

    #[test]
    fn sigmoid_shape() {
        assert!((scaled_sigmoid(0.0)).abs() < EPS);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
        let a = scaled_sigmoid(-1.0);
        assert!((a - (2.0 / (1.0 + (-5.0f64).exp()) - 1.0)).abs() < EPS);
        assert!(scaled_sigmoid(3.0) > -1.0);
    }

    #[test]
    fn tp_on_first_row_earns_tp_weight_exactly() {
        let f = file(100, &[(50, 59)]);
        for p in [
            NabProfile::standard(),
            NabProfile::reward_low_fp_rate(),
            NabProfile::reward_low_fn_rate(),
        ] {
            let s = score_file(&f, &[at(50)], &p);
            assert_eq!(s.raw, p.tp);
            assert_eq!(s.windows_detected, 1);
            assert_eq!(
                s.windows[0].outcome,
                WindowOutcome::Detected {
                    row: 50,
                    rows_before_end: 9
                }
            );
        }
        // On the last row: A(-1/10) / A(-1).
        let s = score_file(&f, &[at(59)], &NabProfile::standard());
        let want = scaled_sigmoid(-0.1) / scaled_sigmoid(-1.0);
        assert!((s.raw - want).abs() < EPS);
        assert!(s.raw > 0.0 && s.raw < 0.3);
    }

    #[test]
    fn only_the_earliest_detection_in_a_window_counts() {
        let f = file(100, &[(50, 59)]);
        let p = NabProfile::standard();
        let one = score_file(&f, &[at(52)], &p);
        let many = score_file(&f, &[at(55), at(52), at(59), at(52)], &p);
        assert_eq!(one.raw, many.raw);
        assert_eq!(many.counts.tp, 3);
        assert_eq!(many.detection_rows, 3);
    }

    #[test]
    fn missed_window_costs_fn_weight() {
        let f = file(100, &[(50, 59)]);
        assert_eq!(score_file(&f, &[], &NabProfile::standard()).raw, -1.0);
        let s = score_file(&f, &[], &NabProfile::reward_low_fn_rate());
        assert_eq!((s.raw, s.fn_score, s.null), (-2.0, -2.0, -2.0));
    }

    #[test]
    fn false_positive_weighting() {
        let f = file(200, &[(50, 59)]);
        let p = NabProfile::standard();
        // Just after the window: A(1/9) * 0.11, close to 0 (and negative).
        let s = score_file(&f, &[at(50), at(60)], &p);
        let fp = s.false_positives[0].score;
        assert!((fp - 0.11 * scaled_sigmoid(1.0 / 9.0)).abs() < EPS);
        assert!(fp < 0.0 && fp > -0.11 * 0.6);
        assert!((s.raw - (1.0 + fp)).abs() < EPS);
        // Beyond 3 * (W - 1) rows after the end: exactly -fp.
        let s = score_file(&f, &[at(50), at(59 + 28)], &p);
        assert_eq!(s.false_positives[0].score, -0.11);
        // Before any window (after probation): -fp.
        let s = score_file(&f, &[at(40)], &NabProfile::reward_low_fp_rate());
        assert_eq!(s.fp_score, -0.22);
        assert!((s.raw + 1.22).abs() < EPS);
    }

    #[test]
    fn width_one_window_is_scored_as_far() {
        let f = file(100, &[(50, 50)]);
        let p = NabProfile::standard();
        let s = score_file(&f, &[at(50), at(51)], &p);
        assert_eq!(s.tp_score, 1.0);
        assert_eq!(s.false_positives[0].score, -0.11);
    }

    #[test]
    fn probation_detections_are_ignored() {
        // 100 rows: probation is rows 0..15.
        let f = file(100, &[(50, 59)]);
        let p = NabProfile::standard();
        let s = score_file(&f, &[at(0), at(14), at(50)], &p);
        assert_eq!(s.raw, 1.0);
        assert_eq!(s.detection_rows_in_probation, 2);
        assert!(s.false_positives.is_empty());
        // Row 15 is scored.
        let s = score_file(&f, &[at(15)], &p);
        assert_eq!(s.false_positives.len(), 1);
        // A window ending in the probation is neither TP nor FN, but is in S_perfect.
        let f = file(100, &[(5, 10), (50, 59)]);
        let s = score_file(&f, &[at(5)], &p);
        assert_eq!(s.windows[0].outcome, WindowOutcome::InProbation);
        assert_eq!((s.raw, s.null, s.perfect), (-1.0, -1.0, 2.0));
        assert_eq!(s.windows_counted, 1);
    }

    #[test]
    fn detections_map_to_the_next_row_in_file_order() {
        // Rows: 0 10 20 30 20 40 ... (row 4 goes back to 20).
        let f = NabFile {
            name: "x".into(),
            row_times: vec![0, 10, 20, 30, 20, 40, 50],
            windows: vec![],
        };
        let (rows, after) = map_detections(&f, &[5, 10, 25, 20, 35, 50, 51, 60]);
        assert_eq!(rows, vec![1, 2, 3, 5, 6]);
        assert_eq!(after, 2);
    }

    #[test]
    fn windows_snap_inwards_and_merge() {
        let mut f = file(100, &[(50, 59), (55, 70), (80, 85)]);
        // A window between rows: 801..849 ms snaps to rows 81..84.
        f.windows.push((901, 949));
        // One holding no row.
        f.windows.push((951, 955));
        let (w, notes) = locate_windows(&f);
        let rows: Vec<_> = w.iter().map(|w| (w.first_row, w.last_row)).collect();
        assert_eq!(rows, vec![(50, 70), (80, 85), (91, 94)]);
        assert_eq!(w[0].labels.len(), 2);
        assert!(notes.contains(&NabNote::EmptyWindow((951, 955))));
        assert!(notes.iter().any(|n| matches!(n, NabNote::Merged { .. })));
        assert!(notes.contains(&NabNote::Snapped {
            window: (901, 949),
            first_row: 91,
            last_row: 94
        }));
        // Windows sharing one row merge; adjacent ones do not.
        let (w, _) = locate_windows(&file(100, &[(50, 59), (59, 62), (63, 64)]));
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].first_row, w[0].last_row), (50, 62));
        // A merged window scores once.
        let s = score_file(
            &file(100, &[(50, 59), (55, 70)]),
            &[at(50)],
            &NabProfile::standard(),
        );
        assert_eq!((s.raw, s.perfect), (1.0, 1.0));
    }

    #[test]
    fn window_bounds_use_the_first_row_with_that_timestamp() {
        // Timestamp 20 appears at rows 2 and 4; the window 20..30 is rows 2..3.
        let f = NabFile {
            name: "x".into(),
            row_times: vec![0, 10, 20, 30, 20, 40, 50, 60, 70, 80, 90, 100],
            windows: vec![(20, 30)],
        };
        let (w, notes) = locate_windows(&f);
        assert_eq!((w[0].first_row, w[0].last_row), (2, 3));
        assert!(notes.is_empty());
    }

    #[test]
    fn normalisation_null_and_perfect() {
        let files = [
            file(100, &[(50, 59)]),
            file(300, &[(100, 120), (200, 200)]),
            file(100, &[]),
        ];
        for p in NabProfile::NAMES.map(|n| NabProfile::by_name(n).unwrap()) {
            let none: Vec<_> = files.iter().map(|f| score_file(f, &[], &p)).collect();
            assert_eq!(normalised(&none), 0.0);
            let perfect: Vec<_> = files
                .iter()
                .map(|f| {
                    let starts: Vec<i64> = f.windows.iter().map(|w| w.0).collect();
                    score_file(f, &starts, &p)
                })
                .collect();
            assert_eq!(normalised(&perfect), 100.0);
            let t = NabTotals::of(&perfect);
            assert_eq!((t.windows, t.windows_detected), (3, 3));
        }
        // Half the windows at their start, one FP far away: (S - S_null) / (S_p - S_null).
        let p = NabProfile::standard();
        let scores = [
            score_file(&files[0], &[at(50)], &p),
            score_file(&files[1], &[at(290)], &p),
        ];
        let s = 1.0 - 1.0 - 1.0 - 0.11;
        let want = 100.0 * (s + 3.0) / (3.0 + 3.0);
        assert!((normalised(&scores) - want).abs() < 1e-9);
        assert!(normalised(&[score_file(&files[2], &[], &p)]).is_nan());
    }

    #[test]
    fn profiles_by_name() {
        assert_eq!(NabProfile::by_name("reward_low_FN_rate").unwrap().fn_, 2.0);
        assert!(matches!(
            NabProfile::by_name("nope"),
            Err(NabError::UnknownProfile(_))
        ));
    }

    #[test]
    fn parses_nab_layout() {
        let w = parse_windows_json(
            r#"{"a/b.csv": [["2014-02-19 10:50:00.000000", "2014-02-20 03:30:00.000000"]],
                "c.csv": []}"#,
        )
        .unwrap();
        let t0 = forewarn_core::parse_rfc3339("2014-02-19T10:50:00Z").unwrap();
        assert_eq!(w["a/b.csv"][0].0, t0);
        assert!(w["c.csv"].is_empty());
        assert!(parse_windows_json(r#"{"a": [["2014-02-19 10:50:00"]]}"#).is_err());
        let rows = parse_row_times(
            "timestamp,value\n2014-02-19 10:50:00,1\n2014-02-19 10:55:00,2\n\n",
            "x",
        )
        .unwrap();
        assert_eq!(rows, vec![t0, t0 + 300_000]);
        let rows = parse_row_times("value,timestamp\r\n3,2014-02-19 10:50:00\r\n", "x").unwrap();
        assert_eq!(rows, vec![t0]);
        assert!(matches!(
            parse_row_times("timestamp,value\nyesterday,1\n", "x"),
            Err(NabError::Format { .. })
        ));
    }
}
