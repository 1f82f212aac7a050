//! One user session: what it accumulates from beacons and how it is finalized (docs §5–§7).
use crate::apdex::{self, ApdexCategory, ApdexCounts, Thresholds};
use crate::beacon::{ActionType, ErrorKind};
use crate::intern::{hash_fields, HashState, Table, TableHash};
use crate::settings::Settings;
use crate::json::JsonWriter;
use crate::useragent::UserAgent;
use crate::ux::{self, UxScore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Why a session was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// No beacon for the inactivity timeout.
    Timeout,
    /// The session reached the maximum duration; later beacons open the next part.
    DurationLimit,
    /// The session reached the maximum number of actions; the next action opens the next part.
    ActionLimit,
    /// The agent ended the session (`endSession()`, logout).
    EndEvent,
    /// Too many sessions were open: the least recently active ones were closed.
    OpenLimit,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Timeout => "timeout",
            EndReason::DurationLimit => "duration_limit",
            EndReason::ActionLimit => "action_limit",
            EndReason::EndEvent => "end_event",
            EndReason::OpenLimit => "open_limit",
        }
    }
}

/// Maximum number of distinct property keys per session.
pub const MAX_PROPERTIES: usize = 50;
/// Maximum number of distinct action names in a summary.
pub const MAX_ACTION_NAMES: usize = 100;

/// What names an action: its name, URL and method, shared by every action that has the same
/// (an XHR endpoint, a page's load, a button's click repeat across actions and sessions).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ActionKey {
    pub name: Box<str>,
    pub url: Option<Box<str>>,
    pub method: Option<Box<str>>,
}

/// The shape of an action's timings and resources: the timing keys in arrival order and each
/// resource's (url, initiator). Shared like [`ActionKey`]: a page's loads repeat it.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ExtraShape {
    pub timing_keys: Box<[Box<str>]>,
    pub resources: Box<[ResourceKey]>,
}

/// A resource's (url, initiator).
pub type ResourceKey = (Option<Box<str>>, Option<Box<str>>);

/// The hash of an action key from its fields (`ActionKey` and the fields an event brings).
fn action_key_hash(state: &HashState, name: &str, url: Option<&str>, method: Option<&str>) -> u64 {
    hash_fields(state, |h| {
        name.hash(h);
        url.hash(h);
        method.hash(h);
    })
}

impl TableHash for ActionKey {
    fn table_hash(&self, state: &HashState) -> u64 {
        action_key_hash(state, &self.name, self.url.as_deref(), self.method.as_deref())
    }
}

/// The hash of a shape from its timing keys and its resources' (url, initiator).
fn shape_hash<'a>(
    state: &HashState,
    timing_keys: impl ExactSizeIterator<Item = &'a str>,
    resources: impl ExactSizeIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> u64 {
    hash_fields(state, |h| {
        h.write_usize(timing_keys.len());
        for k in timing_keys {
            k.hash(h);
        }
        h.write_usize(resources.len());
        for r in resources {
            r.hash(h);
        }
    })
}

impl TableHash for ExtraShape {
    fn table_hash(&self, state: &HashState) -> u64 {
        shape_hash(state, self.timing_keys.iter().map(|k| &**k), self.resources.iter().map(|(u, i)| (u.as_deref(), i.as_deref())))
    }
}

/// A traceparent (`00-{trace id}-{parent id}-{flags}`, validated at parse time) as its 25
/// bytes instead of 55 characters; all zeros (an invalid trace id) when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceParent(pub(crate) [u8; 25]);

impl TraceParent {
    /// Parses a valid traceparent (`beacon::valid_traceparent`); `None` for anything else.
    pub fn parse(s: &str) -> Option<TraceParent> {
        if !crate::beacon::valid_traceparent(s) {
            return None;
        }
        let b = s.as_bytes();
        let nibble = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
        let mut out = [0u8; 25];
        // the hex digits of the trace id, the parent id and the flags, without the dashes
        let hex = b[3..35].chunks_exact(2).chain(b[36..52].chunks_exact(2)).chain(b[53..55].chunks_exact(2));
        for (o, pair) in out.iter_mut().zip(hex) {
            *o = nibble(pair[0]) << 4 | nibble(pair[1]);
        }
        Some(TraceParent(out))
    }

    fn is_some(&self) -> bool {
        self.0[..16].iter().any(|&b| b != 0)
    }

    /// The 55-character text form.
    pub fn text(&self) -> String {
        String::from_utf8(self.ascii().to_vec()).expect("ASCII")
    }

    /// The 55-character text form, on the stack (the detail writer's, no allocation).
    fn ascii(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        let mut at = 2;
        for (i, b) in self.0.iter().enumerate() {
            if i == 0 || i == 16 || i == 24 {
                at += 1; // the '-'
            }
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 15)];
            at += 2;
        }
        out
    }
}

/// The rarely set parts of an action, out of line so a plain action stays small.
#[derive(Debug, Clone)]
pub struct ActionExtra {
    pub shape: Arc<ExtraShape>,
    /// the timing values (one per timing key), then per resource start, dur, status, size;
    /// NaN for an absent one (JSON has no NaN); see [`Numbers`]
    pub numbers: Box<[u32]>,
    pub trace: TraceParent,
    /// whether `numbers` holds `f64` (not `f32`) bits; here, not in [`Numbers`], so the
    /// extra fits a 64-byte malloc chunk
    pub wide: bool,
}

impl ActionExtra {
    fn numbers(&self) -> Numbers<'_> {
        Numbers { bits: &self.numbers, wide: self.wide }
    }
}

/// Numbers stored as `f32` when every one of them is exactly an `f32` (whole milliseconds
/// below 2^24, sizes, statuses: nearly always), else as `f64`: half the bytes, same values.
#[derive(Debug, Clone, Copy)]
pub struct Numbers<'a> {
    /// `f32` bits, or the low and high halves of `f64` bits when `wide`
    bits: &'a [u32],
    wide: bool,
}

impl<'a> Numbers<'a> {
    /// The bits of `values` and whether they are wide.
    fn encode(values: &[f64]) -> (Box<[u32]>, bool) {
        let narrow = |v: f64| v.is_nan() || f64::from(v as f32).to_bits() == v.to_bits();
        if values.iter().all(|&v| narrow(v)) {
            (values.iter().map(|&v| (v as f32).to_bits()).collect(), false)
        } else {
            let bits = values.iter().flat_map(|v| {
                let b = v.to_bits();
                [b as u32, (b >> 32) as u32]
            });
            (bits.collect(), true)
        }
    }

    fn len(&self) -> usize {
        if self.wide {
            self.bits.len() / 2
        } else {
            self.bits.len()
        }
    }

    fn get(&self, i: usize) -> f64 {
        if self.wide {
            f64::from_bits(u64::from(self.bits[2 * i]) | u64::from(self.bits[2 * i + 1]) << 32)
        } else {
            f64::from(f32::from_bits(self.bits[i]))
        }
    }

    fn iter(self) -> impl Iterator<Item = f64> + 'a {
        (0..self.len()).map(move |i| self.get(i))
    }
}

/// One action as an open session keeps it: 40 bytes inline (memory is the limit on how many
/// sessions a collector holds open), the repeated text shared, the rest boxed when present.
#[derive(Debug, Clone)]
pub struct Action {
    pub t: i64,
    pub dur: f64,
    pub key: Arc<ActionKey>,
    pub extra: Option<Box<ActionExtra>>,
    /// 1 + index into the session's `pages`; 0 when the beacon had no page URL
    pub page: u32,
    /// the HTTP status; [`NO_STATUS`] when there is none
    pub status: u16,
    pub kind: ActionType,
}

/// [`Action::status`] of an action without one (a status is 0..999).
pub const NO_STATUS: u16 = u16::MAX;

/// The values shared across sessions, one table per kind (see `intern.rs`).
#[derive(Debug, Default)]
pub struct Shared {
    pub keys: Table<ActionKey>,
    pub shapes: Table<ExtraShape>,
    pub strings: Table<str>,
}

thread_local! {
    /// The tables a checkpoint's actions share their text through while serde builds the
    /// sessions (see [`Shared::restoring`]): serde's derive passes no context down to
    /// `Action::deserialize`, and a `DeserializeSeed` would repeat every field of `Session`.
    static RESTORING: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Gives the tables back to the restore that lent them, also when deserializing panics.
struct Lent<'a>(&'a mut Shared);

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        *self.0 = RESTORING.with(|r| r.borrow_mut().take()).unwrap_or_default();
    }
}

/// Whether `cleaned` (scrubbed, truncated) is `raw` unchanged: the same bytes, not a copy
/// (scrubbing borrows the text when nothing matched, truncating keeps a borrowed prefix).
fn unchanged(raw: &str, cleaned: &str) -> bool {
    std::ptr::eq(raw.as_ptr(), cleaned.as_ptr()) && raw.len() == cleaned.len()
}

impl Shared {
    /// The shared key of an action from its name and URL as sent (`clean` scrubs and
    /// truncates them; the name is the URL, else the type, when absent) and its method. Text
    /// that matches a key known to be clean is not cleaned again.
    pub fn action_key_as_sent<'a>(
        &mut self,
        kind: ActionType,
        name: Option<&'a str>,
        url: Option<&'a str>,
        method: Option<&str>,
        clean: impl Fn(&'a str) -> Cow<'a, str>,
    ) -> Arc<ActionKey> {
        let name_as_sent = name.or(url).unwrap_or(kind.as_str());
        let hash = action_key_hash(self.keys.state(), name_as_sent, url, method);
        let eq = |k: &Arc<ActionKey>| &*k.name == name_as_sent && k.url.as_deref() == url && k.method.as_deref() == method;
        if let Some(k) = self.keys.find_verbatim(hash, eq) {
            return Arc::clone(k);
        }
        let clean_url = url.map(&clean);
        let clean_name = match name {
            Some(n) => clean(n),
            None => clean_url.clone().unwrap_or(Cow::Borrowed(kind.as_str())),
        };
        // verbatim: both texts are their own cleaned form (a type's name was never cleaned)
        let url_unchanged = url.zip(clean_url.as_ref()).is_none_or(|(u, c)| unchanged(u, c));
        let verbatim = url_unchanged && name.map_or(url.is_some(), |n| unchanged(n, &clean_name));
        let hash = if verbatim { hash } else { action_key_hash(self.keys.state(), &clean_name, clean_url.as_deref(), method) };
        self.action_key_marked(hash, &clean_name, clean_url.as_deref(), method, verbatim)
    }

    fn action_key_marked(&mut self, hash: u64, name: &str, url: Option<&str>, method: Option<&str>, verbatim: bool) -> Arc<ActionKey> {
        self.keys.find_or_mark(
            hash,
            |k| &*k.name == name && k.url.as_deref() == url && k.method.as_deref() == method,
            || Arc::new(ActionKey { name: name.into(), url: url.map(Into::into), method: method.map(Into::into) }),
            verbatim,
        )
    }

    /// Runs `deserialize` (a checkpoint's) with its actions taking their text from these
    /// tables as they are made: text the tables have already is neither copied nor hashed
    /// again later. The tables are this thread's only while `deserialize` runs.
    pub fn restoring<R>(&mut self, deserialize: impl FnOnce() -> R) -> R {
        RESTORING.with(|r| *r.borrow_mut() = Some(std::mem::take(self)));
        let _back = Lent(self);
        deserialize()
    }

    /// The shared key of an action's name, URL and method (cleaned).
    fn action_key(&mut self, name: &str, url: Option<&str>, method: Option<&str>) -> Arc<ActionKey> {
        let hash = action_key_hash(self.keys.state(), name, url, method);
        self.action_key_marked(hash, name, url, method, false)
    }

    /// A page URL as sent, scrubbed and truncated by `clean`, unless it matches a shared
    /// string known to be clean.
    pub fn page_as_sent<'a>(&mut self, url: &'a str, clean: impl FnOnce(&'a str) -> Cow<'a, str>) -> Cow<'a, str> {
        let hash = url.table_hash(self.strings.state());
        if self.strings.find_verbatim(hash, |v| &**v == url).is_some() {
            return Cow::Borrowed(url);
        }
        let cleaned = clean(url);
        if unchanged(url, &cleaned) {
            self.strings.find_or_mark(hash, |v| &**v == url, || Arc::from(url), true);
        }
        cleaned
    }

    /// The shared shape of an action's timings and resources.
    fn shape<K: AsRef<str>>(&mut self, timings: &[(K, f64)], resources: &[ResourceIn]) -> Arc<ExtraShape> {
        let keys = || timings.iter().map(|(k, _)| k.as_ref());
        let res = || resources.iter().map(|r| (r.url.as_deref(), r.initiator));
        let hash = shape_hash(self.shapes.state(), keys(), res());
        self.shapes.find_or(
            hash,
            |x| {
                x.timing_keys.len() == timings.len()
                    && x.resources.len() == resources.len()
                    && x.timing_keys.iter().zip(keys()).all(|(a, b)| **a == *b)
                    && x.resources.iter().zip(resources).all(|((u, i), r)| u.as_deref() == r.url.as_deref() && i.as_deref() == r.initiator)
            },
            || Arc::new(ExtraShape::of(timings, resources)),
        )
    }
}

impl ExtraShape {
    /// The shape of an action's timings and resources, its own copy.
    fn of<K: AsRef<str>>(timings: &[(K, f64)], resources: &[ResourceIn]) -> ExtraShape {
        ExtraShape {
            timing_keys: timings.iter().map(|(k, _)| k.as_ref().into()).collect(),
            resources: resources.iter().map(|r| (r.url.as_deref().map(Into::into), r.initiator.map(Into::into))).collect(),
        }
    }
}

/// An action's fields as an event brings them, borrowed (from a WAL record, or from an owned
/// event), its text finished (scrubbed, truncated).
#[derive(Debug)]
pub struct ActionIn<'a, K> {
    pub kind: ActionType,
    /// its name, URL and method, shared
    pub key: Arc<ActionKey>,
    pub dur: f64,
    pub status: Option<u16>,
    /// valid or ignored
    pub traceparent: Option<&'a str>,
    pub timings: &'a [(K, f64)],
    pub resources: &'a [ResourceIn<'a>],
}

/// A resource entry of an [`ActionIn`].
#[derive(Debug)]
pub struct ResourceIn<'a> {
    pub url: Option<Cow<'a, str>>,
    pub initiator: Option<&'a str>,
    pub start: Option<f64>,
    pub dur: Option<f64>,
    pub status: Option<u16>,
    pub size: Option<f64>,
}

impl Action {
    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn url(&self) -> Option<&str> {
        self.key.url.as_deref()
    }

    pub fn status(&self) -> Option<u16> {
        (self.status != NO_STATUS).then_some(self.status)
    }

    fn trace(&self) -> Option<TraceParent> {
        self.extra.as_ref().map(|x| x.trace).filter(TraceParent::is_some)
    }

    fn timings(&self) -> impl Iterator<Item = (&str, f64)> {
        self.extra.iter().flat_map(|x| x.shape.timing_keys.iter().map(|k| &**k).zip(x.numbers().iter()))
    }

    fn resources(&self) -> impl Iterator<Item = ResourceView<'_>> {
        self.extra.iter().flat_map(|x| {
            let n = x.shape.timing_keys.len();
            x.shape.resources.iter().enumerate().map(move |(i, (url, initiator))| {
                let v = |j: usize| some(x.numbers().get(n + 4 * i + j));
                ResourceView {
                    url: url.as_deref(),
                    initiator: initiator.as_deref(),
                    start: v(0),
                    dur: v(1),
                    status: v(2).map(|s| s as u16),
                    size: v(3),
                }
            })
        })
    }

    /// Makes the action of an event's fields, its text shared through `shared`: text the
    /// tables have already is not copied.
    pub fn from_input<K: AsRef<str>>(e: &ActionIn<K>, page: u32, t: i64, shared: &mut Shared) -> Action {
        let trace = e.traceparent.and_then(TraceParent::parse).unwrap_or_default();
        Action::with_shape(e, trace, page, t, || shared.shape(e.timings, e.resources))
    }

    /// The action of a checkpoint's fields (its traceparent parsed) read outside
    /// [`Shared::restoring`]: its text its own, made without a table (a table per action was
    /// most of what restoring an action cost before `restoring`).
    fn unshared<K: AsRef<str>>(e: &ActionIn<K>, trace: TraceParent, page: u32, t: i64) -> Action {
        Action::with_shape(e, trace, page, t, || Arc::new(ExtraShape::of(e.timings, e.resources)))
    }

    fn with_shape<K: AsRef<str>>(e: &ActionIn<K>, trace: TraceParent, page: u32, t: i64, shape: impl FnOnce() -> Arc<ExtraShape>) -> Action {
        let has_extra = trace.is_some() || !e.timings.is_empty() || !e.resources.is_empty();
        let extra = has_extra.then(|| {
            let mut numbers = Vec::with_capacity(e.timings.len() + 4 * e.resources.len());
            numbers.extend(e.timings.iter().map(|(_, v)| *v));
            for r in e.resources {
                numbers.extend([none_nan(r.start), none_nan(r.dur), none_nan(r.status.map(f64::from)), none_nan(r.size)]);
            }
            let (numbers, wide) = Numbers::encode(&numbers);
            Box::new(ActionExtra { shape: shape(), numbers, trace, wide })
        });
        Action { t, dur: e.dur, key: Arc::clone(&e.key), extra, page, status: e.status.unwrap_or(NO_STATUS), kind: e.kind }
    }

}

fn none_nan(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

fn some(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

/// A resource entry as the detail writes it, and as checkpoints hold it.
#[derive(Serialize)]
struct ResourceView<'a> {
    url: Option<&'a str>,
    initiator: Option<&'a str>,
    start: Option<f64>,
    dur: Option<f64>,
    status: Option<u16>,
    size: Option<f64>,
}

/// An action in checkpoints, in the layout of checkpoints before text was shared (so
/// `RLCKPT02` checkpoints stay readable both ways).
#[derive(Serialize, Deserialize)]
struct ActionWire<S, R, P> {
    t: i64,
    dur: f64,
    name: S,
    url: Option<S>,
    extra: Option<ExtraWire<S, R, P>>,
    page: u32,
    status: Option<u16>,
    kind: ActionType,
}

#[derive(Serialize, Deserialize)]
struct ExtraWire<S, R, P> {
    method: Option<S>,
    /// the text of a valid traceparent
    traceparent: Option<P>,
    timings: Vec<(S, f64)>,
    resources: Vec<R>,
}

/// A resource in checkpoints (the layout of `beacon::Resource`), its text borrowed.
#[derive(Deserialize)]
struct ResourceWire<'a> {
    #[serde(borrow)]
    url: Option<&'a str>,
    #[serde(borrow)]
    initiator: Option<&'a str>,
    start: Option<f64>,
    dur: Option<f64>,
    status: Option<u16>,
    size: Option<f64>,
}

impl Serialize for Action {
    fn serialize<Z: serde::Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let has_extra = self.key.method.is_some() || self.extra.is_some();
        let extra = has_extra.then(|| ExtraWire {
            method: self.key.method.as_deref(),
            traceparent: self.trace().map(|t| t.text()),
            timings: self.timings().collect(),
            resources: self.resources().collect(),
        });
        ActionWire { t: self.t, dur: self.dur, name: self.name(), url: self.url(), extra, page: self.page, status: self.status(), kind: self.kind }
            .serialize(z)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        // The text borrowed from the checkpoint's bytes (postcard reads a string in place; a
        // checkpoint is always restored from bytes), then found in the shared tables (copied
        // only when they do not have it).
        let w = ActionWire::<&'de str, ResourceWire<'de>, &'de str>::deserialize(d)?;
        let (method, traceparent, timings, resources) = match w.extra {
            Some(x) => (x.method, x.traceparent, x.timings, x.resources),
            None => (None, None, Vec::new(), Vec::new()),
        };
        let trace = match traceparent {
            None => TraceParent::default(),
            Some(t) => TraceParent::parse(t).ok_or_else(|| serde::de::Error::custom("an invalid traceparent"))?,
        };
        let resources: Vec<ResourceIn> = resources
            .into_iter()
            .map(|r| ResourceIn { url: r.url.map(Cow::Borrowed), initiator: r.initiator, start: r.start, dur: r.dur, status: r.status, size: r.size })
            .collect();
        let action = RESTORING.with(|r| {
            if let Some(shared) = r.borrow_mut().as_mut() {
                let key = shared.action_key(w.name, w.url, method);
                let input = ActionIn { kind: w.kind, key, dur: w.dur, status: w.status, traceparent: None, timings: &timings, resources: &resources };
                Action::with_shape(&input, trace, w.page, w.t, || shared.shape(&timings, &resources))
            } else {
                let key = Arc::new(ActionKey { name: w.name.into(), url: w.url.map(Into::into), method: method.map(Into::into) });
                let input = ActionIn { kind: w.kind, key, dur: w.dur, status: w.status, traceparent: None, timings: &timings, resources: &resources };
                Action::unshared(&input, trace, w.page, w.t)
            }
        });
        Ok(action)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorRec {
    pub kind: ErrorKind,
    pub message: Option<String>,
    pub stack: Option<String>,
    pub t: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VitalRec {
    pub name: Arc<str>,
    pub value: f64,
    pub t: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RageRec {
    pub target: Option<String>,
    pub count: u32,
    pub t: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub app: String,
    pub sid: String,
    pub part: u32,
    pub first_recv: i64,
    pub last_recv: i64,
    pub user_tag: Option<String>,
    pub user_tags: Vec<(String, i64)>,
    pub visitor_id: Option<String>,
    pub screen: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<Arc<str>>,
    pub synthetic: bool,
    pub properties: Vec<(String, String)>,
    /// distinct page URLs of the actions (an action stores an index, not a copy)
    pub pages: Vec<Arc<str>>,
    pub actions: Vec<Action>,
    pub errors: Vec<ErrorRec>,
    pub vitals: Vec<VitalRec>,
    pub rage: Vec<RageRec>,
    pub end: Option<(Option<String>, i64)>,
    /// What `live` has to publish again: [`DIRTY_SUMMARY`] | [`DIRTY_DETAIL`].
    #[serde(skip)]
    pub dirty: u8,
    /// The time under which the sessionizer's due queue holds this session, at most its
    /// deadline; [`NOT_QUEUED`] until it is queued.
    #[serde(skip, default = "not_queued")]
    pub queued: i64,
}

/// [`Session::dirty`]: the summary, the detail changed since `live` last published them.
/// [`DIRTY_NEW`]: its detail was never published (a new session's goes out with its first
/// summary).
pub const DIRTY_SUMMARY: u8 = 1;
pub const DIRTY_DETAIL: u8 = 2;
pub const DIRTY_ALL: u8 = DIRTY_SUMMARY | DIRTY_DETAIL;
pub const DIRTY_NEW: u8 = 4;

/// [`Session::queued`] of a session not in the due queue yet.
pub const NOT_QUEUED: i64 = i64::MIN;

fn not_queued() -> i64 {
    NOT_QUEUED
}

/// A session ready to store: summary and detail JSON plus the fields the indexes need.
#[derive(Debug, Clone)]
pub struct Closed {
    pub session_id: String,
    pub app: String,
    pub user_tag: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub end_reason: Option<EndReason>,
    pub summary: Vec<u8>,
    pub detail: Vec<u8>,
}

/// Metrics of closed sessions, summed over one `ingest` or `flush` call.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    pub actions: BTreeMap<(String, &'static str, &'static str), u64>,
    pub errors: BTreeMap<(String, &'static str), u64>,
    pub vitals: Vec<(String, String, f64)>,
}

pub fn session_id(app: &str, sid: &str, part: u32, first_recv: i64) -> String {
    session_id_text(session_digest(app, sid, part, first_recv))
}

/// The first 16 bytes of the SHA-256 a session id is the hex of, as a big-endian number: the
/// ids sort as these numbers do (lowercase hex keeps the order of the bytes).
pub fn session_digest(app: &str, sid: &str, part: u32, first_recv: i64) -> u128 {
    let mut h = Sha256::new();
    h.update(app.as_bytes());
    h.update(b"\n");
    h.update(sid.as_bytes());
    // "\n{part}\n{first_recv}" without `format!` (an allocation and the formatting machinery)
    h.update(b"\n");
    h.update(itoa::Buffer::new().format(part).as_bytes());
    h.update(b"\n");
    h.update(itoa::Buffer::new().format(first_recv).as_bytes());
    let digest = h.finalize();
    u128::from_be_bytes(digest[..16].try_into().expect("a SHA-256 has 32 bytes"))
}

/// The session id of a [`session_digest`]: its 32 lowercase hex digits.
pub fn session_id_text(digest: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for b in digest.to_be_bytes() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

impl Session {
    pub fn new(app: &str, sid: &str, part: u32, recv: i64) -> Session {
        Session {
            app: app.to_owned(),
            sid: sid.to_owned(),
            part,
            first_recv: recv,
            last_recv: recv,
            user_tag: None,
            user_tags: Vec::new(),
            visitor_id: None,
            screen: None,
            ip: None,
            user_agent: None,
            synthetic: false,
            properties: Vec::new(),
            pages: Vec::new(),
            actions: Vec::new(),
            errors: Vec::new(),
            vitals: Vec::new(),
            rage: Vec::new(),
            end: None,
            dirty: DIRTY_ALL | DIRTY_NEW,
            queued: NOT_QUEUED,
        }
    }

    pub fn id(&self) -> String {
        session_id(&self.app, &self.sid, self.part, self.first_recv)
    }

    /// [`Session::id`] as its [`session_digest`] (no text: what ids are sorted by).
    pub fn id_digest(&self) -> u128 {
        session_digest(&self.app, &self.sid, self.part, self.first_recv)
    }

    pub fn identify(&mut self, tag: &str, recv: i64) {
        if self.user_tag.as_deref() != Some(tag) {
            self.user_tag = Some(tag.to_owned());
            self.user_tags.push((tag.to_owned(), recv));
        }
    }

    pub fn set_property(&mut self, key: &str, value: &str) {
        if let Some(slot) = self.properties.iter_mut().find(|(k, _)| *k == key) {
            if slot.1 != value {
                value.clone_into(&mut slot.1);
            }
        } else if self.properties.len() < MAX_PROPERTIES {
            self.properties.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Adds an action received with the beacon's page URL, its text shared through `shared`.
    pub fn push_action<K: AsRef<str>>(&mut self, e: &ActionIn<K>, page: Option<&str>, t: i64, shared: &mut Shared) {
        let page = match page {
            None => 0,
            Some(p) => {
                if let Some(i) = self.pages.iter().rposition(|known| &**known == p) {
                    i as u32 + 1
                } else {
                    self.pages.push(shared.strings.str(p));
                    self.pages.len() as u32
                }
            }
        };
        if self.actions.len() == self.actions.capacity() {
            // grow by a quarter, not double: open sessions are what fills a collector's memory
            self.actions.reserve_exact((self.actions.len() / 4).max(2));
        }
        self.actions.push(Action::from_input(e, page, t, shared));
    }

    /// Room for the `n` actions a beacon brings, in one step: grown by a quarter (not doubled:
    /// open sessions are what fills a collector's memory), or by `n` when that is more.
    pub fn reserve_actions(&mut self, n: usize) {
        if self.actions.capacity() - self.actions.len() < n {
            self.actions.reserve_exact(n.max(self.actions.len() / 4).max(2));
        }
    }

    /// Adds a vital, its name shared through `shared`.
    pub fn push_vital(&mut self, name: &str, value: f64, t: i64, shared: &mut Shared) {
        self.vitals.push(VitalRec { name: shared.strings.str(name), value, t });
    }

    /// Shares the text of a session restored from a checkpoint through `shared`; its actions
    /// took theirs from `shared` as they were read ([`Shared::restoring`]).
    pub fn share(&mut self, shared: &mut Shared) {
        for p in &mut self.pages {
            *p = shared.strings.share(p);
        }
        for v in &mut self.vitals {
            v.name = shared.strings.share(&v.name);
        }
        if let Some(ua) = &mut self.user_agent {
            *ua = shared.strings.share(ua);
        }
    }

    fn page(&self, a: &Action) -> Option<&str> {
        (a.page > 0).then(|| &*self.pages[a.page as usize - 1])
    }

    fn thresholds(&self, settings: &Settings, a: &Action) -> Thresholds {
        if let Some(th) = settings.key_actions.get(&self.app).and_then(|m| m.get(a.name())) {
            return *th;
        }
        match a.kind {
            ActionType::Load => settings.apdex.load,
            ActionType::Xhr => settings.apdex.xhr,
            ActionType::Custom => settings.apdex.custom,
        }
    }

    /// Builds the summary and detail; `id` is this session's [`Session::id`] (the caller has
    /// usually computed it already). `end_reason` is `None` for a live (open) session, which
    /// gets no UX score. Adds the closed session's metrics to `metrics` when given.
    #[allow(clippy::too_many_arguments)] // the eighth is `scratch`, the caller's reused buffers
    pub fn finalize(
        &self,
        id: String,
        settings: &Settings,
        ua: &UserAgent,
        end_reason: Option<EndReason>,
        metrics: Option<&mut MetricCounts>,
        with_detail: bool,
        scratch: &mut Scratch,
    ) -> Closed {
        let Scratch { json, order, error_action, rated, names } = scratch;
        // actions by (t, arrival); arrival breaks ties, so an unstable sort (no scratch
        // allocation) gives the order of a stable sort by t
        order.clear();
        order.extend(0..self.actions.len());
        if !self.actions.windows(2).all(|w| w[0].t <= w[1].t) {
            order.sort_unstable_by_key(|&i| (self.actions[i].t, i));
        }
        let order = &*order;

        error_action.clear();
        error_action.extend(self.errors.iter().map(|e| attach(&self.actions, order, e.t)));
        let error_action = &*error_action;
        // per position in `order`: its errors and its Apdex category
        rated.clear();
        rated.resize(self.actions.len(), Rated { errors: 0, failed: false, category: ApdexCategory::Satisfied });
        for (e, pos) in self.errors.iter().zip(error_action) {
            if let Some(pos) = *pos {
                rated[pos].errors += 1;
                if matches!(e.kind, ErrorKind::Js | ErrorKind::Request) {
                    rated[pos].failed = true;
                }
            }
        }
        let mut counts = ApdexCounts::default();
        for (r, &i) in rated.iter_mut().zip(order) {
            let a = &self.actions[i];
            let failed = r.failed || (a.kind == ActionType::Xhr && a.status().is_some_and(|s| s >= 400));
            r.category = apdex::rate(a.dur, failed, self.thresholds(settings, a));
            counts.add(r.category);
        }
        let ux_score = end_reason.map(|_| {
            ux::score(&settings.ux_rules(), &counts, rated.last().map(|r| r.category), self.errors.len() as u32, self.rage.len() as u32)
        });

        let times = self
            .errors
            .iter()
            .map(|e| e.t)
            .chain(self.vitals.iter().map(|v| v.t))
            .chain(self.rage.iter().map(|r| r.t))
            .chain(self.end.iter().map(|e| e.1));
        let action_starts = self.actions.iter().map(|a| a.t);
        let action_ends = self.actions.iter().map(|a| a.t + a.dur.floor() as i64);
        let start = times.clone().chain(action_starts).min().unwrap_or(self.first_recv);
        let end = times.chain(action_ends).max().unwrap_or(self.last_recv);

        let mut errors_by_kind = [0u32; 3];
        for e in &self.errors {
            errors_by_kind[e.kind as usize] += 1;
        }
        let page_of = |i: usize| -> Option<&str> { self.page(&self.actions[i]).or(self.actions[i].url()) };
        let entry_page = order.first().and_then(|&i| page_of(i));
        let exit_page = order.last().and_then(|&i| page_of(i));

        // per name the largest value, by name (a session has few names: a Vec, not a map)
        let mut vitals: Vec<(&str, f64)> = Vec::new();
        for v in &self.vitals {
            match vitals.iter_mut().find(|(name, _)| *name == &*v.name) {
                Some(slot) if v.value > slot.1 => slot.1 = v.value,
                Some(_) => {}
                None => vitals.push((&v.name, v.value)),
            }
        }
        vitals.sort_unstable_by_key(|(name, _)| *name);
        // the first action of each distinct name (actions sharing a key share its name)
        names.clear();
        for &i in order {
            let a = &self.actions[i];
            if names.len() >= MAX_ACTION_NAMES {
                break;
            }
            if !names.iter().any(|&j| Arc::ptr_eq(&self.actions[j].key, &a.key) || self.actions[j].name() == a.name()) {
                names.push(i);
            }
        }
        let mut properties: Vec<(&str, &str)> = self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        properties.sort_unstable_by_key(|p| p.0); // keys are distinct (`set_property`)
        let user_type = if ua.robot {
            "robot"
        } else if self.synthetic {
            "synthetic"
        } else {
            "real"
        };

        // written in the reused buffer, then copied out at its size (no growing, no estimate)
        // the fixed text between values as one literal each (see `write_detail`)
        let mut w = JsonWriter::reusing(std::mem::take(json));
        w.raw(r#"{"session_id":"#);
        w.str(&id);
        w.raw(r#","client_sid":"#);
        w.str(&self.sid);
        w.raw(r#","part":"#);
        w.int(self.part);
        w.raw(r#","app":"#);
        w.str(&self.app);
        w.raw(r#","user_tag":"#);
        w.opt_str(self.user_tag.as_deref());
        w.raw(r#","visitor_id":"#);
        w.opt_str(self.visitor_id.as_deref());
        w.raw(r#","start":"#);
        w.int(start);
        w.raw(r#","end":"#);
        w.int(end);
        w.raw(r#","duration_ms":"#);
        w.int(end - start);
        w.raw(r#","end_reason":"#);
        w.opt_name(end_reason.map(EndReason::as_str));
        w.raw(r#","live":"#);
        w.bool(end_reason.is_none());
        w.raw(r#","ux_score":"#);
        w.opt_name(ux_score.map(UxScore::as_str));
        w.raw(r#","apdex":"#);
        w.opt_float(counts.score());
        w.raw(r#","apdex_counts":{"satisfied":"#);
        w.int(counts.satisfied);
        w.raw(r#","tolerating":"#);
        w.int(counts.tolerating);
        w.raw(r#","frustrated":"#);
        w.int(counts.frustrated);
        w.raw(r#"},"action_count":"#);
        w.uint(self.actions.len());
        w.raw(r#","error_count":"#);
        w.uint(self.errors.len());
        w.key("errors_by_kind");
        w.begin_object();
        for kind in ErrorKind::IN_KEY_ORDER {
            w.key(kind.as_str());
            w.int(errors_by_kind[kind as usize]);
        }
        w.end_object();
        w.raw(r#","has_error":"#);
        w.bool(!self.errors.is_empty());
        w.raw(r#","bounce":"#);
        w.bool(self.actions.len() <= 1);
        w.raw(r#","entry_page":"#);
        w.opt_str(entry_page);
        w.raw(r#","exit_page":"#);
        w.opt_str(exit_page);
        w.raw(r#","rage_clicks":"#);
        w.uint(self.rage.len());
        w.key("vitals");
        w.begin_object();
        for &(name, value) in &vitals {
            w.key_str(name);
            w.begin_object();
            w.key("value");
            w.float(value);
            w.key("rating");
            w.opt_name(apdex::vital_rating(name, value));
            w.end_object();
        }
        w.end_object();
        w.key("action_names");
        w.begin_array();
        for &i in &*names {
            w.element();
            w.str(self.actions[i].name());
        }
        w.end_array();
        w.raw(r#","browser":{"family":"#);
        w.str(&ua.browser.family);
        w.raw(r#","version":"#);
        w.opt_str(ua.browser.version.as_deref());
        w.raw(r#"},"os":{"family":"#);
        w.str(&ua.os.family);
        w.raw(r#","version":"#);
        w.opt_str(ua.os.version.as_deref());
        w.raw(r#"},"device_type":"#);
        w.name(ua.device_type);
        w.raw(r#","screen":"#);
        w.opt_str(self.screen.as_deref());
        w.raw(r#","ip":"#);
        w.opt_str(self.ip.as_deref());
        w.raw(r#","country":null,"user_type":"#);
        w.name(user_type);
        w.key("properties");
        write_properties(&mut w, &properties);
        w.end_object();
        let mut buf = w.into_bytes();
        let summary = buf.clone();

        // an open session's summary is published more often than its timeline (`live`)
        let detail = if with_detail {
            buf = self.write_detail(JsonWriter::reusing(buf), order, rated, error_action, &properties);
            buf.clone()
        } else {
            Vec::new()
        };
        // a session with a very long timeline does not keep its size allocated
        if buf.capacity() > 1 << 20 {
            buf = Vec::new();
        }
        *json = buf;

        if let Some(m) = metrics {
            let counts = m.of_app(&self.app);
            for (pos, &i) in order.iter().enumerate() {
                counts.actions[self.actions[i].kind as usize][rated[pos].category as usize] += 1;
            }
            for (sum, n) in counts.errors.iter_mut().zip(errors_by_kind) {
                *sum += u64::from(n);
            }
            for v in &self.vitals {
                m.vitals.push((self.app.clone(), v.name.to_string(), v.value));
            }
        }
        Closed {
            session_id: id,
            app: self.app.clone(),
            user_tag: self.user_tag.clone(),
            start_ms: start,
            end_ms: end,
            end_reason,
            summary,
            detail,
        }
    }
}

impl Session {
    /// The detail (timeline): the actions in `order` with their ratings, the errors with
    /// the positions of their actions, the sorted properties.
    fn write_detail(&self, mut w: JsonWriter, order: &[usize], rated: &[Rated], error_action: &[Option<usize>], properties: &[(&str, &str)]) -> Vec<u8> {
        let mut timings: Vec<(&str, f64)> = Vec::new();
        // The fixed text between an action's values is written as one literal each (the
        // members' keys, quotes and commas: a third of writing a detail as one call per token)
        w.raw(r#"{"actions":["#);
        for (pos, &i) in order.iter().enumerate() {
            let a = &self.actions[i];
            w.raw(if pos == 0 { r#"{"index":"# } else { r#",{"index":"# });
            w.uint(pos);
            w.raw(r#","type":"#);
            w.name(a.kind.as_str());
            w.raw(r#","name":"#);
            w.str(a.name());
            w.raw(r#","url":"#);
            w.opt_str(a.url());
            w.raw(r#","page":"#);
            w.opt_str(self.page(a));
            w.raw(r#","method":"#);
            w.opt_str(a.key.method.as_deref());
            w.raw(r#","start":"#);
            w.int(a.t);
            w.raw(r#","duration":"#);
            w.float(a.dur);
            w.raw(r#","apdex":"#);
            w.name(rated[pos].category.as_str());
            w.raw(r#","status":"#);
            w.opt_int(a.status());
            match &a.extra {
                // no traceparent, timings nor resources: most actions
                None => w.raw(r#","traceparent":null,"trace_id":null,"timings":{},"resources":[],"error_count":"#),
                Some(x) => {
                    let trace = a.trace().map(|t| t.ascii());
                    let trace = trace.as_ref().map(|t| std::str::from_utf8(t).expect("ASCII"));
                    w.key("traceparent");
                    w.opt_str(trace);
                    w.key("trace_id");
                    w.opt_str(trace.map(|t| &t[3..35]));
                    w.key("timings");
                    w.begin_object();
                    if !x.shape.timing_keys.is_empty() {
                        // by key; truncated keys may repeat: the last value wins, as in a map
                        // (a stable sort keeps arrival order among equal keys)
                        timings.clear();
                        timings.extend(a.timings());
                        timings.sort_by_key(|(k, _)| *k);
                        for (j, &(k, v)) in timings.iter().enumerate() {
                            if timings.get(j + 1).is_none_or(|next| next.0 != k) {
                                w.key_str(k);
                                w.float(v);
                            }
                        }
                    }
                    w.end_object();
                    w.key("resources");
                    w.begin_array();
                    for r in a.resources() {
                        w.element();
                        write_resource(&mut w, &r);
                    }
                    w.end_array();
                    w.raw(r#","error_count":"#);
                }
            }
            w.int(rated[pos].errors);
            w.raw("}");
        }
        w.end_array();
        w.key("errors");
        w.begin_array();
        for (e, action) in self.errors.iter().zip(error_action) {
            w.element();
            w.begin_object();
            w.key("kind");
            w.name(e.kind.as_str());
            w.key("message");
            w.opt_str(e.message.as_deref());
            w.key("stack");
            w.opt_str(e.stack.as_deref());
            w.key("start");
            w.int(e.t);
            w.key("action");
            match action {
                Some(a) => w.uint(*a),
                None => w.null(),
            }
            w.end_object();
        }
        w.end_array();
        w.key("vitals");
        w.begin_array();
        for v in &self.vitals {
            w.element();
            w.begin_object();
            w.key("name");
            w.str(&v.name);
            w.key("value");
            w.float(v.value);
            w.key("rating");
            w.opt_name(apdex::vital_rating(&v.name, v.value));
            w.key("start");
            w.int(v.t);
            w.end_object();
        }
        w.end_array();
        w.key("rage_clicks");
        w.begin_array();
        for r in &self.rage {
            w.element();
            w.begin_object();
            w.key("target");
            w.opt_str(r.target.as_deref());
            w.key("count");
            w.int(r.count);
            w.key("start");
            w.int(r.t);
            w.end_object();
        }
        w.end_array();
        w.key("user_tags");
        w.begin_array();
        for (tag, at) in &self.user_tags {
            w.element();
            w.begin_object();
            w.key("tag");
            w.str(tag);
            w.key("at");
            w.int(*at);
            w.end_object();
        }
        w.end_array();
        w.key("properties");
        write_properties(&mut w, properties);
        w.key("end_detail");
        w.opt_str(self.end.as_ref().and_then(|e| e.0.as_deref()));
        w.end_object();
        w.into_bytes()
    }
}

/// What [`Session::finalize`] reuses from one session to the next instead of allocating it
/// anew: the JSON buffer and the per-action lists.
#[derive(Default)]
pub struct Scratch {
    json: Vec<u8>,
    order: Vec<usize>,
    error_action: Vec<Option<usize>>,
    rated: Vec<Rated>,
    /// the summary's action names, as the index of an action with each
    names: Vec<usize>,
}

/// The metrics of the sessions closed in one `ingest` or `flush` call as `finalize` adds them
/// up: per app, arrays of counts (a map entry per count, with its app's name as a `String`
/// key, was a fifth of what finalizing cost besides the JSON), made into a [`SessionMetrics`]
/// once per call by [`MetricCounts::drain_into`].
#[derive(Debug, Default)]
pub struct MetricCounts {
    /// by app (apps are the clients' choice: a call may close sessions of thousands of them)
    apps: hashbrown::HashMap<String, AppCounts, HashState>,
    /// (app, vital name, value), in the order the sessions closed
    vitals: Vec<(String, String, f64)>,
}

#[derive(Debug, Default)]
struct AppCounts {
    /// by [`ActionType`], then [`ApdexCategory`]
    actions: [[u64; 3]; 3],
    /// by [`ErrorKind`]
    errors: [u64; 3],
}

impl MetricCounts {
    fn of_app(&mut self, app: &str) -> &mut AppCounts {
        self.apps.entry_ref(app).or_default()
    }

    /// Adds the counts to `m` (only those above 0 make entries) and empties them.
    pub fn drain_into(&mut self, m: &mut SessionMetrics) {
        for (app, c) in self.apps.drain() {
            for kind in [ActionType::Load, ActionType::Xhr, ActionType::Custom] {
                for category in [ApdexCategory::Satisfied, ApdexCategory::Tolerating, ApdexCategory::Frustrated] {
                    let n = c.actions[kind as usize][category as usize];
                    if n > 0 {
                        *m.actions.entry((app.clone(), kind.as_str(), category.as_str())).or_default() += n;
                    }
                }
            }
            for kind in ErrorKind::IN_KEY_ORDER {
                let n = c.errors[kind as usize];
                if n > 0 {
                    *m.errors.entry((app.clone(), kind.as_str())).or_default() += n;
                }
            }
        }
        m.vitals.append(&mut self.vitals);
    }
}

/// An action's share of the ratings: its errors and its Apdex category.
#[derive(Clone, Copy)]
struct Rated {
    errors: u32,
    failed: bool,
    category: ApdexCategory,
}

fn write_properties(w: &mut JsonWriter, properties: &[(&str, &str)]) {
    w.begin_object();
    for (k, v) in properties {
        w.key_str(k);
        w.str(v);
    }
    w.end_object();
}

/// A resource entry leaves its absent fields out.
fn write_resource(w: &mut JsonWriter, r: &ResourceView) {
    w.begin_object();
    if let Some(url) = r.url {
        w.key("url");
        w.str(url);
    }
    if let Some(initiator) = r.initiator {
        w.key("initiator");
        w.str(initiator);
    }
    for (key, value) in [("start", r.start), ("dur", r.dur)] {
        if let Some(v) = value {
            w.key(key);
            w.float(v);
        }
    }
    if let Some(status) = r.status {
        w.key("status");
        w.int(status);
    }
    if let Some(size) = r.size {
        w.key("size");
        w.float(size);
    }
    w.end_object();
}

/// Position (in time order) of the action an error at `t` belongs to (docs §6).
fn attach(actions: &[Action], order: &[usize], t: i64) -> Option<usize> {
    let containing = order.iter().rposition(|&i| {
        let a = &actions[i];
        a.t <= t && (t as f64) <= a.t as f64 + a.dur
    });
    containing
        .or_else(|| order.iter().rposition(|&i| actions[i].t <= t))
        .or_else(|| (!order.is_empty()).then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_counts_keep_apps_apart_in_any_order() {
        let mut m = MetricCounts::default();
        // interleaved, repeated, and more apps than a list would be searched for
        let apps: Vec<String> = (0..300).map(|i| format!("app-{i}")).collect();
        for round in 0..3u64 {
            for (i, app) in apps.iter().enumerate() {
                for _ in 0..=(i % 3) {
                    m.of_app(app).errors[ErrorKind::Js as usize] += round + 1;
                }
                m.of_app(&apps[0]).actions[ActionType::Xhr as usize][ApdexCategory::Frustrated as usize] += 1;
            }
        }
        let mut out = SessionMetrics::default();
        m.drain_into(&mut out);
        assert_eq!(out.errors.len(), 300);
        for (i, app) in apps.iter().enumerate() {
            assert_eq!(out.errors[&(app.clone(), "js")], 6 * (i as u64 % 3 + 1), "{app}");
        }
        assert_eq!(out.actions[&("app-0".to_owned(), "xhr", "frustrated")], 900);
        // drained: the next call starts from nothing
        m.of_app("app-7").errors[ErrorKind::Js as usize] += 1;
        let mut next = SessionMetrics::default();
        m.drain_into(&mut next);
        assert_eq!(next.errors.len(), 1);
        assert_eq!(next.errors[&("app-7".to_owned(), "js")], 1);
    }

    #[test]
    fn every_end_reason_has_its_name() {
        for r in [EndReason::Timeout, EndReason::DurationLimit, EndReason::ActionLimit, EndReason::EndEvent, EndReason::OpenLimit] {
            let n = match r {
                EndReason::Timeout => "timeout",
                EndReason::DurationLimit => "duration_limit",
                EndReason::ActionLimit => "action_limit",
                EndReason::EndEvent => "end_event",
                EndReason::OpenLimit => "open_limit",
            };
            assert_eq!(r.as_str(), n);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{n}\""));
        }
    }

    /// What an open session pays per action (see docs/benchmarks.md, memory of open
    /// sessions): the inline action, and for a load or an XHR one boxed extra; the text is
    /// shared. `cargo test --release sizes -- --nocapture` prints them.
    #[test]
    fn an_action_stays_small() {
        use std::mem::size_of;
        let sizes = [
            ("Action", size_of::<Action>()),
            ("ActionExtra", size_of::<ActionExtra>()),
            ("VitalRec", size_of::<VitalRec>()),
            ("ErrorRec", size_of::<ErrorRec>()),
            ("Session", size_of::<Session>()),
        ];
        println!("{sizes:?}");
        assert_eq!(size_of::<Action>(), 40);
        assert!(size_of::<ActionExtra>() <= 56, "one 64-byte malloc chunk");
    }

    #[test]
    fn a_traceparent_round_trips_through_its_bytes() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(text).unwrap();
        assert!(t.is_some());
        assert_eq!(t.text(), text);
        assert!(!TraceParent::default().is_some());
        assert!(TraceParent::parse("00-4bf9").is_none());
    }

    #[test]
    fn numbers_keep_their_exact_values() {
        for values in [vec![1.0, 0.0, -0.0, f64::NAN, 48213.0, 16_777_216.0], vec![0.1, 123.400_000_005, 1e300, 3.0, f64::NAN]] {
            let (bits, wide) = Numbers::encode(&values);
            let n = Numbers { bits: &bits, wide };
            assert_eq!(n.len(), values.len());
            for (a, b) in n.iter().zip(&values) {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{a} {b}");
            }
        }
        assert!(!Numbers::encode(&[1.0, 0.5, f64::NAN]).1);
        assert!(Numbers::encode(&[1.0, 0.1]).1);
    }

    #[test]
    fn session_id_is_stable_and_url_safe() {
        let a = session_id("shop", "0f8c2d2e", 1, 1_764_126_000_000);
        assert_eq!(a, session_id("shop", "0f8c2d2e", 1, 1_764_126_000_000));
        assert_ne!(a, session_id("shop", "0f8c2d2e", 2, 1_764_126_000_000));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
