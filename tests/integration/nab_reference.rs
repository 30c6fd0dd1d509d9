//! `forewarn::metrics::nab` agrees with the reference NAB scorer (`tools/nab_score.py`,
//! kept outside the repository next to the NAB data) to 1e-9.
//!
//! Each test skips (with a message) when python3, the script or the NAB data are absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use forewarn::metrics::nab::{self, NabFile, NabFileScore, NabProfile};
use serde_json::Value;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn script() -> Option<PathBuf> {
    let s = shared().join("tools/nab_score.py");
    let python = Command::new("python3").arg("--version").output();
    if !matches!(python, Ok(ref o) if o.status.success()) {
        eprintln!("skipped: python3 not found");
        return None;
    }
    if !s.is_file() {
        eprintln!("skipped: reference scorer not found at {}", s.display());
        return None;
    }
    Some(s)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fw-nab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// splitmix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Alert times for one file: some in windows, many outside, some in the probation,
/// some before the first and after the last row, some between rows, duplicates.
fn detections_for(file: &NabFile, rng: &mut Rng) -> Vec<i64> {
    let t = &file.row_times;
    let n = t.len() as u64;
    let step = if t.len() > 1 {
        (t[1] - t[0]).max(1)
    } else {
        1000
    };
    // A row's time, or a moment just before it (between two rows).
    let near = |rng: &mut Rng, i: usize| {
        if rng.chance(0.5) {
            t[i]
        } else {
            t[i] - rng.below(step as u64) as i64
        }
    };
    let mut out = Vec::new();
    for &(a, b) in &file.windows {
        if rng.chance(0.6) {
            let lo = t.partition_point(|&x| x < a);
            let hi = t.partition_point(|&x| x <= b).max(lo + 1);
            for _ in 0..1 + rng.below(3) {
                let i = lo + rng.below((hi - lo) as u64) as usize;
                out.push(near(rng, i.min(t.len() - 1)));
            }
        }
    }
    for _ in 0..rng.below(40) {
        let i = rng.below(n) as usize;
        out.push(near(rng, i));
    }
    let probation = nab::probation_rows(t.len()) as u64;
    for _ in 0..rng.below(4) {
        out.push(t[rng.below(probation.max(1)) as usize]);
    }
    if rng.chance(0.3) {
        out.push(t[0] - 3_600_000);
    }
    for _ in 0..rng.below(3) {
        out.push(t[t.len() - 1] + 1 + rng.below(10 * step as u64) as i64);
    }
    for _ in 0..rng.below(4) {
        if !out.is_empty() {
            let d = out[rng.below(out.len() as u64) as usize];
            out.push(d);
        }
    }
    // Order must not matter.
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i as u64 + 1) as usize);
    }
    out
}

/// `2014-02-19 10:50:00.000` (naive) or `2014-02-19T10:50:00.000Z`.
fn stamp(ms: i64, naive: bool) -> String {
    let s = forewarn_core::format_rfc3339(ms);
    if naive {
        s.replace('T', " ").trim_end_matches('Z').to_string()
    } else {
        s
    }
}

fn detections_json(d: &BTreeMap<String, Vec<i64>>, rng: &mut Rng) -> String {
    let obj: serde_json::Map<String, Value> = d
        .iter()
        .map(|(k, v)| {
            let list = v
                .iter()
                .map(|&ms| {
                    let s = stamp(ms, rng.chance(0.5));
                    if rng.chance(0.1) {
                        serde_json::json!({ "timestamp": s })
                    } else {
                        Value::String(s)
                    }
                })
                .collect();
            (k.clone(), Value::Array(list))
        })
        .collect();
    serde_json::to_string(&Value::Object(obj)).unwrap()
}

fn run_script(script: &Path, root: &Path, detections: &Path, profile: &str, out: &Path) -> Value {
    let o = Command::new("python3")
        .arg(script)
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--windows")
        .arg(root.join("labels/combined_windows.json"))
        .arg("--detections")
        .arg(detections)
        .arg("--profile")
        .arg(profile)
        .arg("--json")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nab_score.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9, "{what}: rust {a} vs script {b}");
}

/// Compares Rust's scores of `files` with the script's for every profile.
fn compare_with_script(
    script: &Path,
    root: &Path,
    files: &[NabFile],
    detections: &BTreeMap<String, Vec<i64>>,
    rng: &mut Rng,
    tag: &str,
) {
    let dir = tmp(tag);
    let det_path = dir.join("detections.json");
    std::fs::write(&det_path, detections_json(detections, rng)).unwrap();
    for name in NabProfile::NAMES {
        let profile = NabProfile::by_name(name).unwrap();
        let ours: Vec<NabFileScore> = nab::score_corpus(files, detections, &profile);
        let theirs = run_script(
            script,
            root,
            &det_path,
            name,
            &dir.join(format!("{name}.json")),
        );
        let what = format!("{tag}, {name}");
        close(
            nab::normalised(&ours),
            theirs["nab_score"].as_f64().unwrap(),
            &what,
        );
        let totals = nab::NabTotals::of(&ours);
        close(
            totals.raw,
            theirs["totals"]["raw_score"].as_f64().unwrap(),
            &what,
        );
        close(
            totals.null,
            theirs["totals"]["null_score"].as_f64().unwrap(),
            &what,
        );
        close(
            totals.perfect,
            theirs["totals"]["perfect_score"].as_f64().unwrap(),
            &what,
        );
        assert_eq!(
            theirs["files"].as_object().unwrap().len(),
            ours.len(),
            "{what}"
        );
        for s in &ours {
            let f = &theirs["files"][&s.name];
            let what = format!("{what}, {}", s.name);
            close(s.raw, f["raw_score"].as_f64().unwrap(), &what);
            close(s.tp_score, f["tp_score"].as_f64().unwrap(), &what);
            close(s.fn_score, f["fn_score"].as_f64().unwrap(), &what);
            close(s.fp_score, f["fp_score"].as_f64().unwrap(), &what);
            close(s.null, f["null_score"].as_f64().unwrap(), &what);
            close(s.probation, f["probation_rows"].as_f64().unwrap(), &what);
            let ints = [
                (s.rows, "rows"),
                (s.detections_given, "detections_given"),
                (s.detections_after_last_row, "detections_after_last_row"),
                (s.detection_rows, "detection_rows"),
                (s.detection_rows_in_probation, "detection_rows_in_probation"),
                (s.windows.len(), "windows"),
                (s.windows_counted, "windows_counted"),
                (s.windows_detected, "windows_detected"),
                (s.false_positives.len(), "false_positives"),
            ];
            for (v, key) in ints {
                assert_eq!(v as u64, f[key].as_u64().unwrap(), "{what}: {key}");
            }
            let counts = &f["row_counts"];
            assert_eq!(s.counts.tp, counts["tp"].as_i64().unwrap(), "{what}");
            assert_eq!(s.counts.fn_, counts["fn"].as_i64().unwrap(), "{what}");
            assert_eq!(s.counts.tn, counts["tn"].as_i64().unwrap(), "{what}");
            for (w, d) in s
                .windows
                .iter()
                .zip(f["window_details"].as_array().unwrap())
            {
                assert_eq!(w.window.first_row as u64, d["first_row"].as_u64().unwrap());
                assert_eq!(w.window.last_row as u64, d["last_row"].as_u64().unwrap());
                close(w.score, d["score"].as_f64().unwrap(), &what);
            }
            for (fp, d) in s
                .false_positives
                .iter()
                .zip(f["false_positive_details"].as_array().unwrap())
            {
                assert_eq!(fp.row as u64, d["row"].as_u64().unwrap(), "{what}");
                close(fp.score, d["score"].as_f64().unwrap(), &what);
            }
            // The same file under every profile, from the one run.
            for (p, all) in theirs["all_profiles"].as_object().unwrap() {
                let other = nab::score_file(
                    files.iter().find(|x| x.name == s.name).unwrap(),
                    detections.get(&s.name).map_or(&[][..], Vec::as_slice),
                    &NabProfile::by_name(p).unwrap(),
                );
                close(
                    other.raw,
                    all["per_file_raw_score"][&s.name].as_f64().unwrap(),
                    &format!("{what} as {p}"),
                );
            }
        }
        eprintln!("{what}: NAB score {:.6}", nab::normalised(&ours));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nab_dev_corpus_matches_reference_script() {
    let root = shared().join("data/nab-dev");
    if !root.join("labels/combined_windows.json").is_file() {
        eprintln!("skipped: NAB data not found at {}", root.display());
        return;
    }
    let Some(script) = script() else { return };
    let files = nab::load_corpus(&root).unwrap();
    assert_eq!(files.len(), 51);

    // Never firing: exactly 0; one detection at each window start: exactly 100.
    let none = BTreeMap::new();
    let starts: BTreeMap<String, Vec<i64>> = files
        .iter()
        .map(|f| (f.name.clone(), f.windows.iter().map(|w| w.0).collect()))
        .collect();
    for name in NabProfile::NAMES {
        let p = NabProfile::by_name(name).unwrap();
        assert_eq!(nab::normalised(&nab::score_corpus(&files, &none, &p)), 0.0);
        assert_eq!(
            nab::normalised(&nab::score_corpus(&files, &starts, &p)),
            100.0
        );
    }

    for seed in 1..=3u64 {
        let mut rng = Rng(seed);
        let mut detections = BTreeMap::new();
        for f in &files {
            // Some files never fire.
            if !rng.chance(0.1) {
                detections.insert(f.name.clone(), detections_for(f, &mut rng));
            }
        }
        compare_with_script(
            &script,
            &root,
            &files,
            &detections,
            &mut rng,
            &format!("seed {seed}"),
        );
    }
    // The perfect and empty sets through the script too.
    let mut rng = Rng(99);
    compare_with_script(&script, &root, &files, &starts, &mut rng, "starts");
}

/// Cases the NAB corpus lacks: timestamps going backwards, repeated timestamps, window
/// bounds between rows, windows holding no row, overlapping and width-1 windows, a
/// window ending in the probation.
#[test]
fn synthetic_corpus_matches_reference_script() {
    let Some(script) = script() else { return };
    let root = tmp("synthetic");
    let t0 = forewarn_core::parse_rfc3339("2014-01-01 00:00:00").unwrap();
    let min = 60_000;
    let mut files = Vec::new();
    // a: 400 rows every 5 min; rows 200..212 repeat the hour before them.
    let mut a: Vec<i64> = (0..400).map(|i| t0 + i * 5 * min).collect();
    for (i, t) in a.iter_mut().enumerate().take(212).skip(200) {
        *t = t0 + (i as i64 - 12) * 5 * min;
    }
    a[300] = a[299]; // a repeated timestamp
    let at = |v: &Vec<i64>, i: usize| v[i];
    let wa = vec![
        (at(&a, 10), at(&a, 20)),                 // ends in the probation (60 rows)
        (at(&a, 150), at(&a, 170)),               // overlaps the next one
        (at(&a, 165), at(&a, 180)),               //
        (at(&a, 192), at(&a, 205)),               // ends in the repeated hour
        (at(&a, 250), at(&a, 250)),               // width 1
        (at(&a, 280) + 1000, at(&a, 290) + 1),    // bounds between rows: snapped
        (at(&a, 320) + 1000, at(&a, 320) + 2000), // holds no row
        (at(&a, 299), at(&a, 310)),               // starts on a repeated timestamp
    ];
    // b: 3000 rows every minute (probation capped at 450 rows here: 15 %).
    let b: Vec<i64> = (0..3000).map(|i| t0 + i * min).collect();
    let wb = vec![
        (b[1000], b[1100]),
        (b[1100], b[1200]), // touches the previous one: merged
        (b[2000], b[2010]),
        (b[2990], b[2999]),
    ];
    for (name, rows, windows) in [("synth/a.csv", a, wa), ("synth/b.csv", b, wb)] {
        let path = root.join("data").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut csv = String::from("timestamp,value\n");
        for (i, &t) in rows.iter().enumerate() {
            csv.push_str(&format!("{},{}\n", &stamp(t, true)[..19], i % 7));
        }
        std::fs::write(&path, csv).unwrap();
        files.push(NabFile {
            name: name.to_string(),
            row_times: rows,
            windows,
        });
    }
    let windows: serde_json::Map<String, Value> = files
        .iter()
        .map(|f| {
            let w = f
                .windows
                .iter()
                .map(|&(s, e)| serde_json::json!([stamp(s, true), stamp(e, true)]))
                .collect();
            (f.name.clone(), Value::Array(w))
        })
        .collect();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    std::fs::write(
        root.join("labels/combined_windows.json"),
        serde_json::to_string(&windows).unwrap(),
    )
    .unwrap();
    // What the loader reads back is what was written.
    assert_eq!(nab::load_corpus(&root).unwrap(), files);
    let (wa, notes) = nab::locate_windows(&files[0]);
    assert_eq!(wa.len(), 6, "{notes:?}");

    for seed in 1..=4u64 {
        let mut rng = Rng(100 + seed);
        let detections: BTreeMap<String, Vec<i64>> = files
            .iter()
            .map(|f| {
                let mut d = detections_for(f, &mut rng);
                // Detections inside and just after the repeated hour.
                for _ in 0..3 {
                    d.push(f.row_times[195 + rng.below(20) as usize] - rng.below(2) as i64);
                }
                (f.name.clone(), d)
            })
            .collect();
        compare_with_script(
            &script,
            &root,
            &files,
            &detections,
            &mut rng,
            &format!("synthetic seed {seed}"),
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
