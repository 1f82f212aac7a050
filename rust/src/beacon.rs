//! Native beacon format v1: request validation (docs §2) and event parsing (docs §3).
//!
//! Fields are read leniently into [`Scalar`] so a wrong type is a counted `bad_event`, never a
//! failed request, and nothing is allocated for fields the core does not keep.
use crate::wire::{ParsedBeacon, ParsedBody, ParsedEvent, ParsedResource};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Why a whole request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not valid UTF-8 JSON / NDJSON, or empty.
    BadJson,
    /// A beacon is not a JSON object.
    NotObject,
    /// `v` present and not 1.
    BadVersion,
    /// `app` missing or not `[A-Za-z0-9._-]{1,64}`.
    BadApp,
    /// `sid` missing or not 8–128 printable ASCII characters.
    BadSid,
    /// `events` present and not an array.
    BadEvents,
    /// More events in the request than allowed.
    TooManyEvents,
    /// An array without beacons.
    Empty,
    /// A WAL record that is cut short or of an unknown version.
    BadRecord,
}

impl Rejection {
    pub fn code(self) -> &'static str {
        match self {
            Rejection::BadJson => "bad_json",
            Rejection::NotObject => "not_object",
            Rejection::BadVersion => "bad_version",
            Rejection::BadApp => "bad_app",
            Rejection::BadSid => "bad_sid",
            Rejection::BadEvents => "bad_events",
            Rejection::TooManyEvents => "too_many_events",
            Rejection::Empty => "empty",
            Rejection::BadRecord => "bad_record",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::BadJson => "body is not valid JSON (one object, an array or NDJSON)",
            Rejection::NotObject => "every beacon must be a JSON object",
            Rejection::BadVersion => "unsupported beacon version: v must be 1",
            Rejection::BadApp => "app must match [A-Za-z0-9._-]{1,64}",
            Rejection::BadSid => "sid must be 8-128 printable ASCII characters",
            Rejection::BadEvents => "events must be an array",
            Rejection::TooManyEvents => "too many events in one request",
            Rejection::Empty => "no beacons in the request",
            Rejection::BadRecord => "damaged WAL record",
        }
    }
}

/// A JSON value read leniently: what the core needs to know about a field's type.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Scalar<'a> {
    /// The key is absent.
    #[default]
    Missing,
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    /// An array or object.
    Other,
}

impl Scalar<'_> {
    /// `Ok(None)` when absent or null, `Err` when of another type.
    fn string(&self) -> Result<Option<&str>, ()> {
        match self {
            Scalar::Missing | Scalar::Null => Ok(None),
            Scalar::Str(s) => Ok(Some(s)),
            _ => Err(()),
        }
    }

    fn number(&self) -> Result<Option<f64>, ()> {
        match self {
            Scalar::Missing | Scalar::Null => Ok(None),
            Scalar::Num(n) => Ok(Some(*n)),
            _ => Err(()),
        }
    }

    /// The string if it is one, else nothing (envelope fields of a wrong type are ignored).
    fn str_or_none(&self) -> Option<&str> {
        self.string().ok().flatten()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON value parsed as `T` when it is an object, else only skipped.
enum ObjectOr<T> {
    Object(T),
    Other,
}

struct ObjectOrVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOrVisitor<T> {
    type Value = ObjectOr<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(ObjectOr::Object)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ObjectOr::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(ObjectOr::Other)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectOrVisitor(std::marker::PhantomData))
    }
}

/// A JSON value seen as what the beacon format cares about: an object parsed as `T`, an
/// array of values that are objects or not, null, or any other scalar.
enum Json<T> {
    Object(T),
    Array(Vec<ObjectOr<T>>),
    Null,
    Scalar,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Json<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(64));
                while let Some(item) = seq.next_element::<ObjectOr<T>>()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Json::Object)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Json::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Json::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Json::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Json::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Json::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawBeacon<'a> {
    #[serde(default, borrow)]
    v: Scalar<'a>,
    #[serde(default, borrow)]
    app: Scalar<'a>,
    #[serde(default, borrow)]
    sid: Scalar<'a>,
    #[serde(default, borrow)]
    vid: Scalar<'a>,
    #[serde(default, borrow)]
    sent: Scalar<'a>,
    #[serde(default, borrow)]
    user: Scalar<'a>,
    #[serde(default, borrow)]
    synthetic: Scalar<'a>,
    #[serde(default, borrow)]
    page: Option<ObjectOr<RawPage<'a>>>,
    #[serde(default, borrow)]
    device: Option<ObjectOr<RawDevice<'a>>>,
    #[serde(default, borrow)]
    events: Option<Json<RawEvent<'a>>>,
}

#[derive(Deserialize, Default)]
struct RawPage<'a> {
    #[serde(default, borrow)]
    url: Scalar<'a>,
}

#[derive(Deserialize, Default)]
struct RawDevice<'a> {
    #[serde(default, borrow)]
    screen: Scalar<'a>,
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(default, borrow, rename = "type")]
    kind_of_event: Scalar<'a>,
    #[serde(default, borrow)]
    start: Scalar<'a>,
    #[serde(default, borrow)]
    dur: Scalar<'a>,
    #[serde(default, borrow)]
    name: Scalar<'a>,
    #[serde(default, borrow)]
    url: Scalar<'a>,
    #[serde(default, borrow)]
    method: Scalar<'a>,
    #[serde(default, borrow)]
    status: Scalar<'a>,
    #[serde(default, borrow)]
    traceparent: Scalar<'a>,
    #[serde(default, borrow)]
    kind: Scalar<'a>,
    #[serde(default, borrow)]
    message: Scalar<'a>,
    #[serde(default, borrow)]
    stack: Scalar<'a>,
    #[serde(default, borrow)]
    value: Scalar<'a>,
    #[serde(default, borrow)]
    target: Scalar<'a>,
    #[serde(default, borrow)]
    count: Scalar<'a>,
    #[serde(default, borrow)]
    user: Scalar<'a>,
    #[serde(default, borrow)]
    key: Scalar<'a>,
    #[serde(default, borrow)]
    reason: Scalar<'a>,
    #[serde(default, borrow)]
    timing: Option<&'a RawValue>,
    #[serde(default, borrow)]
    resources: Option<&'a RawValue>,
}

/// String limits, in Unicode scalar values (docs §3).
pub mod limits {
    pub const URL: usize = 2048;
    pub const MESSAGE: usize = 1024;
    pub const STACK: usize = 8192;
    pub const USER: usize = 256;
    pub const PROPERTY_VALUE: usize = 512;
    pub const SHORT: usize = 256;
    pub const KEY: usize = 64;
    pub const RESOURCES: usize = 300;
    pub const MAX_START: f64 = 1e13;
    pub const MAX_DUR: f64 = 86_400_000.0;
}

/// The first `max_chars` Unicode scalar values of `s`.
pub fn truncate(s: &str, max_chars: usize) -> String {
    s[..cut(s, max_chars)].to_owned()
}

/// Where `s` is cut to keep `max_chars` scalar values (no char is longer than a byte, so a
/// string of at most `max_chars` bytes is kept whole without counting).
fn cut(s: &str, max_chars: usize) -> usize {
    if s.len() <= max_chars {
        return s.len();
    }
    s.char_indices().nth(max_chars).map_or(s.len(), |(i, _)| i)
}

pub(crate) fn truncate_cow(s: Cow<'_, str>, max_chars: usize) -> Cow<'_, str> {
    let end = cut(&s, max_chars);
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionType {
    /// A page load.
    Load,
    /// An XHR or fetch call.
    Xhr,
    /// A click, a route change or an action the site reported itself.
    Custom,
}

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Load => "load",
            ActionType::Xhr => "xhr",
            ActionType::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A JavaScript error or unhandled rejection.
    Js,
    /// A failed request.
    Request,
    /// An error the site reported itself (and any unknown kind).
    Custom,
}

impl ErrorKind {
    /// Every kind, in the order of their names (the keys of `errors_by_kind`).
    pub const IN_KEY_ORDER: [ErrorKind; 3] = [ErrorKind::Custom, ErrorKind::Js, ErrorKind::Request];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Js => "js",
            ErrorKind::Request => "request",
            ErrorKind::Custom => "custom",
        }
    }
}

/// One entry of an action's waterfall. Stored as is in checkpoints (a positional format:
/// no skipped fields here); the detail JSON leaves absent fields out (`session::ResourceOut`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resource {
    pub url: Option<String>,
    pub initiator: Option<String>,
    pub start: Option<f64>,
    pub dur: Option<f64>,
    pub status: Option<u16>,
    pub size: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActionEvent {
    pub kind: ActionType,
    pub name: String,
    pub url: Option<String>,
    pub method: Option<String>,
    pub dur: f64,
    pub status: Option<u16>,
    pub traceparent: Option<String>,
    pub timings: Vec<(String, f64)>,
    pub resources: Vec<Resource>,
}



/// Why one event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// A string `type` the core does not know.
    UnknownType,
    /// Not an object, no string `type`, or a field of the wrong type or range.
    BadEvent,
}

impl Drop {
    pub fn code(self) -> &'static str {
        match self {
            Drop::UnknownType => "unknown_type",
            Drop::BadEvent => "bad_event",
        }
    }
}


/// The beacons of one request, before their events are parsed.
pub struct Envelopes<'a> {
    raw: Vec<(RawBeacon<'a>, Vec<ObjectOr<RawEvent<'a>>>)>,
}

impl Envelopes<'_> {
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    pub fn event_count(&self) -> usize {
        self.raw.iter().map(|(_, e)| e.len()).sum()
    }
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

pub(crate) fn valid_app(app: &str) -> bool {
    (1..=64).contains(&app.len())
        && app.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) fn valid_sid(sid: &str) -> bool {
    (8..=128).contains(&sid.len()) && sid.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Splits a payload into beacons and validates every envelope (docs §2): all or nothing.
/// Returns the index of the failing beacon with the reason.
pub fn envelopes(payload: &[u8], max_events: usize) -> Result<Envelopes<'_>, (usize, Rejection)> {
    let mut values: Vec<Json<RawBeacon>> = Vec::new();
    for item in serde_json::Deserializer::from_slice(payload).into_iter::<Json<RawBeacon>>() {
        match item {
            Ok(v) => values.push(v),
            Err(_) => return Err((values.len(), Rejection::BadJson)),
        }
    }
    // a single JSON array holds the beacons; anything else is one object or NDJSON
    let beacons: Vec<ObjectOr<RawBeacon>> = match values.len() {
        0 => return Err((0, Rejection::BadJson)),
        1 if matches!(values[0], Json::Array(_)) => {
            let Some(Json::Array(items)) = values.pop() else { unreachable!() };
            if items.is_empty() {
                return Err((0, Rejection::Empty));
            }
            items
        }
        _ => values
            .into_iter()
            .map(|v| match v {
                Json::Object(b) => ObjectOr::Object(b),
                _ => ObjectOr::Other,
            })
            .collect(),
    };
    let mut raw = Vec::with_capacity(beacons.len());
    let mut total_events = 0usize;
    for (i, b) in beacons.into_iter().enumerate() {
        let ObjectOr::Object(mut b) = b else { return Err((i, Rejection::NotObject)) };
        match &b.v {
            Scalar::Missing | Scalar::Null => {}
            Scalar::Num(n) if *n == 1.0 => {}
            _ => return Err((i, Rejection::BadVersion)),
        }
        if !b.app.str_or_none().is_some_and(valid_app) {
            return Err((i, Rejection::BadApp));
        }
        if !b.sid.str_or_none().is_some_and(valid_sid) {
            return Err((i, Rejection::BadSid));
        }
        let events = match b.events.take() {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(e)) => e,
            Some(_) => return Err((i, Rejection::BadEvents)),
        };
        total_events += events.len();
        if total_events > max_events {
            return Err((i, Rejection::TooManyEvents));
        }
        raw.push((b, events));
    }
    Ok(Envelopes { raw })
}

/// A string field truncated; `Err` when of another type.
fn opt_string(s: Scalar<'_>, max: usize) -> Result<Option<Cow<'_, str>>, ()> {
    Ok(raw_string(s)?.map(|v| truncate_cow(v, max)))
}

/// A string field as sent (to be scrubbed, then truncated, by the sessionizer).
fn raw_string(s: Scalar<'_>) -> Result<Option<Cow<'_, str>>, ()> {
    match s {
        Scalar::Missing | Scalar::Null => Ok(None),
        Scalar::Str(s) => Ok(Some(s)),
        _ => Err(()),
    }
}

/// A string field when it is one, else nothing (envelope fields of a wrong type are ignored).
fn str_or_none(s: Scalar<'_>) -> Option<Cow<'_, str>> {
    raw_string(s).ok().flatten()
}

fn start_of(s: &Scalar) -> Result<Option<f64>, ()> {
    match s.number()? {
        Some(n) if !(0.0..=limits::MAX_START).contains(&n) => Err(()),
        other => Ok(other),
    }
}

fn integer_in(s: &Scalar, lo: f64, hi: f64) -> Result<Option<f64>, ()> {
    match s.number()? {
        Some(n) if n.fract() != 0.0 || n < lo || n > hi => Err(()),
        other => Ok(other),
    }
}

pub(crate) fn valid_traceparent(tp: &str) -> bool {
    let b = tp.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    b.len() == 55
        && &b[..3] == b"00-"
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && hex(&b[36..52])
        && hex(&b[53..55])
        && nonzero(&b[3..35])
        && nonzero(&b[36..52])
}

fn timings<'a>(raw: Option<&RawValue>) -> Vec<(Cow<'a, str>, f64)> {
    let Some(raw) = raw.filter(|r| is_object(r)) else { return Vec::new() };
    let entries: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_str(raw.get());
    let Ok(entries) = entries else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|(k, v)| v.as_f64().map(|n| (Cow::Owned(truncate(&k, limits::KEY)), n)))
        .collect()
}

fn resources(raw: Option<&RawValue>) -> Vec<ParsedResource<Cow<'_, str>>> {
    #[derive(Deserialize)]
    struct RawResource<'a> {
        #[serde(default, borrow)]
        url: Scalar<'a>,
        #[serde(default, borrow)]
        initiator: Scalar<'a>,
        #[serde(default, borrow)]
        start: Scalar<'a>,
        #[serde(default, borrow)]
        dur: Scalar<'a>,
        #[serde(default, borrow)]
        status: Scalar<'a>,
        #[serde(default, borrow)]
        size: Scalar<'a>,
    }
    let Some(raw) = raw.filter(|r| r.get().starts_with('[')) else { return Vec::new() };
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else { return Vec::new() };
    items
        .into_iter()
        .filter(|r| is_object(r))
        .filter_map(|r| serde_json::from_str::<RawResource>(r.get()).ok())
        .take(limits::RESOURCES)
        .map(|r| ParsedResource {
            start: r.start.number().ok().flatten(),
            dur: r.dur.number().ok().flatten(),
            status: integer_in(&r.status, 0.0, 999.0).ok().flatten().map(|n| n as u16),
            size: r.size.number().ok().flatten(),
            url: str_or_none(r.url),
            initiator: opt_string(r.initiator, limits::KEY).ok().flatten(),
        })
        .collect()
}

fn parse_event(raw: ObjectOr<RawEvent<'_>>) -> Result<ParsedEvent<Cow<'_, str>>, Drop> {
    let ObjectOr::Object(e) = raw else { return Err(Drop::BadEvent) };
    let Scalar::Str(kind) = &e.kind_of_event else { return Err(Drop::BadEvent) };
    let bad = |()| Drop::BadEvent;
    let start = start_of(&e.start).map_err(bad)?;
    let action_type = match kind.as_ref() {
        "load" => Some(ActionType::Load),
        "xhr" => Some(ActionType::Xhr),
        "custom" => Some(ActionType::Custom),
        _ => None,
    };
    let body = if let Some(action_type) = action_type {
        let shape_ok = |raw: Option<&RawValue>, open: char| raw.is_none_or(|r| r.get() == "null" || r.get().starts_with(open));
        if !shape_ok(e.timing, '{') || !shape_ok(e.resources, '[') {
            return Err(Drop::BadEvent);
        }
        let dur = match e.dur.number().map_err(bad)? {
            None => 0.0,
            Some(d) if (0.0..=limits::MAX_DUR).contains(&d) => d,
            Some(_) => return Err(Drop::BadEvent),
        };
        let status = integer_in(&e.status, 0.0, 999.0).map_err(bad)?.map(|n| n as u16);
        let traceparent = raw_string(e.traceparent).map_err(bad)?.filter(|t| valid_traceparent(t));
        ParsedBody::Action {
            kind: action_type,
            name: raw_string(e.name).map_err(bad)?,
            url: raw_string(e.url).map_err(bad)?,
            method: opt_string(e.method, limits::SHORT).map_err(bad)?,
            dur,
            status,
            traceparent,
            timings: timings(e.timing),
            resources: resources(e.resources),
        }
    } else {
        match kind.as_ref() {
            "error" => {
                let kind = match e.kind.str_or_none() {
                    Some("js") => ErrorKind::Js,
                    Some("request") => ErrorKind::Request,
                    _ => ErrorKind::Custom,
                };
                ParsedBody::Error {
                    kind,
                    message: raw_string(e.message).map_err(bad)?,
                    stack: opt_string(e.stack, limits::STACK).map_err(bad)?,
                }
            }
            "vital" => {
                let name = e.name.string().map_err(bad)?.ok_or(Drop::BadEvent)?;
                let value = e.value.number().map_err(bad)?.ok_or(Drop::BadEvent)?;
                if value < 0.0 {
                    return Err(Drop::BadEvent);
                }
                ParsedBody::Vital { name: Cow::Owned(truncate(&name.to_uppercase(), limits::URL)), value }
            }
            "rage_click" => ParsedBody::RageClick {
                count: integer_in(&e.count, 1.0, f64::from(u32::MAX)).map_err(bad)?.map_or(3, |n| n as u32),
                target: opt_string(e.target, limits::SHORT).map_err(bad)?,
            },
            "identify" => {
                let user = raw_string(e.user).map_err(bad)?.filter(|u| !u.is_empty()).ok_or(Drop::BadEvent)?;
                ParsedBody::Identify(truncate_cow(user, limits::USER))
            }
            "property" => {
                let key = raw_string(e.key).map_err(bad)?.ok_or(Drop::BadEvent)?;
                let value = raw_string(e.value).map_err(bad)?.ok_or(Drop::BadEvent)?;
                if key.is_empty() || key.chars().count() > limits::KEY {
                    return Err(Drop::BadEvent);
                }
                ParsedBody::Property(key, truncate_cow(value, limits::PROPERTY_VALUE))
            }
            "end" => ParsedBody::End(opt_string(e.reason, limits::SHORT).map_err(bad)?),
            _ => return Err(Drop::UnknownType),
        }
    };
    Ok(ParsedEvent { start, body })
}

impl<'a> Envelopes<'a> {
    /// Parses the events of every beacon (docs §3): everything but the settings-dependent
    /// steps, which the sessionizer does when it applies them.
    pub fn into_parsed(self) -> Vec<ParsedBeacon<Cow<'a, str>>> {
        self.raw
            .into_iter()
            .map(|(b, raw_events)| {
                let mut events = Vec::with_capacity(raw_events.len());
                let (mut bad_events, mut unknown_events) = (0, 0);
                for raw in raw_events {
                    match parse_event(raw) {
                        Ok(e) => events.push(e),
                        Err(Drop::BadEvent) => bad_events += 1,
                        Err(Drop::UnknownType) => unknown_events += 1,
                    }
                }
                let page = match b.page {
                    Some(ObjectOr::Object(p)) => p,
                    _ => RawPage::default(),
                };
                let device = match b.device {
                    Some(ObjectOr::Object(d)) => d,
                    _ => RawDevice::default(),
                };
                let non_empty = |s: Scalar<'a>, max: usize| str_or_none(s).filter(|s| !s.is_empty()).map(|s| truncate_cow(s, max));
                ParsedBeacon {
                    sent: b.sent.number().ok().flatten().filter(|s| *s > 0.0),
                    synthetic: b.synthetic == Scalar::Bool(true),
                    app: str_or_none(b.app).unwrap_or_default(),
                    sid: str_or_none(b.sid).unwrap_or_default(),
                    vid: non_empty(b.vid, limits::SHORT),
                    user: non_empty(b.user, limits::USER),
                    page_url: str_or_none(page.url),
                    screen: non_empty(device.screen, limits::SHORT),
                    events,
                    bad_events,
                    unknown_events,
                }
            })
            .collect()
    }
}
