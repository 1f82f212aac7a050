//! A JSON writer for the summary and detail of a session (docs §7), byte for byte what
//! `serde_json` writes for the same values.
//!
//! Why not `serde_json::to_vec` of `Serialize` structs: it escapes every key and every string
//! byte by byte through a table, which was a third of the cost of finalizing a session. Here a
//! key is written as one pre-escaped literal, and a string is copied whole when a word-at-a-time
//! check finds nothing to escape (the common case); integers and whole floats are written with
//! `itoa` (as `serde_json` does); other floats, and strings that need escaping, still go
//! through `serde_json`, so the bytes are the same.
use serde::Serializer as _;

pub struct JsonWriter {
    buf: Vec<u8>,
    /// no comma before the next member or element
    first: bool,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The escape bits of a word (the high bit of each byte that is a control character, `"`
/// or `\`), exact when OR-ed over words.
#[inline]
fn escape_bits(w: u64) -> u64 {
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGH
}

fn word_at(s: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"))
}

/// Whether `s` has a byte that JSON escapes. Words of 8 bytes, the last one overlapping the
/// one before (no copy of a remainder); shorter strings as two overlapping halves or bytes.
#[inline]
fn needs_escape(s: &[u8]) -> bool {
    let n = s.len();
    if n >= 8 {
        let mut bits = 0;
        let mut i = 0;
        while i + 8 <= n {
            bits |= escape_bits(word_at(s, i));
            i += 8;
        }
        if i < n {
            bits |= escape_bits(word_at(s, n - 8));
        }
        bits != 0
    } else if n >= 4 {
        let half = |i: usize| u64::from(u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes")));
        escape_bits(half(0) | half(n - 4) << 32) != 0
    } else {
        s.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
    }
}

impl JsonWriter {
    pub fn with_capacity(capacity: usize) -> Self {
        JsonWriter { buf: Vec::with_capacity(capacity), first: true }
    }

    /// A writer into `buf`, emptied first (its allocation reused).
    pub fn reusing(mut buf: Vec<u8>) -> Self {
        buf.clear();
        JsonWriter { buf, first: true }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    #[allow(clippy::inline_always)] // see `key`
    #[inline(always)]
    fn comma(&mut self) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
    }

    /// Opens an object (as a value: after `key`, in an array, or at the top).
    pub fn begin_object(&mut self) {
        self.buf.push(b'{');
        self.first = true;
    }

    pub fn end_object(&mut self) {
        self.buf.push(b'}');
        self.first = false;
    }

    pub fn begin_array(&mut self) {
        self.buf.push(b'[');
        self.first = true;
    }

    pub fn end_array(&mut self) {
        self.buf.push(b']');
        self.first = false;
    }

    /// Text of the format written as it is: keys with their quotes, colons and commas, in one
    /// copy (the caller writes the commas; the next member or element gets its own).
    #[allow(clippy::inline_always)] // see `key`
    #[inline(always)]
    pub fn raw(&mut self, text: &'static str) {
        debug_assert!(!text.is_empty());
        self.buf.extend_from_slice(text.as_bytes());
        self.first = false;
    }

    /// Starts an array element (the value follows).
    pub fn element(&mut self) {
        self.comma();
    }

    /// A member's key: a name that needs no escaping (a field name of the format). Inlined:
    /// with the name known where it is called, this is a few stores (measured: plain `#[inline]`
    /// left it a call, 12 % of finalizing a session).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn key(&mut self, name: &'static str) {
        debug_assert!(!needs_escape(name.as_bytes()));
        self.buf.reserve(name.len() + 4);
        self.comma();
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.first = true;
    }

    /// A member's key that may need escaping (a map key from the beacons).
    pub fn key_str(&mut self, name: &str) {
        self.comma();
        self.write_str(name);
        self.buf.push(b':');
        self.first = true;
    }

    #[inline]
    fn write_str(&mut self, s: &str) {
        if needs_escape(s.as_bytes()) {
            self.write_escaped(s);
        } else {
            self.buf.reserve(s.len() + 2);
            self.buf.push(b'"');
            self.buf.extend_from_slice(s.as_bytes());
            self.buf.push(b'"');
        }
    }

    #[cold]
    fn write_escaped(&mut self, s: &str) {
        serde_json::Serializer::new(&mut self.buf).serialize_str(s).expect("writing to a Vec");
    }

    /// A string of the format itself (an enum's name): nothing to escape, so no check.
    #[allow(clippy::inline_always)] // see `key`
    #[inline(always)]
    pub fn name(&mut self, s: &'static str) {
        debug_assert!(!needs_escape(s.as_bytes()));
        self.buf.reserve(s.len() + 2);
        self.buf.push(b'"');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(b'"');
        self.first = false;
    }

    pub fn str(&mut self, s: &str) {
        self.write_str(s);
        self.first = false;
    }

    pub fn opt_name(&mut self, s: Option<&'static str>) {
        match s {
            Some(s) => self.name(s),
            None => self.null(),
        }
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(b"null");
        self.first = false;
    }

    pub fn bool(&mut self, b: bool) {
        self.buf.extend_from_slice(if b { b"true" } else { b"false" });
        self.first = false;
    }

    pub fn int(&mut self, n: impl Into<i64>) {
        self.buf.extend_from_slice(itoa::Buffer::new().format(n.into()).as_bytes());
        self.first = false;
    }

    pub fn uint(&mut self, n: usize) {
        self.buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.first = false;
    }

    pub fn opt_int(&mut self, n: Option<impl Into<i64>>) {
        match n {
            Some(n) => self.int(n),
            None => self.null(),
        }
    }

    /// As `serde_json`: the shortest representation that reads back the same, `null` when not
    /// finite.
    pub fn float(&mut self, f: f64) {
        // Whole numbers (durations, timings, sizes: nearly all) as the integer and ".0", which
        // is what serde_json writes for them below 1e15 (from 1e16 it writes "1e+16").
        // (`trunc` is a libm call on baseline x86-64; the conversion is one instruction)
        let n = f as i64;
        if n as f64 == f && f.abs() < 1e15 && !(n == 0 && f.is_sign_negative()) {
            self.buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            self.buf.extend_from_slice(b".0");
        } else {
            serde_json::Serializer::new(&mut self.buf).serialize_f64(f).expect("writing to a Vec");
        }
        self.first = false;
    }

    pub fn opt_float(&mut self, f: Option<f64>) {
        match f {
            Some(f) => self.float(f),
            None => self.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(f: impl FnOnce(&mut JsonWriter)) -> String {
        let mut w = JsonWriter::with_capacity(0);
        f(&mut w);
        String::from_utf8(w.into_bytes()).unwrap()
    }

    #[test]
    fn nesting_and_commas() {
        let s = written(|w| {
            w.begin_object();
            w.key("a");
            w.begin_array();
            w.element();
            w.int(1);
            w.element();
            w.begin_object();
            w.end_object();
            w.end_array();
            w.key("b");
            w.opt_str(None);
            w.key_str("c\"d");
            w.bool(true);
            w.end_object();
        });
        assert_eq!(s, r#"{"a":[1,{}],"b":null,"c\"d":true}"#);
    }

    proptest! {
        #[test]
        fn strings_and_numbers_are_what_serde_json_writes(s in any::<String>(), f in any::<f64>(), n in any::<i64>()) {
            prop_assert_eq!(written(|w| w.str(&s)), serde_json::to_string(&s).unwrap());
            prop_assert_eq!(written(|w| w.float(f)), serde_json::to_string(&f).unwrap());
            prop_assert_eq!(written(|w| w.int(n)), serde_json::to_string(&n).unwrap());
        }

        #[test]
        fn whole_and_nearly_whole_floats_are_what_serde_json_writes(n in -2_000_000_000_000_000i64..2_000_000_000_000_000, e in -20i32..20, d in -3i32..3) {
            for f in [n as f64, (n as f64) * 10f64.powi(e), n as f64 + f64::from(d) * 0.25, f64::from(d) * 1e15, -0.0, 0.0] {
                prop_assert_eq!(written(|w| w.float(f)), serde_json::to_string(&f).unwrap());
            }
        }

        #[test]
        fn ascii_with_escapes_anywhere(s in "[ -~\t\n\u{0}\u{1f}\"\\\\]{0,40}") {
            prop_assert_eq!(written(|w| w.str(&s)), serde_json::to_string(&s).unwrap());
        }
    }
}
