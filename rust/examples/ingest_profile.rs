//! The ingest path alone, for instruction counts (not a test). Reads a file of framed
//! version-1 records (the stream of `bench_core.py`), `prepare`s it in batches of 200 requests, then runs
//! one phase, each in its own function so callgrind can select it
//! (`--toggle-collect='*phase_*'`) or `perf stat` can count a whole run of it:
//!
//!     ingest_profile FILE prepare|decode|ingest|finalize [REPEAT]
//!
//! `decode` reads every version-2 record back (`wire::decode`) without applying it; `ingest`
//! applies the batches to a sessionizer with the default settings (30 min timeout: on this
//! stream nothing closes), so `ingest` − `decode` is the apply side; `finalize` does the same
//! ingest, then flushes far in the future until every session is closed (`phase_finalize`, as
//! `bench_core`'s "core flush finalizing every session").
use rumline_core::{prepare, record, wire, Request, Sessionizer, Settings};
use std::hint::black_box;
use std::time::Instant;

#[inline(never)]
fn phase_prepare(reqs: &[Request]) -> Vec<(Vec<u8>, i64)> {
    reqs.chunks(200).map(|c| (prepare(c, 500, true).wal, c.last().map_or(0, |r| r.recv_ms as i64))).collect()
}

#[inline(never)]
fn phase_decode(batches: &[(Vec<u8>, i64)]) -> usize {
    let mut events = 0;
    for (batch, _) in batches {
        for rec in record::records(batch) {
            let rec = rec.expect("intact records");
            let beacons = wire::decode(rec.payload).expect("valid version-2 payload");
            events += beacons.iter().map(|b| b.events.len()).sum::<usize>();
            black_box(beacons);
        }
    }
    events
}

#[inline(never)]
fn phase_ingest(batches: &[(Vec<u8>, i64)]) -> (Sessionizer, u64, usize) {
    let mut s = Sessionizer::new(Settings::from_json("{}").unwrap()).unwrap();
    let (mut events, mut closed) = (0, 0);
    for (batch, now) in batches {
        let out = s.ingest(batch, *now);
        events += out.events;
        closed += out.closed.len();
    }
    (s, events, closed)
}

#[inline(never)]
fn phase_finalize(s: &mut Sessionizer) -> usize {
    let mut closed = 0;
    loop {
        let out = s.flush(i64::MAX / 4);
        closed += out.closed.len();
        black_box(&out);
        if !out.more_due {
            return closed;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("readable WAL file");
    let phase = args.get(2).map_or("ingest", String::as_str);
    let repeat: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let reqs: Vec<Request> = record::records(&bytes)
        .map(|r| r.expect("intact v1 records"))
        .map(|r| Request { recv_ms: r.recv_ms, ip: r.ip, user_agent: r.user_agent, flags: r.flags, body: r.payload })
        .collect();
    // the uap-core regexes compile once per process (the first session finalized): keep that
    // out of the numbers
    let _ = rumline_core::useragent::parse("Mozilla/5.0");
    let mut batches = Vec::new();
    for _ in 0..if phase == "prepare" { repeat } else { 1 } {
        let started = Instant::now();
        batches = phase_prepare(&reqs);
        if phase == "prepare" {
            println!("prepare {} requests: {:.1} ms", reqs.len(), started.elapsed().as_secs_f64() * 1e3);
        }
    }
    for _ in 0..repeat {
        let started = Instant::now();
        match phase {
            "decode" => {
                let events = phase_decode(&batches);
                println!("decode {events} events: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
            }
            "ingest" => {
                let (s, events, closed) = phase_ingest(&batches);
                let took = started.elapsed().as_secs_f64();
                println!("ingest {events} events, {} open, {closed} closed: {:.1} ms", s.open_count(), took * 1e3);
                std::mem::forget(s); // dropping the open sessions is not ingest's cost
            }
            "finalize" => {
                let (mut s, _, _) = phase_ingest(&batches);
                let started = Instant::now();
                let closed = phase_finalize(&mut s);
                println!("finalize {closed} sessions: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
            }
            _ => {}
        }
    }
}
