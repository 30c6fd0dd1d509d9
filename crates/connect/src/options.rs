//! A table's `WITH (key = 'value', ...)` list, with each key's position for errors.

use std::collections::BTreeMap;

use forewarn_core::{parse_interval, Millis};

/// Line and column (1-based) of an option's key in the query file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line.
    pub line: u64,
    /// Column.
    pub column: u64,
}

/// A bad option: the message, and the key to point at (`None`: the table itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    /// The option the error is about; its key's position is where the error points.
    pub key: Option<String>,
    /// What is wrong, in the analyst's words.
    pub message: String,
}

impl OptionError {
    /// An error about option `key`.
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        OptionError {
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// An error about the table as a whole.
    pub fn table(message: impl Into<String>) -> Self {
        OptionError {
            key: None,
            message: message.into(),
        }
    }
}

/// The options of one table, keys in lower case, each once.
#[derive(Debug, Clone, Default)]
pub struct Options {
    entries: BTreeMap<String, (String, Pos)>,
}

impl Options {
    /// Adds `key = value` written at `at`; a key given twice is refused (the last
    /// would silently win).
    pub fn insert(&mut self, key: &str, value: String, at: Pos) -> Result<(), OptionError> {
        let k = key.to_ascii_lowercase();
        if self.entries.contains_key(&k) {
            return Err(OptionError::at(&k, format!("option '{k}' is given twice")));
        }
        self.entries.insert(k, (value, at));
        Ok(())
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|(v, _)| v.as_str())
    }

    /// Where `key` was written, if given.
    pub fn pos(&self, key: &str) -> Option<Pos> {
        self.entries.get(key).map(|(_, p)| *p)
    }

    /// The value of `key`, or an error about the table saying what to add.
    pub fn required(&self, key: &str, why: impl FnOnce() -> String) -> Result<&str, OptionError> {
        self.get(key).ok_or_else(|| OptionError::table(why()))
    }

    /// A positive interval (`'30 seconds'`), if given.
    pub fn interval(&self, key: &str) -> Result<Option<Millis>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match parse_interval(v, None) {
                Ok(ms) if ms > 0 => Ok(Some(ms)),
                Ok(_) => Err(OptionError::at(key, format!("{key} must be positive"))),
                Err(e) => Err(OptionError::at(key, e.to_string())),
            },
        }
    }

    /// A whole number in `range`, if given.
    pub fn whole(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(OptionError::at(
                    key,
                    format!(
                        "{key} = '{v}' must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            },
        }
    }

    /// Keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Pos)> {
        self.entries
            .iter()
            .map(|(k, (v, p))| (k.as_str(), v.as_str(), *p))
    }

    /// The first key not in `allowed`, if any.
    pub fn unknown<'a>(&'a self, allowed: &[&str]) -> Option<&'a str> {
        self.entries
            .keys()
            .map(String::as_str)
            .find(|k| !allowed.contains(k))
    }
}

/// `; did you mean 'x'?` when one of `candidates` is close to `name`, else empty.
pub fn did_you_mean<S: AsRef<str>>(name: &str, candidates: &[S]) -> String {
    let name = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|k| {
            (
                strsim::jaro_winkler(&k.as_ref().to_ascii_lowercase(), &name),
                k,
            )
        })
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("; did you mean '{}'?", k.as_ref()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> Options {
        let mut o = Options::default();
        for (i, (k, v)) in kv.iter().enumerate() {
            o.insert(
                k,
                v.to_string(),
                Pos {
                    line: 1,
                    column: 1 + 10 * i as u64,
                },
            )
            .unwrap();
        }
        o
    }

    #[test]
    fn a_key_given_twice_is_refused_whatever_its_case() {
        let mut o = opts(&[("topic", "a")]);
        let e = o.insert("TOPIC", "b".into(), Pos::default()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("topic"));
        assert_eq!(e.message, "option 'topic' is given twice");
        assert_eq!(o.get("topic"), Some("a"));
    }

    #[test]
    fn typed_values_are_checked_at_their_key() {
        let o = opts(&[("n", "0"), ("every", "-1 second"), ("ok", "2 minutes")]);
        let e = o.whole("n", 1..=4096).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("n"));
        assert_eq!(e.message, "n = '0' must be a whole number from 1 to 4096");
        assert!(o.interval("every").is_err());
        assert_eq!(o.interval("ok").unwrap(), Some(120_000));
        assert_eq!(o.interval("absent").unwrap(), None);
        assert_eq!(o.pos("every").unwrap().column, 11);
    }

    #[test]
    fn unknown_keys_and_suggestions() {
        let o = opts(&[("topic", "a"), ("retires", "3")]);
        assert_eq!(o.unknown(&["topic", "retries"]), Some("retires"));
        assert_eq!(o.unknown(&["topic", "retires"]), None);
        assert_eq!(
            did_you_mean("retires", &["url", "retries"]),
            "; did you mean 'retries'?"
        );
        assert_eq!(did_you_mean("zzz", &["url", "retries"]), "");
    }
}
