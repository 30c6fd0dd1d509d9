//! Vibration features through the real pipeline: waveform readings as JSON arrays and in
//! both compact encodings (f32le, i16le with a scale), DSP functions inside window
//! aggregates (`avg(band_rms(...))`, `max(envelope_amplitude(...))`, ...), each window
//! checked against the same features computed here with a direct (O(n²)) DFT from the
//! definitions in docs/sql.md. Bad waveforms are dead-lettered with their reason.

use std::collections::BTreeMap;
use std::f64::consts::PI;

use base64::Engine as _;
use forewarn::{Output, Pipeline};
use serde_json::{json, Value};

const BASE: i64 = 1_700_000_000_000;
const N: usize = 1024;
const FS: f64 = 10_240.0;
/// The outer-race frequency the query asks the envelope about.
const BPFO: f64 = 107.5;

const SQL: &str = "
CREATE TABLE vib (
  device TEXT, ts TIMESTAMP, fs DOUBLE, wave DOUBLE[],
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'mqtt', topic = 'vib/+', topic_template = 'vib/{device}',
        max_samples = '1024');
CREATE TABLE out WITH (connector = 'mqtt', topic = 'out/{device}');
INSERT INTO out SELECT device, window_start, window_end, count(*) AS n,
  avg(band_rms(wave, fs, 100, 200)) AS band,
  max(envelope_amplitude(wave, fs, 2000, 4000, bpfo(1800, 9, 7.94, 39.04, 0))) AS env,
  avg(velocity_rms(wave, fs)) AS vel,
  iso_zone(avg(velocity_rms(wave, fs)), 'I') AS zone,
  max(wave_kurtosis(wave)) AS kurt
FROM vib GROUP BY tumble(interval '10 seconds'), device;
";

/// Reading `k` of device `d`: a 150 Hz tone growing with `k`, and impulses at BPFO
/// ringing a 3 kHz resonance, stronger on higher devices.
fn wave(d: usize, k: usize) -> Vec<f64> {
    let mut s = ((d * 1000 + k) as u64 * 0x9E37_79B9) | 1;
    let mut noise = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2
    };
    let ring = |t: f64| (-t / 0.0008).exp() * (2.0 * PI * 3000.0 * t).sin();
    (0..N)
        .map(|i| {
            let t = i as f64 / FS;
            let tone = (1.0 + 0.1 * k as f64) * (2.0 * PI * 150.0 * t + d as f64).sin();
            tone + 0.3 * d as f64 * ring(t % (1.0 / BPFO)) + noise()
        })
        .collect()
}

/// The payload of one reading, and the samples the pipeline will see after decoding.
fn payload(d: usize, k: usize, ts: i64) -> (Value, Vec<f64>) {
    let x = wave(d, k);
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    match d {
        1 => (json!({"ts": ts, "fs": FS, "wave": x}), x),
        2 => {
            let seen: Vec<f64> = x.iter().map(|&v| f64::from(v as f32)).collect();
            let bytes = x.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
            let w = json!({"encoding": "f32le", "data": b64(bytes)});
            (json!({"ts": ts, "fs": FS, "wave": w}), seen)
        }
        _ => {
            let scale = 0.001;
            let raw: Vec<i16> = x.iter().map(|&v| (v / scale).round() as i16).collect();
            let seen = raw.iter().map(|&r| f64::from(r) * scale).collect();
            let bytes = raw.iter().flat_map(|r| r.to_le_bytes()).collect();
            let w = json!({"encoding": "i16le", "scale": scale, "data": b64(bytes)});
            (json!({"ts": ts, "fs": FS, "wave": w}), seen)
        }
    }
}

/// A direct DFT, bins 0..=n/2 of `x`, with `sign` −1 (forward) or +1 (inverse).
fn dft(x: &[(f64, f64)], bins: usize, sign: f64) -> Vec<(f64, f64)> {
    let n = x.len();
    let (cos, sin): (Vec<f64>, Vec<f64>) = (0..n)
        .map(|j| {
            let a = 2.0 * PI * j as f64 / n as f64;
            (a.cos(), sign * a.sin())
        })
        .unzip();
    (0..bins)
        .map(|k| {
            x.iter()
                .enumerate()
                .fold((0.0, 0.0), |(re, im), (i, (a, b))| {
                    let j = (i * k) % n;
                    (re + a * cos[j] - b * sin[j], im + a * sin[j] + b * cos[j])
                })
        })
        .collect()
}

/// Mean square per bin: Hann window, mean removed, one-sided, scaled by the window's
/// power (docs/sql.md "Spectra").
fn power(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let w: Vec<f64> = (0..n)
        .map(|i| (PI * i as f64 / n as f64).sin().powi(2))
        .collect();
    let s2: f64 = w.iter().map(|w| w * w).sum();
    let xw: Vec<(f64, f64)> = x
        .iter()
        .zip(&w)
        .map(|(v, w)| ((v - mean) * w, 0.0))
        .collect();
    dft(&xw, n / 2 + 1, -1.0)
        .iter()
        .enumerate()
        .map(|(k, (re, im))| {
            let c = if k == 0 || k == n / 2 { 1.0 } else { 2.0 };
            c * (re * re + im * im) / (n as f64 * s2)
        })
        .collect()
}

fn df() -> f64 {
    FS / N as f64
}

fn band_rms(x: &[f64], lo: f64, hi: f64) -> f64 {
    let p = power(x);
    (1..p.len())
        .filter(|&k| (lo..=hi).contains(&(k as f64 * df())))
        .map(|k| p[k])
        .sum::<f64>()
        .sqrt()
}

fn velocity_rms(x: &[f64]) -> f64 {
    let p = power(x);
    let ms: f64 = (1..p.len())
        .map(|k| (k as f64 * df(), p[k]))
        .filter(|(f, _)| (10.0..=1000.0).contains(f))
        .map(|(f, p)| p / (2.0 * PI * f).powi(2))
        .sum();
    ms.sqrt() * 1000.0
}

fn envelope_amplitude(x: &[f64], lo: f64, hi: f64, freq: f64) -> f64 {
    let n = x.len();
    let spectrum = dft(&x.iter().map(|&v| (v, 0.0)).collect::<Vec<_>>(), n, -1.0);
    // The analytic signal of the band: positive bins doubled, the rest zero.
    let z: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let f = k as f64 * df();
            if k >= 1 && k < n.div_ceil(2) && (lo..=hi).contains(&f) {
                (
                    spectrum[k].0 * 2.0 / n as f64,
                    spectrum[k].1 * 2.0 / n as f64,
                )
            } else {
                (0.0, 0.0)
            }
        })
        .collect();
    let env: Vec<f64> = dft(&z, n, 1.0)
        .iter()
        .map(|(re, im)| (re * re + im * im).sqrt())
        .collect();
    let p = power(&env);
    let reach = 3.0 * df();
    let near: f64 = (1..p.len())
        .filter(|&k| (k as f64 * df() - freq).abs() <= reach)
        .map(|k| p[k])
        .sum();
    (2.0 * near).sqrt()
}

fn kurtosis(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let m2: f64 = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let m4: f64 = x.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
    m4 / (m2 * m2)
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1e-9),
        "{what}: pipeline {got}, direct {want}"
    );
}

#[tokio::test]
async fn window_aggregates_of_dsp_features_match_a_direct_computation() {
    let p = Pipeline::builder()
        .query_sql("vib.sql", SQL)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    // Three devices (JSON array, f32le, i16le), one waveform a second for 20 s.
    let mut seen: BTreeMap<(String, i64), Vec<Vec<f64>>> = BTreeMap::new();
    for k in 0..20 {
        let ts = BASE + k as i64 * 1000;
        for d in 1..=3 {
            let (body, samples) = payload(d, k, ts);
            h.push_json(&format!("vib/d{d}"), body.to_string().into_bytes())
                .await
                .unwrap();
            let start = ts - ts % 10_000;
            seen.entry((format!("d{d}"), start))
                .or_default()
                .push(samples);
        }
    }
    // Bad waveforms are refused with their reason, not computed on.
    let bad = [
        (
            json!({"ts": BASE + 500, "fs": FS, "wave": vec![1.0; N + 1]}),
            "too_many_samples",
        ),
        (
            json!({"ts": BASE + 600, "fs": FS, "wave": [1.0, "x"]}),
            "bad_waveform",
        ),
        (
            json!({"ts": BASE + 700, "fs": FS, "wave": {"encoding": "f16le", "data": "AAAA"}}),
            "bad_waveform",
        ),
    ];
    for (body, _) in &bad {
        h.push_json("vib/d1", body.to_string().into_bytes())
            .await
            .unwrap();
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    assert_eq!(stats.rejected.get("too_many_samples"), Some(&1));
    assert_eq!(stats.rejected.get("bad_waveform"), Some(&2));
    let mut rows = Vec::new();
    let mut letters = Vec::new();
    while let Some(o) = rx.recv().await {
        match o {
            Output::Row { row, .. } => rows.push(json!({
                "device": row.device,
                "window_start": row.window_start.as_millis(),
                "values": row.columns,
            })),
            Output::DeadLetter { letter, .. } => letters.push(letter.reason.to_string()),
            _ => {}
        }
    }
    letters.sort();
    assert_eq!(
        letters,
        ["bad_waveform", "bad_waveform", "too_many_samples"]
    );
    assert_eq!(rows.len(), seen.len(), "{rows:?}");
    for r in &rows {
        let device = r["device"].as_str().unwrap().to_string();
        let start = r["window_start"].as_i64().unwrap();
        let waves = &seen[&(device.clone(), start)];
        let v = &r["values"];
        let what = |f: &str| format!("{device} at {start}: {f}");
        assert_eq!(
            v["n"].as_f64().unwrap() as usize,
            waves.len(),
            "{}",
            what("n")
        );
        let n = waves.len() as f64;
        let band = waves.iter().map(|w| band_rms(w, 100.0, 200.0)).sum::<f64>() / n;
        close(v["band"].as_f64().unwrap(), band, &what("band"));
        let vel = waves.iter().map(|w| velocity_rms(w)).sum::<f64>() / n;
        close(v["vel"].as_f64().unwrap(), vel, &what("vel"));
        // ISO 10816-1 class I: A below 0.71 mm/s, B below 1.8, C below 4.5.
        let zone = match vel {
            v if v < 0.71 => "A",
            v if v < 1.8 => "B",
            v if v < 4.5 => "C",
            _ => "D",
        };
        assert_eq!(v["zone"], zone, "{}", what("zone"));
        let env = waves
            .iter()
            .map(|w| envelope_amplitude(w, 2000.0, 4000.0, 107.543_545_081_967_2))
            .fold(f64::MIN, f64::max);
        close(v["env"].as_f64().unwrap(), env, &what("env"));
        let kurt = waves.iter().map(|w| kurtosis(w)).fold(f64::MIN, f64::max);
        close(v["kurt"].as_f64().unwrap(), kurt, &what("kurt"));
    }
    // The envelope sees the defect grow with the device's impulses.
    let env_of = |d: &str| {
        rows.iter()
            .filter(|r| r["device"] == d)
            .map(|r| r["values"]["env"].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert!(
        env_of("d3") > env_of("d1"),
        "{} {}",
        env_of("d3"),
        env_of("d1")
    );
}

/// The shipped bearing query over a simulated fleet with waveforms: it alerts on the
/// machines whose bearings wear, before their functional failure, and on no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_bearing_query_warns_before_failure_and_only_on_worn_bearings() {
    use forewarn_sim::{FailureMode, Plant, PlantConfig, WaveformConfig};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Pipeline::builder()
        .query_file(root.join("queries/vibration/bearing_envelope.sql"))
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let mut plant = Plant::new(PlantConfig {
        seed: 5,
        machines: 12,
        duration_s: 3600,
        failing_fraction: 0.5,
        waveforms: Some(WaveformConfig::default()),
        ..Default::default()
    });
    let truth = plant.truth();
    let mut waves = 0;
    let mut messages = Vec::new();
    while !plant.done() {
        for (topic, r) in plant.step() {
            waves += usize::from(r.wave.is_some());
            let body = serde_json::to_vec(&r).unwrap();
            h.push_json(&topic, body.clone()).await.unwrap();
            messages.push((topic, body));
        }
    }
    let stats = h.finish().await.unwrap();
    drop(h);
    assert!(stats.rejected.is_empty(), "{:?}", stats.rejected);
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(o) = rx.recv().await {
        if let Output::Row { row, .. } = o {
            let at = row.window_end.as_millis();
            let e = first.entry(row.device.clone()).or_insert(at);
            *e = (*e).min(at);
        }
    }
    let worn: Vec<_> = truth
        .machines
        .iter()
        .filter(|m| {
            m.failure
                .as_ref()
                .is_some_and(|f| f.mode == FailureMode::BearingWear)
        })
        .collect();
    assert!(
        !worn.is_empty() && waves > 500,
        "{} worn, {waves} waveforms",
        worn.len()
    );
    let alerted: Vec<&String> = first.keys().collect();
    let mut want: Vec<&String> = worn.iter().map(|m| &m.device).collect();
    want.sort();
    assert_eq!(alerted, want, "alerts only and always on worn bearings");
    // The scalar query (vibration RMS and kurtosis in a multivariate model) on the same
    // machines, same seed: its first warning per machine, for comparison.
    let scalar = Pipeline::builder()
        .query_file(root.join("queries/plant_health.sql"))
        .models_dir(root.join("models"))
        .build()
        .await
        .unwrap();
    let (h, mut rx) = scalar.start();
    for (topic, body) in messages {
        h.push_json(&topic, body).await.unwrap();
    }
    h.finish().await.unwrap();
    drop(h);
    let mut scalar_first: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(o) = rx.recv().await {
        if let Output::Transition { message, .. } = o {
            if message.transition != forewarn::TransitionKind::Cleared {
                let at = message.window_end.as_millis();
                let e = scalar_first.entry(message.device.clone()).or_insert(at);
                *e = (*e).min(at);
            }
        }
    }
    let (mut env_leads, mut scalar_leads) = (Vec::new(), Vec::new());
    for m in &worn {
        let f = m.failure.as_ref().unwrap();
        let lead = f.failure_ms - first[&m.device];
        let scalar_lead = scalar_first.get(&m.device).map(|t| f.failure_ms - t);
        let pf = f.failure_ms - f.onset_ms;
        eprintln!(
            "{}: envelope warns {:.0} min before failure ({:.0} % of the P-F interval), the scalar query {}",
            m.device,
            lead as f64 / 60_000.0,
            100.0 * lead as f64 / pf as f64,
            scalar_lead.map_or("never".to_string(), |l| format!("{:.0} min", l as f64 / 60_000.0))
        );
        assert!(lead > 0, "{} alerted only after failing", m.device);
        env_leads.push(lead);
        scalar_leads.push(scalar_lead.unwrap_or(i64::MIN));
    }
    let median = |v: &mut Vec<i64>| {
        v.sort();
        v[v.len() / 2]
    };
    let (e, s) = (median(&mut env_leads), median(&mut scalar_leads));
    eprintln!(
        "median lead before failure: envelope {:.1} min, scalar {:.1} min",
        e as f64 / 60_000.0,
        s as f64 / 60_000.0
    );
}

/// Per-window features of one simulated fleet's waveforms: the envelope amplitude at
/// BPFO against the time-domain statistics a scalar monitor has (RMS, kurtosis), all of
/// the same waveforms, so the comparison does not depend on how the simulator models
/// its separate scalar channels.
const COMPARE_SQL: &str = "
CREATE TABLE vibration (
  site TEXT, line TEXT, device TEXT, ts TIMESTAMP, rpm DOUBLE, fs DOUBLE, wave DOUBLE[],
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (connector = 'mqtt', topic = 'plant/+/+/+/telemetry',
        topic_template = 'plant/{site}/{line}/{device}/telemetry', watermark_key = 'device',
        max_samples = '8192');
CREATE TABLE features WITH (connector = 'mqtt', topic = 'f/{device}');
INSERT INTO features SELECT device, window_start, window_end,
  max(envelope_amplitude(wave, fs, 2000, 4000, bpfo(rpm, 9, 7.94, 39.04, 0))) AS envelope,
  avg(wave_rms(wave)) AS rms,
  max(wave_kurtosis(wave)) AS kurtosis
FROM vibration WHERE wave IS NOT NULL
GROUP BY tumble(interval '5 minutes'), device;
";

/// Device → its windows in time order: (window end, feature → value).
type FleetWindows = BTreeMap<String, Vec<(i64, BTreeMap<String, f64>)>>;

/// The features of every window of a one-hour, 12-machine fleet with waveforms.
async fn fleet_features(seed: u64) -> (forewarn_sim::Truth, FleetWindows) {
    use forewarn_sim::{Plant, PlantConfig, WaveformConfig};
    let p = Pipeline::builder()
        .query_sql("compare.sql", COMPARE_SQL)
        .build()
        .await
        .unwrap();
    let (h, mut rx) = p.start();
    let mut plant = Plant::new(PlantConfig {
        seed,
        machines: 12,
        duration_s: 3600,
        failing_fraction: 0.5,
        waveforms: Some(WaveformConfig::default()),
        ..Default::default()
    });
    let truth = plant.truth();
    while !plant.done() {
        for (topic, r) in plant.step() {
            if r.wave.is_some() {
                h.push_json(&topic, serde_json::to_vec(&r).unwrap())
                    .await
                    .unwrap();
            }
        }
    }
    h.finish().await.unwrap();
    drop(h);
    let mut out = FleetWindows::new();
    while let Some(o) = rx.recv().await {
        if let Output::Row { row, .. } = o {
            let f = row
                .columns
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                .collect();
            out.entry(row.device.clone())
                .or_default()
                .push((row.window_end.as_millis(), f));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|(t, _)| *t);
    }
    (truth, out)
}

/// The measurement behind docs/models.md's bearing comparison. Each feature gets the
/// same rule, set on another fleet (seed 6): alert above 1.2 × the largest value any
/// healthy window there had (machines that do not fail, and failing ones before their
/// failure's onset). Then, on the evaluated fleet (seed 5): lead time of the first alert
/// before each worn bearing's functional failure, and false alerts (a machine without
/// bearing wear alerted, or a worn one before its onset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_warns_of_bearing_wear_before_rms_and_kurtosis_of_the_same_waveforms() {
    use forewarn_sim::FailureMode;
    let features = ["envelope", "rms", "kurtosis"];
    let (cal_truth, cal) = fleet_features(6).await;
    let onset: BTreeMap<&str, i64> = cal_truth
        .machines
        .iter()
        .map(|m| {
            (
                m.device.as_str(),
                m.failure.as_ref().map_or(i64::MAX, |f| f.onset_ms),
            )
        })
        .collect();
    let threshold: BTreeMap<&str, f64> = features
        .iter()
        .map(|f| {
            let healthy_max = cal
                .iter()
                .flat_map(|(d, w)| {
                    w.iter()
                        .filter(|(end, _)| *end <= onset[d.as_str()])
                        .map(|(_, v)| v[*f])
                })
                .fold(f64::MIN, f64::max);
            (*f, 1.2 * healthy_max)
        })
        .collect();
    let (truth, eval) = fleet_features(5).await;
    let mut report = Vec::new();
    let mut medians = BTreeMap::new();
    for f in features {
        let (mut leads, mut false_alerts) = (Vec::new(), 0);
        for m in &truth.machines {
            let first = eval
                .get(&m.device)
                .and_then(|w| w.iter().find(|(_, v)| v[f] > threshold[f]))
                .map(|(end, _)| *end);
            match m
                .failure
                .as_ref()
                .filter(|x| x.mode == FailureMode::BearingWear)
            {
                Some(x) => match first {
                    Some(t) if t < x.onset_ms => false_alerts += 1,
                    Some(t) => leads.push(x.failure_ms - t),
                    None => leads.push(i64::MIN),
                },
                None => false_alerts += usize::from(first.is_some()),
            }
        }
        leads.sort();
        let median = leads[leads.len() / 2];
        report.push(format!(
            "{f}: threshold {:.4}, median lead {}, {} of {} worn bearings warned, {false_alerts} false alerts",
            threshold[f],
            if median == i64::MIN { "none".to_string() } else { format!("{:.1} min", median as f64 / 60_000.0) },
            leads.iter().filter(|l| **l > 0).count(),
            leads.len(),
        ));
        medians.insert(f, (median, false_alerts));
    }
    let report = report.join("\n");
    eprintln!("{report}");
    let (env, env_false) = medians["envelope"];
    for f in ["rms", "kurtosis"] {
        let (m, fa) = medians[f];
        assert!(env > m, "the envelope warns earlier than {f}:\n{report}");
        assert!(env_false <= fa, "no more false alerts than {f}:\n{report}");
    }
}
