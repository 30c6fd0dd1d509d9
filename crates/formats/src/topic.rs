//! Topic templates: `plant/{site}/{line}/{device}/telemetry`.

/// A template whose `{name}` levels capture topic levels into columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    /// `+`: any one level, not captured.
    Any,
    /// `#`: any number of remaining levels (last position only).
    Rest,
}

/// A template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad topic template '{template}': {reason}")]
pub struct TopicTemplateError {
    /// The template text.
    pub template: String,
    /// What is wrong with it.
    pub reason: String,
}

impl TopicTemplate {
    /// Parses a template. `{name}` captures a level, `+` matches one level, `#` the rest.
    pub fn parse(text: &str) -> Result<Self, TopicTemplateError> {
        let err = |reason: String| TopicTemplateError {
            template: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let level = if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
                let name = &p[1..p.len() - 1];
                if !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(err(format!("'{name}' is not a column name")));
                }
                Level::Capture(name.to_string())
            } else if *p == "+" {
                Level::Any
            } else if *p == "#" {
                if i + 1 != parts.len() {
                    return Err(err("'#' may only be the last level".into()));
                }
                Level::Rest
            } else if p.contains(['{', '}', '+', '#']) {
                return Err(err(format!("level '{p}' mixes text and a placeholder")));
            } else {
                Level::Literal(p.to_string())
            };
            levels.push(level);
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            levels,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How the topics this template renders, each capture filled with one non-empty
    /// level free of wildcards, meet the MQTT subscription `filter`: `Some(true)` when
    /// every one matches it, `Some(false)` when none does, `None` when it depends on the
    /// values (or the template has wildcard levels of its own).
    pub fn routes_to(&self, filter: &str) -> Option<bool> {
        if self
            .levels
            .iter()
            .any(|l| matches!(l, Level::Any | Level::Rest))
        {
            return None;
        }
        let mut f = unshared_filter(filter).split('/');
        // Whether every topic matched so far (a capture met by a literal filter level
        // matches only when the value is that literal).
        let mut all = true;
        for level in &self.levels {
            match (f.next(), level) {
                (Some("#"), _) => return all.then_some(true),
                (Some("+"), _) => {}
                (Some(a), Level::Literal(b)) if a == b => {}
                (Some(_), Level::Literal(_)) => return Some(false),
                (Some(_), _) => all = false,
                (None, _) => return Some(false),
            }
        }
        match f.next() {
            // `a/#` matches `a` as well.
            Some("#") | None => all.then_some(true),
            Some(_) => Some(false),
        }
    }

    /// Names of the captured columns, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The MQTT subscription filter equivalent to this template (`{x}` → `+`).
    pub fn subscription_filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Why no topic can match both this template and the MQTT subscription `filter`
    /// (a phrase to follow the template, e.g. "has 3 levels, but ..."), or `None` when
    /// some topic can. `+` and `{x}` match any one level, `#` any number of
    /// levels (zero included) on either side.
    pub fn mismatch_with_filter(&self, filter: &str) -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for c in self.captures() {
            if seen.contains(&c) {
                return Some(format!(
                    "captures '{{{c}}}' twice: each column can come from one level only"
                ));
            }
            seen.push(c);
        }
        let f: Vec<&str> = unshared_filter(filter).split('/').collect();
        let shape = |n: usize, rest: bool| match (n, rest) {
            (1, false) => "1 level".to_string(),
            (n, false) => format!("{n} levels"),
            (n, true) => format!("{n} or more levels"),
        };
        let mut on_literal: Option<(usize, &str, &str)> = None;
        let mut uncaptured: Option<usize> = None;
        for i in 0.. {
            match (self.levels.get(i), f.get(i).copied()) {
                // Either side takes whatever levels the other still needs.
                (Some(Level::Rest), _) | (_, Some("#")) | (None, None) => break,
                (Some(_), None) | (None, Some(_)) => {
                    let t_rest = matches!(self.levels.last(), Some(Level::Rest));
                    let f_rest = f.last() == Some(&"#");
                    return Some(format!(
                        "has {}, but topic '{filter}' matches topics of {}: no message can match both",
                        shape(self.levels.len() - t_rest as usize, t_rest),
                        shape(f.len() - f_rest as usize, f_rest),
                    ));
                }
                (Some(Level::Literal(a)), Some(b)) if b != "+" && a != b => {
                    return Some(format!(
                        "has '{a}' at level {}, but topic '{filter}' has '{b}': no message can match both",
                        i + 1
                    ));
                }
                // A capture on a level the filter fixes gives every message the same
                // value: right for a filter naming one device (`w/d1`), but beside a
                // wildcard level left uncaptured it is a template shifted by a level,
                // and every device would be named after the literal.
                (Some(Level::Capture(c)), Some(b)) if b != "+" && !b.is_empty() => {
                    on_literal.get_or_insert((i + 1, c.as_str(), b));
                }
                (Some(Level::Literal(_) | Level::Any), Some("+")) => {
                    uncaptured.get_or_insert(i + 1);
                }
                (Some(Level::Capture(c)), Some("")) => {
                    return Some(format!(
                        "captures level {} as '{{{c}}}', but topic '{filter}' has it empty: no message can match both",
                        i + 1
                    ));
                }
                _ => {}
            }
        }
        match (on_literal, uncaptured) {
            (Some((at, c, lit)), Some(free)) => Some(format!(
                "captures level {at} as '{{{c}}}', where topic '{filter}' has the fixed level '{lit}', and leaves level {free}, a '+' of the topic, uncaptured: every message would have {c} = '{lit}' (is the template shifted by a level?)"
            )),
            _ => None,
        }
    }

    /// Matches a concrete topic; returns the captured `(column, value)` pairs.
    pub fn captures_of<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut spans = Vec::new();
        self.capture_spans(topic, &mut spans).then(|| {
            self.captures()
                .zip(spans.into_iter().map(|(a, b)| &topic[a..b]))
                .collect()
        })
    }

    /// Matches a concrete topic, leaving the byte range of each captured value in `out`
    /// in the order of [`captures`](Self::captures); `false` when the topic does not
    /// match. Ranges rather than slices: they borrow nothing, so the decoder keeps one
    /// buffer for every message without re-typing it.
    pub fn capture_spans(&self, topic: &str, out: &mut Vec<(usize, usize)>) -> bool {
        out.clear();
        // By hand rather than `split('/')`: this runs for every message.
        let bytes = topic.as_bytes();
        let mut at = 0;
        for level in &self.levels {
            if matches!(level, Level::Rest) {
                return true;
            }
            if at > bytes.len() {
                return false;
            }
            let end = match level {
                // A literal level is compared where it must be, without a scan.
                Level::Literal(s) => {
                    let end = at + s.len();
                    if end > bytes.len()
                        || !crate::same(s.as_bytes(), &bytes[at..end])
                        || (end < bytes.len() && bytes[end] != b'/')
                    {
                        return false;
                    }
                    end
                }
                Level::Capture(_) => {
                    let end = level_end(bytes, at);
                    if at == end {
                        return false;
                    }
                    out.push((at, end));
                    end
                }
                _ => level_end(bytes, at),
            };
            at = end + 1;
        }
        at > bytes.len()
    }

    /// Fills the template's captures from a lookup (used for sink topics such as
    /// `forewarn/alerts/{device}`). Levels that cannot be filled become `_`.
    pub fn render(&self, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
        self.write(|n, out| match lookup(n).filter(|v| !v.is_empty()) {
            Some(v) => out.extend(v.chars().map(|c| match c {
                '/' | '+' | '#' => '_',
                c => c,
            })),
            None => out.push('_'),
        })
    }

    /// The topic with each capture's value as it is and a missing one as an empty
    /// level: the topic a device with these values would publish on (history replay).
    /// Unlike [`render`](Self::render) nothing is substituted, so a value live input
    /// could not carry (empty, or with a `/`) gives a topic the template does not match,
    /// and the reading is refused as it would be live.
    pub fn render_exact(&self, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
        self.write(|n, out| out.push_str(&lookup(n).unwrap_or_default()))
    }

    /// The levels joined by `/`, each capture written by `capture` (its name, the
    /// topic so far). Into one string, with no level strings to join: a backtest
    /// renders a topic for each of its window results.
    fn write(&self, mut capture: impl FnMut(&str, &mut String)) -> String {
        // Room for the template's text and a few captured values' worth more.
        let mut out = String::with_capacity(self.text.len() + 32);
        for (i, l) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match l {
                Level::Literal(s) => out.push_str(s),
                Level::Capture(n) => capture(n, &mut out),
                Level::Any => out.push('+'),
                Level::Rest => out.push('#'),
            }
        }
        out
    }
}

/// What is wrong with an MQTT topic filter a client would subscribe to, if anything:
/// brokers refuse an empty filter and wildcards that are not a whole level, or a `#`
/// that is not the last level (the subscription then silently delivers nothing).
pub fn filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("is empty".into());
    }
    if let Some(rest) = filter.strip_prefix("$share/") {
        return match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => {
                filter_problem(f)
            }
            _ => Some("is a shared subscription without its group and filter: write $share/{group}/{filter}".into()),
        };
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if (l.contains('+') || l.contains('#')) && l.len() > 1 {
            return Some(format!(
                "has '{l}' at level {}: a wildcard '+' or '#' must be a whole level",
                i + 1
            ));
        }
        if *l == "#" && i + 1 < levels.len() {
            return Some(format!(
                "has '#' at level {} of {}: '#' may only be the last level",
                i + 1,
                levels.len()
            ));
        }
        // A template's placeholder in the subscription matches only a level spelt with
        // the braces: the broker would deliver nothing, and the source stay silent.
        if l.len() > 2 && l.starts_with('{') && l.ends_with('}') {
            return Some(format!(
                "has '{l}' at level {}: the topic is an MQTT subscription filter, which would match only a level spelt '{l}'; write '+' there (topic = '{}') and name the level in topic_template",
                i + 1,
                levels
                    .iter()
                    .map(|l| if l.starts_with('{') && l.ends_with('}') { "+" } else { l })
                    .collect::<Vec<_>>()
                    .join("/")
            ));
        }
    }
    None
}

/// The topic filter inside a shared subscription (`$share/{group}/{filter}`, which
/// the broker delivers to one subscriber of the group at a time); any other filter
/// as it is.
pub fn unshared_filter(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    }
}

/// Whether an MQTT topic filter (with `+` and `#`; a shared subscription's
/// `$share/{group}/` ignored) matches a topic.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = unshared_filter(filter).split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Where the level starting at `at` ends: the next `/` or the end of the topic. Eight
/// bytes at a time, since most levels are shorter: a `/` zeroes its lane of `x ^ SLASHES`,
/// and the lowest zero lane is flagged exactly (lanes above it may be flagged falsely).
fn level_end(b: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ (ONES * b'/' as u64);
        let zero = x.wrapping_sub(ONES) & !x & HIGH;
        if zero != 0 {
            return at + (zero.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while at < b.len() && b[at] != b'/' {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_agrees_with_matching_every_rendered_topic() {
        let templates = [
            "plant/{device}/data",
            "{site}/{device}",
            "a/b",
            "a/{x}/b/{y}",
        ];
        let filters = [
            "plant/+/data",
            "plant/#",
            "#",
            "plant/p1/data",
            "plant/+",
            "+/+",
            "a/b/#",
            "a/+/b/+",
            "a/b",
            "x/#",
            "$share/g/plant/+/data",
            "+/p1",
            "a/b/c",
            "plant/+/data/#",
        ];
        // Values, including ones equal to the filters' literal levels.
        let values = ["p1", "data", "a", "b", "plant", "zz"];
        for t in templates {
            let tt = TopicTemplate::parse(t).unwrap();
            let n = tt.captures().count();
            let mut topics = Vec::new();
            for i in 0..values.len().pow(n as u32) {
                let mut k = i;
                topics.push(tt.render_exact(|_| {
                    let v = values[k % values.len()];
                    k /= values.len();
                    Some(v.to_string())
                }));
            }
            for f in filters {
                let hits = topics.iter().filter(|x| filter_matches(f, x)).count();
                let truth = match hits {
                    0 => Some(false),
                    h if h == topics.len() => Some(true),
                    _ => None,
                };
                // A literal filter level a capture could equal is reported as mixed, so
                // only the certain answers must agree with every topic.
                match tt.routes_to(f) {
                    Some(r) => assert_eq!(Some(r), truth, "{t} vs {f}"),
                    None => assert_ne!(truth, Some(true), "{t} vs {f}"),
                }
            }
        }
        assert_eq!(
            TopicTemplate::parse("a/+/{x}").unwrap().routes_to("#"),
            None
        );
    }

    #[test]
    fn shared_subscriptions_match_their_filter() {
        assert!(filter_matches("$share/line3/plant/+/data", "plant/p1/data"));
        assert!(!filter_matches("$share/line3/plant/+/data", "plant/p1/x"));
        assert!(!filter_matches(
            "$share/line3/plant/+/data",
            "$share/line3/plant/p1/data"
        ));
        assert_eq!(unshared_filter("$share/g/#"), "#");
        assert_eq!(unshared_filter("a/$share/b"), "a/$share/b");
        assert_eq!(filter_problem("$share/g/a/+"), None);
        assert!(filter_problem("$share/g").is_some());
        assert!(filter_problem("$share//a").is_some());
        assert!(filter_problem("$share/g/a/#/b").is_some());
        let t = TopicTemplate::parse("plant/{device}/data").unwrap();
        assert_eq!(t.mismatch_with_filter("$share/g/plant/+/data"), None);
    }

    #[test]
    fn a_templates_placeholder_in_a_subscription_filter_is_refused() {
        assert_eq!(
            filter_problem("m/{device}").as_deref(),
            Some("has '{device}' at level 2: the topic is an MQTT subscription filter, which would match only a level spelt '{device}'; write '+' there (topic = 'm/+') and name the level in topic_template")
        );
        assert!(filter_problem("$share/g/p/{site}/{device}/t")
            .unwrap()
            .contains("(topic = 'p/+/+/t')"));
        // Braces that are not a whole placeholder level are a topic's own characters.
        for ok in ["m/{}", "m/{x", "m/a{b}c", "m/+"] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
    }

    /// `capture_spans` against a reference that splits both on `/`, for generated
    /// topics around each template: levels of every length across the eight-byte scan,
    /// empty levels, literals with a byte more or less.
    #[test]
    fn capture_spans_agree_with_splitting() {
        fn reference(template: &str, topic: &str) -> Option<Vec<String>> {
            let parts: Vec<&str> = topic.split('/').collect();
            let mut caps = Vec::new();
            let levels: Vec<&str> = template.split('/').collect();
            for (i, l) in levels.iter().enumerate() {
                if *l == "#" {
                    return Some(caps);
                }
                let p = parts.get(i)?;
                if l.starts_with('{') {
                    if p.is_empty() {
                        return None;
                    }
                    caps.push(p.to_string());
                } else if *l != "+" && l != p {
                    return None;
                }
            }
            (parts.len() == levels.len()).then_some(caps)
        }
        let templates = [
            "plant/{site}/{line}/{device}/telemetry",
            "{device}",
            "a/+/{device}",
            "sensors/{device}/#",
            "verylongliteralname/{device}/x",
        ];
        let pieces = [
            "",
            "a",
            "x",
            "plant",
            "plan",
            "plantt",
            "telemetry",
            "sensors",
            "p1",
            "abcdefg",
            "abcdefgh",
            "abcdefghi",
            "verylongliteralname",
            "verylongliteralnam",
            "é",
            "0123456789abcdefXY",
        ];
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut matched = 0;
        for template in templates {
            let t = TopicTemplate::parse(template).unwrap();
            let literal: Vec<&str> = template.split('/').collect();
            let mut out = Vec::new();
            for _ in 0..4000 {
                // Mostly the template's own levels, so that many topics match.
                let levels: Vec<&str> = (0..literal.len() + next(3) - 1)
                    .map(|i| match (next(3), literal.get(i)) {
                        (0, _) | (_, None) => pieces[next(pieces.len())],
                        (_, Some(l)) if l.starts_with('{') || *l == "+" || *l == "#" => {
                            pieces[1 + next(pieces.len() - 1)]
                        }
                        (_, Some(l)) => l,
                    })
                    .collect();
                let topic = levels.join("/");
                let got = t.capture_spans(&topic, &mut out).then(|| {
                    out.iter()
                        .map(|&(a, b)| topic[a..b].to_string())
                        .collect::<Vec<_>>()
                });
                assert_eq!(got, reference(template, &topic), "{template} {topic}");
                matched += usize::from(got.is_some());
            }
        }
        assert!(matched > 2000, "{matched}");
    }

    #[test]
    fn captures_and_filter() {
        let t = TopicTemplate::parse("plant/{site}/{line}/{device}/telemetry").unwrap();
        assert_eq!(t.subscription_filter(), "plant/+/+/+/telemetry");
        assert_eq!(
            t.captures_of("plant/s1/l2/pump-7/telemetry"),
            Some(vec![("site", "s1"), ("line", "l2"), ("device", "pump-7")])
        );
        assert_eq!(t.captures_of("plant/s1/l2/pump-7/status"), None);
        assert_eq!(t.captures_of("plant/s1/l2/pump-7/telemetry/x"), None);
        assert_eq!(t.captures_of("plant/s1//pump-7/telemetry"), None);
        assert_eq!(t.captures_of("plant/s1/l2/pump-7/telemetry/"), None);
        assert_eq!(t.captures_of("plant/s1/l2/pump-7"), None);
        assert_eq!(t.captures_of(""), None);
        let rest = TopicTemplate::parse("a/{x}/#").unwrap();
        assert_eq!(rest.captures_of("a/1/b/c"), Some(vec![("x", "1")]));
        assert_eq!(rest.captures_of("a/1"), Some(vec![("x", "1")]));
        assert_eq!(rest.captures_of("a/"), None);
        assert!(TopicTemplate::parse("a/#/b").is_err());
        assert!(TopicTemplate::parse("a/x{y}").is_err());
    }

    #[test]
    fn render_sink_topic() {
        let t = TopicTemplate::parse("forewarn/alerts/{device}").unwrap();
        assert_eq!(
            t.render(|c| (c == "device").then(|| "pump-7".into())),
            "forewarn/alerts/pump-7"
        );
        assert_eq!(t.render(|_| Some("a/b".into())), "forewarn/alerts/a_b");
    }

    #[test]
    fn template_against_filter() {
        let m = |t: &str, f: &str| TopicTemplate::parse(t).unwrap().mismatch_with_filter(f);
        for (t, f) in [
            ("w/{device}", "w/+"),
            ("w/{device}", "w/d1"),
            ("w/{device}", "#"),
            ("w/{device}", "w/#"),
            ("w/{device}/x/y", "w/#"),
            ("a/{x}/#", "a/+"),
            ("a/{x}/#", "a/+/b/c"),
            ("a/#", "a"),
            ("+/{x}", "a/b"),
            ("a/{x}", "a/+/#"),
        ] {
            assert_eq!(m(t, f), None, "{t} against {f}");
        }
        assert_eq!(
            m("w/{device}/x", "w/+").unwrap(),
            "has 3 levels, but topic 'w/+' matches topics of 2 levels: no message can match both"
        );
        assert_eq!(
            m("a/{x}", "a/+/+/#").unwrap(),
            "has 2 levels, but topic 'a/+/+/#' matches topics of 3 or more levels: no message can match both"
        );
        assert_eq!(
            m("a/{x}/c/#", "a").unwrap(),
            "has 3 or more levels, but topic 'a' matches topics of 1 level: no message can match both"
        );
        assert_eq!(
            m("a/{x}/c", "a/+/b").unwrap(),
            "has 'c' at level 3, but topic 'a/+/b' has 'b': no message can match both"
        );
        assert_eq!(
            m("b/{x}", "a/#").unwrap(),
            "has 'b' at level 1, but topic 'a/#' has 'a': no message can match both"
        );
        assert!(m("a/{x}", "a/").is_some());
    }

    #[test]
    fn filters() {
        assert!(filter_matches(
            "plant/+/+/+/telemetry",
            "plant/a/b/c/telemetry"
        ));
        assert!(filter_matches("plant/#", "plant/a/b"));
        assert!(!filter_matches("plant/+", "plant/a/b"));
        assert!(filter_matches("a/b", "a/b"));
    }
}
