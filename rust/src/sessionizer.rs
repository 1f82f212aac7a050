//! Open sessions keyed by (app, client sid) and the closing rules (docs §4–§5).
use crate::beacon::{self, limits, Rejection};
use crate::checkpoint;
use crate::error::CoreError;
use crate::intern::HashState;
use crate::privacy::{self, Scrubber};
use crate::record::{self, Record};
use crate::session::{session_id_text, ActionIn, Closed, EndReason, ErrorRec, RageRec, MetricCounts, ResourceIn, Scratch, Session, SessionMetrics, Shared, DIRTY_ALL, DIRTY_NEW, DIRTY_SUMMARY, NOT_QUEUED};
use crate::settings::Settings;
use crate::useragent::UaCache;
use crate::wire::{self, ParsedBeacon, ParsedBody, ParsedEvent};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Reverse;
use hashbrown::HashTable;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::BuildHasher;

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
    /// More sessions were due than `max_closed_per_call`: call `flush` again (same `now`).
    pub more_due: bool,
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
    open: OpenSessions,
    /// keyed like the open sessions (see [`OpenSessions`])
    tombstones: HashMap<String, Tombstone, HashState>,
    /// The key of the beacon being applied, reused (no allocation per beacon).
    key_buf: String,
    ua_cache: UaCache,
    /// Text that repeats across open sessions, stored once.
    shared: Shared,
    /// Open sessions by the time they can be due, earliest first, so that `flush` (after every
    /// `ingest`) looks only at those instead of scanning every open session. Lazy: an entry's
    /// time is at most its session's deadline (a deadline only moves later), and entries of
    /// closed sessions stay until they come up (see `flush`).
    due: BinaryHeap<Reverse<(i64, String)>>,
    /// Tombstones by their `last_recv`, earliest first, for the same reason (lazy too).
    expiring: BinaryHeap<Reverse<(i64, String)>>,
    /// What finalizing a session reuses from one session to the next.
    scratch: Scratch,
    /// The metrics of the sessions closed in this call, until they go into its `Output`.
    counts: MetricCounts,
}

#[derive(Deserialize)]
struct State {
    sessions: Vec<Session>,
    tombstones: Vec<(String, Tombstone)>,
}

#[cfg(test)]
#[derive(Serialize)]
struct StateRef<'a> {
    sessions: Vec<&'a Session>,
    tombstones: Vec<(&'a str, Tombstone)>,
}

/// A version-2 checkpoint starts with this (postcard, positional; version 3 is in
/// `checkpoint.rs`): the format and its version, so a checkpoint of another version is refused
/// instead of misread.
const STATE_MAGIC: &[u8; 8] = b"RLCKPT02";

fn key_of(app: &str, sid: &str) -> String {
    let mut k = String::with_capacity(app.len() + sid.len() + 1);
    k.push_str(app);
    k.push('\n');
    k.push_str(sid);
    k
}

/// Per-beacon context applied to every part the beacon touches: the record's fields and the
/// beacon's, borrowed from the record.
struct BeaconCtx<'a> {
    recv: i64,
    dnt: bool,
    /// the record's IP as stored (masked again when a session takes it, see [`BeaconCtx::ip`])
    ip: &'a str,
    mask_ip: bool,
    user_agent: &'a str,
    app: &'a str,
    sid: &'a str,
    vid: Option<&'a str>,
    sent: Option<f64>,
    user: Option<&'a str>,
    /// scrubbed and truncated
    page_url: Option<&'a str>,
    screen: Option<&'a str>,
    synthetic: bool,
}

impl BeaconCtx<'_> {
    /// The IP a session keeps: computed only when a session takes it (its first beacon).
    fn ip(&self) -> Option<String> {
        if self.mask_ip {
            privacy::mask_ip(self.ip)
        } else {
            Some(self.ip.to_owned()).filter(|s| !s.is_empty())
        }
    }
}

/// Scrubbed, then truncated (docs §9: text is scrubbed before it is truncated); borrowed from
/// the record when neither changed it.
fn clean<'a>(s: &'a str, max: usize, scrub: &Scrubber) -> Cow<'a, str> {
    beacon::truncate_cow(scrub.scrub(s), max)
}

impl Sessionizer {
    pub fn new(settings: Settings) -> Result<Sessionizer, CoreError> {
        settings.validate()?;
        let scrubber = Scrubber::new(settings.scrub_pii, &settings.scrub_patterns).map_err(CoreError::Settings)?;
        let ua_cache = UaCache::new(settings.ua_cache_size);
        Ok(Sessionizer {
            settings,
            scrubber,
            open: OpenSessions::default(),
            tombstones: HashMap::default(),
            key_buf: String::new(),
            ua_cache,
            shared: Shared::default(),
            due: BinaryHeap::new(),
            expiring: BinaryHeap::new(),
            scratch: Scratch::default(),
            counts: MetricCounts::default(),
        })
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
        // then everything due at `now`, exactly as `flush(now)`; its metrics count the sessions
        // the beacons closed too (`self.counts` holds them until then)
        let due = self.flush(now);
        out.closed.extend(due.closed);
        out.metrics = due.metrics;
        out.more_due = due.more_due;
        out
    }

    fn ingest_record(&mut self, ri: usize, rec: &Record, out: &mut Output) {
        let max_events = self.settings.max_events as usize;
        if rec.version == record::PARSED {
            let Some(beacons) = wire::decode(rec.payload) else {
                out.rejected.push((ri, 0, Rejection::BadRecord.code()));
                return;
            };
            // `prepare` checked the front's limit; the sessionizer's own applies, as for JSON
            let mut total = 0;
            for (bi, b) in beacons.iter().enumerate() {
                total += b.events.len() + (b.bad_events + b.unknown_events) as usize;
                if total > max_events {
                    out.rejected.push((ri, bi, Rejection::TooManyEvents.code()));
                    return;
                }
            }
            self.apply_beacons(rec, beacons, out);
        } else {
            match beacon::envelopes(rec.payload, max_events) {
                Ok(e) => self.apply_beacons(rec, e.into_parsed(), out),
                Err((bi, why)) => out.rejected.push((ri, bi, why.code())),
            }
        }
    }

    fn apply_beacons<S: AsRef<str>>(&mut self, rec: &Record, beacons: Vec<ParsedBeacon<S>>, out: &mut Output) {
        let recv = rec.recv_ms as i64;
        for b in &beacons {
            for (why, n) in b.dropped() {
                if n > 0 {
                    *out.dropped.entry(why.code()).or_default() += u64::from(n);
                }
            }
            let scrub = &self.scrubber;
            let page_url = b.page_url.as_ref().map(|u| self.shared.page_as_sent(u.as_ref(), |u| clean(u, limits::URL, scrub)));
            out.beacons += 1;
            out.events += b.events.len() as u64;
            let ctx = BeaconCtx {
                recv,
                dnt: rec.dnt(),
                ip: rec.ip,
                mask_ip: self.settings.mask_ip,
                user_agent: rec.user_agent,
                app: b.app.as_ref(),
                sid: b.sid.as_ref(),
                vid: b.vid.as_ref().map(AsRef::as_ref),
                sent: b.sent,
                user: b.user.as_ref().map(AsRef::as_ref),
                page_url: page_url.as_deref(),
                screen: b.screen.as_ref().map(AsRef::as_ref),
                synthetic: b.synthetic,
            };
            self.apply(&ctx, &b.events, out);
        }
    }

    /// A new session for `key` at `recv` (the next part when a tombstone is recent).
    fn new_session(&mut self, key: &str, ctx: &BeaconCtx) -> Box<Session> {
        let part = match self.tombstones.get(key) {
            Some(t) if ctx.recv - t.last_recv < self.settings.timeout_ms as i64 => t.part + 1,
            _ => 1,
        };
        let mut s = Box::new(Session::new(ctx.app, ctx.sid, part, ctx.recv));
        apply_beacon_fields(&mut s, ctx, &mut self.shared);
        s
    }

    /// Closes a session taken out of the open map: leaves its tombstone, emits it. `id` is the
    /// session's id when the caller has it already.
    fn finish(&mut self, key: &str, s: Box<Session>, id: Option<String>, reason: EndReason, out: &mut Output) {
        if let Some(t) = self.tombstones.get_mut(key) {
            *t = Tombstone { part: s.part, last_recv: s.last_recv };
        } else {
            self.tombstones.insert(key.to_owned(), Tombstone { part: s.part, last_recv: s.last_recv });
            self.enforce_tombstone_limit();
        }
        self.expiring.push(Reverse((s.last_recv, key.to_owned())));
        self.emit(s, id, reason, out);
    }

    /// Finalizes a closed session into `out`.
    fn emit(&mut self, s: Box<Session>, id: Option<String>, reason: EndReason, out: &mut Output) {
        let ua = self.ua_cache.get(s.user_agent.as_deref().unwrap_or(""));
        let id = id.unwrap_or_else(|| s.id());
        out.closed.push(s.finalize(id, &self.settings, &ua, Some(reason), Some(&mut self.counts), true, &mut self.scratch));
    }

    /// Applies one beacon. The session is taken out of the map for the beacon's events (one
    /// lookup in, one out) and put back when it is still open.
    fn apply<S: AsRef<str>>(&mut self, ctx: &BeaconCtx, events: &[ParsedEvent<S>], out: &mut Output) {
        let mut key = std::mem::take(&mut self.key_buf);
        key.clear();
        key.push_str(ctx.app);
        key.push('\n');
        key.push_str(ctx.sid);
        let timeout = self.settings.timeout_ms as i64;
        let max_duration = self.settings.max_duration_ms as i64;
        let (hash, found) = self.open.take(&key);
        let (key, mut current) = match found {
            Some((owned, s)) => {
                self.key_buf = key; // kept for the next beacon
                if ctx.recv - s.last_recv >= timeout {
                    self.finish(&owned, s, None, EndReason::Timeout, out);
                    (owned, None)
                } else if ctx.recv - s.first_recv >= max_duration {
                    self.finish(&owned, s, None, EndReason::DurationLimit, out);
                    (owned, None)
                } else {
                    let mut s = s;
                    s.last_recv = s.last_recv.max(ctx.recv);
                    apply_beacon_fields(&mut s, ctx, &mut self.shared);
                    (owned, Some(s))
                }
            }
            None => (key, None),
        };
        if current.is_none() {
            current = Some(self.new_session(&key, ctx));
        }

        let offset = match ctx.sent {
            Some(sent) => ctx.recv as f64 - sent,
            None => events.iter().filter_map(|e| e.start).reduce(f64::max).map_or(0.0, |m| ctx.recv as f64 - m),
        };
        let lo = ctx.recv - max_duration;
        let time_of = |start: Option<f64>| -> i64 {
            match start {
                Some(s) => ((s + offset).floor() as i64).clamp(lo, ctx.recv),
                None => ctx.recv,
            }
        };
        let max_actions = self.settings.max_actions as usize;
        if let Some(s) = &mut current {
            let actions = events.iter().filter(|e| matches!(e.body, ParsedBody::Action { .. })).count();
            s.reserve_actions(actions.min(max_actions.saturating_sub(s.actions.len())));
        }
        for ev in events {
            let t = time_of(ev.start);
            // a previous `end` closed this key: the following events open the next part
            let mut s = match current.take() {
                Some(s) => s,
                None => self.new_session(&key, ctx),
            };
            if matches!(ev.body, ParsedBody::Action { .. }) && s.actions.len() >= max_actions {
                self.finish(&key, s, None, EndReason::ActionLimit, out);
                s = self.new_session(&key, ctx);
            }
            s.dirty |= DIRTY_ALL;
            match &ev.body {
                ParsedBody::Action { kind, name, url, method, dur, status, traceparent, timings, resources } => {
                    let scrub = &self.scrubber;
                    let key = self.shared.action_key_as_sent(
                        *kind,
                        name.as_ref().map(AsRef::as_ref),
                        url.as_ref().map(AsRef::as_ref),
                        method.as_ref().map(AsRef::as_ref),
                        |text| clean(text, limits::URL, scrub),
                    );
                    let resources: Vec<ResourceIn> = resources
                        .iter()
                        .map(|r| ResourceIn {
                            url: r.url.as_ref().map(|u| clean(u.as_ref(), limits::URL, scrub)),
                            initiator: r.initiator.as_ref().map(AsRef::as_ref),
                            start: r.start,
                            dur: r.dur,
                            status: r.status,
                            size: r.size,
                        })
                        .collect();
                    let action = ActionIn {
                        kind: *kind,
                        key,
                        dur: *dur,
                        status: *status,
                        traceparent: traceparent.as_ref().map(AsRef::as_ref),
                        timings,
                        resources: &resources,
                    };
                    s.push_action(&action, ctx.page_url, t, &mut self.shared);
                }
                ParsedBody::Error { kind, message, stack } => s.errors.push(ErrorRec {
                    kind: *kind,
                    message: message.as_ref().map(|m| clean(m.as_ref(), limits::MESSAGE, &self.scrubber).into_owned()),
                    stack: stack.as_ref().map(|m| m.as_ref().to_owned()),
                    t,
                }),
                ParsedBody::Vital { name, value } => s.push_vital(name.as_ref(), *value, t, &mut self.shared),
                ParsedBody::RageClick { target, count } => {
                    s.rage.push(RageRec { target: target.as_ref().map(|m| m.as_ref().to_owned()), count: *count, t });
                }
                ParsedBody::Identify(tag) => {
                    if !ctx.dnt {
                        s.identify(tag.as_ref(), ctx.recv);
                    }
                }
                ParsedBody::Property(k, v) => s.set_property(k.as_ref(), v.as_ref()),
                ParsedBody::End(reason) => {
                    s.end = Some((reason.as_ref().map(|r| r.as_ref().to_owned()), t));
                    self.finish(&key, s, None, EndReason::EndEvent, out);
                    continue;
                }
            }
            current = Some(s);
        }
        if let Some(mut s) = current {
            if s.queued == NOT_QUEUED {
                s.queued = deadline(&self.settings, &s);
                self.due.push(Reverse((s.queued, key.clone())));
            }
            self.open.put(hash, key, s);
        }
        self.enforce_open_limit(out);
        self.compact_queues();
    }

    /// The queues are lazy: an entry of a session closed early (by the open cap, an end event,
    /// the action limit) or of a forgotten tombstone stays until its time comes. A flood of
    /// new ids, each closed by the open cap long before its timeout, would grow them without
    /// bound; so each is rebuilt from what it tracks once it holds twice as many entries.
    fn compact_queues(&mut self) {
        if self.due.len() > 2 * self.open.len() + 1024 {
            self.due = self
                .open
                .iter()
                .filter(|(_, s)| s.queued != NOT_QUEUED)
                .map(|(k, s)| Reverse((s.queued, k.clone())))
                .collect();
        }
        if self.expiring.len() > 2 * self.tombstones.len() + 1024 {
            self.expiring = self.tombstones.iter().map(|(k, t)| Reverse((t.last_recv, k.clone()))).collect();
        }
    }

    /// Over `max_open_sessions`, closes the least recently active 1 % (at least one), ordered
    /// by `(last_recv, session_id)`: memory stays bounded under a flood of new session ids.
    fn enforce_open_limit(&mut self, out: &mut Output) {
        let cap = usize::try_from(self.settings.max_open_sessions).unwrap_or(usize::MAX);
        if self.open.len() <= cap {
            return;
        }
        let k = (cap / 100).max(1);
        let mut recv: Vec<i64> = self.open.values().map(|s| s.last_recv).collect();
        let (_, &mut boundary, _) = recv.select_nth_unstable(k - 1);
        let mut oldest: Vec<(i64, String, String)> = self
            .open
            .iter()
            .filter(|(_, s)| s.last_recv <= boundary)
            .map(|(key, s)| (s.last_recv, s.id(), key.clone()))
            .collect();
        oldest.sort_unstable();
        for (_, id, key) in oldest.into_iter().take(k) {
            let s = self.open.remove(&key).expect("listed above");
            self.finish(&key, s, Some(id), EndReason::OpenLimit, out);
        }
    }

    /// Bounds the tombstones as the open sessions are bounded (docs §5): a flood of new ids
    /// closes sessions faster than `flush` forgets their tombstones. Over `max_open_sessions`,
    /// every tombstone as old as the k-th oldest (k = 1 %, at least one) is forgotten; its key
    /// would open part 1 again (session ids still differ: they include `first_recv`).
    fn enforce_tombstone_limit(&mut self) {
        let cap = usize::try_from(self.settings.max_open_sessions).unwrap_or(usize::MAX);
        if self.tombstones.len() <= cap {
            return;
        }
        let k = (cap / 100).max(1);
        let mut recv: Vec<i64> = self.tombstones.values().map(|t| t.last_recv).collect();
        let (_, &mut boundary, _) = recv.select_nth_unstable(k - 1);
        self.tombstones.retain(|_, t| t.last_recv > boundary);
    }

    /// Closes the sessions that are due at `now`, sorted by session id: the earliest due
    /// first, at most `max_closed_per_call` (then `more_due` is set); forgets old tombstones.
    pub fn flush(&mut self, now: i64) -> Output {
        let mut out = Output::default();
        let timeout = self.settings.timeout_ms as i64;
        let max_duration = self.settings.max_duration_ms as i64;
        // (session id as its digest, key, reason): the digests sort as the ids do
        let mut due: Vec<(u128, String, EndReason)> = Vec::new();
        while self.due.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            if due.len() == self.settings.max_closed_per_call {
                out.more_due = true;
                break;
            }
            let Some(Reverse((t, key))) = self.due.pop() else { break };
            // an entry of a session closed since, or an older one of a session queued again
            let Some(s) = self.open.get_mut(&key).filter(|s| s.queued == t) else { continue };
            let reason = if now - s.last_recv >= timeout {
                EndReason::Timeout
            } else if now - s.first_recv >= max_duration {
                EndReason::DurationLimit
            } else {
                // it had beacons since it was queued: queue it at its deadline now
                s.queued = deadline(&self.settings, s);
                self.due.push(Reverse((s.queued, key)));
                continue;
            };
            s.queued = NOT_QUEUED; // listed once, whatever other entries it has
            due.push((s.id_digest(), key, reason));
        }
        due.sort_unstable_by_key(|d| d.0); // ids are distinct
        // A session closed for its timeout has `now - last_recv >= timeout`: the tombstone it
        // leaves is dropped again by the loop below, in this same call. So it leaves none and
        // drops the one its key had (what that loop would leave), unless inserting them could
        // pass the tombstone limit, which would drop other tombstones on the way.
        let cap = usize::try_from(self.settings.max_open_sessions).unwrap_or(usize::MAX);
        let no_tombstone = self.tombstones.len().saturating_add(due.len()) <= cap;
        for (digest, key, reason) in due {
            let id = session_id_text(digest);
            let s = self.open.remove(&key).expect("due keys are open");
            if no_tombstone && reason == EndReason::Timeout {
                self.tombstones.remove(&key);
                self.emit(s, Some(id), reason, &mut out);
            } else {
                self.finish(&key, s, Some(id), reason, &mut out);
            }
        }
        while self.expiring.peek().is_some_and(|Reverse((t, _))| now - *t >= timeout) {
            let Some(Reverse((t, key))) = self.expiring.pop() else { break };
            if self.tombstones.get(&key).is_some_and(|tomb| tomb.last_recv == t) {
                self.tombstones.remove(&key);
            }
        }
        self.counts.drain_into(&mut out.metrics);
        out
    }

    /// Summaries of open sessions changed since the last call, sorted by id; with
    /// `with_details`, also their details, and those of sessions whose detail changed since
    /// the last call with details (the others get an empty detail, except new sessions:
    /// their first summary comes with its detail). A timeline can be ten
    /// times the size of its summary and grows with every action, so the caller may publish
    /// details less often than summaries.
    pub fn live(&mut self, with_details: bool) -> Vec<Closed> {
        let wanted = if with_details { DIRTY_ALL } else { DIRTY_SUMMARY };
        let mut keys: Vec<String> = self.open.iter().filter(|(_, s)| s.dirty & wanted != 0).map(|(k, _)| k.clone()).collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let ua = {
                let s = self.open.get_mut(&k).expect("key listed above");
                self.ua_cache.get(s.user_agent.as_deref().unwrap_or(""))
            };
            let s = self.open.get_mut(&k).expect("key listed above");
            let detail = with_details || s.dirty & DIRTY_NEW != 0;
            s.dirty &= if detail { 0 } else { !DIRTY_SUMMARY };
            let id = s.id();
            out.push(s.finalize(id, &self.settings, &ua, None, None, detail, &mut self.scratch));
        }
        out
    }

    /// Serializes every open session and tombstone (format version 3, `checkpoint.rs`), in
    /// the order of their keys: the same state writes the same bytes.
    pub fn checkpoint(&self) -> Vec<u8> {
        let sessions: Vec<&Session> = in_key_order(self.open.iter().map(|(k, s)| (k.as_str(), &**s))).into_iter().map(|(_, s)| s).collect();
        let tombstones = in_key_order(self.tombstones.iter().map(|(k, t)| (k.as_str(), *t)));
        let tombstones: Vec<_> = tombstones.into_iter().map(|(k, t)| (k, t.part, t.last_recv)).collect();
        checkpoint::write(&sessions, &tombstones)
    }

    /// The state in the version-2 format (postcard), as the core wrote it before version 3:
    /// what the tests compare version 3 with.
    #[cfg(test)]
    fn checkpoint_v2(&self) -> Vec<u8> {
        let mut sessions: Vec<&Session> = self.open.values().map(|s| &**s).collect();
        sessions.sort_by(|a, b| (&a.app, &a.sid).cmp(&(&b.app, &b.sid)));
        let mut tombstones: Vec<(&str, Tombstone)> = self.tombstones.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        tombstones.sort_by(|a, b| a.0.cmp(b.0));
        let out = STATE_MAGIC.to_vec();
        postcard::to_extend(&StateRef { sessions, tombstones }, out).expect("state serializes")
    }

    /// Replaces the state with a checkpoint (version 3, or 2 as written before); on error the
    /// current state is kept.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), CoreError> {
        let (sessions, tombstones) = if bytes.starts_with(checkpoint::MAGIC) {
            checkpoint::read(bytes, &mut self.shared).map_err(CoreError::Checkpoint)?
        } else {
            self.read_v2(bytes)?
        };
        self.open = sessions.into_iter().map(|s| (key_of(&s.app, &s.sid), s)).collect();
        self.tombstones = tombstones.into_iter().map(|(key, part, last_recv)| (key, Tombstone { part, last_recv })).collect();
        let settings = &self.settings;
        // collected, then made a heap at once (linear; a push at a time is not)
        self.due = self
            .open
            .iter_mut()
            .map(|(key, s)| {
                s.queued = deadline(settings, s);
                Reverse((s.queued, key.clone()))
            })
            .collect();
        self.expiring = self.tombstones.iter().map(|(key, t)| Reverse((t.last_recv, key.clone()))).collect();
        Ok(())
    }

    /// The sessions and tombstones of a version-2 checkpoint, their text shared.
    fn read_v2(&mut self, bytes: &[u8]) -> Result<checkpoint::Restored, CoreError> {
        let body = bytes
            .strip_prefix(STATE_MAGIC.as_slice())
            .ok_or_else(|| CoreError::Checkpoint("not a checkpoint of this version".into()))?;
        // the actions take their text from the shared tables as they are read (on an error,
        // the tables keep what they gained: values no session holds, pruned in time)
        let (state, rest): (State, &[u8]) = self
            .shared
            .restoring(|| postcard::take_from_bytes(body))
            .map_err(|e| CoreError::Checkpoint(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CoreError::Checkpoint("trailing bytes after the state".into()));
        }
        let sessions = state
            .sessions
            .into_iter()
            .map(|mut s| {
                s.dirty = DIRTY_ALL;
                s.share(&mut self.shared);
                Box::new(s)
            })
            .collect();
        let restored = (sessions, state.tombstones.into_iter().map(|(k, t)| (k, t.part, t.last_recv)).collect());
        checkpoint::check(&restored).map_err(CoreError::Checkpoint)?;
        Ok(restored)
    }
}

/// `items` sorted by their keys. Each key's first 24 bytes are copied next to its item and
/// compared first (the whole keys only when those are equal): comparing the keys in place
/// read two keys far apart in memory per comparison, the most of a checkpoint's time at a
/// million open sessions.
fn in_key_order<'a, T>(items: impl Iterator<Item = (&'a str, T)>) -> Vec<(&'a str, T)> {
    fn prefix(key: &str) -> [u64; 3] {
        let mut b = [0u8; 24];
        let n = key.len().min(24);
        b[..n].copy_from_slice(&key.as_bytes()[..n]);
        let word = |i: usize| u64::from_be_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        [word(0), word(1), word(2)]
    }
    let mut sorted: Vec<([u64; 3], (&str, T))> = items.map(|(k, t)| (prefix(k), (k, t))).collect();
    // zero-padded prefixes order as the keys do (or tie): then the keys decide
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1 .0.cmp(b.1 .0)));
    sorted.into_iter().map(|(_, item)| item).collect()
}

/// The open sessions by key (`app` + newline + `sid`). A hash table that keeps each key's hash:
/// a beacon hashes its key once to take its session out and put it back, and growing the
/// table hashes nothing again. Session ids come from clients, who must not be able to choose
/// ids that collide: the hash is keyed, foldhash with a random seed per table (as the shared
/// text's tables, `intern.rs`; `SipHash` was most of what finding a session cost). Sessions
/// are boxed: a beacon moves a pointer out and back, not the whole session.
#[derive(Default)]
struct OpenSessions {
    table: HashTable<OpenEntry>,
    state: HashState,
}

struct OpenEntry {
    hash: u64,
    key: String,
    session: Box<Session>,
}

impl OpenSessions {
    fn len(&self) -> usize {
        self.table.len()
    }

    fn hash(&self, key: &str) -> u64 {
        self.state.hash_one(key)
    }

    /// The key's hash, and its entry taken out of the table when there is one.
    fn take(&mut self, key: &str) -> (u64, Option<(String, Box<Session>)>) {
        let hash = self.hash(key);
        let found = match self.table.find_entry(hash, |e| e.key == key) {
            Ok(entry) => {
                let (e, _) = entry.remove();
                Some((e.key, e.session))
            }
            Err(_) => None,
        };
        (hash, found)
    }

    /// Puts a session taken out by [`OpenSessions::take`] (or a new one) back, `hash` being
    /// its key's.
    fn put(&mut self, hash: u64, key: String, session: Box<Session>) {
        self.table.insert_unique(hash, OpenEntry { hash, key, session }, |e| e.hash);
    }

    fn remove(&mut self, key: &str) -> Option<Box<Session>> {
        self.take(key).1.map(|(_, s)| s)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Box<Session>> {
        let hash = self.hash(key);
        self.table.find_mut(hash, |e| e.key == key).map(|e| &mut e.session)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Box<Session>)> {
        self.table.iter().map(|e| (&e.key, &e.session))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Box<Session>)> {
        self.table.iter_mut().map(|e| (&e.key, &mut e.session))
    }

    fn values(&self) -> impl Iterator<Item = &Box<Session>> {
        self.table.iter().map(|e| &e.session)
    }
}

impl FromIterator<(String, Box<Session>)> for OpenSessions {
    fn from_iter<I: IntoIterator<Item = (String, Box<Session>)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut open = OpenSessions::default();
        open.table.reserve(iter.size_hint().0, |e| e.hash); // a restore: no rehashing as it fills
        for (key, session) in iter {
            let (hash, _) = open.take(&key); // a later session of the same key wins, as in a map
            open.put(hash, key, session);
        }
        open
    }
}

/// When a session is due: `flush(now)` closes it from then on.
fn deadline(settings: &Settings, s: &Session) -> i64 {
    let timeout = s.last_recv.saturating_add(settings.timeout_ms as i64);
    timeout.min(s.first_recv.saturating_add(settings.max_duration_ms as i64))
}

fn apply_beacon_fields(s: &mut Session, ctx: &BeaconCtx, shared: &mut Shared) {
    s.dirty |= DIRTY_ALL;
    if let Some(user) = ctx.user.filter(|_| !ctx.dnt) {
        s.identify(user, ctx.recv);
    }
    if let Some(vid) = ctx.vid {
        if s.visitor_id.as_deref() != Some(vid) {
            s.visitor_id = Some(vid.to_owned());
        }
    }
    if s.screen.is_none() {
        s.screen = ctx.screen.map(str::to_owned);
    }
    if s.ip.is_none() {
        s.ip = ctx.ip();
    }
    if s.user_agent.is_none() && !ctx.user_agent.is_empty() {
        s.user_agent = Some(shared.strings.str(ctx.user_agent));
    }
    s.synthetic |= ctx.synthetic;
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

/// Validates and parses each request once; the accepted ones become version-2 records (their
/// beacons parsed, `wire.rs`), so the sessionizer does not parse their JSON again.
pub fn prepare(requests: &[Request], max_events: usize, mask_ip: bool) -> Prepared {
    let mut p = Prepared { wal: Vec::new(), verdicts: Vec::with_capacity(requests.len()), events: 0 };
    for r in requests {
        match beacon::envelopes(r.body, max_events) {
            Ok(env) => {
                p.events += env.event_count() as u64;
                let ip = if mask_ip { privacy::mask_ip(r.ip).unwrap_or_default() } else { r.ip.to_owned() };
                let at = record::begin(&mut p.wal, record::PARSED, r.flags, r.recv_ms, &ip, r.user_agent);
                p.wal = wire::encode(&env.into_parsed(), std::mem::take(&mut p.wal));
                record::end(&mut p.wal, at);
                p.verdicts.push(None);
            }
            Err((_, why)) => p.verdicts.push(Some(why)),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const T0: i64 = 1_764_126_000_000;
    const MIN: i64 = 60_000;

    /// A beacon builder: each test changes one thing.
    struct B {
        app: &'static str,
        sid: &'static str,
        recv: i64,
        sent: Option<i64>,
        dnt: bool,
        extra: Value,
        events: Vec<Value>,
    }

    fn beacon(recv: i64) -> B {
        B { app: "shop", sid: "sid-0001", recv, sent: Some(recv), dnt: false, extra: json!({}), events: vec![] }
    }

    impl B {
        fn sid(mut self, sid: &'static str) -> Self {
            self.sid = sid;
            self
        }
        fn sent(mut self, sent: Option<i64>) -> Self {
            self.sent = sent;
            self
        }
        fn dnt(mut self) -> Self {
            self.dnt = true;
            self
        }
        fn field(mut self, k: &str, v: Value) -> Self {
            self.extra[k] = v;
            self
        }
        fn ev(mut self, e: Value) -> Self {
            self.events.push(e);
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b = json!({"v": 1, "app": self.app, "sid": self.sid, "events": self.events});
            if let Some(s) = self.sent {
                b["sent"] = json!(s);
            }
            for (k, v) in self.extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            let mut out = Vec::new();
            let flags = if self.dnt { record::FLAG_DNT } else { 0 };
            record::encode(&mut out, flags, self.recv as u64, "203.0.113.9", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36", &serde_json::to_vec(&b).unwrap());
            out
        }
    }

    fn action(kind: &str, start: i64, dur: f64) -> Value {
        json!({"type": kind, "name": format!("{kind} at {start}"), "start": start, "dur": dur})
    }

    fn core(settings: Value) -> Sessionizer {
        Sessionizer::new(Settings::from_json(&settings.to_string()).unwrap()).unwrap()
    }

    fn run(s: &mut Sessionizer, beacons: &[B], now: i64) -> Output {
        let batch: Vec<u8> = beacons.iter().flat_map(B::bytes).collect();
        s.ingest(&batch, now)
    }

    fn summary(c: &Closed) -> Value {
        serde_json::from_slice(&c.summary).unwrap()
    }

    fn detail(c: &Closed) -> Value {
        serde_json::from_slice(&c.detail).unwrap()
    }

    fn only(out: &Output) -> &Closed {
        assert_eq!(out.closed.len(), 1, "expected one closed session");
        &out.closed[0]
    }

    #[test]
    fn exactly_t_and_exactly_f_inside_a_session() {
        let mut s = core(json!({}));
        run(&mut s, &[beacon(T0).ev(action("load", T0, 3000.0)).ev(action("xhr", T0 + 1, 12000.0)).ev(action("custom", T0 + 2, 12000.5))], T0);
        let out = s.flush(T0 + 31 * MIN);
        let d = detail(only(&out));
        let cats: Vec<&str> = d["actions"].as_array().unwrap().iter().map(|a| a["apdex"].as_str().unwrap()).collect();
        assert_eq!(cats, ["satisfied", "tolerating", "frustrated"]);
        let sm = summary(&out.closed[0]);
        assert_eq!(sm["apdex"], json!(0.5));
        assert_eq!(sm["ux_score"], "frustrating"); // the last action is frustrated
    }

    #[test]
    fn zero_actions_and_one_action() {
        let mut s = core(json!({}));
        run(&mut s, &[beacon(T0).sid("no-actions").ev(json!({"type": "property", "key": "plan", "value": "gold"}))], T0);
        run(&mut s, &[beacon(T0).sid("one-action").ev(action("load", T0, 100.0))], T0);
        let out = s.flush(T0 + 30 * MIN);
        assert_eq!(out.closed.len(), 2);
        let by_sid = |sid: &str| out.closed.iter().map(summary).find(|v| v["client_sid"] == sid).unwrap();
        let none = by_sid("no-actions");
        assert_eq!((none["action_count"].as_u64(), none["apdex"].clone(), none["bounce"].clone()), (Some(0), Value::Null, json!(true)));
        assert_eq!(none["ux_score"], "tolerable");
        assert_eq!(none["properties"]["plan"], "gold");
        let one = by_sid("one-action");
        assert_eq!((one["action_count"].as_u64(), one["apdex"].clone(), one["bounce"].clone()), (Some(1), json!(1.0), json!(true)));
        assert_eq!(one["ux_score"], "satisfying");
    }

    #[test]
    fn exactly_200_actions_stay_and_the_201st_opens_part_2() {
        let mut s = core(json!({}));
        let mut b = beacon(T0);
        for i in 0..200 {
            b = b.ev(action("custom", T0 + i, 10.0));
        }
        let out = run(&mut s, &[b], T0);
        assert!(out.closed.is_empty());
        let out = run(&mut s, &[beacon(T0 + 1000).ev(action("custom", T0 + 1000, 10.0))], T0 + 1000);
        let first = only(&out);
        assert_eq!(first.end_reason, Some(EndReason::ActionLimit));
        assert_eq!(summary(first)["action_count"], 200);
        assert_eq!(summary(first)["part"], 1);
        let out = s.flush(T0 + 40 * MIN);
        let second = summary(only(&out));
        assert_eq!((second["part"].as_u64(), second["action_count"].as_u64()), (Some(2), Some(1)));
        assert_eq!(second["client_sid"], "sid-0001");
    }

    #[test]
    fn an_error_at_an_action_boundary_belongs_to_that_action() {
        let mut s = core(json!({}));
        run(
            &mut s,
            &[beacon(T0 + 3000)
                .ev(action("load", T0, 1000.0))
                .ev(action("xhr", T0 + 2000, 500.0))
                .ev(json!({"type": "error", "kind": "request", "message": "POST /checkout 500", "start": T0 + 2500}))
                .ev(json!({"type": "error", "kind": "js", "message": "late", "start": T0 + 1000}))
                .ev(json!({"type": "error", "kind": "custom", "message": "before", "start": T0 - 10}))],
            T0 + 3000,
        );
        let out = s.flush(T0 + 40 * MIN);
        let d = detail(only(&out));
        let attached: Vec<i64> = d["errors"].as_array().unwrap().iter().map(|e| e["action"].as_i64().unwrap()).collect();
        // end of the xhr span (inclusive) → xhr; end of the load span → load; before everything → first
        assert_eq!(attached, [1, 0, 0]);
        let cats: Vec<&str> = d["actions"].as_array().unwrap().iter().map(|a| a["apdex"].as_str().unwrap()).collect();
        assert_eq!(cats, ["frustrated", "frustrated"]);
    }

    #[test]
    fn a_beacon_after_the_timeout_closes_and_starts_a_new_session() {
        let mut s = core(json!({"timeout_ms": 60_000}));
        run(&mut s, &[beacon(T0).ev(action("load", T0, 100.0))], T0);
        let out = run(&mut s, &[beacon(T0 + MIN - 1).ev(action("xhr", T0 + MIN - 1, 10.0))], T0 + MIN - 1);
        assert!(out.closed.is_empty(), "one ms before the timeout the session stays open");
        let out = run(&mut s, &[beacon(T0 + 2 * MIN - 1).ev(action("xhr", T0 + 2 * MIN - 1, 10.0))], T0 + 2 * MIN - 1);
        let closed = only(&out);
        assert_eq!(closed.end_reason, Some(EndReason::Timeout));
        assert_eq!(summary(closed)["action_count"], 2);
        assert_eq!(s.open_count(), 1);
        let next = s.flush(T0 + 10 * MIN);
        let next = summary(only(&next));
        assert_eq!(next["part"], 1, "after a timeout the same client sid starts over");
        assert_ne!(next["session_id"], summary(closed)["session_id"]);
    }

    #[test]
    fn the_duration_limit_closes_and_later_beacons_open_part_2() {
        let mut s = core(json!({"timeout_ms": 60_000, "max_duration_ms": 300_000}));
        for i in 0..=5 {
            let out = run(&mut s, &[beacon(T0 + i * 50_000).ev(action("xhr", T0 + i * 50_000, 10.0))], T0 + i * 50_000);
            assert!(out.closed.is_empty());
        }
        let out = run(&mut s, &[beacon(T0 + 300_000).ev(action("xhr", T0 + 300_000, 10.0))], T0 + 300_000);
        assert_eq!(only(&out).end_reason, Some(EndReason::DurationLimit));
        let out = s.flush(T0 + 600_000);
        assert_eq!(summary(only(&out))["part"], 2);
        // flush alone also enforces the limit
        run(&mut s, &[beacon(T0).sid("sid-0002")], T0);
        for i in 1..=5 {
            run(&mut s, &[beacon(T0 + i * 50_000).sid("sid-0002")], T0 + i * 50_000);
        }
        let out = s.flush(T0 + 300_000);
        assert_eq!(only(&out).end_reason, Some(EndReason::DurationLimit));
    }

    #[test]
    fn a_flush_closes_at_most_max_closed_per_call_and_says_more_are_due() {
        let stream = |s: &mut Sessionizer| {
            const SIDS: [&str; 10] = ["sid-0000", "sid-0001", "sid-0002", "sid-0003", "sid-0004", "sid-0005", "sid-0006", "sid-0007", "sid-0008", "sid-0009"];
            for (i, sid) in (0..).zip(SIDS) {
                run(s, &[beacon(T0 + i).sid(sid).ev(action("load", T0 + i, 100.0))], T0 + i);
            }
        };
        let mut whole = core(json!({"timeout_ms": 60_000}));
        stream(&mut whole);
        let all = whole.flush(T0 + 10 * MIN);
        assert_eq!((all.closed.len(), all.more_due), (10, false));

        let mut bounded = core(json!({"timeout_ms": 60_000, "max_closed_per_call": 3}));
        stream(&mut bounded);
        // a beacon after the outage: its ingest closes the 3 earliest due, then flush the rest
        let out = run(&mut bounded, &[beacon(T0 + 10 * MIN).sid("sid-late")], T0 + 10 * MIN);
        let (mut got, mut calls) = (Vec::new(), vec![(out.closed.len(), out.more_due)]);
        got.extend(out.closed);
        loop {
            let out = bounded.flush(T0 + 10 * MIN);
            calls.push((out.closed.len(), out.more_due));
            got.extend(out.closed);
            if !calls.last().unwrap().1 {
                break;
            }
        }
        assert_eq!(calls, [(3, true), (3, true), (3, true), (1, false)]);
        let mut first: Vec<String> = got[..3].iter().map(|c| summary(c)["client_sid"].as_str().unwrap().to_owned()).collect();
        first.sort();
        assert_eq!(first, ["sid-0000", "sid-0001", "sid-0002"], "the earliest due first");
        // the same sessions, byte for byte, whatever the chunks
        let bytes = |c: &[Closed]| {
            let mut v: Vec<(String, Vec<u8>, Vec<u8>)> = c.iter().map(|c| (c.session_id.clone(), c.summary.clone(), c.detail.clone())).collect();
            v.sort();
            v
        };
        assert_eq!(bytes(&got), bytes(&all.closed));
        assert_eq!(bounded.open_count(), 1, "the late beacon's session stays open");
    }

    #[test]
    fn flush_forgets_the_tombstones_of_what_it_closes_and_queues_again_what_had_beacons() {
        let mut s = core(json!({"timeout_ms": 60_000}));
        run(&mut s, &[beacon(T0)], T0);
        assert_eq!(s.flush(T0 + 59_999).closed.len(), 0);
        assert_eq!(s.flush(T0 + 60_000).closed.len(), 1);
        assert!(s.tombstones.is_empty() && s.expiring.is_empty(), "a timeout close leaves no tombstone");
        // the tombstone went with that flush: a record received before it opens part 1 again
        run(&mut s, &[beacon(T0)], T0);
        // a beacon moves the deadline: the session is not due when its first one says so
        run(&mut s, &[beacon(T0 + 30_000)], T0 + 30_000);
        assert_eq!(s.flush(T0 + 60_000).closed.len(), 0);
        let out = s.flush(T0 + 90_000);
        assert_eq!(summary(only(&out))["part"], 1);
        // restored sessions are due like the others
        run(&mut s, &[beacon(T0 + 100_000)], T0 + 100_000);
        let mut again = core(json!({"timeout_ms": 60_000}));
        again.restore(&s.checkpoint()).unwrap();
        assert_eq!(again.flush(T0 + 159_999).closed.len(), 0);
        assert_eq!(again.flush(T0 + 160_000).closed.len(), 1);
    }

    #[test]
    fn a_timeout_close_in_flush_also_drops_the_older_tombstone_of_its_key() {
        let mut s = core(json!({"timeout_ms": 60_000}));
        let out = run(&mut s, &[beacon(T0).ev(json!({"type": "end", "start": T0}))], T0);
        assert_eq!(only(&out).end_reason, Some(EndReason::EndEvent));
        assert_eq!(s.tombstones.len(), 1);
        let out = run(&mut s, &[beacon(T0 + 1_000)], T0 + 1_000);
        assert!(out.closed.is_empty());
        let out = s.flush(T0 + 61_000);
        assert_eq!(summary(only(&out))["part"], 2);
        assert!(s.tombstones.is_empty(), "neither part leaves a tombstone past its timeout");
        // what the old path (tombstone, then the expiry loop) left: the next beacon is part 1
        let out = run(&mut s, &[beacon(T0 + 61_000).ev(json!({"type": "end", "start": T0 + 61_000}))], T0 + 61_000);
        assert_eq!(summary(only(&out))["part"], 1);
    }

    #[test]
    fn an_end_event_closes_and_following_events_and_beacons_open_the_next_part() {
        let mut s = core(json!({}));
        let out = run(
            &mut s,
            &[beacon(T0 + 500).ev(action("load", T0, 100.0)).ev(json!({"type": "end", "reason": "logout", "start": T0 + 200})).ev(action("custom", T0 + 300, 5.0))],
            T0 + 500,
        );
        let first = only(&out);
        assert_eq!(first.end_reason, Some(EndReason::EndEvent));
        assert_eq!(detail(first)["end_detail"], "logout");
        assert_eq!(summary(first)["end"], T0 + 200);
        let out = run(&mut s, &[beacon(T0 + 1000).ev(json!({"type": "end"}))], T0 + 1000);
        let second = summary(only(&out));
        assert_eq!((second["part"].as_u64(), second["action_count"].as_u64()), (Some(2), Some(1)));
        run(&mut s, &[beacon(T0 + 2000).ev(action("custom", T0 + 2000, 5.0))], T0 + 2000);
        let third = s.flush(T0 + 40 * MIN);
        assert_eq!(summary(only(&third))["part"], 3);
    }

    #[test]
    fn skewed_client_clocks_are_corrected_by_sent() {
        let mut s = core(json!({}));
        // the client clock is 1 hour behind: sent says T0 - 1h, the server received at T0
        let skew = 60 * MIN;
        run(&mut s, &[beacon(T0).sent(Some(T0 - skew)).ev(action("load", T0 - skew - 5000, 4000.0))], T0);
        // no `sent`: the latest event is assumed sent at receive time
        run(&mut s, &[beacon(T0).sid("sid-0002").sent(None).ev(action("load", 1000, 10.0)).ev(action("xhr", 3000, 10.0))], T0);
        // a client clock in the future is clamped to the receive time
        run(&mut s, &[beacon(T0).sid("sid-0003").sent(Some(T0 - skew)).ev(action("load", T0 + skew, 10.0))], T0);
        let out = s.flush(T0 + 40 * MIN);
        let by_sid = |sid: &str| out.closed.iter().map(summary).find(|v| v["client_sid"] == sid).unwrap();
        assert_eq!(by_sid("sid-0001")["start"], T0 - 5000);
        assert_eq!(by_sid("sid-0002")["start"], T0 - 2000);
        assert_eq!(by_sid("sid-0003")["start"], T0);
    }

    #[test]
    fn a_session_is_never_closed_on_the_client_clock() {
        let mut s = core(json!({"timeout_ms": 60_000}));
        // event times two hours old, but the beacons arrive 10 s apart: one session
        run(&mut s, &[beacon(T0).sent(Some(T0 - 120 * MIN)).ev(action("load", T0 - 120 * MIN, 10.0))], T0);
        let out = run(&mut s, &[beacon(T0 + 10_000).sent(Some(T0 - 100 * MIN)).ev(action("xhr", T0 - 100 * MIN, 10.0))], T0 + 10_000);
        assert!(out.closed.is_empty());
        assert_eq!(s.flush(T0 + 30_000).closed.len(), 0);
        assert_eq!(s.open_count(), 1);
    }

    #[test]
    fn unknown_and_bad_events_are_counted_and_dropped() {
        let mut s = core(json!({}));
        let out = run(
            &mut s,
            &[beacon(T0)
                .ev(json!({"type": "hologram"}))
                .ev(json!({"type": "load", "dur": -5}))
                .ev(json!({"type": "xhr", "status": "500"}))
                .ev(json!(42))
                .ev(json!({"no": "type"}))
                .ev(action("load", T0, 10.0))],
            T0,
        );
        assert_eq!(out.dropped.get("unknown_type"), Some(&1));
        assert_eq!(out.dropped.get("bad_event"), Some(&4));
        assert_eq!(out.events, 1);
        let closed = s.flush(T0 + 40 * MIN);
        assert_eq!(summary(only(&closed))["action_count"], 1);
    }

    #[test]
    fn malformed_bytes_are_rejected_per_record() {
        let mut s = core(json!({}));
        let mut batch = Vec::new();
        record::encode(&mut batch, 0, T0 as u64, "", "", b"{not json");
        record::encode(&mut batch, 0, T0 as u64, "", "", br#"{"app": "bad app!", "sid": "sid-0001"}"#);
        record::encode(&mut batch, 0, T0 as u64, "", "", br#"{"app": "shop", "sid": "short"}"#);
        record::encode(&mut batch, 0, T0 as u64, "", "", br#"{"app": "shop", "sid": "sid-0001", "v": 2}"#);
        record::encode(&mut batch, 0, T0 as u64, "", "", br#"{"app": "shop", "sid": "sid-0001", "events": {}}"#);
        record::encode(&mut batch, 0, T0 as u64, "", "", br#"[{"app": "shop", "sid": "sid-0001"}, 7]"#);
        record::encode(&mut batch, 0, T0 as u64, "", "", b"\xff\xfe");
        record::encode(&mut batch, 0, T0 as u64, "", "", br#"{"app": "shop", "sid": "sid-0001"}"#);
        batch.extend_from_slice(&[9, 0, 0, 0, 1]);
        let out = s.ingest(&batch, T0);
        let reasons: Vec<&str> = out.rejected.iter().map(|r| r.2).collect();
        assert_eq!(reasons, ["bad_json", "bad_app", "bad_sid", "bad_version", "bad_events", "not_object", "bad_json", "bad_record"]);
        assert_eq!(out.rejected[5], (5, 1, "not_object"));
        assert_eq!(out.beacons, 1);
        assert_eq!(s.open_count(), 1);
    }

    #[test]
    fn array_object_and_ndjson_payloads() {
        let reqs = [
            br#"{"app":"shop","sid":"sid-0001"}"#.as_slice(),
            br#"[{"app":"shop","sid":"sid-0001"},{"app":"shop","sid":"sid-0002"}]"#.as_slice(),
            b"{\"app\":\"shop\",\"sid\":\"sid-0001\"}\n\n{\"app\":\"blog\",\"sid\":\"sid-0009\"}\n".as_slice(),
            b"[]".as_slice(),
            b"   ".as_slice(),
        ];
        let requests: Vec<Request> = reqs.iter().map(|b| Request { recv_ms: T0 as u64, ip: "10.0.0.1", user_agent: "", flags: 0, body: b }).collect();
        let p = prepare(&requests, 500, true);
        assert_eq!(p.verdicts, [None, None, None, Some(Rejection::Empty), Some(Rejection::BadJson)]);
        let mut s = core(json!({}));
        let out = s.ingest(&p.wal, T0);
        assert_eq!(out.beacons, 5);
        assert_eq!(s.open_count(), 3);
    }

    #[test]
    fn too_many_events_are_refused_before_the_wal() {
        let events: Vec<Value> = (0..3).map(|i| action("custom", T0 + i, 1.0)).collect();
        let body = serde_json::to_vec(&json!([{"app": "shop", "sid": "sid-0001", "events": events}, {"app": "shop", "sid": "sid-0001", "events": events}])).unwrap();
        let req = [Request { recv_ms: 1, ip: "", user_agent: "", flags: 0, body: &body }];
        assert_eq!(prepare(&req, 5, true).verdicts, [Some(Rejection::TooManyEvents)]);
        assert_eq!(prepare(&req, 6, true).verdicts, [None]);
        assert!(prepare(&req, 5, true).wal.is_empty());
    }

    #[test]
    fn the_ip_is_masked_before_the_wal() {
        let body = br#"{"app":"shop","sid":"sid-0001"}"#;
        let p = prepare(&[Request { recv_ms: 1, ip: "198.51.100.77", user_agent: "", flags: 0, body }], 500, true);
        let rec = record::records(&p.wal).next().unwrap().unwrap();
        assert_eq!(rec.ip, "198.51.100.0");
    }

    #[test]
    fn identify_last_wins_and_dnt_drops_the_tag() {
        let mut s = core(json!({}));
        run(
            &mut s,
            &[
                beacon(T0).field("user", json!("first@example.com")).ev(json!({"type": "identify", "user": "daniel.adams@example.com"})),
                beacon(T0 + 10).sid("sid-0002").dnt().field("user", json!("secret@example.com")).ev(json!({"type": "identify", "user": "x"})),
            ],
            T0,
        );
        let out = s.flush(T0 + 40 * MIN);
        let by_sid = |sid: &str| out.closed.iter().find(|c| summary(c)["client_sid"] == sid).unwrap();
        let tagged = by_sid("sid-0001");
        assert_eq!(tagged.user_tag.as_deref(), Some("daniel.adams@example.com"));
        assert_eq!(detail(tagged)["user_tags"].as_array().unwrap().len(), 2);
        assert_eq!(by_sid("sid-0002").user_tag, None);
    }

    #[test]
    fn the_support_scenario_summary_and_timeline() {
        let mut s = core(json!({}));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let b = beacon(T0 + 20_000)
            .sent(Some(T0 + 20_000))
            .field("user", json!("daniel.adams@example.com"))
            .field("page", json!({"url": "https://shop.example.com/cart/checkout"}))
            .field("device", json!({"screen": "1920x1080"}))
            .ev(json!({"type": "load", "name": "loading of page /cart/checkout", "url": "https://shop.example.com/cart/checkout", "start": T0, "dur": 4200, "timing": {"ttfb": 310, "bogus": "x"}, "resources": [{"url": "https://shop.example.com/api/cart", "initiator": "fetch", "start": 120, "dur": 300, "status": 200}]}))
            .ev(json!({"type": "xhr", "name": "POST /checkout", "url": "https://shop.example.com/checkout", "method": "POST", "status": 500, "start": T0 + 5000, "dur": 812, "traceparent": tp}))
            .ev(json!({"type": "error", "kind": "request", "message": "POST /checkout 500", "start": T0 + 5812}))
            .ev(json!({"type": "vital", "name": "lcp", "value": 4100, "start": T0 + 4100}))
            .ev(json!({"type": "rage_click", "target": "button#pay", "count": 4, "start": T0 + 7000}))
            .ev(json!({"type": "end", "reason": "logout", "start": T0 + 20_000}));
        let out = run(&mut s, &[b], T0 + 20_000);
        let c = only(&out);
        let sm = summary(c);
        assert_eq!(sm["ux_score"], "frustrating");
        assert_eq!(sm["has_error"], true);
        assert_eq!(sm["errors_by_kind"]["request"], 1);
        assert_eq!(sm["vitals"]["LCP"], json!({"value": 4100.0, "rating": "poor"}));
        assert_eq!(sm["entry_page"], "https://shop.example.com/cart/checkout");
        assert_eq!(sm["duration_ms"], 20_000);
        assert_eq!(sm["ip"], "203.0.113.0");
        assert_eq!(sm["screen"], "1920x1080");
        assert_eq!(sm["browser"]["family"], "Chrome");
        let d = detail(c);
        let xhr = &d["actions"][1];
        assert_eq!((xhr["status"].as_u64(), xhr["apdex"].as_str()), (Some(500), Some("frustrated")));
        assert_eq!(xhr["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(d["actions"][0]["apdex"], "tolerating");
        assert_eq!(d["actions"][0]["timings"], json!({"ttfb": 310.0}));
        assert_eq!(d["actions"][0]["resources"][0]["status"], 200);
        assert_eq!(d["errors"][0]["action"], 1);
        assert_eq!(out.metrics.actions.get(&("shop".to_owned(), "xhr", "frustrated")), Some(&1));
        assert_eq!(out.metrics.errors.get(&("shop".to_owned(), "request")), Some(&1));
    }

    #[test]
    fn key_user_action_thresholds_override_the_type() {
        let mut s = core(json!({"key_actions": {"shop": {"POST /checkout": {"t": 500, "f": 2000}}}}));
        run(&mut s, &[beacon(T0).ev(json!({"type": "xhr", "name": "POST /checkout", "start": T0, "dur": 800})).ev(json!({"type": "xhr", "name": "GET /cart", "start": T0 + 1, "dur": 800}))], T0);
        let out = s.flush(T0 + 40 * MIN);
        let d = detail(only(&out));
        assert_eq!(d["actions"][0]["apdex"], "tolerating");
        assert_eq!(d["actions"][1]["apdex"], "satisfied");
    }

    #[test]
    fn pii_is_scrubbed_from_urls_names_and_messages() {
        let mut s = core(json!({}));
        run(
            &mut s,
            &[beacon(T0)
                .field("page", json!({"url": "https://shop.example.com/u/daniel.adams@example.com"}))
                .ev(json!({"type": "xhr", "name": "GET /orders/4111111111111111", "url": "https://x/?card=4111-1111-1111-1111", "start": T0}))
                .ev(json!({"type": "error", "kind": "js", "message": "no user jane@example.org", "start": T0}))],
            T0,
        );
        let out = s.flush(T0 + 40 * MIN);
        let text = String::from_utf8(out.closed[0].summary.clone()).unwrap() + &String::from_utf8(out.closed[0].detail.clone()).unwrap();
        assert!(!text.contains("example.com/u/daniel") && !text.contains("4111") && !text.contains("jane@"), "{text}");
        assert!(text.contains("/u/<masked>"));
    }

    #[test]
    fn a_restored_checkpoint_writes_the_same_bytes_and_details() {
        // actions with every extra part: shared text, f32 and f64 numbers, absent resource
        // fields, a traceparent; the checkpoint layout is the one of RLCKPT02 before sharing
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let stream = vec![
            beacon(T0).ev(json!({"type": "load", "name": "loading of page /", "url": "https://a.example/", "start": T0, "dur": 812.5,
                "timing": {"ttfb": 31.25, "fcp": 123.400_000_1, "lcp": 4100, "ttfb2": 1e300},
                "resources": [{"url": "https://a.example/app.js", "initiator": "script", "start": 0.1, "dur": 3, "status": 200, "size": 48213},
                              {"initiator": "fetch"}, {}]})),
            beacon(T0 + 1000).ev(json!({"type": "xhr", "name": "POST /checkout", "url": "https://a.example/checkout", "method": "POST",
                "status": 500, "start": T0 + 1000, "dur": 80, "traceparent": tp}))
                .ev(json!({"type": "custom", "name": "click", "start": T0 + 1500}))
                .ev(json!({"type": "vital", "name": "lcp", "value": 4100, "start": T0 + 900})),
        ];
        let mut first = core(json!({}));
        run(&mut first, &stream, T0 + 2000);
        let state = first.checkpoint();
        let mut second = core(json!({}));
        second.restore(&state).unwrap();
        assert_eq!(second.checkpoint(), state);
        let details = |c: &mut Sessionizer| c.live(true).into_iter().map(|c| (c.summary, c.detail)).collect::<Vec<_>>();
        let (a, b) = (details(&mut first), details(&mut second));
        assert_eq!(a, b);
        let detail = String::from_utf8(a[0].1.clone()).unwrap();
        assert!(detail.contains(tp) && detail.contains("123.4000001") && detail.contains("1e+300"), "{detail}");
    }

    /// The same stream's checkpoint and live output as written by the core before open
    /// sessions shared their text (commit 63f2d94): the layout did not change.
    #[test]
    fn a_checkpoint_of_the_core_before_shared_text_restores_the_same() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rlckpt02_before_shared_text");
        let hex = std::fs::read_to_string(format!("{dir}.hex")).unwrap();
        let state: Vec<u8> = (0..hex.trim().len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let mut c = core(json!({}));
        c.restore(&state).unwrap();
        assert_eq!(c.checkpoint_v2(), state);
        // and through a version-3 checkpoint of it: the same state again
        let v3 = c.checkpoint();
        assert!(v3.starts_with(checkpoint::MAGIC));
        let mut d = core(json!({}));
        d.restore(&v3).unwrap();
        assert_eq!(d.checkpoint_v2(), state);
        assert_eq!(d.checkpoint(), v3);
        for mut c in [c, d] {
            let live = c.live(true);
            assert_eq!(String::from_utf8(live[0].summary.clone()).unwrap(), std::fs::read_to_string(format!("{dir}.summary.json")).unwrap());
            assert_eq!(String::from_utf8(live[0].detail.clone()).unwrap(), std::fs::read_to_string(format!("{dir}.detail.json")).unwrap());
        }
    }

    /// Open sessions with every field a checkpoint holds set somewhere (two user tags, a
    /// property, errors, rage clicks, vitals, f32 and f64 numbers, absent resource fields, a
    /// traceparent, actions without a page) and tombstones (an ended part 1).
    fn varied_core() -> Sessionizer {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut c = core(json!({}));
        let stream = vec![
            beacon(T0)
                .field("user", json!("first@example.com"))
                .field("vid", json!("visitor-1"))
                .field("page", json!({"url": "https://a.example/cart"}))
                .field("device", json!({"screen": "1920x1080"}))
                .ev(json!({"type": "load", "name": "loading of page /", "url": "https://a.example/", "start": T0 - 500, "dur": 812.5,
                    "timing": {"ttfb": 31.25, "fcp": 123.400_000_1, "lcp": 4100, "neg": -3, "ttfb2": 1e300},
                    "resources": [{"url": "https://a.example/app.js", "initiator": "script", "start": 0.1, "dur": 3, "status": 200, "size": 48213},
                                  {"initiator": "fetch"}, {}]}))
                .ev(json!({"type": "identify", "user": "daniel.adams@example.com"}))
                .ev(json!({"type": "property", "key": "plan", "value": "gold"}))
                .ev(json!({"type": "error", "kind": "js", "message": "TypeError: x", "stack": "at f (a.js:1:2)", "start": T0 - 100}))
                .ev(json!({"type": "rage_click", "target": "button#pay", "count": 4, "start": T0 - 50})),
            beacon(T0 + 1000)
                .ev(json!({"type": "xhr", "name": "POST /checkout", "url": "https://a.example/checkout", "method": "POST",
                    "status": 500, "start": T0 + 1000, "dur": 80, "traceparent": tp}))
                .ev(json!({"type": "error", "kind": "request", "start": T0 + 1080}))
                .ev(json!({"type": "custom", "name": "click", "start": T0 + 1500, "dur": -0.0}))
                .ev(json!({"type": "vital", "name": "cls", "value": 0.125, "start": T0 + 900}))
                .ev(json!({"type": "vital", "name": "lcp", "value": 4100, "start": T0 + 900})),
            beacon(T0 + 2000).sid("sid-0002").dnt().ev(action("custom", T0 + 2000, 1e9)).ev(json!({"type": "end", "reason": "logout", "start": T0 + 2001})),
            beacon(T0 + 3000).sid("sid-0002").ev(action("load", T0 + 3000, 1.5)).ev(json!({"type": "rage_click", "count": 2})),
            beacon(T0 + 4000).sid("sid-0003"),
        ];
        run(&mut c, &stream, T0 + 4000);
        assert_eq!((c.open_count(), c.tombstones.len()), (3, 1));
        c
    }

    #[test]
    fn version_3_holds_the_same_state_as_version_2() {
        let mut first = varied_core();
        let (v2, v3) = (first.checkpoint_v2(), first.checkpoint());
        assert!(v3.len() < v2.len(), "{} vs {}", v3.len(), v2.len());
        let mut from_v3 = core(json!({}));
        from_v3.restore(&v3).unwrap();
        let mut from_v2 = core(json!({}));
        from_v2.restore(&v2).unwrap();
        for c in [&from_v3, &from_v2] {
            assert_eq!(c.checkpoint_v2(), v2);
            assert_eq!(c.checkpoint(), v3);
        }
        let published = |c: &mut Sessionizer| c.live(true).into_iter().map(|c| (c.summary, c.detail)).collect::<Vec<_>>();
        let expected = published(&mut first);
        assert_eq!(published(&mut from_v3), expected);
        assert_eq!(published(&mut from_v2), expected);
        // they carry on alike: part 3 of sid-0002 after its tombstone, the rest closing
        let later = [beacon(T0 + 5000).sid("sid-0002").ev(json!({"type": "end"})), beacon(T0 + 5000).sid("sid-0002")];
        let closed = |c: &mut Sessionizer| {
            let mut out = run(c, &later, T0 + 5000).closed;
            out.extend(c.flush(T0 + 100 * MIN).closed);
            out.into_iter().map(|c| (c.session_id, c.summary, c.detail)).collect::<Vec<_>>()
        };
        let expected = closed(&mut first);
        assert_eq!(closed(&mut from_v3), expected);
        assert_eq!(closed(&mut from_v2), expected);
    }

    #[test]
    fn shared_text_is_written_once_per_checkpoint() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sids: Vec<&'static str> = (0..50).map(|i| &*Box::leak(format!("sid-{i:04}").into_boxed_str())).collect();
        let stream: Vec<B> = sids
            .iter()
            .map(|sid| {
                beacon(T0).sid(sid).field("page", json!({"url": "https://shop.example.com/cart"}))
                    .ev(json!({"type": "load", "name": "loading of page /cart", "url": "https://shop.example.com/cart", "start": T0, "dur": 900,
                        "timing": {"ttfb": 100, "fcp": 300}, "resources": [{"url": "https://shop.example.com/static/app.js", "initiator": "script", "start": 40, "dur": 220}]}))
                    .ev(json!({"type": "xhr", "name": "GET /api/cart", "url": "https://shop.example.com/api/cart", "method": "GET", "status": 200, "start": T0, "dur": 80, "traceparent": tp}))
            })
            .collect();
        let mut c = core(json!({}));
        run(&mut c, &stream, T0);
        let (v2, v3) = (c.checkpoint_v2(), c.checkpoint());
        assert!(v3.len() * 3 < v2.len(), "{} vs {}", v3.len(), v2.len());
        let text = |b: &[u8], t: &str| b.windows(t.len()).filter(|w| *w == t.as_bytes()).count();
        for t in ["https://shop.example.com/static/app.js", "loading of page /cart", "Mozilla/5.0", "ttfb"] {
            assert_eq!((text(&v3, t), text(&v2, t)), (1, 50), "{t}");
        }
    }

    #[test]
    fn a_damaged_checkpoint_is_an_error_never_a_panic() {
        let state = varied_core().checkpoint();
        let mut c = core(json!({}));
        c.restore(&state).unwrap();
        for cut in 0..state.len() {
            assert!(c.restore(&state[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..state.len() {
            let mut bad = state.clone();
            bad[i] ^= 0x10;
            assert!(c.restore(&bad).is_err(), "byte {i} changed");
        }
        assert_eq!(c.checkpoint(), state, "failed restores change nothing");
        // past the checksum (damage it does not catch, or a checksum made for the damage): the
        // reader finds a bad body or reads a state the core then works with, never panics
        let resum = |mut body: Vec<u8>| {
            let sum = checkpoint::checksum(&body[16..]);
            body[8..16].copy_from_slice(&sum.to_le_bytes());
            body
        };
        for i in 16..state.len() {
            for change in [0x01, 0x10, 0x80, 0xff] {
                let mut bad = state.clone();
                bad[i] ^= change;
                let mut d = core(json!({}));
                if d.restore(&resum(bad)).is_ok() {
                    d.live(true);
                    d.checkpoint();
                    d.flush(T0 + 100 * MIN);
                }
            }
        }
        for cut in 16..state.len() {
            assert!(core(json!({})).restore(&resum(state[..cut].to_vec())).is_err(), "cut at {cut}");
        }
    }

    type Change<'a> = &'a dyn Fn(&mut Vec<Session>);

    #[test]
    fn a_checkpoint_with_what_ingest_refuses_is_an_error() {
        let state = varied_core().checkpoint();
        let mut shared = Shared::default();
        let (sessions, tombstones) = checkpoint::read(&state, &mut shared).unwrap();
        assert!(sessions.len() >= 2 && sessions.iter().any(|s| !s.actions.is_empty()));
        let rows: Vec<(&str, u32, i64)> = tombstones.iter().map(|(k, p, t)| (k.as_str(), *p, *t)).collect();
        let changed = |change: Change| {
            let mut changed: Vec<Session> = sessions.iter().map(|s| (**s).clone()).collect();
            change(&mut changed);
            changed
        };
        let rewrite = |change: Change| checkpoint::write(&changed(change).iter().collect::<Vec<_>>(), &rows);
        // the same through a version-2 checkpoint (its writer sorts the sessions of a map: no
        // key twice or out of order to write)
        let rewrite_v2 = |change: Change| {
            let mut c = core(json!({}));
            c.open = changed(change).into_iter().map(|s| (key_of(&s.app, &s.sid), Box::new(s))).collect();
            c.checkpoint_v2()
        };
        // unchanged, the rewritten states restore (the checks refuse only what they should)
        core(json!({})).restore(&rewrite(&|_| {})).unwrap();
        core(json!({})).restore(&rewrite_v2(&|_| {})).unwrap();
        let with_action = sessions.iter().position(|s| !s.actions.is_empty()).unwrap();
        let cases: [(&str, Change); 9] = [
            ("a session twice", &|ss| {
                let first = ss[0].clone();
                ss.insert(0, first);
            }),
            ("out of order", &|ss| ss.swap(0, 1)),
            ("an app ingest refuses", &|ss| ss[0].app = "shop\nother".into()),
            ("an app past 64 bytes", &|ss| ss[0].app = "a".repeat(65)),
            ("a session id ingest refuses", &|ss| ss[0].sid = "short".into()),
            ("a time past 2^53", &|ss| ss[0].first_recv = 1 << 60),
            ("a duration past a day", &|ss| ss[with_action].actions[0].dur = 1e12),
            ("a negative duration", &|ss| ss[with_action].actions[0].dur = -1.0),
            ("51 properties", &|ss| ss[0].properties = (0..51).map(|i| (format!("k{i}"), "v".into())).collect()),
        ];
        for (i, (what, change)) in cases.into_iter().enumerate() {
            let states = if i < 2 { vec![rewrite(change)] } else { vec![rewrite(change), rewrite_v2(change)] };
            for bad in states {
                let mut c = core(json!({}));
                c.restore(&state).unwrap();
                let err = c.restore(&bad);
                assert!(err.is_err(), "{what} was restored");
                assert_eq!(c.checkpoint(), state, "{what}: a failed restore keeps the state");
            }
        }
        let twice: Vec<(&str, u32, i64)> = vec![("shop\nsid-00000001", 1, T0), ("shop\nsid-00000001", 2, T0)];
        assert!(core(json!({})).restore(&checkpoint::write(&[], &twice)).is_err());
    }

    #[test]
    fn checkpoint_restore_continue_equals_an_uninterrupted_run() {
        let settings = json!({"timeout_ms": 60_000});
        let stream: Vec<B> = (0..40)
            .map(|i| {
                let sid = ["sid-000a", "sid-000b", "sid-000c"][i % 3];
                beacon(T0 + i as i64 * 7000).sid(sid).ev(action("xhr", T0 + i as i64 * 7000, 100.0 * i as f64))
            })
            .collect();
        let mut straight = core(settings.clone());
        let mut a = run(&mut straight, &stream, T0 + 40 * 7000).closed;
        a.extend(straight.flush(T0 + 100 * MIN).closed);

        let mut first = core(settings.clone());
        let mut b = run(&mut first, &stream[..17], T0 + 16 * 7000).closed;
        let state = first.checkpoint();
        let mut second = core(settings);
        second.restore(&state).unwrap();
        b.extend(run(&mut second, &stream[17..], T0 + 40 * 7000).closed);
        b.extend(second.flush(T0 + 100 * MIN).closed);
        let ids = |v: &[Closed]| v.iter().map(|c| (c.session_id.clone(), c.summary.clone(), c.detail.clone())).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert!(core(json!({})).restore(b"garbage").is_err());
    }

    #[test]
    fn the_open_session_cap_closes_the_least_recently_active() {
        let mut s = core(json!({"max_open_sessions": 3}));
        let sids = ["sid-000a", "sid-000b", "sid-000c", "sid-000d"];
        for (i, sid) in sids.iter().enumerate() {
            let out = run(&mut s, &[beacon(T0 + i as i64).sid(sid)], T0 + i as i64);
            assert_eq!(out.closed.is_empty(), i < 3);
        }
        run(&mut s, &[beacon(T0 + 10).sid("sid-000b")], T0 + 10);
        let out = run(&mut s, &[beacon(T0 + 11).sid("sid-000e")], T0 + 11);
        assert_eq!(s.open_count(), 3);
        let closed = only(&out);
        assert_eq!(closed.end_reason, Some(EndReason::OpenLimit));
        assert_eq!(summary(closed)["client_sid"], "sid-000c");
    }

    #[test]
    fn the_lazy_queues_stay_bounded_under_a_flood_of_new_ids() {
        let mut s = core(json!({"max_open_sessions": 200}));
        for i in 0..20_000i64 {
            let sid: &'static str = Box::leak(format!("flood-{i:05}").into_boxed_str());
            run(&mut s, &[beacon(T0 + i).sid(sid)], T0 + i);
            assert!(s.due.len() <= 2 * 200 + 1024 + 1 && s.expiring.len() <= 2 * 200 + 1024 + 1, "at {i}");
        }
        // nothing is lost by the rebuilds: every open session still closes on time
        let out = s.flush(T0 + 20_000 + 31 * MIN);
        assert_eq!(out.closed.len(), 200);
        assert_eq!(s.open_count(), 0);
        assert!(s.tombstones.is_empty());
    }

    #[test]
    fn tombstones_are_bounded_like_open_sessions() {
        let mut s = core(json!({"max_open_sessions": 200}));
        for i in 0..2_000i64 {
            let sid: &'static str = Box::leak(format!("flood-{i:05}").into_boxed_str());
            run(&mut s, &[beacon(T0 + i).sid(sid)], T0 + i);
            assert!(s.open_count() <= 200 && s.tombstones.len() <= 200, "at {i}");
        }
        // the most recent tombstones are kept: a session closed a moment ago comes back as part 2
        let recent = "flood-01798"; // closed by the cap, its tombstone among the newest
        let out = run(&mut s, &[beacon(T0 + 2_000).sid(recent)], T0 + 2_000);
        assert!(out.closed.iter().all(|c| summary(c)["client_sid"] != recent));
        let live = s.live(true);
        let part = live.iter().map(summary).find(|v| v["client_sid"] == recent).unwrap()["part"].clone();
        assert_eq!(part, 2);
    }

    #[test]
    fn live_sessions_have_no_ux_score_and_only_changed_ones_are_published() {
        let mut s = core(json!({}));
        run(&mut s, &[beacon(T0).ev(action("load", T0, 10.0)), beacon(T0).sid("sid-0002")], T0);
        let live = s.live(true);
        assert_eq!(live.len(), 2);
        let sm = summary(&live[0]);
        assert_eq!((sm["live"].clone(), sm["ux_score"].clone(), sm["end_reason"].clone()), (json!(true), Value::Null, Value::Null));
        assert!(s.live(true).is_empty());
        run(&mut s, &[beacon(T0 + 5).sid("sid-0002")], T0 + 5);
        assert_eq!(s.live(true).len(), 1);
    }

    #[test]
    fn live_summaries_can_go_out_without_details_and_the_details_follow_later() {
        let mut s = core(json!({}));
        run(&mut s, &[beacon(T0).ev(action("load", T0, 10.0)), beacon(T0).sid("sid-0002")], T0);
        // new sessions: their first summaries come with their details
        let first = s.live(false);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|c| !c.detail.is_empty() && summary(c)["live"] == json!(true)));
        assert!(s.live(false).is_empty(), "summaries published");
        run(&mut s, &[beacon(T0 + 1).ev(action("custom", T0 + 1, 2.0))], T0 + 1);
        run(&mut s, &[beacon(T0 + 5).sid("sid-0002").ev(action("custom", T0 + 5, 3.0))], T0 + 5);
        let summaries = s.live(false);
        assert_eq!(summaries.len(), 2);
        assert!(summaries.iter().all(|c| c.detail.is_empty()), "details wait for a call with details");
        assert!(s.live(false).is_empty());
        // both details are still owed, each the same as a full publish now
        let full = s.live(true);
        assert_eq!(full.len(), 2);
        let mut fresh = core(json!({}));
        run(&mut fresh, &[beacon(T0).ev(action("load", T0, 10.0)), beacon(T0).sid("sid-0002")], T0);
        run(&mut fresh, &[beacon(T0 + 1).ev(action("custom", T0 + 1, 2.0))], T0 + 1);
        run(&mut fresh, &[beacon(T0 + 5).sid("sid-0002").ev(action("custom", T0 + 5, 3.0))], T0 + 5);
        let expected = fresh.live(true);
        assert_eq!(full.iter().map(|c| (&c.summary, &c.detail)).collect::<Vec<_>>(), expected.iter().map(|c| (&c.summary, &c.detail)).collect::<Vec<_>>());
        assert!(s.live(true).is_empty() && s.live(false).is_empty());
    }
}
