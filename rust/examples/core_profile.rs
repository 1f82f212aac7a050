//! Times `prepare`, `ingest` and `flush` for profiling (not a test). Under callgrind, select a
//! phase with `--toggle-collect='*phase_bench*'` (every ingest and the final flush, as
//! `bench_core`) or `*prepare*`.
//!
//!     core_profile [SESSIONS]        a synthetic stream: 2 beacons of 5 events per session
//!     core_profile --wal FILE        the framed v1 records of FILE (e.g. bench_core's stream),
//!                                    in batches of 200 records ingested at their last recv_ms
//!     ... --settings JSON            sessionizer settings (default `{"timeout_ms": 300000}`)
//!     ... --digest                   also print a SHA-256 of everything the sessions closed
//!                                    (ids, summaries, details, metrics), to compare builds
use rumline_core::record;
use rumline_core::{prepare, Output, Request, Sessionizer, Settings};
use sha2::{Digest, Sha256};
use std::time::Instant;

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

fn synthetic(n: usize) -> Vec<(u64, String, String, Vec<u8>)> {
    let t0: u64 = 1_764_126_000_000;
    (0..n)
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| {
            let t = t0 + i as u64 * 10 + j * 1000;
            let body = format!(
                r#"{{"v":1,"app":"shop","sid":"sid-{i:08}","sent":{s},"page":{{"url":"https://shop.example.com/product/42"}},"events":[{{"type":"xhr","name":"GET /api/cart","url":"https://shop.example.com/api/cart","start":{t},"dur":120,"status":200}},{{"type":"custom","name":"click on 'Add'","start":{t},"dur":30}},{{"type":"vital","name":"INP","value":120,"start":{t}}},{{"type":"load","name":"loading of page /product","url":"https://shop.example.com/product/42","start":{t},"dur":1800}},{{"type":"error","kind":"js","message":"TypeError: x is undefined","stack":"at f (app.js:1:2)","start":{t}}}]}}"#,
                s = t + 10
            );
            (t, "203.0.113.7".to_owned(), UA.to_owned(), body.into_bytes())
        })
        .collect()
}

fn from_wal(path: &str) -> Vec<(u64, String, String, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("readable WAL file");
    record::records(&bytes)
        .map(|r| r.expect("intact v1 records"))
        .map(|r| (r.recv_ms, r.ip.to_owned(), r.user_agent.to_owned(), r.payload.to_vec()))
        .collect()
}

/// What `bench_core` times: every batch's ingest (and the flushes its `more_due` asks for), then
/// the final flush. One function, so callgrind can select it (`--toggle-collect='*phase_bench*'`;
/// toggling on `ingest` and `flush` would not do: `ingest` calls `flush`, which toggles off).
#[inline(never)]
fn phase_bench(s: &mut Sessionizer, batches: &[(Vec<u8>, i64)], mut digest: Option<&mut Sha256>) -> (u64, usize, f64, f64) {
    let (mut events, mut closed) = (0, 0);
    let mut seen = |out: &Output| {
        if let Some(h) = digest.as_deref_mut() {
            for c in &out.closed {
                h.update(format!("{}|{:?}|{:?}|{}|{}|{:?}\n", c.session_id, c.app, c.user_tag, c.start_ms, c.end_ms, c.end_reason));
                h.update(&c.summary);
                h.update(&c.detail);
            }
            h.update(format!("{:?} {:?} {:?} {:?}\n", out.metrics.actions, out.metrics.errors, out.metrics.vitals, out.dropped));
        }
        out.closed.len()
    };
    let started = Instant::now();
    for (batch, now) in batches {
        let mut out = s.ingest(batch, *now);
        events += out.events;
        closed += seen(&out);
        while out.more_due {
            out = s.flush(*now);
            closed += seen(&out);
        }
    }
    let ti = started.elapsed().as_secs_f64();
    let started = Instant::now();
    loop {
        let out = s.flush(i64::MAX / 4);
        closed += seen(&out);
        if !out.more_due {
            break;
        }
    }
    (events, closed, ti, started.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests = if args.get(1).map(String::as_str) == Some("--wal") {
        from_wal(args.get(2).expect("--wal FILE"))
    } else {
        synthetic(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000))
    };
    let reqs: Vec<Request> = requests
        .iter()
        .map(|(t, ip, ua, b)| Request { recv_ms: *t, ip, user_agent: ua, flags: 0, body: b })
        .collect();
    // the uap-core regexes compile once per process: keep that out of the numbers
    let _ = rumline_core::useragent::parse(UA);

    let started = Instant::now();
    let batches: Vec<(Vec<u8>, i64)> =
        reqs.chunks(200).map(|c| (prepare(c, 500, true).wal, c.last().map_or(0, |r| r.recv_ms as i64))).collect();
    let tp = started.elapsed().as_secs_f64();
    let settings = args.iter().position(|a| a == "--settings").and_then(|i| args.get(i + 1));
    let settings = Settings::from_json(settings.map_or(r#"{"timeout_ms": 300000}"#, String::as_str)).unwrap();
    let mut s = Sessionizer::new(settings).unwrap();
    let mut digest = args.iter().any(|a| a == "--digest").then(Sha256::new);
    let (events, closed, ti, tf) = phase_bench(&mut s, &batches, digest.as_mut());
    if let Some(h) = digest {
        let hex: Vec<String> = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        println!("digest {}", hex.concat());
    }
    let ev = events as f64;
    println!(
        "{} requests, {events} events, {closed} sessions closed: prepare {:.0} ms, ingest {:.0} ms, final flush {:.0} ms, ingest+flush {:.0} ev/s",
        reqs.len(),
        tp * 1e3,
        ti * 1e3,
        tf * 1e3,
        ev / (ti + tf)
    );
}
