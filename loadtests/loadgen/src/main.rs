//! `loadgen`: an HTTP/1.1 keep-alive load generator that leaves the CPUs to the server.
//!
//!     loadgen --port 8080 --body beacon.json [--body-lines] [--path /beacon]
//!             [--connections 64] [--duration 10] [--rate 5000] [--header 'User-Agent: …']
//!
//! Each of N connections sends `POST <path>` (`Content-Type: text/plain`) and waits for the
//! whole response before the next one: a closed loop for `--duration` seconds, or with
//! `--rate` an open loop (requests/s over all connections, each on its own schedule; latency
//! counts from the scheduled send time, so a slow server is not hidden by a late client).
//! With `--body-lines` every line of the file is one body, sent in turn. One blocking thread
//! per connection: a few µs of CPU per request, where a Python client takes tens.
//!
//! Prints one JSON object: requests, per-status counts, errors (by kind), latency
//! p50/p95/p99/max in ms, elapsed seconds, and this process's own CPU time (user, system)
//! during the run.

mod response;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use response::read_response;

const USAGE: &str = "usage: loadgen --port PORT --body FILE [--body-lines] [--host 127.0.0.1] \
[--path /beacon] [--connections 64] [--duration 10] [--rate REQ_PER_S] [--timeout 10] \
[--header 'Name: value']...";

struct Options {
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    timeout: Duration,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut host = "127.0.0.1".to_owned();
    let mut port = None;
    let mut path = "/beacon".to_owned();
    let mut body_file = None;
    let mut body_lines = false;
    let mut headers = Vec::new();
    let mut connections = 64usize;
    let mut duration = 10.0f64;
    let mut rate = None;
    let mut timeout = 10.0f64;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg == "--body-lines" {
            body_lines = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let bad = format!("bad value for {arg}: {value:?}");
        match arg.as_str() {
            "--host" => host.clone_from(&value),
            "--port" => port = Some(value.parse::<u16>().map_err(|_| bad.clone())?),
            "--path" => path.clone_from(&value),
            "--body" => body_file = Some(value.clone()),
            "--header" => headers.push(value.clone()),
            "--connections" => connections = value.parse().map_err(|_| bad.clone())?,
            "--duration" => duration = value.parse().map_err(|_| bad.clone())?,
            "--rate" => rate = Some(value.parse::<f64>().map_err(|_| bad.clone())?),
            "--timeout" => timeout = value.parse().map_err(|_| bad.clone())?,
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    let port = port.ok_or("--port is required")?;
    let body_file = body_file.ok_or("--body is required")?;
    let content = std::fs::read(&body_file).map_err(|e| format!("{body_file}: {e}"))?;
    let bodies: Vec<&[u8]> = if body_lines {
        content
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .collect()
    } else {
        vec![&content]
    };
    if bodies.is_empty() {
        return Err(format!("{body_file}: no body"));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if connections == 0
        || !positive(duration)
        || !positive(timeout)
        || rate.is_some_and(|r| !positive(r))
    {
        return Err("--connections, --duration, --timeout and --rate must be positive".into());
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let requests = bodies
        .iter()
        .map(|body| {
            let mut head = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n",
                body.len()
            );
            for header in &headers {
                let _ = write!(head, "{header}\r\n");
            }
            head.push_str("\r\n");
            let mut request = head.into_bytes();
            request.extend_from_slice(body);
            request
        })
        .collect();
    Ok(Options {
        addr,
        requests,
        connections,
        duration: Duration::from_secs_f64(duration),
        rate,
        timeout: Duration::from_secs_f64(timeout),
    })
}

/// What one connection counted.
#[derive(Default)]
struct Stats {
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
}

impl Stats {
    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

fn connect(options: &Options) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&options.addr, options.timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(options.timeout))?;
    stream.set_write_timeout(Some(options.timeout))?;
    Ok(stream)
}

fn error_kind(error: &std::io::Error) -> String {
    format!("{:?}", error.kind())
}

/// One connection's loop: connect, wait for every other connection, then send and read until
/// the deadline (the response in flight at the deadline is still read).
fn run_connection(options: &Options, index: usize, start_line: &Barrier) -> Stats {
    let mut stats = Stats::default();
    let mut stream = match connect(options) {
        Ok(stream) => Some(stream),
        Err(e) => {
            stats.error(&format!("connect {}", error_kind(&e)));
            None
        }
    };
    start_line.wait();
    let start = Instant::now();
    let deadline = start + options.duration;
    // Open loop: this connection's share of the rate, its first send staggered by its index.
    let schedule = options.rate.map(|rate| {
        let interval = Duration::from_secs_f64(options.connections as f64 / rate);
        (
            start + Duration::from_secs_f64(index as f64 / rate),
            interval,
        )
    });
    let mut buf = Vec::with_capacity(8192);
    let mut k = 0usize;
    loop {
        let now = Instant::now();
        let sent_at = match schedule {
            Some((first, interval)) => {
                let at = first + interval * (k as u32);
                if at >= deadline {
                    break;
                }
                if at > now {
                    thread::sleep(at - now);
                }
                at
            }
            None if now >= deadline => break,
            None => now,
        };
        let request = &options.requests[(index + k) % options.requests.len()];
        k += 1;
        let conn = match stream.as_mut() {
            Some(conn) => conn,
            None => match connect(options) {
                Ok(conn) => stream.insert(conn),
                Err(e) => {
                    stats.error(&format!("connect {}", error_kind(&e)));
                    // Not a busy loop against a server that is not there.
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        buf.clear();
        let result = conn
            .write_all(request)
            .and_then(|()| read_response(conn, &mut buf));
        match result {
            Ok(response) => {
                let micros = sent_at.elapsed().as_micros();
                stats
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                *stats.statuses.entry(response.status).or_default() += 1;
                if response.close || !buf.is_empty() {
                    stream = None;
                }
            }
            Err(e) => {
                stats.error(&error_kind(&e));
                stream = None;
            }
        }
    }
    stats
}

/// User and system CPU seconds of this process so far, all threads (the counters getrusage
/// reads, from /proc: the workspace forbids the unsafe code a libc call needs).
fn cpu_seconds() -> (f64, f64) {
    // /proc reports them in USER_HZ, which is 100 on every Linux architecture's user ABI.
    const USER_HZ: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (f64::NAN, f64::NAN);
    };
    let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Fields 14 and 15 of stat (utime, stime); 11 and 12 after the state (field 3).
    (field(11) / USER_HZ, field(12) / USER_HZ)
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

fn report(options: &Options, mut stats: Stats, elapsed: f64, cpu: (f64, f64)) -> String {
    stats.latencies_us.sort_unstable();
    let requests: u64 = stats.statuses.values().sum();
    let errors: u64 = stats.errors.values().sum();
    let statuses = stats
        .statuses
        .iter()
        .map(|(status, n)| format!("\"{status}\": {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let error_kinds = stats
        .errors
        .iter()
        .map(|(kind, n)| format!("\"{}\": {n}", kind.replace(['"', '\\'], "")))
        .collect::<Vec<_>>()
        .join(", ");
    let lat = |p| percentile_ms(&stats.latencies_us, p);
    let max = stats
        .latencies_us
        .last()
        .map_or(0.0, |&us| f64::from(us) / 1000.0);
    let rate = options.rate.map_or("null".to_owned(), |r| format!("{r}"));
    format!(
        "{{\"requests\": {requests}, \"statuses\": {{{statuses}}}, \"errors\": {errors}, \
         \"error_kinds\": {{{error_kinds}}}, \"elapsed_s\": {elapsed:.3}, \
         \"requests_per_s\": {:.1}, \"latency_ms\": {{\"p50\": {:.3}, \"p95\": {:.3}, \
         \"p99\": {:.3}, \"max\": {max:.3}}}, \"connections\": {}, \"rate\": {rate}, \
         \"cpu_user_s\": {:.2}, \"cpu_system_s\": {:.2}, \"cpu_s\": {:.2}}}",
        requests as f64 / elapsed,
        lat(50.0),
        lat(95.0),
        lat(99.0),
        options.connections,
        cpu.0,
        cpu.1,
        cpu.0 + cpu.1,
    )
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => Arc::new(options),
        Err(message) => {
            eprintln!("loadgen: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start_line = Arc::new(Barrier::new(options.connections + 1));
    let mut threads = Vec::with_capacity(options.connections);
    for index in 0..options.connections {
        let (options, start_line) = (Arc::clone(&options), Arc::clone(&start_line));
        let spawned = thread::Builder::new()
            .name(format!("conn-{index}"))
            .stack_size(256 * 1024)
            .spawn(move || run_connection(&options, index, &start_line));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                eprintln!("loadgen: cannot start thread {index}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    start_line.wait();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut stats = Stats::default();
    for handle in threads {
        match handle.join() {
            Ok(one) => stats.merge(one),
            Err(_) => stats.error("thread panicked"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds();
    let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", report(&options, stats, elapsed, cpu)).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
