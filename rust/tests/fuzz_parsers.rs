//! Property fuzzing of every parser: no input may panic the core, and a rejected request
//! never reaches the WAL.
use proptest::prelude::*;
use rumline_core::record;
use rumline_core::{prepare, Request, Sessionizer, Settings};

const T0: u64 = 1_764_126_000_000;

fn bytes(closed: Vec<rumline_core::session::Closed>) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    closed.into_iter().map(|c| (c.session_id, c.summary, c.detail)).collect()
}

/// Where each record of a batch starts.
fn record_offsets(batch: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= batch.len() {
        out.push(at);
        at += 4 + u32::from_le_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
    }
    out
}

fn json_fragment() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        "[a-z@%0-9 .\\-_]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("\"\\ud800\"".to_owned()),
        Just("1e999".to_owned()),
    ];
    let keys = prop_oneof![
        Just("app"), Just("sid"), Just("v"), Just("events"), Just("type"), Just("start"), Just("dur"),
        Just("status"), Just("name"), Just("value"), Just("user"), Just("sent"), Just("page"), Just("url"),
        Just("timing"), Just("resources"), Just("kind"), Just("traceparent"), Just("key"), Just("count"),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((keys.clone(), inner), 0..8).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

fn event() -> impl Strategy<Value = String> {
    let kinds = prop_oneof![Just("load"), Just("xhr"), Just("custom"), Just("error"), Just("vital"), Just("rage_click"), Just("identify"), Just("property"), Just("end"), Just("zzz")];
    (kinds, json_fragment(), json_fragment(), json_fragment())
        .prop_map(|(k, a, b, c)| format!("{{\"type\":\"{k}\",\"start\":{a},\"dur\":{b},\"name\":{c},\"value\":{a},\"status\":{b},\"resources\":{c},\"timing\":{a}}}"))
}

fn beacon_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(event(), 0..8)
            .prop_map(|ev| format!("{{\"app\":\"shop\",\"sid\":\"sid-00001\",\"events\":[{}]}}", ev.join(",")).into_bytes()),
        json_fragment().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn any_payload_is_handled_without_panic(payloads in prop::collection::vec(beacon_payload(), 1..6), cut in any::<prop::sample::Index>()) {
        let reqs: Vec<Request> = payloads.iter().map(|b| Request { recv_ms: 1_764_126_000_000, ip: "2001:db8::1", user_agent: "x", flags: 0, body: b }).collect();
        let p = prepare(&reqs, 500, true);
        let accepted = p.verdicts.iter().filter(|v| v.is_none()).count();
        prop_assert_eq!(record::records(&p.wal).count(), accepted);
        let mut s = Sessionizer::new(Settings::default()).unwrap();
        let out = s.ingest(&p.wal, 1_764_126_000_000);
        prop_assert!(out.rejected.is_empty(), "prepare accepted what ingest rejects: {:?}", out.rejected);
        // raw (unframed or truncated) bytes straight into ingest
        let raw: Vec<u8> = payloads.concat();
        let _ = s.ingest(&raw, 1_764_126_000_000);
        let truncated = &p.wal[..cut.index(p.wal.len() + 1)];
        let _ = s.ingest(truncated, 1_764_126_000_000);
        let _ = s.live(true);
        let state = s.checkpoint();
        let mut again = Sessionizer::new(Settings::default()).unwrap();
        again.restore(&state).unwrap();
        prop_assert_eq!(again.open_count(), s.open_count());
        let _ = s.flush(i64::MAX / 2);
    }

    #[test]
    fn parsed_records_give_what_their_json_gives(payloads in prop::collection::vec(beacon_payload(), 1..6)) {
        let reqs: Vec<Request> = payloads.iter().map(|b| Request { recv_ms: T0, ip: "203.0.113.9", user_agent: "x", flags: 0, body: b }).collect();
        let p = prepare(&reqs, 500, true);
        let mut json = Vec::new();
        for (r, verdict) in reqs.iter().zip(&p.verdicts) {
            if verdict.is_none() {
                record::encode(&mut json, r.flags, r.recv_ms, "203.0.113.0", r.user_agent, r.body);
            }
        }
        let (mut a, mut b) = (Sessionizer::new(Settings::default()).unwrap(), Sessionizer::new(Settings::default()).unwrap());
        let (oa, ob) = (a.ingest(&p.wal, T0 as i64), b.ingest(&json, T0 as i64));
        prop_assert_eq!((oa.beacons, oa.events, &oa.dropped), (ob.beacons, ob.events, &ob.dropped));
        prop_assert_eq!(bytes(a.live(true)), bytes(b.live(true)));
        prop_assert_eq!(bytes(a.flush(i64::MAX / 2).closed), bytes(b.flush(i64::MAX / 2).closed));
    }

    #[test]
    fn damaged_parsed_records_are_skipped_without_panic(
        payloads in prop::collection::vec(beacon_payload(), 1..4),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let reqs: Vec<Request> = payloads.iter().map(|b| Request { recv_ms: T0, ip: "", user_agent: "", flags: 0, body: b }).collect();
        let wal = prepare(&reqs, 500, true).wal;
        prop_assume!(!wal.is_empty());
        // damage the payloads only (the header is 4 + 12 + 2 bytes with an empty ip and agent):
        // the frames stay intact, so every record is applied or reported, none is lost
        let mut bad = wal.clone();
        for (at, value) in damage {
            let i = at.index(bad.len());
            if record_offsets(&wal).iter().all(|&start| i < start || i >= start + 18) {
                bad[i] = value;
            }
        }
        let mut s = Sessionizer::new(Settings::default()).unwrap();
        let out = s.ingest(&bad, T0 as i64);
        prop_assert!(out.rejected.iter().all(|r| r.2 == "bad_record" && r.1 == 0), "{:?}", out.rejected);
        prop_assert!(out.rejected.len() <= record_offsets(&wal).len());
        // a payload cut short inside an intact frame
        let first = record_offsets(&wal)[1..].first().copied().unwrap_or(wal.len());
        let keep = 18 + cut.index(first - 18);
        let mut short = wal[..keep].to_vec();
        let len = (keep - 4) as u32;
        short[..4].copy_from_slice(&len.to_le_bytes());
        let out = s.ingest(&short, T0 as i64);
        prop_assert_eq!(out.rejected, vec![(0, 0, "bad_record")]);
        let _ = s.live(true);
        let state = s.checkpoint();
        let mut again = Sessionizer::new(Settings::default()).unwrap();
        again.restore(&state).unwrap();
        prop_assert_eq!(again.open_count(), s.open_count());
        for c in s.flush(i64::MAX / 2).closed {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&c.summary).is_ok());
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&c.detail).is_ok());
        }
    }

    #[test]
    fn garbage_checkpoints_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut s = Sessionizer::new(Settings::default()).unwrap();
        let _ = s.restore(&bytes);
    }
}
