//! The data-driven streaming suite: every `tests/streaming/*.slt` file run through the
//! live pipeline (embedded broker) and through replay, each checked against the file's
//! expectations. The format is described in `tests/streaming/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use forewarn::{EngineStats, Output, Pipeline};
use serde_json::Value;

/// An `expect [filter]` block: its line, the filter, the expected messages.
type Expect = (usize, Option<String>, Vec<(String, Value)>);

/// One parsed `.slt` file.
#[derive(Debug, Default)]
struct Case {
    /// The `statement ok` blocks, joined.
    sql: String,
    /// (line of the record, block text, expected `line:col: message`).
    errors: Vec<(usize, String, String)>,
    /// Input messages (topic, payload), in order.
    publish: Vec<(String, Vec<u8>)>,
    /// A history file: (name, contents).
    history: Option<(String, String)>,
    /// Options of the replay run.
    replay_args: Vec<String>,
    /// `expect [filter]` blocks: (line, filter, expected messages).
    expects: Vec<Expect>,
    /// `expect counters`: (dotted name, value).
    counters: Vec<(String, i64)>,
    /// `expect replay error TEXT`: replay must refuse the input with a message
    /// containing TEXT (the live run, which cannot refuse it, is not made).
    replay_error: Option<String>,
    /// `file NAME` blocks: files written beside the query file for commands.
    files: Vec<(String, String)>,
    /// `command ARGS` records: the arguments and the checks on the process.
    commands: Vec<Command>,
}

/// A run of the `forewarn` binary and what it must do.
#[derive(Debug, Default)]
struct Command {
    line: usize,
    args: String,
    exit: Option<i32>,
    /// (stream, text, exactly once).
    contains: Vec<(&'static str, String, bool)>,
    /// Texts standard error must not contain.
    absent: Vec<String>,
}

fn parse(path: &Path, text: &str) -> Result<Case, String> {
    let mut case = Case::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let at = |n: usize| format!("{}:{}", path.display(), n + 1);
    // The lines of the current record after its head, up to a blank line.
    let block = |i: &mut usize| -> Vec<&str> {
        let mut v = Vec::new();
        while *i < lines.len() && !lines[*i].trim().is_empty() {
            if !lines[*i].starts_with('#') {
                v.push(lines[*i]);
            }
            *i += 1;
        }
        v
    };
    while i < lines.len() {
        let line = lines[i];
        let n = i;
        i += 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
        match head {
            "statement" if rest == "ok" => {
                let b = block(&mut i);
                case.sql.push_str(&b.join("\n"));
                case.sql.push('\n');
            }
            "statement" => {
                let want = rest
                    .strip_prefix("error ")
                    .ok_or_else(|| format!("{}: 'statement ok' or 'statement error ...'", at(n)))?;
                let b = block(&mut i);
                case.errors.push((n + 1, b.join("\n"), want.to_string()));
            }
            "repeat" => {
                let k: usize = rest
                    .trim()
                    .parse()
                    .map_err(|_| format!("{}: repeat N", at(n)))?;
                // Every publish line of the block, in turn, for each i.
                let mut lines = Vec::new();
                for l in block(&mut i) {
                    let (topic, payload) = l
                        .strip_prefix("publish ")
                        .and_then(|r| r.split_once(' '))
                        .ok_or_else(|| format!("{}: repeat takes publish lines", at(n)))?;
                    lines.push((topic, payload));
                }
                for j in 0..k {
                    for (topic, payload) in &lines {
                        let p = expand(payload, j as i64).map_err(|e| format!("{}: {e}", at(n)))?;
                        case.publish.push((topic.to_string(), p.into_bytes()));
                    }
                }
            }
            "publish" => {
                let (topic, payload) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("{}: publish TOPIC PAYLOAD", at(n)))?;
                case.publish
                    .push((topic.into(), payload.as_bytes().to_vec()));
            }
            "history" => {
                let b = block(&mut i);
                case.history = Some((rest.trim().to_string(), b.join("\n") + "\n"));
            }
            "file" => {
                let b = block(&mut i);
                case.files
                    .push((rest.trim().to_string(), b.join("\n") + "\n"));
            }
            "command" => {
                let mut c = Command {
                    line: n + 1,
                    args: rest.to_string(),
                    ..Default::default()
                };
                for l in block(&mut i) {
                    let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                    match k {
                        "exit" => {
                            c.exit = Some(
                                v.trim()
                                    .parse()
                                    .map_err(|_| format!("{}: exit N", at(n)))?,
                            )
                        }
                        "stdout" => c.contains.push(("stdout", v.to_string(), false)),
                        "stderr" => c.contains.push(("stderr", v.to_string(), false)),
                        "stderr-once" => c.contains.push(("stderr", v.to_string(), true)),
                        "stderr-not" => c.absent.push(v.to_string()),
                        _ => {
                            return Err(format!(
                                "{}: after command: exit N, stdout TEXT, stderr TEXT, stderr-once TEXT or stderr-not TEXT",
                                at(n)
                            ))
                        }
                    }
                }
                case.commands.push(c);
            }
            "replay" => {
                case.replay_args = rest.split_whitespace().map(String::from).collect();
            }
            "expect" if rest.starts_with("replay error ") => {
                case.replay_error = Some(rest["replay error ".len()..].to_string());
            }
            "expect" if rest == "counters" => {
                for l in block(&mut i) {
                    let (k, v) = l
                        .split_once(' ')
                        .and_then(|(k, v)| Some((k, v.trim().parse::<i64>().ok()?)))
                        .ok_or_else(|| format!("{}: counter lines are 'name value'", at(n)))?;
                    case.counters.push((k.to_string(), v));
                }
            }
            "expect" => {
                let filter = (!rest.trim().is_empty()).then(|| rest.trim().to_string());
                let mut msgs = Vec::new();
                for l in block(&mut i) {
                    let (t, j) = l
                        .split_once(' ')
                        .ok_or_else(|| format!("{}: expected 'TOPIC JSON', got {l}", at(n)))?;
                    let v: Value = serde_json::from_str(j)
                        .map_err(|e| format!("{}: expected JSON ({e}): {j}", at(n)))?;
                    msgs.push((t.to_string(), v));
                }
                case.expects.push((n + 1, filter, msgs));
            }
            other => return Err(format!("{}: unknown record '{other}'", at(n))),
        }
    }
    if case.history.is_some() && !case.publish.is_empty() {
        return Err(format!(
            "{}: use either publish input or one history block",
            path.display()
        ));
    }
    Ok(case)
}

/// Fills a `repeat`ed payload's placeholders for index `i`.
fn expand(template: &str, i: i64) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        let words: Vec<&str> = inner.split_whitespace().collect();
        let value = match words.as_slice() {
            ["i"] => Some(i.to_string()),
            [w] if w.starts_with("i%") => {
                let k: i64 = w[2..].parse().map_err(|_| format!("bad {{{inner}}}"))?;
                Some(i.rem_euclid(k).to_string())
            }
            [kind @ ("time" | "epoch"), start, step] => {
                let start = forewarn_core::parse_rfc3339(start)
                    .ok_or_else(|| format!("bad time in {{{inner}}}"))?;
                let t = start + i * step_ms(step)?;
                Some(if *kind == "time" {
                    forewarn_core::format_rfc3339(t)
                } else {
                    t.to_string()
                })
            }
            // JSON braces, not a placeholder.
            _ => None,
        };
        match value {
            Some(v) => {
                out.push_str(&rest[..open]);
                out.push_str(&v);
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn step_ms(s: &str) -> Result<i64, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|k| s.split_at(k))
        .ok_or_else(|| format!("step '{s}' needs a unit"))?;
    let n: i64 = num.parse().map_err(|_| format!("bad step '{s}'"))?;
    Ok(n * match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("bad step unit in '{s}'")),
    })
}

async fn build(sql: &str) -> Result<Pipeline, forewarn::EngineError> {
    Pipeline::builder().query_sql("case.sql", sql).build().await
}

/// What one path produced.
struct Run {
    messages: Vec<(String, Value)>,
    stats: EngineStats,
}

/// Writes the case's input as the file replay reads.
fn input_file(case: &Case, dir: &Path) -> PathBuf {
    match &case.history {
        Some((name, text)) => {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
        None => {
            let p = dir.join("input.jsonl");
            let mut s = String::new();
            for (t, payload) in &case.publish {
                let payload = String::from_utf8(payload.clone()).expect("slt files are UTF-8");
                s.push_str(&serde_json::json!({"topic": t, "payload": payload}).to_string());
                s.push('\n');
            }
            std::fs::write(&p, s).unwrap();
            p
        }
    }
}

fn order(case: &Case) -> forewarn::replay::Order {
    if case.replay_args.iter().any(|a| a == "--sort") {
        forewarn::replay::Order::Sort
    } else {
        forewarn::replay::Order::Check
    }
}

async fn replay(case: &Case, input: &Path) -> Result<Run, String> {
    let pipeline = build(&case.sql).await.map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stats =
        forewarn::replay::replay_ordered(pipeline, input, None, order(case), move |o: Output| {
            let _ = tx.send(o.to_message());
        })
        .await
        .map_err(|e| format!("replay failed: {e}"))?;
    let messages = rx
        .try_iter()
        .map(|(t, p)| (t, serde_json::from_slice(&p).expect("outputs are JSON")))
        .collect();
    Ok(Run { messages, stats })
}

/// The messages the live run publishes: those replay pushes, in its order.
fn live_input(case: &Case, pipeline: &Pipeline, input: &Path) -> Vec<(String, Vec<u8>)> {
    forewarn::replay::ordered_messages(pipeline, input, None, order(case))
        .expect("history file")
        .map(|m| {
            let m = m.expect("history row");
            (m.topic, m.payload)
        })
        .collect()
}

async fn live(case: &Case, input: &Path, tag: &str) -> Result<Run, String> {
    use forewarn::mqtt::{self, EmbeddedBroker, MqttSink, MqttSource, QoS, SourceOptions};
    let pipeline = build(&case.sql).await.map_err(|e| e.to_string())?;
    let messages = live_input(case, &pipeline, input);
    let inputs: std::collections::HashSet<String> =
        messages.iter().map(|(t, _)| t.clone()).collect();
    let broker = EmbeddedBroker::start().map_err(|e| e.to_string())?;
    let url = broker.url();
    let (mut sub, mut rx) = MqttSource::start(SourceOptions::new(
        url.clone(),
        &format!("slt-observer-{tag}"),
        vec!["#".into()],
    ));
    sub.wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let running = mqtt::start(
        pipeline,
        &url,
        &mqtt::RunOptions::new(&format!("slt-engine-{tag}")),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut publisher = MqttSink::start(url.clone(), &format!("slt-plant-{tag}"), QoS::AtLeastOnce);
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    // Lock step: each message is taken (and, the engine's queue being empty, processed
    // as a micro-batch of its own) before the next is published.
    for (k, (t, p)) in messages.iter().enumerate() {
        publisher
            .publish(t, p.clone(), false)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while running.handle().stats().messages_in <= k as u64 {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("live: message {k} was not taken within 20 s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    publisher
        .flush(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let sent = messages.len() as u64;
    if !running
        .wait_for_messages(sent, Duration::from_secs(60))
        .await
    {
        return Err(format!(
            "live: the engine took {} of {sent} messages",
            running.handle().stats().messages_in
        ));
    }
    let stats = running.stop().await.map_err(|e| e.to_string())?;
    let outputs = stats.alerts_out
        + stats.rows_out
        + stats.transitions_out
        + stats.states_out
        + stats.dead_letters_out;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (got.len() as u64) < outputs {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) if inputs.contains(&m.topic) => {}
            Ok(Some(m)) => got.push((
                m.topic,
                serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
            )),
            _ => break,
        }
    }
    // Anything beyond the counted outputs is a defect too.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        if !inputs.contains(&m.topic) {
            got.push((
                m.topic,
                serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
            ));
        }
    }
    sub.stop().await;
    publisher.stop().await;
    Ok(Run {
        messages: got,
        stats,
    })
}

/// A pipeline whose micro-batches close only on `flush()` (or at 4,096 readings), never
/// on a timer or when idle, timed by event time only.
async fn flush_batched(sql: &str) -> Result<Pipeline, forewarn::EngineError> {
    Pipeline::builder()
        .query_sql("case.sql", sql)
        .config(forewarn::EngineConfig {
            flush_when_idle: false,
            max_batch_delay: Duration::from_secs(3600),
            wall_clock: false,
            ..Default::default()
        })
        .build()
        .await
}

/// The library pipeline without a broker, fed in micro-batches of irregular sizes (1,
/// 700, 3, 64, 1,500, 2, … readings), so that batch boundaries fall elsewhere than in the
/// other two runs.
async fn batched(case: &Case, input: &Path) -> Result<Run, String> {
    let pipeline = flush_batched(&case.sql).await.map_err(|e| e.to_string())?;
    let messages = live_input(case, &pipeline, input);
    let (h, mut rx) = pipeline.start();
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(o) = rx.recv().await {
            let (t, p) = o.to_message();
            v.push((t, serde_json::from_slice(&p).expect("outputs are JSON")));
        }
        v
    });
    const SIZES: [usize; 6] = [1, 700, 3, 64, 1500, 2];
    let (mut chunk, mut in_chunk) = (0, 0);
    for (t, p) in messages {
        h.push_json(&t, p).await.map_err(|e| e.to_string())?;
        in_chunk += 1;
        if in_chunk == SIZES[chunk % SIZES.len()] {
            h.flush().await.map_err(|e| e.to_string())?;
            chunk += 1;
            in_chunk = 0;
        }
    }
    let stats = h.finish().await.map_err(|e| e.to_string())?;
    drop(h);
    let messages = collect.await.map_err(|e| e.to_string())?;
    Ok(Run { messages, stats })
}

fn unordered_topic(t: &str) -> bool {
    t.split('/').any(|l| l == "deadletter" || l == "late")
}

/// Sorted by topic, publish order within a topic (dead letters and late rows sorted).
fn canonical(mut v: Vec<(String, Value)>) -> Vec<(String, Value)> {
    v.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            if unordered_topic(&a.0) {
                a.1.to_string().cmp(&b.1.to_string())
            } else {
                std::cmp::Ordering::Equal
            }
        })
    });
    v
}

/// Whether `got` has everything `want` lists.
fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(s), _) if s == "*" => true,
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| matches(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches(a, b))
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
        }
        _ => want == got,
    }
}

fn counter(stats: &EngineStats, name: &str) -> Option<i64> {
    let v = serde_json::to_value(stats).unwrap();
    let mut cur = &v;
    let parts: Vec<&str> = name.split('.').collect();
    for (k, p) in parts.iter().enumerate() {
        match cur.get(p) {
            Some(next) => cur = next,
            // A reason code nobody hit.
            None if k > 0 && cur.is_object() => return Some(0),
            None => return None,
        }
    }
    cur.as_i64()
}

fn print_run(path: &str, run: &Run) -> String {
    let mut s = format!("--- {path}: {} messages\n", run.messages.len());
    for (t, v) in canonical(run.messages.clone()) {
        let _ = writeln!(s, "{t} {v}");
    }
    let _ = writeln!(
        s,
        "counters: {}",
        serde_json::to_string(&run.stats).unwrap()
    );
    s
}

/// The differences between a run and the expectations, if any.
fn check(case: &Case, path: &str, run: &Run) -> Vec<String> {
    let mut fails = Vec::new();
    for (line, filter, want) in &case.expects {
        let by_topic = |v: &mut dyn Iterator<Item = &(String, Value)>| {
            let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (t, j) in v {
                m.entry(t.clone()).or_default().push(j.clone());
            }
            m
        };
        let got = by_topic(&mut run.messages.iter().filter(|(t, _)| {
            filter
                .as_ref()
                .is_none_or(|f| forewarn_formats::filter_matches(f, t))
        }));
        let want_by = by_topic(&mut want.iter());
        let topics: std::collections::BTreeSet<&String> =
            got.keys().chain(want_by.keys()).collect();
        let mut diff = String::new();
        for t in topics {
            let (w, g) = (
                want_by.get(t).cloned().unwrap_or_default(),
                got.get(t).cloned().unwrap_or_default(),
            );
            if unordered_topic(t) {
                // Each expected message matches a distinct published one, in any order.
                let mut left = g.clone();
                for x in &w {
                    match left.iter().position(|y| matches(x, y)) {
                        Some(k) => {
                            left.remove(k);
                        }
                        None => {
                            let _ = writeln!(diff, "  missing: {t} {x}");
                        }
                    }
                }
                for y in left {
                    let _ = writeln!(diff, "  unexpected: {t} {y}");
                }
            } else {
                for k in 0..w.len().max(g.len()) {
                    match (w.get(k), g.get(k)) {
                        (Some(x), Some(y)) if matches(x, y) => {}
                        (x, y) => {
                            let show =
                                |v: Option<&Value>| v.map_or("(nothing)".into(), |v| v.to_string());
                            let _ = writeln!(
                                diff,
                                "  {t} #{k}\n    want: {}\n     got: {}",
                                show(x),
                                show(y)
                            );
                        }
                    }
                }
            }
        }
        if !diff.is_empty() {
            fails.push(format!(
                "{path}: expect at line {line}: {} expected, {} published\n{diff}",
                want.len(),
                got.values().map(Vec::len).sum::<usize>()
            ));
        }
    }
    for (name, want) in &case.counters {
        let got = counter(&run.stats, name);
        if got != Some(*want) {
            fails.push(format!("{path}: counter {name}: want {want}, got {got:?}"));
        }
    }
    fails
}

/// Runs the `forewarn` binary in `dir` with a command record's arguments (`{sql}`,
/// `{input}` and `{dir}` filled in) and checks its exit code and output.
fn run_command(c: &Command, path: &Path, dir: &Path, input: &Path) -> Vec<String> {
    let args: Vec<String> = c
        .args
        .split_whitespace()
        .map(|a| {
            a.replace("{sql}", &dir.join("case.sql").display().to_string())
                .replace("{input}", &input.display().to_string())
                .replace("{dir}", &dir.display().to_string())
        })
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(&args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run forewarn");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    let mut fails = Vec::new();
    let mut fail = |what: String| {
        fails.push(format!(
            "{}:{}: forewarn {}: {what}\n--- stdout:\n{stdout}--- stderr:\n{stderr}",
            path.display(),
            c.line,
            c.args
        ))
    };
    if let Some(want) = c.exit {
        if out.status.code() != Some(want) {
            fail(format!("exit {:?}, want {want}", out.status.code()));
        }
    }
    for text in &c.absent {
        if stderr.contains(text.as_str()) {
            fail(format!("stderr has '{text}', want none"));
        }
    }
    for (stream, text, once) in &c.contains {
        let got = if *stream == "stdout" {
            &stdout
        } else {
            &stderr
        };
        let n = got.matches(text.as_str()).count();
        if n == 0 || (*once && n != 1) {
            fail(format!(
                "{stream} has '{text}' {n} times, want {}",
                if *once { "once" } else { "at least once" }
            ));
        }
    }
    fails
}

async fn run_file(path: &Path) -> Vec<String> {
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let case = match parse(path, &text) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut fails = Vec::new();
    for (line, block, want) in &case.errors {
        let got = match build(block).await {
            Ok(_) => "accepted".to_string(),
            Err(forewarn::EngineError::Sql(e)) => format!("{}:{}: {}", e.line, e.column, e.message),
            Err(e) => format!("not a located error: {e}"),
        };
        if got != *want {
            fails.push(format!(
                "{}:{line}: statement error\n   want: {want}\n    got: {got}",
                path.display()
            ));
        }
    }
    // The statement ok blocks must build, whether or not the file has input to run.
    if !case.sql.trim().is_empty() {
        if let Err(e) = build(&case.sql).await {
            fails.push(format!(
                "{}: statement ok blocks do not build: {e}",
                path.display()
            ));
            return fails;
        }
    }
    if case.sql.trim().is_empty() && case.commands.is_empty() {
        return fails;
    }
    let dir = std::env::temp_dir().join(format!("forewarn-slt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let input = input_file(&case, &dir);
    std::fs::write(dir.join("case.sql"), &case.sql).unwrap();
    for (name, text) in &case.files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    for c in &case.commands {
        fails.extend(run_command(c, path, &dir, &input));
    }
    let has_input = !case.publish.is_empty() || case.history.is_some();
    if case.sql.trim().is_empty() || (!has_input && case.expects.is_empty()) {
        let _ = std::fs::remove_dir_all(&dir);
        return fails;
    }
    if let Some(want) = &case.replay_error {
        let r = replay(&case, &input).await;
        match r {
            Err(e) if e.contains(want.as_str()) => {}
            Err(e) => fails.push(format!(
                "{}: replay error\n   want: ...{want}...\n    got: {e}",
                path.display()
            )),
            Ok(_) => fails.push(format!(
                "{}: replay accepted the input; want an error with: {want}",
                path.display()
            )),
        }
        let _ = std::fs::remove_dir_all(&dir);
        return fails;
    }
    let print = std::env::var_os("FOREWARN_SLT_PRINT").is_some();
    for (label, run) in [
        ("replay", replay(&case, &input).await),
        ("live", live(&case, &input, &name).await),
        ("batched", batched(&case, &input).await),
    ] {
        let path = format!("{} [{label}]", path.display());
        match run {
            Ok(run) => {
                if print {
                    eprintln!("{}", print_run(&path, &run));
                }
                fails.extend(check(&case, &path, &run));
            }
            Err(e) => fails.push(format!("{path}: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    fails
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_streaming_case_gives_the_same_answer_live_and_in_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/streaming");
    let only = std::env::var("FOREWARN_SLT").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .filter(|p| {
            only.as_ref().is_none_or(|o| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .contains(o.as_str())
            })
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut fails = Vec::new();
    for f in &files {
        fails.extend(run_file(f).await);
    }
    assert!(
        fails.is_empty(),
        "{} of {} files failed:\n\n{}",
        fails.len(),
        files.len(),
        fails.join("\n\n")
    );
}

#[test]
fn placeholders_expand() {
    assert_eq!(
        expand(
            r#"{"ts": "{time 2026-01-05T06:00:00Z 5s}", "v": {i}, "k": {i%3}}"#,
            4
        )
        .unwrap(),
        r#"{"ts": "2026-01-05T06:00:20.000Z", "v": 4, "k": 1}"#
    );
    assert_eq!(
        expand(r#"{"ts": {epoch 1970-01-01T00:00:00Z -1m}}"#, 2).unwrap(),
        r#"{"ts": -120000}"#
    );
}

#[test]
fn subset_matching_is_strict_where_it_lists() {
    let got = serde_json::json!({"a": 1.0, "b": {"c": [1, 2]}, "id": "x"});
    assert!(matches(
        &serde_json::json!({"a": 1, "b": {"c": [1, 2]}}),
        &got
    ));
    assert!(matches(&serde_json::json!({"id": "*"}), &got));
    assert!(!matches(&serde_json::json!({"a": 2}), &got));
    assert!(!matches(&serde_json::json!({"b": {"c": [1]}}), &got));
    assert!(!matches(&serde_json::json!({"z": "*"}), &got));
}

mod batch_shape {
    //! Properties behind the files: results do not depend on micro-batch boundaries,
    //! and `max_future` never rejects in-order input.
    use super::*;
    use proptest::prelude::*;

    const SQL: &str = "CREATE TABLE r (device TEXT, ts TIMESTAMP, v DOUBLE,
        WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
      WITH (connector = 'mqtt', topic = 'w/+', topic_template = 'w/{device}',
            max_future = '1 minute' KEYED);
    CREATE TABLE out WITH (connector = 'mqtt', topic = 'o/{device}');
    INSERT INTO out SELECT device, window_start, count(*) AS n, sum(v) AS s
    FROM r GROUP BY tumble(interval '10 seconds'), device;";

    /// Every output, sorted, and the rejections by reason, for `msgs` pushed in chunks
    /// of the given sizes (cycled).
    async fn run(
        keyed: bool,
        msgs: &[(String, Vec<u8>)],
        chunks: &[usize],
    ) -> (Vec<String>, BTreeMap<String, u64>) {
        let sql = SQL.replace(
            " KEYED",
            if keyed {
                ", watermark_key = 'device'"
            } else {
                ""
            },
        );
        let p = flush_batched(&sql).await.unwrap();
        let (h, mut rx) = p.start();
        let collect = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(o) = rx.recv().await {
                let (t, p) = o.to_message();
                let mut j: Value = serde_json::from_slice(&p).unwrap();
                if let Some(o) = j.as_object_mut() {
                    o.remove("detail");
                }
                v.push(format!("{t} {j}"));
            }
            v.sort();
            v
        });
        let (mut c, mut n) = (0, 0);
        for (t, p) in msgs {
            h.push_json(t, p.clone()).await.unwrap();
            n += 1;
            if n == chunks[c % chunks.len()] {
                h.flush().await.unwrap();
                (c, n) = (c + 1, 0);
            }
        }
        let stats = h.finish().await.unwrap();
        drop(h);
        (collect.await.unwrap(), stats.rejected)
    }

    /// Readings of up to three devices; each device's clock only moves forward, by up to
    /// 50 s between its readings (less than max_future), with the devices interleaved
    /// and trailing each other by up to `lag` ms.
    fn stream(in_order: bool) -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        proptest::collection::vec((0usize..3, 0i64..50_000, 0i64..30_000), 1..400).prop_map(
            move |steps| {
                let mut clock = [1_700_000_000_000i64; 3];
                steps
                    .into_iter()
                    .enumerate()
                    .map(|(i, (d, step, back))| {
                        clock[d] += step;
                        // Out of order: up to 30 s behind the device's own clock.
                        let ts = if in_order { clock[d] } else { clock[d] - back };
                        (
                            format!("w/d{d}"),
                            format!(r#"{{"ts": {ts}, "v": {}}}"#, i % 7).into_bytes(),
                        )
                    })
                    .collect()
            },
        )
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// In-order readings (each device's own clock only moves forward by less than
        /// max_future) are never rejected as from the future, whatever the batches.
        #[test]
        fn max_future_never_rejects_in_order_devices(
            msgs in stream(true),
            chunks in proptest::collection::vec(1usize..600, 1..8),
        ) {
            let rt = runtime();
            for keyed in [false, true] {
                let (_, rejected) = rt.block_on(run(keyed, &msgs, &chunks));
                prop_assert_eq!(rejected.get("future_timestamp"), None, "keyed {}", keyed);
            }
        }

        /// Any input, in or out of order: the same outputs (results, late and future
        /// rows) in one batch per reading as in arbitrary batches.
        #[test]
        fn outputs_do_not_depend_on_batch_boundaries(
            msgs in stream(false),
            chunks in proptest::collection::vec(1usize..600, 1..8),
        ) {
            let rt = runtime();
            for keyed in [false, true] {
                let one = rt.block_on(run(keyed, &msgs, &[1]));
                let any = rt.block_on(run(keyed, &msgs, &chunks));
                let only = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
                    a.iter().filter(|x| !b.contains(x)).cloned().collect()
                };
                prop_assert!(
                    one == any,
                    "keyed {}: one reading per batch only: {:?}\nbatches of {:?} only: {:?}\nrejected {:?} vs {:?}",
                    keyed,
                    only(&one.0, &any.0),
                    chunks,
                    only(&any.0, &one.0),
                    one.1,
                    any.1
                );
            }
        }
    }
}
