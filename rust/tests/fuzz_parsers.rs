//! Property fuzzing of every parser: no input may panic the core, and a rejected request
//! never reaches the WAL.
use proptest::prelude::*;
use rumline_core::record;
use rumline_core::{prepare, Request, Sessionizer, Settings};

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
        let _ = s.live();
        let state = s.checkpoint();
        let mut again = Sessionizer::new(Settings::default()).unwrap();
        again.restore(&state).unwrap();
        prop_assert_eq!(again.open_count(), s.open_count());
        let _ = s.flush(i64::MAX / 2);
    }

    #[test]
    fn garbage_checkpoints_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut s = Sessionizer::new(Settings::default()).unwrap();
        let _ = s.restore(&bytes);
    }
}
