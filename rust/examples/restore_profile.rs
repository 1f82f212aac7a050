//! Checkpoint and restore of many open sessions, for instruction counts and times (not a
//! test). Builds N open sessions of 10 actions (two beacons of 5, as `bench_store.py`'s growth
//! curve sends them: a load with timings, two resources and its LCP, XHRs with a traceparent,
//! clicks; 500 beacon templates), then runs each phase in its own function so callgrind can
//! select one (`--toggle-collect='*phase_restore*'`):
//!
//!     restore_profile [SESSIONS] [REPEAT]     (default 100000 sessions, 1 repeat)
//!     restore_profile --state FILE [REPEAT]   restore a checkpoint from a file only
//!
//! Only the public API of the core is used, so the same file builds in older revisions
//! (copy it into their `rust/examples/` to compare).
use rumline_core::{prepare, Request, Sessionizer, Settings};
use std::fmt::Write;
use std::time::Instant;

const T0: u64 = 1_764_126_000_000;
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const PAGES: [&str; 6] = ["/", "/cart", "/cart/checkout", "/product/42", "/search", "/account"];
const APIS: [(&str, &str); 5] = [("GET", "/api/cart"), ("POST", "/api/cart/items"), ("GET", "/api/search"), ("POST", "/checkout"), ("GET", "/api/user")];
const CLICKS: [&str; 4] = ["click on 'Add to cart'", "click on 'Pay'", "click on 'Search'", "click on 'Next'"];
const DURATIONS: [u64; 9] = [80, 150, 400, 900, 1800, 2900, 4200, 9000, 14000];

/// A small deterministic generator (xorshift): the same stream in every revision.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// A beacon of 5 actions with `@SID@` in place of the session id.
fn template(rng: &mut Rng) -> String {
    let mut events = Vec::new();
    let mut t = T0 - 200_000;
    for i in 0..5 {
        let dur = rng.pick(&DURATIONS);
        let mut e = String::new();
        if i % 4 == 0 {
            let page = rng.pick(&PAGES);
            write!(
                e,
                r#"{{"type":"load","name":"loading of page {page}","url":"https://shop.example.com{page}","start":{t},"dur":{dur},"timing":{{"ttfb":{},"fcp":{},"lcp":{},"dom_interactive":{},"load_end":{dur}}},"resources":[{{"url":"https://shop.example.com/static/app.js","initiator":"script","start":40,"dur":{},"status":200,"size":48213}},{{"url":"https://shop.example.com/api/cart","initiator":"fetch","start":120,"dur":300,"status":200,"size":1834}}]}},{{"type":"vital","name":"LCP","value":{},"start":{}}}"#,
                dur / 8, dur / 3, dur * 9 / 10, dur / 2, dur / 4, dur * 9 / 10, t + dur
            )
            .unwrap();
        } else if rng.next() % 10 < 6 {
            let (method, path) = rng.pick(&APIS);
            write!(
                e,
                r#"{{"type":"xhr","name":"{method} {path}","url":"https://shop.example.com{path}","method":"{method}","status":200,"start":{t},"dur":{},"traceparent":"00-{:016x}{:016x}-{:016x}-01"}}"#,
                dur / 4, rng.next() | 1, rng.next(), rng.next() | 1
            )
            .unwrap();
        } else {
            write!(e, r#"{{"type":"custom","name":"{}","start":{t},"dur":{}}}"#, rng.pick(&CLICKS), dur / 10).unwrap();
        }
        events.push(e);
        t += dur + 2000 + rng.next() % 28_000;
    }
    format!(
        r#"{{"v":1,"app":"shop","sid":"@SID@","vid":"visitor-@SID@","sent":{T0},"page":{{"url":"https://shop.example.com{}"}},"device":{{"screen":"1920x1080"}},"events":[{}]}}"#,
        rng.pick(&PAGES),
        events.join(",")
    )
}

/// Every session's two beacons, prepared (framed version-2 records) in batches of 2000.
fn stream(sessions: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let templates: Vec<String> = (0..500).map(|_| template(&mut rng)).collect();
    let bodies: Vec<Vec<u8>> = (0..2 * sessions)
        .map(|i| templates[(rng.next() % 500) as usize].replace("@SID@", &format!("s-{:010}-bench", i % sessions)).into_bytes())
        .collect();
    bodies
        .chunks(2000)
        .map(|chunk| {
            let reqs: Vec<Request> = chunk.iter().map(|b| Request { recv_ms: T0, ip: "203.0.113.7", user_agent: UA, flags: 0, body: b }).collect();
            let p = prepare(&reqs, 500, true);
            assert!(p.verdicts.iter().all(Option::is_none));
            p.wal
        })
        .collect()
}

#[inline(never)]
fn phase_checkpoint(core: &Sessionizer) -> Vec<u8> {
    core.checkpoint()
}

#[inline(never)]
fn phase_restore(state: &[u8]) -> Sessionizer {
    let mut core = Sessionizer::new(Settings::from_json("{}").unwrap()).unwrap();
    core.restore(state).expect("a checkpoint of this core");
    core
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--state") {
        // a checkpoint written elsewhere (e.g. by bench_store's growth curve), restored alone
        let state = std::fs::read(args.get(2).expect("--state FILE")).expect("readable checkpoint");
        let repeat: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
        for _ in 0..repeat {
            let started = Instant::now();
            let restored = phase_restore(&state);
            println!("{} sessions: restore {:.3} s", restored.open_count(), started.elapsed().as_secs_f64());
        }
        return;
    }
    let sessions: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let repeat: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let mut core = Sessionizer::new(Settings::from_json("{}").unwrap()).unwrap();
    for batch in stream(sessions) {
        core.ingest(&batch, T0 as i64);
    }
    assert_eq!(core.open_count(), sessions);
    for _ in 0..repeat {
        let started = Instant::now();
        let state = phase_checkpoint(&core);
        let checkpoint_s = started.elapsed().as_secs_f64();
        // as bench_store does: the core checkpointed is dropped, then a new one restores
        drop(core);
        let started = Instant::now();
        let restored = phase_restore(&state);
        let restore_s = started.elapsed().as_secs_f64();
        assert_eq!(restored.open_count(), sessions);
        println!("{sessions} sessions: checkpoint {:.1} MiB in {checkpoint_s:.3} s, restore {restore_s:.3} s", state.len() as f64 / f64::from(1 << 20));
        core = restored;
    }
}
