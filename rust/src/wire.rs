//! Beacons parsed and validated, before the steps that depend on the sessionizer's settings:
//! what a version-2 WAL record carries (docs §1).
//!
//! `prepare` parses each request's JSON once into these types and stores them packed (all the
//! text in one block, then the structure: `wire/packed.rs`; records before it hold postcard),
//! so `ingest` reads them back without parsing JSON again. PII scrubbing (and truncating the scrubbed text,
//! which comes after it) depends on the sessionizer's settings: those fields are stored as sent
//! and finished by the sessionizer when it applies the beacon. Everything else is already checked and
//! truncated. The types are generic over the string: `Cow<str>` when built from JSON, `&str`
//! when decoded from a record (borrowed from the batch, nothing copied until a session keeps it).
use crate::beacon::{limits, valid_app, valid_sid, valid_traceparent, ActionType, Drop, ErrorKind};
use serde::{Deserialize, Serialize};

/// One beacon of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedBeacon<S> {
    pub app: S,
    pub sid: S,
    /// non-empty, truncated
    pub vid: Option<S>,
    /// > 0
    pub sent: Option<f64>,
    /// non-empty, truncated
    pub user: Option<S>,
    /// as sent: scrubbed, then truncated, when the sessionizer applies it
    pub page_url: Option<S>,
    /// non-empty, truncated
    pub screen: Option<S>,
    pub synthetic: bool,
    pub events: Vec<ParsedEvent<S>>,
    /// events dropped as `bad_event`
    pub bad_events: u32,
    /// events dropped as `unknown_type`
    pub unknown_events: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedEvent<S> {
    pub start: Option<f64>,
    pub body: ParsedBody<S>,
}

/// An event's fields; `name`, `url`, `message` and resource URLs as sent (scrubbed later),
/// every other string truncated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParsedBody<S> {
    Action {
        kind: ActionType,
        name: Option<S>,
        url: Option<S>,
        method: Option<S>,
        dur: f64,
        status: Option<u16>,
        /// valid (checked by the parser)
        traceparent: Option<S>,
        timings: Vec<(S, f64)>,
        resources: Vec<ParsedResource<S>>,
    },
    Error { kind: ErrorKind, message: Option<S>, stack: Option<S> },
    Vital { name: S, value: f64 },
    RageClick { target: Option<S>, count: u32 },
    Identify(S),
    Property(S, S),
    End(Option<S>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedResource<S> {
    /// as sent (scrubbed later)
    pub url: Option<S>,
    pub initiator: Option<S>,
    pub start: Option<f64>,
    pub dur: Option<f64>,
    pub status: Option<u16>,
    pub size: Option<f64>,
}

mod packed;
pub(crate) use packed::push_varint;

/// Appends the packed form of a request's beacons to `out` (see `wire/packed.rs`).
pub fn encode<S: AsRef<str>>(beacons: &[ParsedBeacon<S>], out: Vec<u8>) -> Vec<u8> {
    packed::encode(beacons, out)
}

/// Appends the postcard form of a request's beacons to `out`: what `prepare` wrote up to
/// commit fb143ce (still decoded, see [`decode`]; written by tests only).
#[cfg(test)]
pub fn encode_postcard<S: Serialize>(beacons: &[ParsedBeacon<S>], out: Vec<u8>) -> Vec<u8> {
    postcard::to_extend(beacons, out).expect("parsed beacons serialize")
}

/// Reads the beacons of a version-2 record, in either layout: packed (a payload that starts
/// with 0) or postcard (records written before the packed layout, replayed after an upgrade:
/// postcard starts with the beacon count, never 0). `None` when the payload is damaged: it
/// does not decode, has bytes left over, or holds anything `prepare` could not have written
/// (a record is applied whole or not at all).
pub fn decode(payload: &[u8]) -> Option<Vec<ParsedBeacon<&str>>> {
    let beacons = if payload.first() == Some(&packed::TAG) {
        packed::decode(payload)?
    } else {
        let (beacons, rest): (Vec<ParsedBeacon<&str>>, &[u8]) = postcard::take_from_bytes(payload).ok()?;
        if !rest.is_empty() {
            return None;
        }
        beacons
    };
    (!beacons.is_empty() && beacons.iter().all(ParsedBeacon::is_valid)).then_some(beacons)
}

fn within(s: Option<&impl AsRef<str>>, max_chars: usize) -> bool {
    s.is_none_or(|s| {
        let s = s.as_ref();
        s.len() <= max_chars || s.chars().count() <= max_chars
    })
}

fn number_in(n: Option<f64>, lo: f64, hi: f64) -> bool {
    n.is_none_or(|n| (lo..=hi).contains(&n))
}

fn finite(n: Option<f64>) -> bool {
    n.is_none_or(f64::is_finite)
}

impl<S: AsRef<str>> ParsedBeacon<S> {
    /// What the parser guarantees, checked again on a decoded record so that a damaged one
    /// cannot reach a session (a cut traceparent would, for one, break the detail).
    pub fn is_valid(&self) -> bool {
        valid_app(self.app.as_ref())
            && valid_sid(self.sid.as_ref())
            && self.sent.is_none_or(|s| s > 0.0 && s.is_finite())
            && [&self.vid, &self.screen].iter().all(|s| within(s.as_ref(), limits::SHORT) && s.as_ref().is_none_or(|s| !s.as_ref().is_empty()))
            && within(self.user.as_ref(), limits::USER)
            && self.user.as_ref().is_none_or(|s| !s.as_ref().is_empty())
            && self.events.iter().all(ParsedEvent::is_valid)
    }
}

impl<S: AsRef<str>> ParsedEvent<S> {
    fn is_valid(&self) -> bool {
        if !number_in(self.start, 0.0, limits::MAX_START) {
            return false;
        }
        match &self.body {
            ParsedBody::Action { method, dur, status, traceparent, timings, resources, .. } => {
                (0.0..=limits::MAX_DUR).contains(dur)
                    && within(method.as_ref(), limits::SHORT)
                    && status.is_none_or(|s| s <= 999)
                    && traceparent.as_ref().is_none_or(|t| valid_traceparent(t.as_ref()))
                    && timings.iter().all(|(k, v)| within(Some(k), limits::KEY) && v.is_finite())
                    && resources.len() <= limits::RESOURCES
                    && resources.iter().all(|r| {
                        within(r.initiator.as_ref(), limits::KEY)
                            && r.status.is_none_or(|s| s <= 999)
                            && finite(r.start)
                            && finite(r.dur)
                            && finite(r.size)
                    })
            }
            ParsedBody::Error { stack, .. } => within(stack.as_ref(), limits::STACK),
            ParsedBody::Vital { name, value } => within(Some(name), limits::URL) && *value >= 0.0 && value.is_finite(),
            ParsedBody::RageClick { target, count } => within(target.as_ref(), limits::SHORT) && *count >= 1,
            ParsedBody::Identify(user) => !user.as_ref().is_empty() && within(Some(user), limits::USER),
            ParsedBody::Property(key, value) => {
                !key.as_ref().is_empty() && within(Some(key), limits::KEY) && within(Some(value), limits::PROPERTY_VALUE)
            }
            ParsedBody::End(reason) => within(reason.as_ref(), limits::SHORT),
        }
    }
}

impl<S> ParsedBeacon<S> {
    /// The events that were dropped, by reason, as counts.
    pub fn dropped(&self) -> [(Drop, u32); 2] {
        [(Drop::BadEvent, self.bad_events), (Drop::UnknownType, self.unknown_events)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beacon::envelopes;

    const BODY: &[u8] = br#"[{"app":"shop","sid":"sid-0001","vid":"v","sent":5,"user":"u@example.com","page":{"url":"/a?mail=x@example.com"},"events":[
        {"type":"xhr","name":"GET \"/x\"","status":500,"dur":3,"start":1,"timing":{"ttfb":1},"resources":[{"url":"/r","size":3}],
         "traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"type":"error","kind":"js","message":"m","stack":"s"},{"type":"vital","name":"lcp","value":1},
        {"type":"rage_click"},{"type":"identify","user":"w"},{"type":"property","key":"k","value":"v"},{"type":"end"},
        {"type":"zzz"},{"type":"load","dur":-1}]},{"app":"blog","sid":"sid-0002"}]"#;

    fn parsed() -> Vec<ParsedBeacon<String>> {
        let json = envelopes(BODY, 500).unwrap().into_parsed();
        let bytes = encode(&json, Vec::new());
        decode(&bytes).unwrap().into_iter().map(owned).collect()
    }

    fn owned(b: ParsedBeacon<&str>) -> ParsedBeacon<String> {
        let bytes = encode_postcard(&[b], Vec::new());
        postcard::from_bytes::<Vec<ParsedBeacon<String>>>(&bytes).unwrap().pop().unwrap()
    }

    #[test]
    fn a_request_reads_back_as_parsed() {
        let json = envelopes(BODY, 500).unwrap().into_parsed();
        let bytes = encode(&json, Vec::new());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].events.len(), back[0].bad_events, back[0].unknown_events), (7, 1, 1));
        // the parsed beacons are what the JSON gives, field by field (`Cow` and `&str` print alike)
        for (a, b) in json.iter().zip(&back) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }

    #[test]
    fn scrubbing_is_left_to_the_sessionizer() {
        let b = &parsed()[0];
        assert_eq!(b.page_url.as_deref(), Some("/a?mail=x@example.com"));
        // (the sessionizer's `clean` scrubs it: `pii_is_scrubbed_from_urls_names_and_messages`)
    }

    /// Two records as `prepare` wrote them at commit fb143ce (version 2, before any change
    /// of the layout), and what they decode to there: WAL records already on disk are
    /// replayed after an upgrade, so they must keep decoding to the same beacons.
    #[test]
    fn records_written_by_fb143ce_decode_the_same() {
        use std::fmt::Write;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wal_v2_fb143ce");
        let hex = std::fs::read_to_string(format!("{dir}.hex")).unwrap();
        let hex = hex.trim();
        let wal: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let mut got = String::new();
        for r in crate::record::records(&wal) {
            let r = r.unwrap();
            let beacons = decode(r.payload).unwrap();
            writeln!(got, "{} {} {} {:?} {:?}\n{beacons:#?}", r.version, r.flags, r.recv_ms, r.ip, r.user_agent).unwrap();
        }
        assert_eq!(got, std::fs::read_to_string(format!("{dir}.decoded.txt")).unwrap());
    }

    #[test]
    fn damaged_payloads_are_refused() {
        let bytes = encode(&envelopes(BODY, 500).unwrap().into_parsed(), Vec::new());
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(&[bytes.as_slice(), &[0]].concat()).is_none());
        assert!(decode(&[0]).is_none(), "no beacons");
        // the smallest beacons there are (6 bytes of structure each)
        let bare = envelopes(br#"{"app":"a","sid":"sid-0001"}"#, 500).unwrap().into_parsed();
        assert_eq!(decode(&encode(&bare, Vec::new())).unwrap().len(), 1);
        let two = envelopes(br#"[{"app":"a","sid":"sid-0001"},{"app":"b","sid":"sid-0002"}]"#, 500).unwrap().into_parsed();
        assert_eq!(decode(&encode(&two, Vec::new())).unwrap().len(), 2);
        // well-formed postcard of values `prepare` never writes
        let mut bad = parsed();
        if let ParsedBody::Action { traceparent, .. } = &mut bad[0].events[0].body {
            *traceparent = Some("00-4bf9".into());
        }
        assert!(decode(&encode(&bad, Vec::new())).is_none());
        let mut bad = parsed();
        bad[1].sid = "short".into();
        assert!(decode(&encode(&bad, Vec::new())).is_none());
        let mut bad = parsed();
        bad[0].events[0].start = Some(-1.0);
        assert!(decode(&encode(&bad, Vec::new())).is_none());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Text of at most `max` chars: ASCII, multi-byte letters, an emoji, a newline.
        fn text(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(prop_oneof![Just('a'), Just('/'), Just('é'), Just('☃'), Just('😀'), Just('\n'), Just('0')], 0..=max.min(12))
                .prop_map(|c| c.into_iter().collect())
        }

        fn some_text(max: usize) -> impl Strategy<Value = Option<String>> {
            prop::option::of(text(max))
        }

        fn non_empty(max: usize) -> impl Strategy<Value = String> {
            text(max).prop_map(|s| if s.is_empty() { "x".to_owned() } else { s })
        }

        fn number() -> impl Strategy<Value = f64> {
            prop_oneof![Just(0.0), Just(-0.0), Just(1e300), Just(-2.5), (0u32..100_000).prop_map(f64::from), 0.0..1e13f64]
        }

        fn resource() -> impl Strategy<Value = ParsedResource<String>> {
            (some_text(40), some_text(limits::KEY), prop::option::of(number()), prop::option::of(number()), prop::option::of(0u16..=999), prop::option::of(number()))
                .prop_map(|(url, initiator, start, dur, status, size)| ParsedResource { url, initiator, start, dur, status, size })
        }

        fn body() -> impl Strategy<Value = ParsedBody<String>> {
            let kind = prop_oneof![Just(ActionType::Load), Just(ActionType::Xhr), Just(ActionType::Custom)];
            let error_kind = prop_oneof![Just(ErrorKind::Js), Just(ErrorKind::Request), Just(ErrorKind::Custom)];
            let tp = prop::option::of(Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()));
            prop_oneof![
                (kind, some_text(40), some_text(40), some_text(8), 0.0..=limits::MAX_DUR, prop::option::of(0u16..=999), tp,
                 prop::collection::vec((text(limits::KEY), number()), 0..4), prop::collection::vec(resource(), 0..4))
                    .prop_map(|(kind, name, url, method, dur, status, traceparent, timings, resources)| ParsedBody::Action {
                        kind, name, url, method, dur, status, traceparent, timings, resources
                    }),
                (error_kind, some_text(40), some_text(40)).prop_map(|(kind, message, stack)| ParsedBody::Error { kind, message, stack }),
                (text(20), number().prop_map(f64::abs)).prop_map(|(name, value)| ParsedBody::Vital { name, value }),
                (some_text(20), 1..=u32::MAX).prop_map(|(target, count)| ParsedBody::RageClick { target, count }),
                non_empty(20).prop_map(ParsedBody::Identify),
                (non_empty(limits::KEY), text(40)).prop_map(|(k, v)| ParsedBody::Property(k, v)),
                some_text(20).prop_map(ParsedBody::End),
            ]
        }

        fn beacon() -> impl Strategy<Value = ParsedBeacon<String>> {
            let ids = ("[A-Za-z0-9._-]{1,64}", "[!-~]{8,128}");
            let fields = (prop::option::of(non_empty(20)), prop::option::of(1.0..1e13f64), prop::option::of(non_empty(20)), some_text(60), prop::option::of(non_empty(12)), any::<bool>());
            let events = prop::collection::vec((prop::option::of(0.0..=limits::MAX_START), body()).prop_map(|(start, body)| ParsedEvent { start, body }), 0..8);
            (ids, fields, events, any::<u32>(), any::<u32>()).prop_map(|((app, sid), (vid, sent, user, page_url, screen, synthetic), events, bad_events, unknown_events)| {
                ParsedBeacon { app, sid, vid, sent, user, page_url, screen, synthetic, events, bad_events, unknown_events }
            })
        }

        fn bits(b: &[ParsedBeacon<String>]) -> String {
            // `{:?}` prints -0.0 and 0.0 apart, so equal text is equal bits
            format!("{b:?}")
        }

        fn back(bytes: &[u8]) -> Option<String> {
            decode(bytes).map(|b| format!("{b:?}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

            #[test]
            fn beacons_round_trip_in_both_layouts(beacons in prop::collection::vec(beacon(), 1..4)) {
                prop_assert!(beacons.iter().all(ParsedBeacon::is_valid));
                prop_assert_eq!(back(&encode(&beacons, Vec::new())), Some(bits(&beacons)));
                prop_assert_eq!(back(&encode_postcard(&beacons, Vec::new())), Some(bits(&beacons)));
                // after other bytes in the buffer (a record's header)
                let with_head = encode(&beacons, vec![7; 5]);
                prop_assert_eq!(back(&with_head[5..]), Some(bits(&beacons)));
            }

            #[test]
            fn cut_or_damaged_payloads_are_refused_without_panic(
                beacons in prop::collection::vec(beacon(), 1..3),
                cut in any::<prop::sample::Index>(),
                damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            ) {
                for bytes in [encode(&beacons, Vec::new()), encode_postcard(&beacons, Vec::new())] {
                    prop_assert!(decode(&bytes[..cut.index(bytes.len())]).is_none());
                    prop_assert!(decode(&[bytes.as_slice(), &[0]].concat()).is_none());
                    let mut bad = bytes.clone();
                    for (at, value) in &damage {
                        let i = at.index(bad.len());
                        bad[i] = *value;
                    }
                    // either refused or beacons that pass the checks: never a panic
                    if let Some(b) = decode(&bad) {
                        prop_assert!(b.iter().all(ParsedBeacon::is_valid));
                    }
                }
            }

            #[test]
            fn any_bytes_after_the_tag_are_handled_without_panic(rest in prop::collection::vec(any::<u8>(), 0..200)) {
                let _ = decode(&[&[packed::TAG, packed::LAYOUT][..], &rest].concat());
                let _ = decode(&[&[packed::TAG][..], &rest].concat());
                let _ = decode(&rest);
            }
        }
    }
}
