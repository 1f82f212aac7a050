//! Times `prepare`, `ingest` and `flush` for profiling (not a test). Under callgrind, select a
//! phase with `--toggle-collect='*Sessionizer::ingest*'` (or `*prepare*`, `*Sessionizer::flush*`).
//!
//!     core_profile [SESSIONS]        a synthetic stream: 2 beacons of 5 events per session
//!     core_profile --wal FILE        the framed v1 records of FILE (e.g. bench_core's stream),
//!                                    in batches of 200 records ingested at their last recv_ms
//!     ... --settings JSON            sessionizer settings (default `{"timeout_ms": 300000}`)
use rumline_core::record;
use rumline_core::{prepare, Request, Sessionizer, Settings};
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
    let (mut events, mut closed) = (0, 0);
    let started = Instant::now();
    for (batch, now) in &batches {
        let out = s.ingest(batch, *now);
        events += out.events;
        closed += out.closed.len();
    }
    let ti = started.elapsed().as_secs_f64();
    let started = Instant::now();
    closed += s.flush(i64::MAX / 4).closed.len();
    let tf = started.elapsed().as_secs_f64();
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
