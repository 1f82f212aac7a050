//! The checkpoint format, version 3 (`RLCKPT03`): every open session and tombstone.
//!
//! Version 2 was the serde derive of the sessions in postcard, and at a million open sessions
//! it cost seconds and a gigabyte: the text open sessions share in memory (action names and
//! URLs, resource URLs, timing keys, pages, user agents) was written out again for every
//! action, a traceparent as its 55 characters, every number as 8 bytes, through a few
//! allocations per action. Version 3 writes each shared value once, in a table the checkpoint
//! builds as it goes (a value's first use defines it, later uses name it by index), numbers
//! that are whole as varints, and a traceparent as its 25 bytes: about a fifth of the bytes,
//! written without allocating per session. Restoring takes each table value into the
//! sessionizer's shared tables once, instead of looking every action's text up again.
//!
//! Layout: the magic, a checksum of the body (u64, little-endian; see [`checksum`]), the body.
//! Integers are LEB128 varints, signed ones zigzag; text is a varint length and UTF-8.
//!
//! ```text
//! body      = count session*  count tombstone*
//! session   = text(app) str(sid) part first_recv (last_recv - first_recv) flags
//!             [str(user_tag)] count (str(tag) (t - first_recv))*  [str(visitor_id)]
//!             [text(screen)] [str(ip)] [text(user_agent)]
//!             count (text(key) str(value))*  count text(page)*  count action*
//!             count error*  count vital*  count rage*  [opt(reason) (t - first_recv)]
//! action    = head (t - previous t) number(dur) key [page] [status] [extra]
//! extra     = shape number32* [trace: 25 bytes]      (as many numbers as the shape says)
//! text(x)   = 0 str(x) | index + 1        (the same table for every text field)
//! key       = 0 str(name) opt(url) opt(method) | index + 1
//! shape     = 0 count str(timing key)* count (opt(url) opt(initiator))* | index + 1
//! number    = whole << 1 (whole below 2^52) | 1 f64 bits     (number32: 2^24, f32 bits)
//! ```
//!
//! A damaged checkpoint is an error, never a panic or a wrong state: the checksum catches
//! damage, and the reader checks every length, index and tag anyway, and what ingest would
//! have refused (an app or session id that is not valid, a key out of order or twice, a time
//! or duration out of range, text past its limit, more properties than a session keeps). A
//! count allocates no more than the bytes left can fill, and a text copied per reference (app,
//! screen, property key) is bounded as ingest bounds it.
use crate::beacon::{limits, valid_app, valid_sid, ActionType, ErrorKind};
use crate::intern::HashState;
use crate::session::{Action, ActionExtra, ActionKey, ErrorRec, ExtraShape, RageRec, Session, Shared, TraceParent, VitalRec, DIRTY_ALL, MAX_PROPERTIES, NOT_QUEUED, NO_STATUS};
use std::collections::HashMap;
use std::sync::Arc;

/// What a version-3 checkpoint starts with.
pub const MAGIC: &[u8; 8] = b"RLCKPT03";
const HEADER: usize = MAGIC.len() + 8;

/// A checkpoint's tombstone: the key, the part its last session had and that one's last
/// receive time.
pub type TombstoneRow<K> = (K, u32, i64);

/// A checkpoint's open sessions and tombstones, as read.
pub type Restored = (Vec<Box<Session>>, Vec<TombstoneRow<String>>);

// session flags
const USER_TAG: u8 = 1;
/// the user tag is the last of `user_tags` (always, as `identify` keeps them): not written twice
const USER_TAG_IS_LAST: u8 = 2;
const VISITOR: u8 = 4;
const SCREEN: u8 = 8;
const IP: u8 = 16;
const USER_AGENT: u8 = 32;
const SYNTHETIC: u8 = 64;
const END: u8 = 128;

// action head: the kind in the low two bits, then
const EXTRA: u8 = 4;
const STATUS: u8 = 8;
const PAGE: u8 = 16;
const WIDE: u8 = 32;
const TRACE: u8 = 64;

/// The checkpoint of `sessions` and `tombstones`, in the order given.
pub fn write(sessions: &[&Session], tombstones: &[TombstoneRow<&str>]) -> Vec<u8> {
    // ~250 bytes for a session of 5 actions; the vector's pages are only touched as written
    let mut w = Writer { out: Vec::with_capacity(HEADER + 64 + sessions.len() * 384 + tombstones.len() * 48), ..Writer::default() };
    w.out.extend_from_slice(MAGIC);
    w.out.extend_from_slice(&[0; 8]);
    w.count(sessions.len());
    for s in sessions {
        w.session(s);
    }
    w.count(tombstones.len());
    for (key, part, last_recv) in tombstones {
        w.str(key);
        w.varint(u64::from(*part));
        w.signed(*last_recv);
    }
    let sum = checksum(&w.out[HEADER..]);
    w.out[MAGIC.len()..HEADER].copy_from_slice(&sum.to_le_bytes());
    w.out
}

/// The sessions and tombstones of a version-3 checkpoint (it starts with [`MAGIC`]). Table
/// values are taken into `shared` as they are read (on an error it keeps those: values no
/// session holds, pruned in time).
pub fn read(bytes: &[u8], shared: &mut Shared) -> Result<Restored, String> {
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a version-3 checkpoint")?;
    let (sum, body) = body.split_at_checked(8).ok_or("truncated")?;
    if checksum(body).to_le_bytes() != sum {
        return Err("damaged or truncated (its checksum does not match)".into());
    }
    read_body(body, shared).map_err(|Damaged(why)| why.to_owned())
}

/// Past this (milliseconds either side of 1970, ~285,000 years) no time ingest makes can be.
const MAX_TIME: u64 = 1 << 53;
/// The longest texts ingest keeps, in bytes (its limits count characters, of up to 4 bytes).
const MAX_APP_BYTES: usize = 64;
const MAX_SCREEN_BYTES: usize = 4 * limits::SHORT;
const MAX_PROPERTY_KEY_BYTES: usize = 4 * limits::KEY;

fn read_body(body: &[u8], shared: &mut Shared) -> Result<Restored, Damaged> {
    let mut r = Reader { buf: body, shared, texts: Vec::new(), keys: Vec::new(), shapes: Vec::new() };
    let n = r.count(8)?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let s = r.session()?;
        check_session(&s)?;
        sessions.push(Box::new(s));
    }
    let n = r.count(3)?;
    let mut tombstones = Vec::with_capacity(n);
    for _ in 0..n {
        let key = r.str()?.to_owned();
        let part = r.u32()?;
        tombstones.push((key, part, r.signed()?));
    }
    if !r.buf.is_empty() {
        return Err(Damaged("trailing bytes after the state"));
    }
    let restored = (sessions, tombstones);
    check_order(&restored)?;
    Ok(restored)
}

/// What ingest would have refused, in a restored session (either version): an app or session
/// id that is not valid, text or properties past their limits, a time far enough out that
/// arithmetic on it (an action's end, a deadline) could overflow, a duration out of range.
fn check_session(s: &Session) -> Result<(), Damaged> {
    if !valid_app(&s.app) || !valid_sid(&s.sid) {
        return Err(Damaged("an app or session id that is not valid"));
    }
    if s.screen.as_ref().is_some_and(|x| x.len() > MAX_SCREEN_BYTES)
        || s.properties.len() > MAX_PROPERTIES
        || s.properties.iter().any(|(k, _)| k.len() > MAX_PROPERTY_KEY_BYTES)
    {
        return Err(Damaged("text or properties past their limits"));
    }
    let mut times = [s.first_recv, s.last_recv]
        .into_iter()
        .chain(s.user_tags.iter().map(|u| u.1))
        .chain(s.actions.iter().map(|a| a.t))
        .chain(s.errors.iter().map(|e| e.t))
        .chain(s.vitals.iter().map(|v| v.t))
        .chain(s.rage.iter().map(|r| r.t))
        .chain(s.end.iter().map(|e| e.1));
    if !times.all(|t| t.unsigned_abs() <= MAX_TIME) {
        return Err(Damaged("a time out of range"));
    }
    if !s.actions.iter().all(|a| (0.0..=limits::MAX_DUR).contains(&a.dur)) {
        return Err(Damaged("a duration out of range"));
    }
    Ok(())
}

/// Sessions and tombstones in the order of their keys, each key once (a key twice would lose
/// one); ('\n' sorts before every character an app may have, so (app, sid) orders as the key).
fn check_order((sessions, tombstones): &Restored) -> Result<(), Damaged> {
    if !sessions.windows(2).all(|w| (w[0].app.as_str(), w[0].sid.as_str()) < (w[1].app.as_str(), w[1].sid.as_str())) {
        return Err(Damaged("sessions out of order or twice"));
    }
    if !tombstones.windows(2).all(|w| w[0].0 < w[1].0) || tombstones.iter().any(|t| t.2.unsigned_abs() > MAX_TIME) {
        return Err(Damaged("tombstones out of order, twice or out of range"));
    }
    Ok(())
}

/// A version-2 checkpoint's state (read by the sessionizer through serde) checked as a
/// version-3 reader checks what it reads.
pub fn check(restored: &Restored) -> Result<(), String> {
    let checked = restored.0.iter().try_for_each(|s| check_session(s)).and_then(|()| check_order(restored));
    checked.map_err(|Damaged(why)| why.to_owned())
}

/// A 64-bit checksum of the body, to tell a damaged checkpoint from a good one (not against
/// an adversary: whoever can write the checkpoint owns the state anyway). Four independent
/// lanes of multiply-rotate over 8-byte words (several GB/s), then the length and the tail.
/// Every step is a bijection of a lane's state, so any change of one word changes the sum.
pub fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [K, K.rotate_left(16), K.rotate_left(32), K.rotate_left(48)];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            *lane = (*lane ^ w).wrapping_mul(K).rotate_left(31);
        }
    }
    let mut h = data.len() as u64;
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(K).rotate_left(27);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(27);
    }
    h ^ (h >> 32)
}

/// Index of each table value written so far: by the address of a shared value (one lookup
/// that needs no hashing of text), and by its content (values equal in content are written
/// once even when two copies exist, so a restored state checkpoints to the same bytes).
struct Table<'a, T: ?Sized> {
    by_ptr: HashMap<usize, u32, HashState>,
    by_value: HashMap<&'a T, u32, HashState>,
}

impl<T: ?Sized> Default for Table<'_, T> {
    fn default() -> Self {
        Table { by_ptr: HashMap::default(), by_value: HashMap::default() }
    }
}

impl<'a, T: ?Sized + Eq + std::hash::Hash> Table<'a, T> {
    /// `Some(index)` of a value written before; `None` (and the value now has the next index)
    /// when the caller has to define it.
    fn find_shared(&mut self, value: &'a Arc<T>) -> Option<u32> {
        let ptr = Arc::as_ptr(value).cast::<u8>() as usize;
        if let Some(&i) = self.by_ptr.get(&ptr) {
            return Some(i);
        }
        let found = self.find(value);
        self.by_ptr.insert(ptr, found.unwrap_or(self.by_value.len() as u32 - 1));
        found
    }

    /// [`Table::find_shared`] by content only (a value not shared in memory).
    fn find(&mut self, value: &'a T) -> Option<u32> {
        let next = self.by_value.len() as u32;
        match self.by_value.entry(value) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                None
            }
        }
    }
}

#[derive(Default)]
struct Writer<'a> {
    out: Vec<u8>,
    texts: Table<'a, str>,
    keys: Table<'a, ActionKey>,
    shapes: Table<'a, ExtraShape>,
}

impl<'a> Writer<'a> {
    fn varint(&mut self, v: u64) {
        crate::wire::push_varint(&mut self.out, v);
    }

    fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn count(&mut self, n: usize) {
        self.varint(n as u64);
    }

    fn str(&mut self, s: &str) {
        self.count(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.varint(0),
            Some(s) => {
                self.count(s.len() + 1);
                self.out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Writes a table reference: `true` when the caller has to define the value here.
    fn reference(&mut self, found: Option<u32>) -> bool {
        self.varint(found.map_or(0, |i| u64::from(i) + 1));
        found.is_none()
    }

    fn shared_text(&mut self, s: &'a Arc<str>) {
        let found = self.texts.find_shared(s);
        if self.reference(found) {
            self.str(s);
        }
    }

    fn text(&mut self, s: &'a str) {
        let found = self.texts.find(s);
        if self.reference(found) {
            self.str(s);
        }
    }

    fn f64(&mut self, v: f64) {
        // whole (the cast back, not `fract`: that is a libm call on baseline x86-64)
        if v >= 0.0 && v < (1u64 << 52) as f64 && (v as u64) as f64 == v && v.is_sign_positive() {
            self.varint((v as u64) << 1);
        } else {
            self.varint(1);
            self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }

    fn f32_bits(&mut self, bits: u32) {
        let v = f32::from_bits(bits);
        if v >= 0.0 && v < (1u32 << 24) as f32 && (v as u32) as f32 == v && v.is_sign_positive() {
            self.varint(u64::from(v as u32) << 1);
        } else {
            self.varint(1);
            self.out.extend_from_slice(&bits.to_le_bytes());
        }
    }

    fn session(&mut self, s: &'a Session) {
        let base = s.first_recv;
        self.text(&s.app);
        self.str(&s.sid);
        self.varint(u64::from(s.part));
        self.signed(base);
        self.signed(s.last_recv.wrapping_sub(base));
        let tag_is_last = s.user_tag.is_some() && s.user_tags.last().map(|(t, _)| t) == s.user_tag.as_ref();
        let flags = [
            (s.user_tag.is_some(), USER_TAG),
            (tag_is_last, USER_TAG_IS_LAST),
            (s.visitor_id.is_some(), VISITOR),
            (s.screen.is_some(), SCREEN),
            (s.ip.is_some(), IP),
            (s.user_agent.is_some(), USER_AGENT),
            (s.synthetic, SYNTHETIC),
            (s.end.is_some(), END),
        ]
        .iter()
        .fold(0, |f, &(on, bit)| if on { f | bit } else { f });
        self.out.push(flags);
        if let (Some(tag), false) = (&s.user_tag, tag_is_last) {
            self.str(tag);
        }
        self.count(s.user_tags.len());
        for (tag, t) in &s.user_tags {
            self.str(tag);
            self.signed(t.wrapping_sub(base));
        }
        if let Some(v) = &s.visitor_id {
            self.str(v);
        }
        if let Some(v) = &s.screen {
            self.text(v);
        }
        if let Some(v) = &s.ip {
            self.str(v);
        }
        if let Some(v) = &s.user_agent {
            self.shared_text(v);
        }
        self.count(s.properties.len());
        for (k, v) in &s.properties {
            self.text(k);
            self.str(v);
        }
        self.count(s.pages.len());
        for p in &s.pages {
            self.shared_text(p);
        }
        self.count(s.actions.len());
        let mut previous = base;
        for a in &s.actions {
            self.action(a, previous);
            previous = a.t;
        }
        self.count(s.errors.len());
        for e in &s.errors {
            self.out.push(e.kind as u8);
            self.opt(e.message.as_deref());
            self.opt(e.stack.as_deref());
            self.signed(e.t.wrapping_sub(base));
        }
        self.count(s.vitals.len());
        for v in &s.vitals {
            self.shared_text(&v.name);
            self.f64(v.value);
            self.signed(v.t.wrapping_sub(base));
        }
        self.count(s.rage.len());
        for r in &s.rage {
            self.opt(r.target.as_deref());
            self.varint(u64::from(r.count));
            self.signed(r.t.wrapping_sub(base));
        }
        if let Some((reason, t)) = &s.end {
            self.opt(reason.as_deref());
            self.signed(t.wrapping_sub(base));
        }
    }

    fn action(&mut self, a: &'a Action, previous: i64) {
        let trace = a.extra.as_ref().map(|x| x.trace).filter(|t| t.0 != [0; 25]);
        let head = [
            (a.extra.is_some(), EXTRA),
            (a.status != NO_STATUS, STATUS),
            (a.page != 0, PAGE),
            (a.extra.as_ref().is_some_and(|x| x.wide), WIDE),
            (trace.is_some(), TRACE),
        ]
        .iter()
        .fold(a.kind as u8, |f, &(on, bit)| if on { f | bit } else { f });
        self.out.push(head);
        self.signed(a.t.wrapping_sub(previous));
        self.f64(a.dur);
        let found = self.keys.find_shared(&a.key);
        if self.reference(found) {
            self.str(&a.key.name);
            self.opt(a.key.url.as_deref());
            self.opt(a.key.method.as_deref());
        }
        if a.page != 0 {
            self.varint(u64::from(a.page));
        }
        if a.status != NO_STATUS {
            self.varint(u64::from(a.status));
        }
        if let Some(x) = &a.extra {
            let found = self.shapes.find_shared(&x.shape);
            if self.reference(found) {
                self.count(x.shape.timing_keys.len());
                for k in &x.shape.timing_keys {
                    self.str(k);
                }
                self.count(x.shape.resources.len());
                for (url, initiator) in &x.shape.resources {
                    self.opt(url.as_deref());
                    self.opt(initiator.as_deref());
                }
            }
            if x.wide {
                for b in &x.numbers {
                    self.out.extend_from_slice(&b.to_le_bytes());
                }
            } else {
                for &b in &x.numbers {
                    self.f32_bits(b);
                }
            }
            if let Some(t) = trace {
                self.out.extend_from_slice(&t.0);
            }
        }
    }
}

/// Why a checkpoint's body cannot be read.
struct Damaged(&'static str);

const TRUNCATED: Damaged = Damaged("truncated");

struct Reader<'b, 's> {
    buf: &'b [u8],
    shared: &'s mut Shared,
    texts: Vec<Arc<str>>,
    keys: Vec<Arc<ActionKey>>,
    shapes: Vec<Arc<ExtraShape>>,
}

impl<'b> Reader<'b, '_> {
    fn bytes(&mut self, n: usize) -> Result<&'b [u8], Damaged> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(TRUNCATED)?;
        self.buf = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Damaged> {
        Ok(self.bytes(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, Damaged> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Damaged("a number out of range"))
    }

    fn signed(&mut self) -> Result<i64, Damaged> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32, Damaged> {
        u32::try_from(self.varint()?).map_err(|_| Damaged("a number out of range"))
    }

    /// A count of items of at least `min_bytes` each: no more than the bytes left can hold,
    /// so a damaged count allocates nothing large.
    fn count(&mut self, min_bytes: usize) -> Result<usize, Damaged> {
        usize::try_from(self.varint()?).ok().filter(|&n| n.saturating_mul(min_bytes) <= self.buf.len()).ok_or(TRUNCATED)
    }

    fn str_of_len(&mut self, len: usize) -> Result<&'b str, Damaged> {
        std::str::from_utf8(self.bytes(len)?).map_err(|_| Damaged("text that is not UTF-8"))
    }

    fn str(&mut self) -> Result<&'b str, Damaged> {
        let len = self.count(1)?;
        self.str_of_len(len)
    }

    fn opt(&mut self) -> Result<Option<&'b str>, Damaged> {
        match self.count(0)? {
            0 => Ok(None),
            n => self.str_of_len(n - 1).map(Some),
        }
    }

    fn opt_owned(&mut self) -> Result<Option<String>, Damaged> {
        Ok(self.opt()?.map(str::to_owned))
    }

    fn f64(&mut self) -> Result<f64, Damaged> {
        match self.varint()? {
            1 => Ok(f64::from_bits(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))),
            v if v & 1 == 0 && v >> 1 < 1 << 52 => Ok((v >> 1) as f64),
            _ => Err(Damaged("a bad number")),
        }
    }

    fn f32_bits(&mut self) -> Result<u32, Damaged> {
        match self.varint()? {
            1 => Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes"))),
            v if v & 1 == 0 && v >> 1 < 1 << 24 => Ok(((v >> 1) as f32).to_bits()),
            _ => Err(Damaged("a bad number")),
        }
    }

    /// `Ok(None)` when the value is defined here, else the table's value.
    fn reference<T: ?Sized>(&mut self, table: impl Fn(&Self) -> &Vec<Arc<T>>) -> Result<Option<Arc<T>>, Damaged> {
        match self.varint()? {
            0 => Ok(None),
            i => table(self).get(usize::try_from(i - 1).unwrap_or(usize::MAX)).cloned().map(Some).ok_or(Damaged("a reference to a value not defined")),
        }
    }

    fn text(&mut self) -> Result<Arc<str>, Damaged> {
        if let Some(t) = self.reference(|r| &r.texts)? {
            return Ok(t);
        }
        let t = self.str()?;
        let t = self.shared.strings.str(t);
        self.texts.push(Arc::clone(&t));
        Ok(t)
    }

    fn key(&mut self) -> Result<Arc<ActionKey>, Damaged> {
        if let Some(k) = self.reference(|r| &r.keys)? {
            return Ok(k);
        }
        let name = self.str()?;
        let (url, method) = (self.opt()?, self.opt()?);
        let key = ActionKey { name: name.into(), url: url.map(Into::into), method: method.map(Into::into) };
        let key = self.shared.keys.share(&Arc::new(key));
        self.keys.push(Arc::clone(&key));
        Ok(key)
    }

    fn shape(&mut self) -> Result<Arc<ExtraShape>, Damaged> {
        if let Some(x) = self.reference(|r| &r.shapes)? {
            return Ok(x);
        }
        let n = self.count(1)?;
        let timing_keys = (0..n).map(|_| self.str().map(Into::into)).collect::<Result<_, _>>()?;
        let n = self.count(2)?;
        let resources = (0..n).map(|_| Ok((self.opt()?.map(Into::into), self.opt()?.map(Into::into)))).collect::<Result<_, _>>()?;
        let shape = self.shared.shapes.share(&Arc::new(ExtraShape { timing_keys, resources }));
        self.shapes.push(Arc::clone(&shape));
        Ok(shape)
    }

    /// A time written as its difference from `base`.
    fn time_after(&mut self, base: i64) -> Result<i64, Damaged> {
        Ok(base.wrapping_add(self.signed()?))
    }

    /// A text copied into the session per reference, at most `max` bytes.
    fn short_text(&mut self, max: usize) -> Result<String, Damaged> {
        let t = self.text()?;
        if t.len() > max {
            return Err(Damaged("a text longer than its limit"));
        }
        Ok(String::from(&*t))
    }

    fn session(&mut self) -> Result<Session, Damaged> {
        // the texts copied per reference are bounded as they are read (a long one referred to
        // by every property would make a small checkpoint restore gigabytes)
        let app = self.short_text(MAX_APP_BYTES)?;
        let sid = self.str()?.to_owned();
        let part = self.u32()?;
        let first_recv = self.signed()?;
        let last_recv = self.time_after(first_recv)?;
        let flags = self.byte()?;
        let on = |bit: u8| flags & bit != 0;
        if on(USER_TAG_IS_LAST) && !on(USER_TAG) {
            return Err(Damaged("bad session flags"));
        }
        let mut user_tag = if on(USER_TAG) && !on(USER_TAG_IS_LAST) { Some(self.str()?.to_owned()) } else { None };
        let n = self.count(2)?;
        let mut user_tags = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = self.str()?.to_owned();
            user_tags.push((tag, self.time_after(first_recv)?));
        }
        if on(USER_TAG_IS_LAST) {
            user_tag = Some(user_tags.last().ok_or(Damaged("a user tag without user tags"))?.0.clone());
        }
        let visitor_id = if on(VISITOR) { Some(self.str()?.to_owned()) } else { None };
        let screen = if on(SCREEN) { Some(self.short_text(MAX_SCREEN_BYTES)?) } else { None };
        let ip = if on(IP) { Some(self.str()?.to_owned()) } else { None };
        let user_agent = if on(USER_AGENT) { Some(self.text()?) } else { None };
        let n = self.count(2)?;
        if n > MAX_PROPERTIES {
            return Err(Damaged("more properties than a session keeps"));
        }
        let mut properties = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.short_text(MAX_PROPERTY_KEY_BYTES)?;
            properties.push((k, self.str()?.to_owned()));
        }
        let n = self.count(1)?;
        let mut pages = Vec::with_capacity(n);
        for _ in 0..n {
            pages.push(self.text()?);
        }
        let n = self.count(4)?;
        let mut actions = Vec::with_capacity(n);
        let mut previous = first_recv;
        for _ in 0..n {
            let a = self.action(previous, pages.len())?;
            previous = a.t;
            actions.push(a);
        }
        let n = self.count(4)?;
        let mut errors = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match self.byte()? {
                0 => ErrorKind::Js,
                1 => ErrorKind::Request,
                2 => ErrorKind::Custom,
                _ => return Err(Damaged("an unknown error kind")),
            };
            let (message, stack) = (self.opt_owned()?, self.opt_owned()?);
            errors.push(ErrorRec { kind, message, stack, t: self.time_after(first_recv)? });
        }
        let n = self.count(3)?;
        let mut vitals = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.text()?;
            let value = self.f64()?;
            vitals.push(VitalRec { name, value, t: self.time_after(first_recv)? });
        }
        let n = self.count(3)?;
        let mut rage = Vec::with_capacity(n);
        for _ in 0..n {
            let target = self.opt_owned()?;
            let count = self.u32()?;
            rage.push(RageRec { target, count, t: self.time_after(first_recv)? });
        }
        let end = if on(END) {
            let reason = self.opt_owned()?;
            Some((reason, self.time_after(first_recv)?))
        } else {
            None
        };
        Ok(Session {
            app,
            sid,
            part,
            first_recv,
            last_recv,
            user_tag,
            user_tags,
            visitor_id,
            screen,
            ip,
            user_agent,
            synthetic: on(SYNTHETIC),
            properties,
            pages,
            actions,
            errors,
            vitals,
            rage,
            end,
            dirty: DIRTY_ALL,
            queued: NOT_QUEUED,
        })
    }

    fn action(&mut self, previous: i64, pages: usize) -> Result<Action, Damaged> {
        let head = self.byte()?;
        let kind = match head & 3 {
            0 => ActionType::Load,
            1 => ActionType::Xhr,
            2 => ActionType::Custom,
            _ => return Err(Damaged("an unknown action type")),
        };
        if head & 0x80 != 0 || (head & (WIDE | TRACE) != 0 && head & EXTRA == 0) {
            return Err(Damaged("a bad action head"));
        }
        let t = self.time_after(previous)?;
        let dur = self.f64()?;
        let key = self.key()?;
        let page = if head & PAGE != 0 { self.u32()? } else { 0 };
        if (head & PAGE != 0 && page == 0) || page as usize > pages {
            return Err(Damaged("an action on a page not listed"));
        }
        let status = if head & STATUS != 0 {
            u16::try_from(self.varint()?).ok().filter(|&s| s != NO_STATUS).ok_or(Damaged("a bad status"))?
        } else {
            NO_STATUS
        };
        let extra = if head & EXTRA != 0 {
            let shape = self.shape()?;
            let wide = head & WIDE != 0;
            let n = shape.timing_keys.len() + 4 * shape.resources.len();
            let numbers: Box<[u32]> = if wide {
                let raw = self.bytes(8 * n)?;
                raw.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
            } else {
                if n > self.buf.len() {
                    return Err(TRUNCATED);
                }
                let mut numbers = Vec::with_capacity(n); // exact: no growing, no shrinking
                for _ in 0..n {
                    numbers.push(self.f32_bits()?);
                }
                numbers.into_boxed_slice()
            };
            let mut trace = TraceParent::default();
            if head & TRACE != 0 {
                trace.0.copy_from_slice(self.bytes(25)?);
            }
            Some(Box::new(ActionExtra { shape, numbers, trace, wide }))
        } else {
            None
        };
        Ok(Action { t, dur, key, extra, page, status, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(buf: &[u8], shared: &mut Shared, f: impl FnOnce(&mut Reader) -> Result<(), Damaged>) {
        let mut r = Reader { buf, shared, texts: Vec::new(), keys: Vec::new(), shapes: Vec::new() };
        assert!(f(&mut r).is_ok());
        assert!(r.buf.is_empty());
    }

    #[test]
    fn numbers_keep_their_exact_bits() {
        let f64s = [0.0, -0.0, 1.0, 812.5, -3.0, 4100.0, (1u64 << 52) as f64 - 1.0, (1u64 << 52) as f64, 1e300, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE / 2.0];
        let f32s = [0.0f32, -0.0, 1.0, 0.1, 48213.0, (1u32 << 24) as f32 - 1.0, (1u32 << 24) as f32, -7.0, f32::NAN, 1e-40];
        let mut w = Writer::default();
        for v in f64s {
            w.f64(v);
        }
        for v in f32s {
            w.f32_bits(v.to_bits());
        }
        w.signed(i64::MIN);
        w.signed(i64::MAX);
        w.varint(u64::MAX);
        let mut shared = Shared::default();
        reader(&w.out, &mut shared, |r| {
            for v in f64s {
                assert_eq!(r.f64()?.to_bits(), v.to_bits(), "{v}");
            }
            for v in f32s {
                assert_eq!(r.f32_bits()?, v.to_bits(), "{v}");
            }
            assert_eq!((r.signed()?, r.signed()?, r.varint()?), (i64::MIN, i64::MAX, u64::MAX));
            Ok(())
        });
        // whole numbers take a byte or three, not eight
        let mut w = Writer::default();
        w.f64(4100.0);
        w.f32_bits(48213f32.to_bits());
        assert_eq!(w.out.len(), 2 + 3);
        // a varint past 64 bits, and numbers a writer never makes, are refused
        let mut r = Reader { buf: &[0xff; 11], shared: &mut shared, texts: Vec::new(), keys: Vec::new(), shapes: Vec::new() };
        assert!(r.varint().is_err());
        let mut w = Writer::default();
        w.varint(3);
        w.varint((1 << 24) << 1);
        let mut r = Reader { buf: &w.out, shared: &mut shared, texts: Vec::new(), keys: Vec::new(), shapes: Vec::new() };
        assert!(r.f64().is_err() && r.f32_bits().is_err());
    }

    #[test]
    fn the_checksum_sees_every_change_and_cut() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        let sum = checksum(&data);
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.clone();
                bad[i] ^= 1 << bit;
                assert_ne!(checksum(&bad), sum, "byte {i} bit {bit}");
            }
            assert_ne!(checksum(&data[..i]), sum, "cut at {i}");
        }
    }

    #[test]
    fn an_empty_state_round_trips() {
        let state = write(&[], &[("shop\nsid-1", 3, -5)]);
        let (sessions, tombstones) = read(&state, &mut Shared::default()).unwrap();
        assert!(sessions.is_empty());
        assert_eq!(tombstones, [("shop\nsid-1".to_owned(), 3, -5)]);
        assert!(read(b"RLCKPT02", &mut Shared::default()).is_err());
    }
}
