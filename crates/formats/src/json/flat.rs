//! The fast path: a reading object (or an array of them) whose values are all scalars
//! and whose strings carry no escapes, scanned byte by byte without serde's visitor
//! machinery. That is what devices send nearly always. Anything else (nested values,
//! escapes, numbers beyond i64 or f64, syntax errors) returns `None` and the message
//! goes through serde_json instead, which decides what it is and words the error, so
//! both paths give the same outcome for every payload.

use std::borrow::Cow;

use super::{MessageSeed, Scalar};
use crate::DecodeError;

/// Bytes that end a string on the fast path: the closing quote, and the escape and
/// control characters it leaves to serde_json.
static STOPS_STRING: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A cursor over the payload.
struct Cursor<'de> {
    b: &'de [u8],
    i: usize,
}

impl<'de> Cursor<'de> {
    /// The next byte that is not JSON whitespace, not consumed. Loops here index the
    /// payload rather than chain iterator adaptors: they run several times per field,
    /// and an unoptimised build pays a call for each adaptor step.
    fn peek(&mut self) -> Option<u8> {
        while self.i < self.b.len() {
            let c = self.b[self.i];
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// The byte at `i`, or 0 past the end (no JSON token starts with 0).
    fn at(&self, i: usize) -> u8 {
        if i < self.b.len() {
            self.b[i]
        } else {
            0
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string's bytes after its opening quote, without escapes or control characters
    /// (not yet checked to be UTF-8).
    fn raw_string(&mut self) -> Option<&'de [u8]> {
        let start = self.i;
        let mut end = start;
        // Eight bytes at a time: a stop byte (quote, backslash or control character) sets
        // the high bit of its lane; lanes above the first may be flagged falsely (borrows),
        // the lowest never is. Non-ASCII bytes are never flagged.
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        while let Some(word) = self.b.get(end..end + 8) {
            let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            let quote = x ^ (ONES * b'"' as u64);
            let backslash = x ^ (ONES * b'\\' as u64);
            let stops = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (x.wrapping_sub(ONES * 0x20) & !x);
            let stops = stops & HIGH;
            if stops != 0 {
                end += (stops.trailing_zeros() / 8) as usize;
                break;
            }
            end += 8;
        }
        while end < self.b.len() && !STOPS_STRING[self.b[end] as usize] {
            end += 1;
        }
        if self.at(end) != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.b[start..end])
    }

    /// Skips ASCII digits, accumulating them into `m` (wrapping: the caller counts
    /// digits to know whether `m` is exact); returns how many there were.
    fn digits(&mut self, m: &mut u64) -> usize {
        let start = self.i;
        while self.i < self.b.len() {
            let d = self.b[self.i].wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            *m = m.wrapping_mul(10).wrapping_add(d as u64);
            self.i += 1;
        }
        self.i - start
    }

    /// A JSON number: an `Int` when it has no fraction or exponent and fits i64.
    fn number(&mut self) -> Option<Scalar<'de>> {
        let start = self.i;
        let neg = self.b[self.i] == b'-';
        if neg {
            self.i += 1;
        }
        let int_start = self.i;
        let mut m = 0u64;
        let int_len = self.digits(&mut m);
        // JSON has no leading zeros ("01") and no bare sign.
        if int_len == 0 || (int_len > 1 && self.b[int_start] == b'0') {
            return None;
        }
        let (mut float, mut exp10) = (false, 0i64);
        let mut count = int_len;
        if self.at(self.i) == b'.' {
            self.i += 1;
            let n = self.digits(&mut m);
            if n == 0 {
                return None;
            }
            count += n;
            exp10 = -(n as i64);
            float = true;
        }
        // Up to 19 digits always fit a u64.
        let mut exact = count <= 19;
        if matches!(self.at(self.i), b'e' | b'E') {
            self.i += 1;
            let eneg = self.at(self.i) == b'-';
            if matches!(self.at(self.i), b'+' | b'-') {
                self.i += 1;
            }
            let mut e = 0u64;
            let n = self.digits(&mut e);
            if n == 0 {
                return None;
            }
            // A longer exponent is left to the exact parser.
            exact &= n <= 4;
            exp10 += if eneg { -(e as i64) } else { e as i64 };
            float = true;
        }
        if !float {
            return match (exact, neg) {
                // Like serde_json, "-0" is the float -0.0.
                (true, true) if m == 0 => Some(Scalar::Float(-0.0)),
                (true, true) if m <= 1 << 63 => Some(Scalar::Int((m as i64).wrapping_neg())),
                (true, false) if m <= i64::MAX as u64 => Some(Scalar::Int(m as i64)),
                // Past i64, serde_json's u64 and f64 rules apply.
                _ => None,
            };
        }
        // Exact when the digits fit 53 bits and the power of ten is exact too: one
        // correctly rounded operation (Clinger's fast path), the common case.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        let f = if exact && m < 1 << 53 && exp10.unsigned_abs() < 23 {
            let x = m as f64;
            let p = POW10[exp10.unsigned_abs() as usize];
            let v = if exp10 < 0 { x / p } else { x * p };
            if neg {
                -v
            } else {
                v
            }
        } else {
            // Correctly rounded, as serde_json with `float_roundtrip`. ASCII by
            // construction.
            std::str::from_utf8(&self.b[start..self.i])
                .ok()?
                .parse()
                .ok()?
        };
        // Out of range is serde_json's error to word.
        f.is_finite().then_some(Scalar::Float(f))
    }

    fn word(&mut self, w: &[u8], v: Scalar<'de>) -> Option<Scalar<'de>> {
        self.b[self.i..].starts_with(w).then(|| {
            self.i += w.len();
            v
        })
    }

    /// A scalar value; `None` for objects, arrays and anything malformed.
    fn scalar(&mut self) -> Option<Scalar<'de>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                let s = std::str::from_utf8(self.raw_string()?).ok()?;
                Some(Scalar::Str(Cow::Borrowed(s)))
            }
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.word(b"true", Scalar::Bool(true)),
            b'f' => self.word(b"false", Scalar::Bool(false)),
            b'n' => self.word(b"null", Scalar::Null),
            _ => None,
        }
    }

    /// A waveform given as an array of numbers, its `[` already consumed. Anything but
    /// plain numbers is left to the serde path, which words the rejection the same way.
    fn samples(&mut self, field: &str, max_samples: usize) -> Option<Scalar<'de>> {
        let mut samples = Vec::new();
        let mut count = 0usize;
        if self.eat(b']').is_none() {
            loop {
                if !matches!(self.peek()?, b'-' | b'0'..=b'9') {
                    return None;
                }
                let x = match self.number()? {
                    Scalar::Int(i) => i as f64,
                    Scalar::Float(f) => f,
                    _ => return None,
                };
                if count < max_samples {
                    samples.push(x);
                }
                count += 1;
                match self.peek()? {
                    b',' => self.i += 1,
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        Some(Scalar::Wave(if count > max_samples {
            Err(Box::new(DecodeError::TooManySamples {
                field: field.to_string(),
                limit: max_samples,
            }))
        } else if count == 0 {
            Err(Box::new(DecodeError::BadWaveform {
                field: field.to_string(),
                why: "no samples".into(),
            }))
        } else {
            Ok(samples)
        }))
    }

    /// One reading object, its `{` already consumed, into the seed's slots.
    fn object(&mut self, seed: &mut MessageSeed<'_, 'de>) -> Option<()> {
        seed.slots.iter_mut().for_each(|s| *s = None);
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let mut pos = 0;
        loop {
            self.eat(b'"')?;
            let key = self.raw_string()?;
            self.eat(b':')?;
            let column = seed.column_of(pos, key);
            let value = match column {
                Some(ci) if seed.columns[ci].wave && self.peek()? == b'[' => {
                    self.i += 1;
                    self.samples(&seed.columns[ci].name, seed.max_samples)?
                }
                _ => self.scalar()?,
            };
            // A repeated key: the last value counts, as on the serde path.
            match column {
                Some(ci) => seed.slots[ci] = Some(value),
                // A key equal to a column name is UTF-8; any other must be checked,
                // since serde_json refuses one that is not.
                None => {
                    std::str::from_utf8(key).ok()?;
                }
            }
            pos += 1;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Decodes the whole message into `seed` on the fast path; `None` (with `seed` left to
/// be reset) when the message needs the general path.
pub(super) fn decode<'de>(payload: &'de [u8], seed: &mut MessageSeed<'_, 'de>) -> Option<()> {
    let mut c = Cursor { b: payload, i: 0 };
    match c.peek()? {
        b'{' => {
            c.i += 1;
            c.object(seed)?;
            seed.finish_reading(None);
        }
        b'[' => {
            c.i += 1;
            let mut index = 0;
            loop {
                // Empty arrays and elements that are not objects: the general path
                // words their rejection.
                c.eat(b'{')?;
                c.object(seed)?;
                seed.finish_reading(Some(index));
                index += 1;
                match c.peek()? {
                    b',' => c.i += 1,
                    b']' => {
                        c.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        _ => return None,
    }
    // Trailing characters: serde_json's error.
    c.peek().is_none().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a byte-by-byte scan stops: the reference for the word-at-a-time one.
    fn reference(b: &[u8]) -> Option<&[u8]> {
        let end = b
            .iter()
            .position(|&c| STOPS_STRING[c as usize])
            .unwrap_or(b.len());
        (b.get(end) == Some(&b'"')).then(|| &b[..end])
    }

    #[test]
    fn raw_string_stops_where_a_byte_by_byte_scan_does() {
        // Every stop byte and some that are not (DEL, non-ASCII, space), at every
        // position of strings up to 24 bytes, with and without a closing quote after.
        let mut specials: Vec<u8> = (0..0x20).collect();
        specials.extend([b'"', b'\\', 0x20, 0x7f, 0x80, 0xc3, 0xff, b'a']);
        for len in 0..24 {
            for pos in 0..len {
                for &c in &specials {
                    for closed in [false, true] {
                        let mut b = vec![b'x'; len];
                        b[pos] = c;
                        if closed {
                            b.push(b'"');
                        }
                        let mut cur = Cursor { b: &b, i: 0 };
                        assert_eq!(
                            cur.raw_string(),
                            reference(&b),
                            "{len} {pos} {c:#x} {closed}"
                        );
                    }
                }
            }
        }
    }
}
