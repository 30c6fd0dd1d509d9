//! Scoring: windows scored per second by each model kind, through `Model::score` on
//! batches of 1,024 windows (what `anomaly_score` gets from one Final run), and the
//! explanation (`Model::contributions`, one window at a time as `top_contributors` does).
//!
//! `cargo bench --bench scoring [-- FEATURES]` (default 6 features, like the demo's pump
//! model). Each kind is trained on 20,000 synthetic windows with two operating regimes
//! and correlated features, then scores 102,400 fresh windows. Best of 3 rounds. The
//! ratio column is against the `robust` kind in the same run (the cheapest possible
//! score: one subtraction and division per feature).

use std::hint::black_box;
use std::time::Instant;

use forewarn::{Model, ModelKind, TrainOptions};
use ndarray::Array2;

fn data(rows: usize, d: usize, seed: u64) -> Array2<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut a = Array2::zeros((rows, d));
    for mut r in a.rows_mut() {
        let regime = if next() > 0.0 { 1.0 } else { 0.3 };
        let base = next();
        for (j, v) in r.iter_mut().enumerate() {
            *v = regime * (1.0 + j as f64) + 0.5 * base + 0.1 * next();
        }
    }
    a
}

fn main() {
    let d: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(6);
    let names: Vec<String> = (0..d).map(|i| format!("f{i}")).collect();
    let train = data(20_000, d, 1);
    let test = data(102_400, d, 2);
    println!("scoring: {d} features, 20,000 training windows, 102,400 scored, best of 3");
    println!(
        "{:<8} {:>14} {:>16} {:>10} {:>20}",
        "kind", "train s", "windows/s", "vs robust", "explanations/s"
    );
    let mut rows = Vec::new();
    for (kind, k) in ModelKind::all() {
        let t0 = Instant::now();
        let m = Model::train(
            "b",
            names.clone(),
            train.view(),
            &TrainOptions {
                kind: k,
                quantile: 0.999,
                margin: 1.5,
                seed: 42,
            },
        )
        .unwrap();
        let train_s = t0.elapsed().as_secs_f64();
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            for chunk in test.axis_chunks_iter(ndarray::Axis(0), 1024) {
                black_box(m.score(chunk).unwrap());
            }
            best = best.max(test.nrows() as f64 / t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        let n = 10_240;
        for r in test.rows().into_iter().take(n) {
            black_box(m.contributions(r.as_slice().unwrap()).unwrap());
        }
        let expl = n as f64 / t.elapsed().as_secs_f64();
        rows.push((kind, train_s, best, expl));
    }
    let robust = rows.iter().find(|r| r.0 == "robust").map_or(1.0, |r| r.2);
    for (kind, train_s, best, expl) in rows {
        println!(
            "{kind:<8} {train_s:>14.2} {best:>16.0} {:>10.3} {expl:>20.0}",
            best / robust
        );
    }
}
