//! Open sessions keyed by (app, client sid) and the closing rules (docs §4–§5).
use crate::beacon::{self, Beacon, EventBody, Rejection};
use crate::error::CoreError;
use crate::privacy::{self, Scrubber};
use crate::record::{self, Record};
use crate::session::{Action, Closed, EndReason, ErrorRec, RageRec, Session, SessionMetrics, VitalRec};
use crate::settings::Settings;
use crate::useragent::{UaCache, UserAgent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What one `ingest` or `flush` call produced.
#[derive(Debug, Default)]
pub struct Output {
    pub closed: Vec<Closed>,
    /// (record index, beacon index, reason)
    pub rejected: Vec<(usize, usize, &'static str)>,
    pub beacons: u64,
    pub events: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub metrics: SessionMetrics,
}

/// The part counter a closed session leaves behind for its key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Tombstone {
    part: u32,
    last_recv: i64,
}

pub struct Sessionizer {
    settings: Settings,
    scrubber: Scrubber,
    open: HashMap<String, Session>,
    tombstones: HashMap<String, Tombstone>,
    ua_cache: UaCache,
}

#[derive(Serialize, Deserialize)]
struct State {
    version: u32,
    sessions: Vec<Session>,
    tombstones: Vec<(String, Tombstone)>,
}

const STATE_VERSION: u32 = 1;

fn key_of(app: &str, sid: &str) -> String {
    let mut k = String::with_capacity(app.len() + sid.len() + 1);
    k.push_str(app);
    k.push('\n');
    k.push_str(sid);
    k
}

/// Per-beacon context applied to every part the beacon touches.
struct BeaconCtx<'a> {
    recv: i64,
    dnt: bool,
    ip: Option<&'a str>,
    user_agent: &'a str,
    beacon: &'a Beacon,
}

impl Sessionizer {
    pub fn new(settings: Settings) -> Result<Sessionizer, CoreError> {
        settings.validate()?;
        let scrubber = Scrubber::new(settings.scrub_pii, &settings.scrub_patterns).map_err(CoreError::Settings)?;
        let ua_cache = UaCache::new(settings.ua_cache_size);
        Ok(Sessionizer { settings, scrubber, open: HashMap::new(), tombstones: HashMap::new(), ua_cache })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Applies a batch of framed records (docs §1), then closes what is due at `now`.
    pub fn ingest(&mut self, batch: &[u8], now: i64) -> Output {
        let mut out = Output::default();
        for (ri, rec) in record::records(batch).enumerate() {
            match rec {
                Ok(rec) => self.ingest_record(ri, &rec, &mut out),
                Err(()) => out.rejected.push((ri, 0, Rejection::BadRecord.code())),
            }
        }
        // then everything due at `now`, exactly as `flush(now)`
        let due = self.flush(now);
        out.closed.extend(due.closed);
        out.metrics.merge(due.metrics);
        out
    }

    fn ingest_record(&mut self, ri: usize, rec: &Record, out: &mut Output) {
        let envelopes = match beacon::envelopes(rec.payload, self.settings.max_events as usize) {
            Ok(e) => e,
            Err((bi, why)) => {
                out.rejected.push((ri, bi, why.code()));
                return;
            }
        };
        let beacons = envelopes.into_beacons(&self.scrubber);
        let ip = if self.settings.mask_ip { privacy::mask_ip(rec.ip) } else { Some(rec.ip.to_owned()).filter(|s| !s.is_empty()) };
        let recv = rec.recv_ms as i64;
        for b in &beacons {
            out.beacons += 1;
            out.events += b.events.len() as u64;
            for d in &b.dropped {
                *out.dropped.entry(d.code()).or_default() += 1;
            }
            let ctx = BeaconCtx { recv, dnt: rec.dnt(), ip: ip.as_deref(), user_agent: rec.user_agent, beacon: b };
            self.apply(&ctx, out);
        }
    }

    /// Opens the session for `key` at `recv` (the next part when a tombstone is recent).
    fn open_session(&mut self, key: &str, ctx: &BeaconCtx) {
        let b = ctx.beacon;
        let part = match self.tombstones.get(key) {
            Some(t) if ctx.recv - t.last_recv < self.settings.timeout_ms as i64 => t.part + 1,
            _ => 1,
        };
        let mut s = Session::new(&b.app, &b.sid, part, ctx.recv);
        apply_beacon_fields(&mut s, ctx);
        self.open.insert(key.to_owned(), s);
    }

    fn close(&mut self, key: &str, reason: EndReason, out: &mut Output) {
        let Some(s) = self.open.remove(key) else { return };
        self.tombstones.insert(key.to_owned(), Tombstone { part: s.part, last_recv: s.last_recv });
        let ua = self.user_agent_of(&s);
        out.closed.push(s.finalize(&self.settings, &ua, Some(reason), Some(&mut out.metrics)));
    }

    fn user_agent_of(&mut self, s: &Session) -> Arc<UserAgent> {
        self.ua_cache.get(s.user_agent.as_deref().unwrap_or(""))
    }

    fn apply(&mut self, ctx: &BeaconCtx, out: &mut Output) {
        let b = ctx.beacon;
        let key = key_of(&b.app, &b.sid);
        let timeout = self.settings.timeout_ms as i64;
        let max_duration = self.settings.max_duration_ms as i64;
        if let Some(s) = self.open.get(&key) {
            if ctx.recv - s.last_recv >= timeout {
                self.close(&key, EndReason::Timeout, out);
            } else if ctx.recv - s.first_recv >= max_duration {
                self.close(&key, EndReason::DurationLimit, out);
            }
        }
        if let Some(s) = self.open.get_mut(&key) {
            s.last_recv = s.last_recv.max(ctx.recv);
            apply_beacon_fields(s, ctx);
        } else {
            self.open_session(&key, ctx);
        }

        let offset = match b.sent {
            Some(sent) => ctx.recv as f64 - sent,
            None => b.events.iter().filter_map(|e| e.start).reduce(f64::max).map_or(0.0, |m| ctx.recv as f64 - m),
        };
        let lo = ctx.recv - max_duration;
        let time_of = |start: Option<f64>| -> i64 {
            match start {
                Some(s) => ((s + offset).floor() as i64).clamp(lo, ctx.recv),
                None => ctx.recv,
            }
        };
        let max_actions = self.settings.max_actions as usize;
        for ev in &b.events {
            if !self.open.contains_key(&key) {
                // a previous `end` closed this key: the following events open the next part
                self.open_session(&key, ctx);
            }
            let t = time_of(ev.start);
            if let EventBody::Action(_) = &ev.body {
                if self.open[&key].actions.len() >= max_actions {
                    self.close(&key, EndReason::ActionLimit, out);
                    self.open_session(&key, ctx);
                }
            }
            let s = self.open.get_mut(&key).expect("session is open");
            s.dirty = true;
            match &ev.body {
                EventBody::Action(a) => s.actions.push(Action { event: (**a).clone(), page: b.page_url.clone(), t }),
                EventBody::Error { kind, message, stack } => {
                    s.errors.push(ErrorRec { kind: *kind, message: message.clone(), stack: stack.clone(), t });
                }
                EventBody::Vital { name, value } => s.vitals.push(VitalRec { name: name.clone(), value: *value, t }),
                EventBody::RageClick { target, count } => s.rage.push(RageRec { target: target.clone(), count: *count, t }),
                EventBody::Identify(tag) => {
                    if !ctx.dnt {
                        s.identify(tag, ctx.recv);
                    }
                }
                EventBody::Property(k, v) => s.set_property(k.clone(), v.clone()),
                EventBody::End(reason) => {
                    s.end = Some((reason.clone(), t));
                    self.close(&key, EndReason::EndEvent, out);
                }
            }
        }
    }

    /// Closes every session that is due at `now`, sorted by session id; forgets old tombstones.
    pub fn flush(&mut self, now: i64) -> Output {
        let mut out = Output::default();
        let timeout = self.settings.timeout_ms as i64;
        let max_duration = self.settings.max_duration_ms as i64;
        let mut due: Vec<(String, String, EndReason)> = self
            .open
            .iter()
            .filter_map(|(k, s)| {
                let reason = if now - s.last_recv >= timeout {
                    EndReason::Timeout
                } else if now - s.first_recv >= max_duration {
                    EndReason::DurationLimit
                } else {
                    return None;
                };
                Some((s.id(), k.clone(), reason))
            })
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, key, reason) in due {
            self.close(&key, reason, &mut out);
        }
        self.tombstones.retain(|_, t| now - t.last_recv < timeout);
        out
    }

    /// Summaries and details of open sessions changed since the last call, sorted by id.
    pub fn live(&mut self) -> Vec<Closed> {
        let mut keys: Vec<String> = self.open.iter().filter(|(_, s)| s.dirty).map(|(k, _)| k.clone()).collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let ua = {
                let s = &self.open[&k];
                self.ua_cache.get(s.user_agent.as_deref().unwrap_or(""))
            };
            let s = self.open.get_mut(&k).expect("key listed above");
            s.dirty = false;
            out.push(s.finalize(&self.settings, &ua, None, None));
        }
        out
    }

    /// Serializes every open session and tombstone.
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut sessions: Vec<Session> = self.open.values().cloned().collect();
        sessions.sort_by(|a, b| (&a.app, &a.sid).cmp(&(&b.app, &b.sid)));
        let mut tombstones: Vec<(String, Tombstone)> = self.tombstones.iter().map(|(k, t)| (k.clone(), *t)).collect();
        tombstones.sort_by(|a, b| a.0.cmp(&b.0));
        serde_json::to_vec(&State { version: STATE_VERSION, sessions, tombstones }).expect("state serializes")
    }

    /// Replaces the state with a checkpoint; on error the current state is kept.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), CoreError> {
        let state: State = serde_json::from_slice(bytes).map_err(|e| CoreError::Checkpoint(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(CoreError::Checkpoint(format!("unknown version {}", state.version)));
        }
        self.open = state
            .sessions
            .into_iter()
            .map(|mut s| {
                s.dirty = true;
                (key_of(&s.app, &s.sid), s)
            })
            .collect();
        self.tombstones = state.tombstones.into_iter().collect();
        Ok(())
    }
}

fn apply_beacon_fields(s: &mut Session, ctx: &BeaconCtx) {
    let b = ctx.beacon;
    s.dirty = true;
    if let Some(user) = b.user.as_deref().filter(|_| !ctx.dnt) {
        s.identify(user, ctx.recv);
    }
    if let Some(vid) = &b.vid {
        s.visitor_id = Some(vid.clone());
    }
    if s.screen.is_none() {
        s.screen.clone_from(&b.screen);
    }
    if s.ip.is_none() {
        s.ip = ctx.ip.map(str::to_owned);
    }
    if s.user_agent.is_none() && !ctx.user_agent.is_empty() {
        s.user_agent = Some(ctx.user_agent.to_owned());
    }
    s.synthetic |= b.synthetic;
}

/// Validates requests for the WAL (docs §2): the framed records of the accepted ones, one
/// verdict per request, and the number of accepted events.
pub struct Prepared {
    pub wal: Vec<u8>,
    pub verdicts: Vec<Option<Rejection>>,
    pub events: u64,
}

pub struct Request<'a> {
    pub recv_ms: u64,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub flags: u8,
    pub body: &'a [u8],
}

pub fn prepare(requests: &[Request], max_events: usize, mask_ip: bool) -> Prepared {
    let mut p = Prepared { wal: Vec::new(), verdicts: Vec::with_capacity(requests.len()), events: 0 };
    for r in requests {
        match beacon::envelopes(r.body, max_events) {
            Ok(env) => {
                p.events += env.event_count() as u64;
                let ip = if mask_ip { privacy::mask_ip(r.ip).unwrap_or_default() } else { r.ip.to_owned() };
                record::encode(&mut p.wal, r.flags, r.recv_ms, &ip, r.user_agent, r.body);
                p.verdicts.push(None);
            }
            Err((_, why)) => p.verdicts.push(Some(why)),
        }
    }
    p
}
