//! What input is let in before it reaches the windows: resent messages are recognised,
//! and each source admits at most `max_devices` distinct devices.
//!
//! Both are bounded on purpose: the duplicate check remembers a fixed number of
//! message hashes, and the device limit keeps a flood of new ids from exhausting memory.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use forewarn_formats::TopicTemplate;

/// A fast hasher with a seed drawn per process (sets of device ids and of hashes:
/// SipHash's cost showed in every row of a backtest, and a seed no one knows still
/// keeps crafted ids from colliding on purpose).
type Fast = foldhash::fast::FixedState;

fn fast() -> Fast {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(RandomState::new().hash_one(0x5eed_u64))
}

/// Hashes of the latest messages, to recognise a message sent again.
///
/// The last `window` hashes are kept in the order they came, in a ring (the oldest is
/// overwritten by the next), and indexed by an open-addressing table at most half full:
/// each slot holds the top 32 bits of the hash's mix (its place in the table and a
/// fingerprint) and its place in the ring. So a lookup reads one slot, and the ring only
/// when the fingerprint matches. Removing the hash that leaves the ring is a second probe
/// of a table too big for the cache; a backtest, which checks every row, hides both
/// behind the rows before them with [`prefetch`](Self::prefetch).
///
/// 24 bytes a remembered message, fixed once the ring is full: the table of hashes and
/// ages this replaces, with its bulk removal every half window, grew to 68 bytes a
/// message (4.5 MB for 65,536) and was two fifths of a 10,000-device gateway's heap.
pub(crate) struct RecentMessages {
    /// How many messages are remembered (0: none, the check is off).
    window: usize,
    hasher: RandomState,
    /// The last `window` hashes remembered, the next at `count % window` once full.
    ring: Vec<u64>,
    /// 0: empty; else the mix's top 32 bits and the hash's place in `ring` plus one.
    slots: Vec<u64>,
    /// 64 minus log2 of the table's size: a mix's top bits are its home slot.
    shift: u32,
    /// Messages remembered so far.
    count: u64,
}

/// The mix of a hash (a 64-bit key is not trusted to spread its top bits).
#[inline]
fn mix(k: u64) -> u64 {
    let p = u128::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Largest window: its table (twice as many slots) is found by a mix's top 32 bits.
const MAX_WINDOW: usize = 1 << 30;

impl RecentMessages {
    /// Remembers the last `window` messages (at most 2^30).
    pub(crate) fn new(window: usize) -> Self {
        if window > MAX_WINDOW {
            tracing::warn!(
                duplicate_window = window,
                remembered = MAX_WINDOW,
                "duplicate_window is above the most messages the duplicate check remembers"
            );
        }
        RecentMessages {
            window: window.min(MAX_WINDOW),
            hasher: RandomState::new(),
            ring: Vec::new(),
            slots: vec![0; 16],
            shift: 64 - 4,
            count: 0,
        }
    }

    /// Whether the check is on.
    pub(crate) fn enabled(&self) -> bool {
        self.window > 0
    }

    /// Whether `topic` and `payload` repeat one of the last `window` messages byte for
    /// byte; otherwise the message is remembered (and the oldest forgotten). A repeat is
    /// not remembered again, so it does not extend its own life in the window.
    pub(crate) fn repeated(&mut self, topic: &str, payload: &[u8]) -> bool {
        use std::hash::Hash;
        self.repeated_by(|h| {
            topic.hash(h);
            payload.hash(h);
        })
    }

    /// [`repeated`](Self::repeated) for a message whose bytes `feed` hashes in some
    /// other form that is equal exactly when the bytes are (a history row's values).
    pub(crate) fn repeated_by(
        &mut self,
        feed: impl FnOnce(&mut std::collections::hash_map::DefaultHasher),
    ) -> bool {
        if self.window == 0 {
            return false;
        }
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        feed(&mut h);
        self.repeated_key(h.finish())
    }

    /// The home slot of mix `m`.
    #[inline]
    fn home(&self, m: u64) -> usize {
        (m >> self.shift) as usize
    }

    /// Asks the processor to fetch what checking `key` will read, and what remembering
    /// it `ahead` messages from now will forget: called a few rows ahead in a loop over
    /// many keys, the table's cache misses overlap instead of coming one after another.
    #[inline]
    pub(crate) fn prefetch(&self, key: u64, ahead: usize) {
        if self.window == 0 {
            return;
        }
        prefetch(&self.slots[self.home(mix(key))]);
        if self.ring.len() == self.window {
            let place = (self.count + ahead as u64) % self.window as u64;
            prefetch(&self.slots[self.home(mix(self.ring[place as usize]))]);
        }
    }

    /// [`repeated`](Self::repeated) for a message known by a 64-bit key that is equal
    /// exactly when the bytes are, but for a collision (a history row's
    /// `forewarn_formats::Table::key`).
    pub(crate) fn repeated_key(&mut self, key: u64) -> bool {
        if self.window == 0 {
            return false;
        }
        let m = mix(key);
        let mask = self.slots.len() - 1;
        let mut i = self.home(m);
        loop {
            let s = self.slots[i];
            if s == 0 {
                break;
            }
            if s >> 32 == m >> 32 && self.ring[(s as u32 - 1) as usize] == key {
                return true;
            }
            i = (i + 1) & mask;
        }
        if self.ring.len() < self.window {
            let place = self.ring.len();
            self.ring.push(key);
            if self.ring.len() * 2 > self.slots.len() {
                self.grow();
            } else {
                self.slots[i] = slot(m, place);
            }
        } else {
            let place = (self.count % self.window as u64) as usize;
            self.forget(place);
            self.ring[place] = key;
            self.put(m, place);
        }
        self.count += 1;
        false
    }

    /// Puts the hash of mix `m` at ring place `place` into the table.
    fn put(&mut self, m: u64, place: usize) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(m);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot(m, place);
    }

    /// Takes the hash at ring place `place` out of the table, moving back the slots
    /// after it that would otherwise no longer be found (linear probing's deletion).
    fn forget(&mut self, place: usize) {
        let mask = self.slots.len() - 1;
        let mut hole = self.home(mix(self.ring[place]));
        while self.slots[hole] as u32 as usize != place + 1 {
            hole = (hole + 1) & mask;
        }
        let mut j = (hole + 1) & mask;
        loop {
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            // A slot moves into the hole unless its home lies (cyclically) after the
            // hole and up to the slot itself: from there a probe would not reach it.
            let home = self.home(s & !0xffff_ffff);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = 0;
    }

    /// Doubles the table (while the ring fills) and puts every remembered hash back.
    fn grow(&mut self) {
        self.slots = vec![0; self.slots.len() * 2];
        self.shift -= 1;
        for place in 0..self.ring.len() {
            self.put(mix(self.ring[place]), place);
        }
    }
}

/// A table slot: the mix's top 32 bits, and the ring place plus one (never 0).
#[inline]
fn slot(m: u64, place: usize) -> u64 {
    (m & !0xffff_ffff) | (place as u64 + 1)
}

/// A hint to fetch `at` into the cache; it never faults and changes nothing.
#[inline]
fn prefetch(at: &u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees; the address is a valid reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (at as *const u64).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// The devices one source has admitted: at most `max`, first come first served.
///
/// A device is recognised by two 64-bit hashes of its id, each with its own seed drawn
/// per process: recognising a known device, which a backtest does for every row, then
/// reads one entry of a table and not the id itself. Comparing the ids as well cost a
/// dependent read of memory the cache no longer held: with 10,000 devices, about 8 %
/// of a backtest's time. Two ids share both hashes with a probability of about 2^-128
/// a pair (at 250,000 devices, about 10^-28 for the whole set), and no one can craft
/// such ids without the seeds. The ids are kept too, one after another in one buffer,
/// for checkpoints.
pub(crate) struct Devices {
    /// Every admitted id, one after another (each valid UTF-8).
    ids: Vec<u8>,
    /// Where each id ends in `ids`.
    ends: Vec<usize>,
    /// Each id's two hashes.
    index: hashbrown::HashTable<(u64, u64)>,
    hashers: (Fast, Fast),
    max: usize,
}

impl Devices {
    /// No device yet; at most `max`.
    pub(crate) fn new(max: usize) -> Self {
        Devices {
            ids: Vec::new(),
            ends: Vec::new(),
            index: hashbrown::HashTable::new(),
            hashers: (fast(), fast()),
            max,
        }
    }

    /// The limit.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Devices admitted so far.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Id number `i`, as bytes.
    fn id(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p]);
        &self.ids[start..self.ends[i]]
    }

    fn hash(&self, device: &str) -> (u64, u64) {
        use std::hash::BuildHasher;
        (
            self.hashers.0.hash_one(device),
            self.hashers.1.hash_one(device),
        )
    }

    fn known(&self, h: (u64, u64)) -> bool {
        self.index.find(h.0, |&e| e == h).is_some()
    }

    /// Adds `device`, known not to be there, whatever the limit.
    fn add(&mut self, h: (u64, u64), device: &str) {
        self.ids.extend_from_slice(device.as_bytes());
        self.ends.push(self.ids.len());
        self.index.insert_unique(h.0, h, |e| e.0);
    }

    /// Whether `device` may send: it is known, or new with room left (it is then
    /// known from now on).
    pub(crate) fn admit(&mut self, device: &str) -> bool {
        let h = self.hash(device);
        if self.known(h) {
            return true;
        }
        if self.len() >= self.max {
            return false;
        }
        self.add(h, device);
        true
    }

    /// The admitted devices, in the order they were admitted (for a checkpoint).
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| std::str::from_utf8(self.id(i)).expect("ids are text"))
    }

    /// Replaces the admitted devices with those of a checkpoint. All are kept, even
    /// beyond a limit lowered since: they were admitted.
    pub(crate) fn restore<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        *self = Devices {
            hashers: self.hashers.clone(),
            ..Devices::new(self.max)
        };
        for name in names {
            let h = self.hash(name);
            if !self.known(h) {
                self.add(h, name);
            }
        }
    }
}

/// How a source's topic names the device: its `{device}` level, else all its levels
/// together (joined with `/`), which tell devices apart whichever of them names the
/// device.
pub(crate) struct TopicDevice {
    template: TopicTemplate,
    capture: Option<String>,
}

impl TopicDevice {
    /// For a template with captures; `None` when its topic names no device.
    pub(crate) fn new(template: &TopicTemplate) -> Option<Self> {
        template.captures().next()?;
        let capture = template
            .captures()
            .find(|c| *c == "device")
            .map(str::to_string);
        Some(TopicDevice {
            template: template.clone(),
            capture,
        })
    }

    /// The device `topic` names, if it matches the template.
    pub(crate) fn device<'t>(&self, topic: &'t str) -> Option<Cow<'t, str>> {
        let captures = self.template.captures_of(topic)?;
        Some(match &self.capture {
            Some(cap) => captures.iter().find(|(c, _)| c == cap)?.1.into(),
            None => captures
                .iter()
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
                .join("/")
                .into(),
        })
    }
}

/// Rows of a batch from devices beyond the limit: whether each row is kept, and the
/// refused rows with their device.
pub(crate) type RowAdmission = (Vec<bool>, Vec<(usize, String)>);

/// Admits the rows of `batch` by the device named in its columns `key` (joined with
/// `/`, as [`TopicDevice`] joins topic levels): `None` when every row is admitted.
pub(crate) fn admit_rows(
    devices: &mut Devices,
    key: &[usize],
    batch: &RecordBatch,
) -> Option<RowAdmission> {
    if key.is_empty() || batch.num_rows() == 0 {
        return None;
    }
    let text: Vec<_> = key
        .iter()
        .map(|&c| datafusion::arrow::compute::cast(batch.column(c), &DataType::Utf8))
        .collect::<Result<_, _>>()
        .expect("a device column casts to text");
    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut refused = Vec::new();
    let mut joined = String::new();
    fn cell(a: &ArrayRef, row: usize) -> &str {
        let a = a.as_string::<i32>();
        if a.is_valid(row) {
            a.value(row)
        } else {
            ""
        }
    }
    for row in 0..batch.num_rows() {
        // One key column (the usual case) is looked up without copying it.
        let device: &str = if let [only] = text.as_slice() {
            cell(only, row)
        } else {
            joined.clear();
            for (k, a) in text.iter().enumerate() {
                if k > 0 {
                    joined.push('/');
                }
                joined.push_str(cell(a, row));
            }
            &joined
        };
        let ok = devices.admit(device);
        if !ok {
            refused.push((row, device.to_string()));
        }
        keep.push(ok);
    }
    (!refused.is_empty()).then_some((keep, refused))
}

/// The columns naming a row's device in source `s`, keyed as the topic check keys
/// them: the `device` capture, else every capture, else a `device` column from the
/// payload. Empty: the source has one device.
pub(crate) fn device_key(s: &crate::SourceInfo) -> Vec<usize> {
    let col = |name: &str| {
        s.schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    };
    let captures: Vec<&str> = s
        .template
        .as_ref()
        .map_or(vec![], |t| t.captures().collect());
    if captures.contains(&"device") || captures.is_empty() {
        return col("device").into_iter().collect();
    }
    captures.into_iter().filter_map(col).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_repeat_is_recognised_within_the_window_only() {
        let mut r = RecentMessages::new(3);
        assert!(!r.repeated("t", b"a"));
        assert!(r.repeated("t", b"a"));
        // Same bytes on another topic are another message.
        assert!(!r.repeated("u", b"a"));
        assert!(!r.repeated("t", b"b"));
        // "a" is still among the last 3 (a, u:a, b)...
        assert!(r.repeated("t", b"a"));
        assert!(!r.repeated("t", b"c"));
        // ...and is forgotten once 3 newer messages came: it is new again.
        assert!(!r.repeated("t", b"a"));
        assert!(r.repeated("t", b"a"));
    }

    /// The set of the last `window` keys remembered, kept as the plain queue it is.
    fn reference(window: usize, keys: &[u64]) -> Vec<bool> {
        let mut order = std::collections::VecDeque::new();
        keys.iter()
            .map(|k| {
                if order.contains(k) {
                    return true;
                }
                order.push_back(*k);
                if order.len() > window {
                    order.pop_front();
                }
                false
            })
            .collect()
    }

    #[test]
    fn repeats_are_those_of_a_queue_of_the_last_window_keys() {
        // Keys from a small alphabet, so that repeats fall inside, at and beyond the
        // window's edge, and the oldest is forgotten many times.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // And a window whose table has a thousand slots: many slots moved back on
        // removal, probes wrapping around the table's end.
        for window in [1, 2, 3, 4, 7, 16, 33, 500] {
            for alphabet in [2, 5, 40, 200, 1_500] {
                let keys: Vec<u64> = (0..3_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % alphabet
                    })
                    .collect();
                let mut r = RecentMessages::new(window);
                let got: Vec<bool> = keys.iter().map(|&k| r.repeated_key(k)).collect();
                assert_eq!(
                    got,
                    reference(window, &keys),
                    "window {window}, {alphabet} keys"
                );
                assert!(r.ring.len() <= window);
                let used = r.slots.iter().filter(|&&s| s != 0).count();
                assert_eq!(used, r.ring.len(), "one slot per remembered hash");
                assert!(2 * used <= r.slots.len(), "at most half full");
            }
        }
    }

    #[test]
    fn a_window_of_zero_never_sees_a_repeat() {
        let mut r = RecentMessages::new(0);
        assert!(!r.enabled());
        assert!(!r.repeated("t", b"a"));
        assert!(!r.repeated("t", b"a"));
        assert!(RecentMessages::new(1).enabled());
    }

    #[test]
    fn the_device_after_max_is_refused_and_known_ones_stay_admitted() {
        let mut d = Devices::new(2);
        assert_eq!(d.max(), 2);
        assert!(d.admit("a"));
        assert!(d.admit("b"));
        assert!(!d.admit("c"));
        // A refused device is not remembered: it stays refused, the others stay in.
        assert!(!d.admit("c"));
        assert!(d.admit("a"));
        assert!(d.admit("b"));
        let mut names: Vec<&str> = d.names().collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn admitted_devices_are_those_a_set_of_the_first_max_ids_admits() {
        // Ids of varied lengths (prefixes of one another included, and the empty id),
        // many more lookups than ids, and a limit reached halfway.
        let mut x = 0x1234_5678_9abc_def1u64;
        let ids: Vec<String> = (0..3_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                "d".repeat(i % 4) + &(x % 2_500).to_string()
            })
            .chain([String::new()])
            .collect();
        let mut d = Devices::new(1_000);
        let mut set = std::collections::HashSet::new();
        for id in &ids {
            let want = set.contains(id) || set.len() < 1_000 && set.insert(id.clone());
            assert_eq!(d.admit(id), want, "{id:?}");
        }
        assert_eq!(d.len(), 1_000);
        let mut names: Vec<&str> = d.names().collect();
        names.sort();
        let mut want: Vec<&str> = set.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn the_two_hashes_of_a_device_have_their_own_seeds() {
        // The same seed twice would make the second hash add nothing.
        let d = Devices::new(1);
        for id in ["", "a", "pump-0001"] {
            let (a, b) = d.hash(id);
            assert_ne!(a, b, "{id:?}");
        }
    }

    #[test]
    fn restored_devices_replace_the_admitted_ones_even_beyond_the_limit() {
        let mut d = Devices::new(1);
        assert!(d.admit("x"));
        let saved = vec!["a".to_string(), "b".to_string()];
        d.restore(&saved);
        assert!(d.admit("a"));
        assert!(d.admit("b"));
        assert!(!d.admit("x"));
    }

    #[test]
    fn the_topic_names_its_device_capture_or_all_captures() {
        let t = TopicTemplate::parse("plant/{site}/{device}/telemetry").unwrap();
        let by_device = TopicDevice::new(&t).unwrap();
        assert_eq!(
            by_device.device("plant/s1/pump-7/telemetry").as_deref(),
            Some("pump-7")
        );
        assert_eq!(by_device.device("other/s1/pump-7/telemetry"), None);
        let t = TopicTemplate::parse("plant/{site}/{line}/telemetry").unwrap();
        let all = TopicDevice::new(&t).unwrap();
        assert_eq!(
            all.device("plant/s1/l2/telemetry").as_deref(),
            Some("s1/l2")
        );
        let t = TopicTemplate::parse("plant/telemetry").unwrap();
        assert!(TopicDevice::new(&t).is_none());
    }

    fn batch(devices: &[Option<&str>], lines: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("line", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(devices.to_vec())),
                Arc::new(Int64Array::from(lines.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_of_devices_beyond_the_limit_are_refused() {
        let mut d = Devices::new(2);
        let b = batch(&[Some("a"), Some("b"), Some("c"), Some("a"), None], &[1; 5]);
        let (keep, refused) = admit_rows(&mut d, &[0], &b).unwrap();
        assert_eq!(keep, [true, true, false, true, false]);
        // A missing id is the device "" (one more device, refused here).
        assert_eq!(refused, [(2, "c".to_string()), (4, String::new())]);
        // All admitted: nothing to filter.
        let b = batch(&[Some("b"), Some("a")], &[1, 2]);
        assert_eq!(admit_rows(&mut d, &[0], &b), None);
        assert_eq!(admit_rows(&mut d, &[], &batch(&[Some("z")], &[1])), None);
    }

    #[test]
    fn several_key_columns_name_a_device_joined_with_a_slash() {
        let mut d = Devices::new(1);
        let b = batch(&[Some("a"), Some("a"), Some("a")], &[1, 1, 2]);
        let (keep, refused) = admit_rows(&mut d, &[0, 1], &b).unwrap();
        assert_eq!(keep, [true, true, false]);
        assert_eq!(refused, [(2, "a/2".to_string())]);
        assert!(d.admit("a/1"));
    }
}
