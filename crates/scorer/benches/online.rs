//! Online detectors (`detector = 'online'` / `'online-adaptive'` on a sink): windows
//! scored and learned per second on one core, one window at a time as the sink does,
//! 102,400 windows of `d` features spread over 1,000 devices, best of 3 rounds.
//!
//! `cargo bench -p forewarn-scorer --bench online [-- FEATURES]` (default 6). The ratio
//! is against a same-run baseline: one pass over the same windows that only sums
//! squared differences to a fixed mean (the least any detector can do per window).

use std::hint::black_box;
use std::time::Instant;

use forewarn_scorer::{OnlineSpec, OnlineState};

fn main() {
    let d: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(6);
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let n = 102_400;
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..d).map(|j| 10.0 * (j + 1) as f64 + next()).collect())
        .collect();
    let time = |f: &mut dyn FnMut()| {
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            f();
            best = best.max(n as f64 / t.elapsed().as_secs_f64());
        }
        best
    };
    let mean: Vec<f64> = (0..d).map(|j| 10.0 * (j + 1) as f64).collect();
    let floor = time(&mut || {
        for r in &rows {
            black_box(
                r.iter()
                    .zip(&mean)
                    .map(|(x, m)| (x - m) * (x - m))
                    .sum::<f64>(),
            );
        }
    });
    println!("online detectors: {d} features, {n} windows over 1,000 devices, best of 3");
    println!("{:<10} {:>14} {:>10}", "detector", "windows/s", "vs floor");
    println!("{:<10} {floor:>14.0} {:>10.3}", "floor", 1.0);
    for (name, spec) in [
        ("online", OnlineSpec::default()),
        ("adaptive", OnlineSpec::adaptive()),
    ] {
        let rate = time(&mut || {
            let mut states = vec![OnlineState::default(); 1000];
            for (i, r) in rows.iter().enumerate() {
                black_box(states[i % 1000].observe(&spec, r));
            }
        });
        println!("{name:<10} {rate:>14.0} {:>10.3}", rate / floor);
    }
    println!(
        "state per device (online): {} bytes for {d} features, plus the device id",
        std::mem::size_of::<OnlineState>() + 8 * (2 * d + 10)
    );
}
