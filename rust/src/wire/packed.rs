//! The packed layout of a version-2 payload (what `prepare` writes since the postcard layout):
//! the text of every string first, in one block, then the structure, which gives each
//! string's length in the order the strings come.
//!
//! ```text
//! payload   = 0x00 LAYOUT text_len:u32le text structure
//! structure = n:varint beacon{n}
//! beacon    = flags:u8 app:len sid:len [vid:len] [sent:f64] [user:len] [page_url:len] [screen:len]
//!             bad_events:varint unknown_events:varint n:varint event{n}
//! event     = head:u8 (body kind in bits 0-3, bit 4: has a start) [start:f64] body
//! ```
//!
//! Why: decoding postcard validated every string as UTF-8 on its own (about 40 % of the
//! decode, a call per string of a few bytes) and went through serde's visitors for every
//! field. Here the whole text is validated in one call and a string is a slice of it (its
//! bounds checked to be char boundaries). A postcard payload starts with its beacon count,
//! never 0 (a record has beacons), so the leading 0 tells the layouts apart and records
//! written before this layout still decode (`wire::decode`). Numbers are little-endian `f64`
//! bits and LEB128 varints (`u32` at most).
use super::{ParsedBeacon, ParsedBody, ParsedEvent, ParsedResource};
use crate::beacon::{ActionType, ErrorKind};

/// The first byte of a packed payload (a postcard one starts with a beacon count ≥ 1).
pub const TAG: u8 = 0;
/// The packed layout's number, after [`TAG`]: another layout would take the next number.
pub const LAYOUT: u8 = 1;

// beacon flags
const VID: u8 = 1;
const SENT: u8 = 2;
const USER: u8 = 4;
const PAGE_URL: u8 = 8;
const SCREEN: u8 = 16;
const SYNTHETIC: u8 = 32;

// event body kinds (bits 0-3 of the head) and the start bit
const LOAD: u8 = 0;
const XHR: u8 = 1;
const CUSTOM: u8 = 2;
const ERROR: u8 = 3;
const VITAL: u8 = 4;
const RAGE_CLICK: u8 = 5;
const IDENTIFY: u8 = 6;
const PROPERTY: u8 = 7;
const END: u8 = 8;
const HAS_START: u8 = 16;

// action flags
const NAME: u8 = 1;
const URL: u8 = 2;
const METHOD: u8 = 4;
const STATUS: u8 = 8;
const TRACEPARENT: u8 = 16;
const TIMINGS: u8 = 32;
const RESOURCES: u8 = 64;

// resource flags (`URL` as above)
const INITIATOR: u8 = 1;
const R_URL: u8 = 2;
const R_START: u8 = 4;
const R_DUR: u8 = 8;
const R_STATUS: u8 = 16;
const R_SIZE: u8 = 32;

// error flags, above the kind (bits 0-1)
const MESSAGE: u8 = 4;
const STACK: u8 = 8;

/// Writes the structure to one buffer and the text to another; `finish` joins them.
struct Writer {
    text: Vec<u8>,
    structure: Vec<u8>,
}

/// `v` as a LEB128 varint: 7 bits a byte, the low ones first, the high bit set on all but the
/// last (also the checkpoint's whole numbers).
pub(crate) fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Writer {
    fn byte(&mut self, b: u8) {
        self.structure.push(b);
    }

    fn varint(&mut self, n: u32) {
        push_varint(&mut self.structure, n.into());
    }

    fn count(&mut self, n: usize) {
        self.varint(u32::try_from(n).expect("counts fit u32"));
    }

    fn f64(&mut self, v: f64) {
        self.structure.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.count(s.len());
        self.text.extend_from_slice(s.as_bytes());
    }

    fn opt_str<S: AsRef<str>>(&mut self, s: Option<&S>) {
        if let Some(s) = s {
            self.str(s.as_ref());
        }
    }
}

fn bit<T>(o: Option<T>, b: u8) -> u8 {
    if o.is_some() {
        b
    } else {
        0
    }
}

/// Appends the packed form of a request's beacons to `out`.
pub fn encode<S: AsRef<str>>(beacons: &[ParsedBeacon<S>], mut out: Vec<u8>) -> Vec<u8> {
    let mut w = Writer { text: std::mem::take(&mut out), structure: Vec::with_capacity(64 + 48 * beacons.len()) };
    w.text.extend_from_slice(&[TAG, LAYOUT, 0, 0, 0, 0]);
    let text_at = w.text.len();
    w.count(beacons.len());
    for b in beacons {
        w.byte(
            bit(b.vid.as_ref(), VID)
                | bit(b.sent, SENT)
                | bit(b.user.as_ref(), USER)
                | bit(b.page_url.as_ref(), PAGE_URL)
                | bit(b.screen.as_ref(), SCREEN)
                | if b.synthetic { SYNTHETIC } else { 0 },
        );
        w.str(b.app.as_ref());
        w.str(b.sid.as_ref());
        w.opt_str(b.vid.as_ref());
        if let Some(sent) = b.sent {
            w.f64(sent);
        }
        w.opt_str(b.user.as_ref());
        w.opt_str(b.page_url.as_ref());
        w.opt_str(b.screen.as_ref());
        w.varint(b.bad_events);
        w.varint(b.unknown_events);
        w.count(b.events.len());
        for e in &b.events {
            write_event(&mut w, e);
        }
    }
    let text_len = u32::try_from(w.text.len() - text_at).expect("a request's text fits u32");
    w.text[text_at - 4..text_at].copy_from_slice(&text_len.to_le_bytes());
    let mut out = w.text;
    out.extend_from_slice(&w.structure);
    out
}

fn write_event<S: AsRef<str>>(w: &mut Writer, e: &ParsedEvent<S>) {
    let start = bit(e.start, HAS_START);
    let with_start = |w: &mut Writer, kind: u8| {
        w.byte(kind | start);
        if let Some(s) = e.start {
            w.f64(s);
        }
    };
    match &e.body {
        ParsedBody::Action { kind, name, url, method, dur, status, traceparent, timings, resources } => {
            with_start(
                w,
                match kind {
                    ActionType::Load => LOAD,
                    ActionType::Xhr => XHR,
                    ActionType::Custom => CUSTOM,
                },
            );
            w.byte(
                bit(name.as_ref(), NAME)
                    | bit(url.as_ref(), URL)
                    | bit(method.as_ref(), METHOD)
                    | bit(*status, STATUS)
                    | bit(traceparent.as_ref(), TRACEPARENT)
                    | if timings.is_empty() { 0 } else { TIMINGS }
                    | if resources.is_empty() { 0 } else { RESOURCES },
            );
            w.f64(*dur);
            w.opt_str(name.as_ref());
            w.opt_str(url.as_ref());
            w.opt_str(method.as_ref());
            if let Some(s) = status {
                w.structure.extend_from_slice(&s.to_le_bytes());
            }
            w.opt_str(traceparent.as_ref());
            if !timings.is_empty() {
                w.count(timings.len());
                for (k, v) in timings {
                    w.str(k.as_ref());
                    w.f64(*v);
                }
            }
            if !resources.is_empty() {
                w.count(resources.len());
                for r in resources {
                    w.byte(
                        bit(r.initiator.as_ref(), INITIATOR)
                            | bit(r.url.as_ref(), R_URL)
                            | bit(r.start, R_START)
                            | bit(r.dur, R_DUR)
                            | bit(r.status, R_STATUS)
                            | bit(r.size, R_SIZE),
                    );
                    w.opt_str(r.url.as_ref());
                    w.opt_str(r.initiator.as_ref());
                    for v in [r.start, r.dur].into_iter().flatten() {
                        w.f64(v);
                    }
                    if let Some(s) = r.status {
                        w.structure.extend_from_slice(&s.to_le_bytes());
                    }
                    if let Some(v) = r.size {
                        w.f64(v);
                    }
                }
            }
        }
        ParsedBody::Error { kind, message, stack } => {
            with_start(w, ERROR);
            let kind = match kind {
                ErrorKind::Js => 0,
                ErrorKind::Request => 1,
                ErrorKind::Custom => 2,
            };
            w.byte(kind | bit(message.as_ref(), MESSAGE) | bit(stack.as_ref(), STACK));
            w.opt_str(message.as_ref());
            w.opt_str(stack.as_ref());
        }
        ParsedBody::Vital { name, value } => {
            with_start(w, VITAL);
            w.str(name.as_ref());
            w.f64(*value);
        }
        ParsedBody::RageClick { target, count } => {
            with_start(w, RAGE_CLICK);
            w.byte(bit(target.as_ref(), 1));
            w.opt_str(target.as_ref());
            w.varint(*count);
        }
        ParsedBody::Identify(user) => {
            with_start(w, IDENTIFY);
            w.str(user.as_ref());
        }
        ParsedBody::Property(k, v) => {
            with_start(w, PROPERTY);
            w.str(k.as_ref());
            w.str(v.as_ref());
        }
        ParsedBody::End(reason) => {
            with_start(w, END);
            w.byte(bit(reason.as_ref(), 1));
            w.opt_str(reason.as_ref());
        }
    }
}

// `#[inline(always)]` on the reads of strings and events: measured (callgrind, bench_core's
// stream) a quarter of the decode's instructions fewer than what the inliner chose alone (a
// call per string, an event built aside and copied into its Vec).
/// Reads the structure, taking each string from the text in turn. Every read is checked
/// (and flag bits `encode` never sets refuse the payload): a damaged payload makes one of
/// them `None`, never a panic.
struct Reader<'a> {
    /// the text of the strings not read yet
    text: &'a str,
    structure: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.structure.split_first()?;
        self.structure = rest;
        Some(b)
    }

    #[inline]
    fn varint(&mut self) -> Option<u32> {
        // nearly every varint is a length below 128: one byte
        if let Some((&b, rest)) = self.structure.split_first() {
            if b < 0x80 {
                self.structure = rest;
                return Some(u32::from(b));
            }
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Option<u32> {
        let mut n: u32 = 0;
        for shift in [0, 7, 14, 21, 28] {
            let b = self.byte()?;
            n |= u32::from(b & 0x7f).checked_shl(shift)?;
            if b < 0x80 {
                // the fifth byte holds the top 4 bits only
                return (shift < 28 || b < 0x10).then_some(n);
            }
        }
        None
    }

    /// A count of items that take at least `min_bytes` of structure each: bounded by what is
    /// left, so a damaged count cannot reserve more than the payload could hold.
    #[inline]
    fn count(&mut self, min_bytes: usize) -> Option<usize> {
        let n = self.varint()? as usize;
        (n.saturating_mul(min_bytes) <= self.structure.len()).then_some(n)
    }

    #[inline]
    fn f64(&mut self) -> Option<f64> {
        let (b, rest) = self.structure.split_first_chunk::<8>()?;
        self.structure = rest;
        Some(f64::from_le_bytes(*b))
    }

    #[inline]
    fn u16(&mut self) -> Option<u16> {
        let (b, rest) = self.structure.split_first_chunk::<2>()?;
        self.structure = rest;
        Some(u16::from_le_bytes(*b))
    }

    /// The next string: `text` starts on a char boundary, so only its end is checked.
    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn str(&mut self) -> Option<&'a str> {
        let len = self.varint()? as usize;
        let (s, rest) = self.text.split_at_checked(len)?;
        self.text = rest;
        Some(s)
    }

    /// The next string if `flags` has bit `b`: `None` when damaged, `Some(None)` when absent.
    #[inline(always)]
    #[allow(clippy::inline_always, clippy::option_option)]
    fn opt_str(&mut self, flags: u8, b: u8) -> Option<Option<&'a str>> {
        if flags & b == 0 {
            Some(None)
        } else {
            self.str().map(Some)
        }
    }

    #[inline]
    #[allow(clippy::option_option)]
    fn opt_f64(&mut self, flags: u8, b: u8) -> Option<Option<f64>> {
        if flags & b == 0 {
            Some(None)
        } else {
            self.f64().map(Some)
        }
    }
}

/// The beacons of a packed payload (after [`TAG`]); `None` when it is damaged or has
/// anything left over. (Validation is the caller's: `ParsedBeacon::is_valid`.)
pub fn decode(payload: &[u8]) -> Option<Vec<ParsedBeacon<&str>>> {
    let rest = payload.strip_prefix(&[TAG, LAYOUT])?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return None;
    }
    let (text, structure) = rest.split_at(len);
    let mut r = Reader { text: std::str::from_utf8(text).ok()?, structure };
    // a beacon takes at least 6 bytes of structure (flags, two lengths, three counts)
    let n = r.count(6)?;
    let mut beacons = Vec::with_capacity(n);
    for _ in 0..n {
        beacons.push(read_beacon(&mut r)?);
    }
    (r.structure.is_empty() && r.text.is_empty()).then_some(beacons)
}

fn read_beacon<'a>(r: &mut Reader<'a>) -> Option<ParsedBeacon<&'a str>> {
    let flags = r.byte().filter(|f| f >> 6 == 0)?;
    let app = r.str()?;
    let sid = r.str()?;
    let vid = r.opt_str(flags, VID)?;
    let sent = r.opt_f64(flags, SENT)?;
    let user = r.opt_str(flags, USER)?;
    let page_url = r.opt_str(flags, PAGE_URL)?;
    let screen = r.opt_str(flags, SCREEN)?;
    let bad_events = r.varint()?;
    let unknown_events = r.varint()?;
    let n = r.count(2)?;
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(read_event(r)?);
    }
    Some(ParsedBeacon { app, sid, vid, sent, user, page_url, screen, synthetic: flags & SYNTHETIC != 0, events, bad_events, unknown_events })
}

#[inline(always)]
#[allow(clippy::inline_always)]
fn read_event<'a>(r: &mut Reader<'a>) -> Option<ParsedEvent<&'a str>> {
    let head = r.byte().filter(|h| h >> 5 == 0)?;
    let start = r.opt_f64(head, HAS_START)?;
    let body = match head & 15 {
        kind @ (LOAD | XHR | CUSTOM) => {
            let flags = r.byte().filter(|f| f >> 7 == 0)?;
            let dur = r.f64()?;
            let name = r.opt_str(flags, NAME)?;
            let url = r.opt_str(flags, URL)?;
            let method = r.opt_str(flags, METHOD)?;
            let status = if flags & STATUS == 0 { None } else { Some(r.u16()?) };
            let traceparent = r.opt_str(flags, TRACEPARENT)?;
            let mut timings = Vec::new();
            if flags & TIMINGS != 0 {
                let n = r.count(9)?;
                timings.reserve_exact(n);
                for _ in 0..n {
                    timings.push((r.str()?, r.f64()?));
                }
            }
            let mut resources = Vec::new();
            if flags & RESOURCES != 0 {
                let n = r.count(1)?;
                resources.reserve_exact(n);
                for _ in 0..n {
                    let f = r.byte().filter(|f| f >> 6 == 0)?;
                    resources.push(ParsedResource {
                        url: r.opt_str(f, R_URL)?,
                        initiator: r.opt_str(f, INITIATOR)?,
                        start: r.opt_f64(f, R_START)?,
                        dur: r.opt_f64(f, R_DUR)?,
                        status: if f & R_STATUS == 0 { None } else { Some(r.u16()?) },
                        size: r.opt_f64(f, R_SIZE)?,
                    });
                }
            }
            let kind = match kind {
                LOAD => ActionType::Load,
                XHR => ActionType::Xhr,
                _ => ActionType::Custom,
            };
            ParsedBody::Action { kind, name, url, method, dur, status, traceparent, timings, resources }
        }
        ERROR => {
            let flags = r.byte().filter(|f| f >> 4 == 0)?;
            let kind = match flags & 3 {
                0 => ErrorKind::Js,
                1 => ErrorKind::Request,
                2 => ErrorKind::Custom,
                _ => return None,
            };
            ParsedBody::Error { kind, message: r.opt_str(flags, MESSAGE)?, stack: r.opt_str(flags, STACK)? }
        }
        VITAL => ParsedBody::Vital { name: r.str()?, value: r.f64()? },
        RAGE_CLICK => {
            let flags = r.byte().filter(|f| f >> 1 == 0)?;
            ParsedBody::RageClick { target: r.opt_str(flags, 1)?, count: r.varint()? }
        }
        IDENTIFY => ParsedBody::Identify(r.str()?),
        PROPERTY => ParsedBody::Property(r.str()?, r.str()?),
        END => {
            let flags = r.byte().filter(|f| f >> 1 == 0)?;
            ParsedBody::End(r.opt_str(flags, 1)?)
        }
        _ => return None,
    };
    Some(ParsedEvent { start, body })
}
