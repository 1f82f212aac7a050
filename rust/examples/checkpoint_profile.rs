//! CPU time, page faults and bytes of `checkpoint` and `restore` (not a test), with open
//! sessions as `bench_store.py`'s growth curve makes them: one beacon of 5 actions each (a
//! load with five timings, two resources and its LCP; XHRs with a method and a traceparent;
//! clicks), 500 beacon templates, four user agents, 80 % identified. Each phase runs in its own
//! function so callgrind can select one (`--toggle-collect='*phase_checkpoint*'`):
//!
//!     checkpoint_profile [SESSIONS] [REPEAT] [--write FILE] [--no-restore]
//!     checkpoint_profile --state FILE [REPEAT]     restore (and checkpoint again) a file's state
//!
//! CPU time is this thread's (`/proc/thread-self/schedstat`), faults the process's minor page
//! faults (`/proc/self/stat`): the machine is shared, so wall time says little. Only the public
//! API of the core is used, so the same file builds in older revisions (copy it into their
//! `rust/examples/` to compare).
use rumline_core::{prepare, Request, Sessionizer, Settings};
use std::fmt::Write;

const T0: u64 = 1_764_126_000_000;
const UAS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
];
const PAGES: [&str; 9] = ["/", "/search?q=shoes", "/product/42", "/product/7", "/cart", "/cart/checkout", "/account", "/orders", "/help"];
const APIS: [(&str, &str); 6] = [
    ("GET", "/api/cart"),
    ("GET", "/api/recommendations"),
    ("POST", "/api/cart/items"),
    ("GET", "/api/search"),
    ("POST", "/checkout"),
    ("GET", "/api/orders"),
];
const CLICKS: [&str; 5] = ["click on 'Add to cart'", "click on 'Search'", "click on 'Place order'", "click on 'Next page'", "click on 'Apply coupon'"];
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

/// A beacon of 5 actions with `@SID@` in place of the session id and `@USER@` of the user.
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
            let status = if rng.next().is_multiple_of(20) { 500 } else { 200 };
            write!(
                e,
                r#"{{"type":"xhr","name":"{method} {path}","url":"https://shop.example.com{path}","method":"{method}","status":{status},"start":{t},"dur":{},"traceparent":"00-{:016x}{:016x}-{:016x}-01"}}"#,
                dur / 4, rng.next() | 1, rng.next(), rng.next() | 1
            )
            .unwrap();
            if status == 500 {
                write!(e, r#",{{"type":"error","kind":"request","message":"{method} {path} 500","start":{}}}"#, t + dur / 4).unwrap();
            }
        } else {
            write!(e, r#"{{"type":"custom","name":"{}","start":{t},"dur":{}}}"#, rng.pick(&CLICKS), dur / 10).unwrap();
        }
        events.push(e);
        t += dur + 2000 + rng.next() % 28_000;
    }
    if rng.next() % 10 < 3 {
        events.push(format!(r#"{{"type":"property","key":"plan","value":"{}"}}"#, rng.pick(&["gold", "free"])));
    }
    let user = if rng.next() % 10 < 8 { r#""user":"user@USER@@example.com","# } else { "" };
    format!(
        r#"{{"v":1,"app":"shop","sid":"@SID@","vid":"visitor-@USER@",{user}"sent":{T0},"page":{{"url":"https://shop.example.com{}"}},"device":{{"screen":"{}"}},"events":[{}]}}"#,
        rng.pick(&PAGES),
        rng.pick(&["1920x1080", "390x844", "1440x900"]),
        events.join(",")
    )
}

/// Every session's beacon, prepared (framed version-2 records) in batches of 2000.
fn stream(sessions: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let templates: Vec<(String, &str)> = (0..500).map(|_| (template(&mut rng), rng.pick(&UAS))).collect();
    let mut batches = Vec::new();
    for start in (0..sessions).step_by(2000) {
        let bodies: Vec<(Vec<u8>, &str)> = (start..sessions.min(start + 2000))
            .map(|i| {
                let (body, ua) = &templates[(rng.next() % 500) as usize];
                let body = body.replace("@SID@", &format!("s-{i:010}-bench")).replace("@USER@", &(i % 160_000).to_string());
                (body.into_bytes(), *ua)
            })
            .collect();
        let reqs: Vec<Request> = bodies.iter().map(|(b, ua)| Request { recv_ms: T0, ip: "203.0.113.7", user_agent: ua, flags: 0, body: b }).collect();
        let p = prepare(&reqs, 500, true);
        assert!(p.verdicts.iter().all(Option::is_none));
        batches.push(p.wal);
    }
    batches
}

/// This thread's CPU time in seconds.
fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).expect("run time") as f64 / 1e9
}

/// The process's minor page faults so far.
fn faults() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let after_name = &s[s.rfind(')').expect("comm") + 2..];
    after_name.split_whitespace().nth(7).and_then(|n| n.parse().ok()).expect("minflt")
}

/// CPU seconds and page faults of `f`.
fn measure<R>(f: impl FnOnce() -> R) -> (R, f64, u64) {
    let (c, p) = (cpu_s(), faults());
    let r = f();
    (r, cpu_s() - c, faults() - p)
}

#[inline(never)]
fn phase_checkpoint(core: &Sessionizer) -> Vec<u8> {
    core.checkpoint()
}

#[inline(never)]
fn phase_restore(state: &[u8]) -> Sessionizer {
    let mut core = Sessionizer::new(Settings::from_json(r#"{"max_open_sessions": 4000000}"#).unwrap()).unwrap();
    core.restore(state).expect("a checkpoint of this core");
    core
}

fn report(core: &Sessionizer, repeat: usize, write: Option<&str>) {
    let n = core.open_count();
    for _ in 0..repeat {
        let (state, c_s, c_f) = measure(|| phase_checkpoint(core));
        if let Some(path) = write {
            std::fs::write(path, &state).expect("writable");
        }
        if std::env::args().any(|a| a == "--no-restore") {
            println!("{n} sessions: checkpoint {:.1} MiB in {:.0} ms CPU, {c_f} faults", state.len() as f64 / f64::from(1 << 20), c_s * 1e3);
            continue;
        }
        let (restored, r_s, r_f) = measure(|| phase_restore(&state));
        assert_eq!(restored.open_count(), n);
        println!(
            "{n} sessions: checkpoint {:.1} MiB ({:.0} B/session) in {:.0} ms CPU, {c_f} faults; restore {:.0} ms CPU, {r_f} faults",
            state.len() as f64 / f64::from(1 << 20),
            state.len() as f64 / n as f64,
            c_s * 1e3,
            r_s * 1e3
        );
        // drop the restored core outside the measurements
        drop(restored);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--state") {
        let state = std::fs::read(args.get(2).expect("--state FILE")).expect("readable checkpoint");
        let repeat: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
        let (core, r_s, r_f) = measure(|| phase_restore(&state));
        println!("{} sessions: restore of {} bytes {:.0} ms CPU, {r_f} faults", core.open_count(), state.len(), r_s * 1e3);
        report(&core, repeat, None);
        return;
    }
    let sessions: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let repeat: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let write = args.iter().position(|a| a == "--write").and_then(|i| args.get(i + 1)).map(String::as_str);
    let mut core = Sessionizer::new(Settings::from_json(r#"{"max_open_sessions": 4000000}"#).unwrap()).unwrap();
    for batch in stream(sessions) {
        core.ingest(&batch, T0 as i64);
    }
    assert_eq!(core.open_count(), sessions);
    report(&core, repeat, write);
}
