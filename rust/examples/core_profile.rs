//! Times `ingest` and `flush` on a synthetic stream, for profiling with perf (not a test).
use rumline_core::{prepare, Request, Sessionizer, Settings};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let t0: u64 = 1_764_126_000_000;
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let bodies: Vec<(u64, Vec<u8>)> = (0..n)
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| {
            let t = t0 + i as u64 * 10 + j * 1000;
            let body = format!(
                r#"{{"v":1,"app":"shop","sid":"sid-{i:08}","sent":{s},"page":{{"url":"https://shop.example.com/product/42"}},"events":[{{"type":"xhr","name":"GET /api/cart","url":"https://shop.example.com/api/cart","start":{t},"dur":120,"status":200}},{{"type":"custom","name":"click on 'Add'","start":{t},"dur":30}},{{"type":"vital","name":"INP","value":120,"start":{t}}},{{"type":"load","name":"loading of page /product","url":"https://shop.example.com/product/42","start":{t},"dur":1800}},{{"type":"error","kind":"js","message":"TypeError: x is undefined","stack":"at f (app.js:1:2)","start":{t}}}]}}"#,
                s = t + 10
            );
            (t, body.into_bytes())
        })
        .collect();
    let reqs: Vec<Request> = bodies.iter().map(|(t, b)| Request { recv_ms: *t, ip: "203.0.113.7", user_agent: ua, flags: 0, body: b }).collect();
    // the uap-core regexes compile once per process: keep that out of the numbers
    let _ = rumline_core::useragent::parse(ua);
    let started = Instant::now();
    let p = prepare(&reqs, 500, true);
    let tp = started.elapsed().as_secs_f64();
    let mut s = Sessionizer::new(Settings::default()).unwrap();
    let started = Instant::now();
    let out = s.ingest(&p.wal, t0 as i64);
    let ti = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let closed = s.flush(i64::MAX / 4).closed.len();
    let tf = started.elapsed().as_secs_f64();
    let ev = p.events as f64;
    println!("prepare {:.0} ev/s, ingest {:.0} ev/s, flush {closed} sessions {:.3} s, ingest+flush {:.0} ev/s ({} beacons)", ev / tp, ev / ti, tf, ev / (ti + tf), out.beacons);
}
