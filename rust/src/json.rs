//! A JSON writer for the summary and detail of a session (docs §7), byte for byte what
//! `serde_json` writes for the same values.
//!
//! Why not `serde_json::to_vec` of `Serialize` structs: it escapes every key and every string
//! byte by byte through a table, which was a third of the cost of finalizing a session. Here a
//! key is written as one pre-escaped literal, and a string is copied whole when a word-at-a-time
//! check finds nothing to escape (the common case); numbers, and strings that need escaping,
//! still go through `serde_json`, so the bytes are the same.
use serde::Serializer as _;

pub struct JsonWriter {
    buf: Vec<u8>,
    /// no comma before the next member or element
    first: bool,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether any of the 8 bytes is a control character, `"` or `\` (exact as a whole).
fn word_needs_escape(w: u64) -> bool {
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGH != 0
}

fn needs_escape(s: &[u8]) -> bool {
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        if word_needs_escape(u64::from_le_bytes(w.try_into().expect("8 bytes"))) {
            return true;
        }
    }
    // the last bytes as one more word, padded with a letter (which needs no escaping)
    let rest = words.remainder();
    let mut last = [b'a'; 8];
    last[..rest.len()].copy_from_slice(rest);
    word_needs_escape(u64::from_le_bytes(last))
}

impl JsonWriter {
    pub fn with_capacity(capacity: usize) -> Self {
        JsonWriter { buf: Vec::with_capacity(capacity), first: true }
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

    fn write_str(&mut self, s: &str) {
        if needs_escape(s.as_bytes()) {
            serde_json::Serializer::new(&mut self.buf).serialize_str(s).expect("writing to a Vec");
        } else {
            self.buf.reserve(s.len() + 2);
            self.buf.push(b'"');
            self.buf.extend_from_slice(s.as_bytes());
            self.buf.push(b'"');
        }
    }

    pub fn str(&mut self, s: &str) {
        self.write_str(s);
        self.first = false;
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
        serde_json::Serializer::new(&mut self.buf).serialize_i64(n.into()).expect("writing to a Vec");
        self.first = false;
    }

    pub fn uint(&mut self, n: usize) {
        serde_json::Serializer::new(&mut self.buf).serialize_u64(n as u64).expect("writing to a Vec");
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
        serde_json::Serializer::new(&mut self.buf).serialize_f64(f).expect("writing to a Vec");
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
        fn ascii_with_escapes_anywhere(s in "[ -~\t\n\u{0}\u{1f}\"\\\\]{0,40}") {
            prop_assert_eq!(written(|w| w.str(&s)), serde_json::to_string(&s).unwrap());
        }
    }
}
