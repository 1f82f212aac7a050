//! One user session: what it accumulates from beacons and how it is finalized (docs §5–§7).
use crate::apdex::{self, ApdexCategory, ApdexCounts, Thresholds};
use crate::beacon::{ActionEvent, ActionType, ErrorKind, Resource};
use crate::settings::Settings;
use crate::json::JsonWriter;
use crate::useragent::UserAgent;
use crate::ux::{self, UxScore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Why a session was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// No beacon for the inactivity timeout.
    Timeout,
    /// The session reached the maximum duration; later beacons open the next part.
    DurationLimit,
    /// The session reached the maximum number of actions; the next action opens the next part.
    ActionLimit,
    /// The agent ended the session (`endSession()`, logout).
    EndEvent,
    /// Too many sessions were open: the least recently active ones were closed.
    OpenLimit,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Timeout => "timeout",
            EndReason::DurationLimit => "duration_limit",
            EndReason::ActionLimit => "action_limit",
            EndReason::EndEvent => "end_event",
            EndReason::OpenLimit => "open_limit",
        }
    }
}

/// Maximum number of distinct property keys per session.
pub const MAX_PROPERTIES: usize = 50;
/// Maximum number of distinct action names in a summary.
pub const MAX_ACTION_NAMES: usize = 100;

/// The rarely set parts of an action, out of line so a plain action stays small.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActionExtra {
    pub method: Option<Box<str>>,
    pub traceparent: Option<Box<str>>,
    pub timings: Box<[(Box<str>, f64)]>,
    pub resources: Box<[Resource]>,
}

/// One action as an open session keeps it: a few words inline (memory is the limit on how
/// many sessions a collector holds open), the rest boxed when present.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Action {
    pub t: i64,
    pub dur: f64,
    pub name: Box<str>,
    pub url: Option<Box<str>>,
    pub extra: Option<Box<ActionExtra>>,
    /// 1 + index into the session's `pages`; 0 when the beacon had no page URL
    pub page: u32,
    pub status: Option<u16>,
    pub kind: ActionType,
}

impl Action {
    fn extra(&self) -> &ActionExtra {
        static EMPTY: std::sync::OnceLock<ActionExtra> = std::sync::OnceLock::new();
        self.extra.as_deref().unwrap_or_else(|| EMPTY.get_or_init(ActionExtra::default))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorRec {
    pub kind: ErrorKind,
    pub message: Option<String>,
    pub stack: Option<String>,
    pub t: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VitalRec {
    pub name: String,
    pub value: f64,
    pub t: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RageRec {
    pub target: Option<String>,
    pub count: u32,
    pub t: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub app: String,
    pub sid: String,
    pub part: u32,
    pub first_recv: i64,
    pub last_recv: i64,
    pub user_tag: Option<String>,
    pub user_tags: Vec<(String, i64)>,
    pub visitor_id: Option<String>,
    pub screen: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub synthetic: bool,
    pub properties: Vec<(String, String)>,
    /// distinct page URLs of the actions (an action stores an index, not a copy)
    pub pages: Vec<Box<str>>,
    pub actions: Vec<Action>,
    pub errors: Vec<ErrorRec>,
    pub vitals: Vec<VitalRec>,
    pub rage: Vec<RageRec>,
    pub end: Option<(Option<String>, i64)>,
    #[serde(skip)]
    pub dirty: bool,
    /// The time under which the sessionizer's due queue holds this session, at most its
    /// deadline; [`NOT_QUEUED`] until it is queued.
    #[serde(skip, default = "not_queued")]
    pub queued: i64,
}

/// [`Session::queued`] of a session not in the due queue yet.
pub const NOT_QUEUED: i64 = i64::MIN;

fn not_queued() -> i64 {
    NOT_QUEUED
}

/// A session ready to store: summary and detail JSON plus the fields the indexes need.
#[derive(Debug, Clone)]
pub struct Closed {
    pub session_id: String,
    pub app: String,
    pub user_tag: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub end_reason: Option<EndReason>,
    pub summary: Vec<u8>,
    pub detail: Vec<u8>,
}

/// Metrics of closed sessions, summed over one `ingest` or `flush` call.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    pub actions: BTreeMap<(String, &'static str, &'static str), u64>,
    pub errors: BTreeMap<(String, &'static str), u64>,
    pub vitals: Vec<(String, String, f64)>,
}

impl SessionMetrics {
    pub fn merge(&mut self, other: SessionMetrics) {
        for (k, v) in other.actions {
            *self.actions.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.vitals.extend(other.vitals);
    }
}

pub fn session_id(app: &str, sid: &str, part: u32, first_recv: i64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    h.update(app.as_bytes());
    h.update(b"\n");
    h.update(sid.as_bytes());
    h.update(format!("\n{part}\n{first_recv}").as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

impl Session {
    pub fn new(app: &str, sid: &str, part: u32, recv: i64) -> Session {
        Session {
            app: app.to_owned(),
            sid: sid.to_owned(),
            part,
            first_recv: recv,
            last_recv: recv,
            user_tag: None,
            user_tags: Vec::new(),
            visitor_id: None,
            screen: None,
            ip: None,
            user_agent: None,
            synthetic: false,
            properties: Vec::new(),
            pages: Vec::new(),
            actions: Vec::new(),
            errors: Vec::new(),
            vitals: Vec::new(),
            rage: Vec::new(),
            end: None,
            dirty: true,
            queued: NOT_QUEUED,
        }
    }

    pub fn id(&self) -> String {
        session_id(&self.app, &self.sid, self.part, self.first_recv)
    }

    pub fn identify(&mut self, tag: &str, recv: i64) {
        if self.user_tag.as_deref() != Some(tag) {
            self.user_tag = Some(tag.to_owned());
            self.user_tags.push((tag.to_owned(), recv));
        }
    }

    pub fn set_property(&mut self, key: String, value: String) {
        if let Some(slot) = self.properties.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if self.properties.len() < MAX_PROPERTIES {
            self.properties.push((key, value));
        }
    }

    /// Adds an action received with the beacon's page URL.
    pub fn push_action(&mut self, e: ActionEvent, page: Option<&str>, t: i64) {
        let page = match page {
            None => 0,
            Some(p) => {
                if let Some(i) = self.pages.iter().rposition(|known| &**known == p) {
                    i as u32 + 1
                } else {
                    self.pages.push(p.into());
                    self.pages.len() as u32
                }
            }
        };
        let has_extra = e.method.is_some() || e.traceparent.is_some() || !e.timings.is_empty() || !e.resources.is_empty();
        let extra = has_extra.then(|| {
            Box::new(ActionExtra {
                method: e.method.map(String::into_boxed_str),
                traceparent: e.traceparent.map(String::into_boxed_str),
                timings: e.timings.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect(),
                resources: e.resources.into_boxed_slice(),
            })
        });
        if self.actions.len() == self.actions.capacity() {
            // grow by a quarter, not double: open sessions are what fills a collector's memory
            self.actions.reserve_exact((self.actions.len() / 4).max(2));
        }
        self.actions.push(Action {
            t,
            dur: e.dur,
            name: e.name.into_boxed_str(),
            url: e.url.map(String::into_boxed_str),
            extra,
            page,
            status: e.status,
            kind: e.kind,
        });
    }

    fn page(&self, a: &Action) -> Option<&str> {
        (a.page > 0).then(|| &*self.pages[a.page as usize - 1])
    }

    fn thresholds(&self, settings: &Settings, a: &Action) -> Thresholds {
        if let Some(th) = settings.key_actions.get(&self.app).and_then(|m| m.get(&*a.name)) {
            return *th;
        }
        match a.kind {
            ActionType::Load => settings.apdex.load,
            ActionType::Xhr => settings.apdex.xhr,
            ActionType::Custom => settings.apdex.custom,
        }
    }

    /// Builds the summary and detail; `id` is this session's [`Session::id`] (the caller has
    /// usually computed it already). `end_reason` is `None` for a live (open) session, which
    /// gets no UX score. Adds the closed session's metrics to `metrics` when given.
    pub fn finalize(
        &self,
        id: String,
        settings: &Settings,
        ua: &UserAgent,
        end_reason: Option<EndReason>,
        metrics: Option<&mut SessionMetrics>,
    ) -> Closed {
        // actions by (t, arrival): a stable sort keeps arrival order among equal times
        let mut order: Vec<usize> = (0..self.actions.len()).collect();
        order.sort_by_key(|&i| self.actions[i].t);

        let error_action: Vec<Option<usize>> = self.errors.iter().map(|e| attach(&self.actions, &order, e.t)).collect();
        let mut action_errors = vec![0u32; self.actions.len()];
        let mut action_failed = vec![false; self.actions.len()];
        for (e, pos) in self.errors.iter().zip(&error_action) {
            if let Some(pos) = *pos {
                action_errors[pos] += 1;
                if matches!(e.kind, ErrorKind::Js | ErrorKind::Request) {
                    action_failed[pos] = true;
                }
            }
        }
        let mut counts = ApdexCounts::default();
        let mut categories = Vec::with_capacity(order.len());
        for (pos, &i) in order.iter().enumerate() {
            let a = &self.actions[i];
            let failed = action_failed[pos] || (a.kind == ActionType::Xhr && a.status.is_some_and(|s| s >= 400));
            let c = apdex::rate(a.dur, failed, self.thresholds(settings, a));
            counts.add(c);
            categories.push(c);
        }
        let ux_score = end_reason.map(|_| {
            ux::score(&settings.ux_rules(), &counts, categories.last().copied(), self.errors.len() as u32, self.rage.len() as u32)
        });

        let times = self
            .errors
            .iter()
            .map(|e| e.t)
            .chain(self.vitals.iter().map(|v| v.t))
            .chain(self.rage.iter().map(|r| r.t))
            .chain(self.end.iter().map(|e| e.1));
        let action_starts = self.actions.iter().map(|a| a.t);
        let action_ends = self.actions.iter().map(|a| a.t + a.dur.floor() as i64);
        let start = times.clone().chain(action_starts).min().unwrap_or(self.first_recv);
        let end = times.chain(action_ends).max().unwrap_or(self.last_recv);

        let mut errors_by_kind = [0u32; 3];
        for e in &self.errors {
            errors_by_kind[e.kind as usize] += 1;
        }
        let page_of = |i: usize| -> Option<&str> { self.page(&self.actions[i]).or(self.actions[i].url.as_deref()) };
        let entry_page = order.first().and_then(|&i| page_of(i));
        let exit_page = order.last().and_then(|&i| page_of(i));

        let mut vitals: BTreeMap<&str, (f64, Option<&'static str>)> = BTreeMap::new();
        for v in &self.vitals {
            let slot = vitals.entry(&v.name).or_insert((v.value, None));
            if v.value > slot.0 {
                slot.0 = v.value;
            }
            slot.1 = apdex::vital_rating(&v.name, slot.0);
        }
        let mut action_names: Vec<&str> = Vec::new();
        for &i in &order {
            let n = &*self.actions[i].name;
            if action_names.len() >= MAX_ACTION_NAMES {
                break;
            }
            if !action_names.contains(&n) {
                action_names.push(n);
            }
        }
        let mut properties: Vec<(&str, &str)> = self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        properties.sort_unstable_by_key(|p| p.0); // keys are distinct (`set_property`)
        let user_type = if ua.robot {
            "robot"
        } else if self.synthetic {
            "synthetic"
        } else {
            "real"
        };

        let text_len = |s: &str| s.len() + 16;
        let mut w = JsonWriter::with_capacity(
            700 + self.actions.iter().take(MAX_ACTION_NAMES).map(|a| text_len(&a.name)).sum::<usize>()
                + self.properties.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
                + 2 * entry_page.map_or(0, text_len),
        );
        w.begin_object();
        w.key("session_id");
        w.str(&id);
        w.key("client_sid");
        w.str(&self.sid);
        w.key("part");
        w.int(self.part);
        w.key("app");
        w.str(&self.app);
        w.key("user_tag");
        w.opt_str(self.user_tag.as_deref());
        w.key("visitor_id");
        w.opt_str(self.visitor_id.as_deref());
        w.key("start");
        w.int(start);
        w.key("end");
        w.int(end);
        w.key("duration_ms");
        w.int(end - start);
        w.key("end_reason");
        w.opt_str(end_reason.map(EndReason::as_str));
        w.key("live");
        w.bool(end_reason.is_none());
        w.key("ux_score");
        w.opt_str(ux_score.map(UxScore::as_str));
        w.key("apdex");
        w.opt_float(counts.score());
        w.key("apdex_counts");
        w.begin_object();
        w.key("satisfied");
        w.int(counts.satisfied);
        w.key("tolerating");
        w.int(counts.tolerating);
        w.key("frustrated");
        w.int(counts.frustrated);
        w.end_object();
        w.key("action_count");
        w.uint(self.actions.len());
        w.key("error_count");
        w.uint(self.errors.len());
        w.key("errors_by_kind");
        w.begin_object();
        for kind in ErrorKind::IN_KEY_ORDER {
            w.key(kind.as_str());
            w.int(errors_by_kind[kind as usize]);
        }
        w.end_object();
        w.key("has_error");
        w.bool(!self.errors.is_empty());
        w.key("bounce");
        w.bool(self.actions.len() <= 1);
        w.key("entry_page");
        w.opt_str(entry_page);
        w.key("exit_page");
        w.opt_str(exit_page);
        w.key("rage_clicks");
        w.uint(self.rage.len());
        w.key("vitals");
        w.begin_object();
        for (name, (value, rating)) in &vitals {
            w.key_str(name);
            w.begin_object();
            w.key("value");
            w.float(*value);
            w.key("rating");
            w.opt_str(*rating);
            w.end_object();
        }
        w.end_object();
        w.key("action_names");
        w.begin_array();
        for n in &action_names {
            w.element();
            w.str(n);
        }
        w.end_array();
        for (key, software) in [("browser", &ua.browser), ("os", &ua.os)] {
            w.key(key);
            w.begin_object();
            w.key("family");
            w.str(&software.family);
            w.key("version");
            w.opt_str(software.version.as_deref());
            w.end_object();
        }
        w.key("device_type");
        w.str(ua.device_type);
        w.key("screen");
        w.opt_str(self.screen.as_deref());
        w.key("ip");
        w.opt_str(self.ip.as_deref());
        w.key("country");
        w.null();
        w.key("user_type");
        w.str(user_type);
        w.key("properties");
        write_properties(&mut w, &properties);
        w.end_object();
        let summary = w.into_bytes();

        let mut w = JsonWriter::with_capacity(detail_capacity(self));
        w.begin_object();
        w.key("actions");
        w.begin_array();
        for (pos, &i) in order.iter().enumerate() {
            let a = &self.actions[i];
            let x = a.extra();
            w.element();
            w.begin_object();
            w.key("index");
            w.uint(pos);
            w.key("type");
            w.str(a.kind.as_str());
            w.key("name");
            w.str(&a.name);
            w.key("url");
            w.opt_str(a.url.as_deref());
            w.key("page");
            w.opt_str(self.page(a));
            w.key("method");
            w.opt_str(x.method.as_deref());
            w.key("start");
            w.int(a.t);
            w.key("duration");
            w.float(a.dur);
            w.key("apdex");
            w.str(categories[pos].as_str());
            w.key("status");
            w.opt_int(a.status);
            w.key("traceparent");
            w.opt_str(x.traceparent.as_deref());
            w.key("trace_id");
            w.opt_str(x.traceparent.as_deref().map(|t| &t[3..35]));
            w.key("timings");
            w.begin_object();
            if !x.timings.is_empty() {
                // truncated keys may repeat: the last value wins, as in a map
                let timings: BTreeMap<&str, f64> = x.timings.iter().map(|(k, v)| (&**k, *v)).collect();
                for (k, v) in timings {
                    w.key_str(k);
                    w.float(v);
                }
            }
            w.end_object();
            w.key("resources");
            w.begin_array();
            for r in &*x.resources {
                w.element();
                write_resource(&mut w, r);
            }
            w.end_array();
            w.key("error_count");
            w.int(action_errors[pos]);
            w.end_object();
        }
        w.end_array();
        w.key("errors");
        w.begin_array();
        for (e, action) in self.errors.iter().zip(&error_action) {
            w.element();
            w.begin_object();
            w.key("kind");
            w.str(e.kind.as_str());
            w.key("message");
            w.opt_str(e.message.as_deref());
            w.key("stack");
            w.opt_str(e.stack.as_deref());
            w.key("start");
            w.int(e.t);
            w.key("action");
            match action {
                Some(a) => w.uint(*a),
                None => w.null(),
            }
            w.end_object();
        }
        w.end_array();
        w.key("vitals");
        w.begin_array();
        for v in &self.vitals {
            w.element();
            w.begin_object();
            w.key("name");
            w.str(&v.name);
            w.key("value");
            w.float(v.value);
            w.key("rating");
            w.opt_str(apdex::vital_rating(&v.name, v.value));
            w.key("start");
            w.int(v.t);
            w.end_object();
        }
        w.end_array();
        w.key("rage_clicks");
        w.begin_array();
        for r in &self.rage {
            w.element();
            w.begin_object();
            w.key("target");
            w.opt_str(r.target.as_deref());
            w.key("count");
            w.int(r.count);
            w.key("start");
            w.int(r.t);
            w.end_object();
        }
        w.end_array();
        w.key("user_tags");
        w.begin_array();
        for (tag, at) in &self.user_tags {
            w.element();
            w.begin_object();
            w.key("tag");
            w.str(tag);
            w.key("at");
            w.int(*at);
            w.end_object();
        }
        w.end_array();
        w.key("properties");
        write_properties(&mut w, &properties);
        w.key("end_detail");
        w.opt_str(self.end.as_ref().and_then(|e| e.0.as_deref()));
        w.end_object();
        let detail = w.into_bytes();

        if let Some(m) = metrics {
            // counted per (type, category) first: one map entry per kind, not per action
            let mut per_kind = [[0u64; 3]; 3];
            for (pos, &i) in order.iter().enumerate() {
                per_kind[self.actions[i].kind as usize][categories[pos] as usize] += 1;
            }
            for kind in [ActionType::Load, ActionType::Xhr, ActionType::Custom] {
                for category in [ApdexCategory::Satisfied, ApdexCategory::Tolerating, ApdexCategory::Frustrated] {
                    let n = per_kind[kind as usize][category as usize];
                    if n > 0 {
                        *m.actions.entry((self.app.clone(), kind.as_str(), category.as_str())).or_default() += n;
                    }
                }
            }
            for kind in ErrorKind::IN_KEY_ORDER {
                let n = errors_by_kind[kind as usize];
                if n > 0 {
                    *m.errors.entry((self.app.clone(), kind.as_str())).or_default() += u64::from(n);
                }
            }
            for v in &self.vitals {
                m.vitals.push((self.app.clone(), v.name.clone(), v.value));
            }
        }
        Closed {
            session_id: id,
            app: self.app.clone(),
            user_tag: self.user_tag.clone(),
            start_ms: start,
            end_ms: end,
            end_reason,
            summary,
            detail,
        }
    }
}

fn write_properties(w: &mut JsonWriter, properties: &[(&str, &str)]) {
    w.begin_object();
    for (k, v) in properties {
        w.key_str(k);
        w.str(v);
    }
    w.end_object();
}

/// A resource entry leaves its absent fields out.
fn write_resource(w: &mut JsonWriter, r: &Resource) {
    w.begin_object();
    if let Some(url) = &r.url {
        w.key("url");
        w.str(url);
    }
    if let Some(initiator) = &r.initiator {
        w.key("initiator");
        w.str(initiator);
    }
    for (key, value) in [("start", r.start), ("dur", r.dur)] {
        if let Some(v) = value {
            w.key(key);
            w.float(v);
        }
    }
    if let Some(status) = r.status {
        w.key("status");
        w.int(status);
    }
    if let Some(size) = r.size {
        w.key("size");
        w.float(size);
    }
    w.end_object();
}

/// Enough for a session's detail in one allocation, most of the time.
fn detail_capacity(s: &Session) -> usize {
    let opt = |o: &Option<Box<str>>| o.as_deref().map_or(0, str::len);
    let actions: usize = s
        .actions
        .iter()
        .map(|a| 330 + a.name.len() + opt(&a.url) + a.extra.as_ref().map_or(0, |x| 200 + 90 * x.resources.len() + 30 * x.timings.len()))
        .sum();
    let text = |o: &Option<String>| o.as_deref().map_or(0, str::len);
    let errors: usize = s.errors.iter().map(|e| 90 + text(&e.message) + text(&e.stack)).sum();
    let pages: usize = s.pages.iter().map(|p| p.len()).max().unwrap_or(0) * s.actions.len();
    200 + actions + pages + errors + 90 * (s.vitals.len() + s.rage.len() + s.user_tags.len())
        + s.properties.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
}

/// Position (in time order) of the action an error at `t` belongs to (docs §6).
fn attach(actions: &[Action], order: &[usize], t: i64) -> Option<usize> {
    let containing = order.iter().rposition(|&i| {
        let a = &actions[i];
        a.t <= t && (t as f64) <= a.t as f64 + a.dur
    });
    containing
        .or_else(|| order.iter().rposition(|&i| actions[i].t <= t))
        .or_else(|| (!order.is_empty()).then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_reason_has_its_name() {
        for r in [EndReason::Timeout, EndReason::DurationLimit, EndReason::ActionLimit, EndReason::EndEvent, EndReason::OpenLimit] {
            let n = match r {
                EndReason::Timeout => "timeout",
                EndReason::DurationLimit => "duration_limit",
                EndReason::ActionLimit => "action_limit",
                EndReason::EndEvent => "end_event",
                EndReason::OpenLimit => "open_limit",
            };
            assert_eq!(r.as_str(), n);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{n}\""));
        }
    }

    #[test]
    fn session_id_is_stable_and_url_safe() {
        let a = session_id("shop", "0f8c2d2e", 1, 1_764_126_000_000);
        assert_eq!(a, session_id("shop", "0f8c2d2e", 1, 1_764_126_000_000));
        assert_ne!(a, session_id("shop", "0f8c2d2e", 2, 1_764_126_000_000));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
