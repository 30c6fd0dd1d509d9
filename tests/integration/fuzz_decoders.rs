//! Property tests on everything that parses outside input: arbitrary bytes never panic,
//! and every message is accounted for (readings taken or a reason given). Decoders: the
//! JSON reading decoder (arbitrary bytes and near-miss JSON), topic templates and
//! filters, model files, checkpoint files (with a valid checksum over mutated contents,
//! so the parser behind the checksum is exercised), and the whole pipeline.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use forewarn::{CheckpointConfig, EngineConfig, Model, Pipeline};
use forewarn_formats::{filter_matches, JsonDecoder, TopicTemplate};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn decoder() -> JsonDecoder {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("v", DataType::Float64, false),
        Field::new("n", DataType::Int64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    JsonDecoder::new(
        schema,
        Some(TopicTemplate::parse("p/{device}/t").unwrap()),
        1 << 16,
    )
    .unwrap()
}

/// Near-miss JSON: readings built from plausible and implausible pieces.
fn near_json() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("1.5".to_string()),
        Just("-0".to_string()),
        Just("1e999".to_string()),
        Just("NaN".to_string()),
        Just("\"NaN\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"2026-11-22T10:00:00Z\"".to_string()),
        Just("\"2026-11-22T10:00:00\"".to_string()),
        Just("[1, 2]".to_string()),
        Just("{\"a\": {}}".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775809".to_string()),
        Just("\"\\ud800\"".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[a-z\\\\\"]{0,6}".prop_map(|s| format!("\"{s}\"")),
    ];
    let key = prop_oneof![
        Just("ts"),
        Just("v"),
        Just("n"),
        Just("ok"),
        Just("s"),
        Just("device"),
        Just("x")
    ];
    let reading = prop::collection::vec((key, value), 0..7).prop_map(|fields| {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    });
    prop_oneof![
        reading.clone(),
        prop::collection::vec(reading.clone(), 0..5).prop_map(|r| format!("[{}]", r.join(","))),
        (reading, 0usize..40).prop_map(|(r, cut)| r.chars().take(cut).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn json_decoder_takes_any_bytes(payload in prop::collection::vec(any::<u8>(), 0..300), topic in "[p/a-z{}+#]{0,12}") {
        let mut d = decoder();
        let before = d.buffered_rows();
        let out = d.decode(&topic, &payload);
        prop_assert_eq!(d.buffered_rows() - before, out.accepted);
        // Nothing vanishes: an empty outcome only for an empty array.
        prop_assert!(out.accepted + out.rejected.len() > 0);
        let _ = d.flush();
    }

    #[test]
    fn json_decoder_takes_near_miss_json(payload in near_json()) {
        let mut d = decoder();
        let out = d.decode("p/dev-1/t", payload.as_bytes());
        prop_assert_eq!(d.buffered_rows(), out.accepted);
        for r in &out.rejected {
            prop_assert!(!r.error.code().is_empty());
            prop_assert!(!r.error.to_string().is_empty());
        }
        if let Some(b) = d.flush() {
            prop_assert_eq!(b.num_rows(), out.accepted);
            // Accepted readings are complete and finite.
            prop_assert_eq!(b.column(2).null_count(), 0);
        }
    }

    #[test]
    fn topic_templates_and_filters_take_any_text(t in "[a-z{}+#/ ]{0,16}", topic in "[a-z+#/]{0,16}") {
        if let Ok(tpl) = TopicTemplate::parse(&t) {
            let _ = tpl.captures_of(&topic);
            let _ = tpl.subscription_filter();
            let _ = tpl.render(|c| Some(c.to_string()));
        }
        let _ = filter_matches(&t, &topic);
    }

    #[test]
    fn model_files_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let r = Model::from_json(std::path::Path::new("fuzz.json"), &bytes);
        if let Err(e) = r {
            prop_assert!(e.to_string().contains("fuzz.json"), "the error names the file: {}", e);
        }
    }
}

const SQL: &str = "
CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'mqtt', topic = 'f/+', topic_template = 'f/{device}');
CREATE TABLE o WITH (connector = 'mqtt', topic = 'o/{device}',
  warning_at = '5', clear_below = '4');
INSERT INTO o SELECT device, window_start, window_end, count(*) AS n, avg(v) AS score
  FROM r GROUP BY hop(interval '1 second', interval '3 seconds'), device;
";

fn config(dir: Option<&std::path::Path>) -> EngineConfig {
    EngineConfig {
        wall_clock: false,
        max_payload_bytes: 2048,
        checkpoint: dir.map(|d| {
            let mut c = CheckpointConfig::new(d);
            c.max_unacked = 5;
            c
        }),
        ..Default::default()
    }
}

/// A real checkpoint file's bytes, written by a pipeline over a few readings.
fn real_checkpoint(rt: &tokio::runtime::Runtime) -> Vec<u8> {
    // One directory per call: tests run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("forewarn-fuzz-ck-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    rt.block_on(async {
        let p = Pipeline::builder()
            .query_sql("f.sql", SQL)
            .config(config(Some(&dir)))
            .build()
            .await
            .unwrap();
        let (h, _rx) = p.start();
        for i in 0..23i64 {
            let m = serde_json::json!({"ts": 1_000_000 + i * 400, "v": i % 7});
            h.push_json(&format!("f/d{}", i % 3), m.to_string().into_bytes())
                .await
                .unwrap();
        }
        h.shutdown().await.unwrap();
    });
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let bytes = std::fs::read(files.last().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// Every byte of a real checkpoint changed three ways (high bit flipped, set to 0x7f,
/// set to 0xff) behind a valid checksum: each is refused with a reason or loads, and
/// none panics or aborts. (A random case of the test below once declared a 62 TB Arrow
/// body, which the IPC reader tried to allocate: an abort, not a panic.)
#[test]
fn checkpoint_files_with_any_one_byte_changed_are_refused_or_load() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = real_checkpoint(&rt);
    let body = good.len() - 32;
    let (mut refused, mut loaded) = (0, 0);
    for i in 0..body {
        for m in [0u8, 1, 2] {
            let mut b = good[..body].to_vec();
            b[i] = match m {
                0 => b[i] ^ 0x80,
                1 => 0x7f,
                _ => 0xff,
            };
            if b[i] == good[i] {
                continue;
            }
            let sum = Sha256::digest(&b);
            b.extend_from_slice(&sum);
            match forewarn::verify_checkpoint(&b) {
                Ok(()) => loaded += 1,
                Err(e) => {
                    assert!(!e.is_empty());
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 0 && refused + loaded > 2 * body);
    eprintln!("{body} bytes: {refused} changes refused, {loaded} loaded");
}

#[test]
fn checkpoint_files_with_valid_checksums_and_damaged_contents_never_panic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = real_checkpoint(&rt);
    let dir = std::env::temp_dir().join(format!("forewarn-fuzz-ck2-{}", std::process::id()));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    let body = good.len() - 32;
    let strategy = (
        prop::collection::vec((0..body, any::<u8>()), 1..6),
        prop::option::of(16..body),
    );
    let (restored, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&strategy, |(flips, cut)| {
            let mut b = good[..body].to_vec();
            for (i, x) in flips {
                b[i] ^= x | 1;
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            // Re-seal with a correct checksum: only the parser stands between the
            // damage and the engine.
            let sum = Sha256::digest(&b);
            b.extend_from_slice(&sum);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ckpt-0000000000000001.fwc"), &b).unwrap();
            let r = rt.block_on(
                Pipeline::builder()
                    .query_sql("f.sql", SQL)
                    .config(config(Some(&dir)))
                    .build(),
            );
            match r {
                Ok(p) => {
                    // Damage the parser cannot see (a digit in a counter, say) may load;
                    // the pipeline must then run.
                    restored.set(restored.get() + 1);
                    rt.block_on(async {
                        let (h, _rx) = p.start();
                        let m = serde_json::json!({"ts": 1_010_000, "v": 1});
                        h.push_json("f/d1", m.to_string().into_bytes()).await.ok();
                        let _ = h.finish().await;
                    });
                }
                Err(e) => {
                    refused.set(refused.get() + 1);
                    let e = e.to_string();
                    prop_assert!(e.contains("checkpoint"), "{}", e);
                }
            }
            Ok(())
        })
        .unwrap();
    let (restored, refused) = (restored.get(), refused.get());
    eprintln!("damaged checkpoints: {refused} refused, {restored} loaded");
    assert!(refused > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_whole_pipeline_takes_any_payloads_and_accounts_for_each() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let message = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        near_json().prop_map(String::into_bytes),
        (0i64..20_000, -5.0f64..5.0).prop_map(|(t, v)| {
            serde_json::json!({"ts": 1_000_000 + t, "v": v})
                .to_string()
                .into_bytes()
        }),
    ];
    let topic = prop_oneof![
        Just("f/d1"),
        Just("f/d2"),
        Just("f/"),
        Just("g/x"),
        Just("f/d1/x")
    ];
    let strategy = prop::collection::vec((topic, message), 1..60);
    runner
        .run(&strategy, |msgs| {
            let n = msgs.len() as u64;
            let stats = rt.block_on(async {
                let p = Pipeline::builder()
                    .query_sql("f.sql", SQL)
                    .config(config(None))
                    .build()
                    .await
                    .unwrap();
                let (h, mut rx) = p.start();
                let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                for (t, m) in msgs {
                    h.push_json(t, m).await.unwrap();
                }
                let s = h.finish().await.unwrap();
                drop(h);
                drain.await.unwrap();
                s
            });
            prop_assert_eq!(stats.messages_in, n);
            prop_assert_eq!(stats.query_errors, 0);
            // Every message gave readings or at least one dead letter.
            prop_assert!(stats.readings_in + stats.dead_letters_out >= n);
            Ok(())
        })
        .unwrap();
}
