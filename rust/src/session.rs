//! One user session: what it accumulates from beacons and how it is finalized (docs §5–§7).
use crate::apdex::{self, ApdexCounts, Thresholds};
use crate::beacon::{ActionEvent, ActionType, ErrorKind, Resource};
use crate::settings::Settings;
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

#[derive(Serialize)]
struct Software<'a> {
    family: &'a str,
    version: Option<&'a str>,
}

#[derive(Serialize)]
struct Summary<'a> {
    session_id: &'a str,
    client_sid: &'a str,
    part: u32,
    app: &'a str,
    user_tag: Option<&'a str>,
    visitor_id: Option<&'a str>,
    start: i64,
    end: i64,
    duration_ms: i64,
    end_reason: Option<&'static str>,
    live: bool,
    ux_score: Option<&'static str>,
    apdex: Option<f64>,
    apdex_counts: ApdexCounts,
    action_count: usize,
    error_count: usize,
    errors_by_kind: BTreeMap<&'static str, u32>,
    has_error: bool,
    bounce: bool,
    entry_page: Option<&'a str>,
    exit_page: Option<&'a str>,
    rage_clicks: usize,
    vitals: BTreeMap<&'a str, VitalSummary>,
    action_names: Vec<&'a str>,
    browser: Software<'a>,
    os: Software<'a>,
    device_type: &'a str,
    screen: Option<&'a str>,
    ip: Option<&'a str>,
    country: Option<&'a str>,
    user_type: &'static str,
    properties: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct VitalSummary {
    value: f64,
    rating: Option<&'static str>,
}

#[derive(Serialize)]
struct ActionOut<'a> {
    index: usize,
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    url: Option<&'a str>,
    page: Option<&'a str>,
    method: Option<&'a str>,
    start: i64,
    duration: f64,
    apdex: &'static str,
    status: Option<u16>,
    traceparent: Option<&'a str>,
    trace_id: Option<&'a str>,
    timings: BTreeMap<&'a str, f64>,
    resources: Vec<ResourceOut<'a>>,
    error_count: u32,
}

#[derive(Serialize)]
struct ResourceOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initiator: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<f64>,
}

impl<'a> From<&'a Resource> for ResourceOut<'a> {
    fn from(r: &'a Resource) -> Self {
        ResourceOut {
            url: r.url.as_deref(),
            initiator: r.initiator.as_deref(),
            start: r.start,
            dur: r.dur,
            status: r.status,
            size: r.size,
        }
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    kind: &'static str,
    message: Option<&'a str>,
    stack: Option<&'a str>,
    start: i64,
    action: Option<usize>,
}

#[derive(Serialize)]
struct VitalOut<'a> {
    name: &'a str,
    value: f64,
    rating: Option<&'static str>,
    start: i64,
}

#[derive(Serialize)]
struct RageOut<'a> {
    target: Option<&'a str>,
    count: u32,
    start: i64,
}

#[derive(Serialize)]
struct TagOut<'a> {
    tag: &'a str,
    at: i64,
}

#[derive(Serialize)]
#[allow(clippy::struct_field_names)] // `end_detail` is the wire name (docs §7)
struct Detail<'a> {
    actions: Vec<ActionOut<'a>>,
    errors: Vec<ErrorOut<'a>>,
    vitals: Vec<VitalOut<'a>>,
    rage_clicks: Vec<RageOut<'a>>,
    user_tags: Vec<TagOut<'a>>,
    properties: BTreeMap<&'a str, &'a str>,
    end_detail: Option<&'a str>,
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

    /// Builds the summary and detail. `end_reason` is `None` for a live (open) session, which
    /// gets no UX score. Adds the closed session's metrics to `metrics` when given.
    pub fn finalize(
        &self,
        settings: &Settings,
        ua: &UserAgent,
        end_reason: Option<EndReason>,
        metrics: Option<&mut SessionMetrics>,
    ) -> Closed {
        let id = self.id();
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

        let mut errors_by_kind: BTreeMap<&'static str, u32> = [("js", 0), ("request", 0), ("custom", 0)].into();
        for e in &self.errors {
            *errors_by_kind.entry(e.kind.as_str()).or_default() += 1;
        }
        let page_of = |i: usize| -> Option<&str> { self.page(&self.actions[i]).or(self.actions[i].url.as_deref()) };
        let entry_page = order.first().and_then(|&i| page_of(i));
        let exit_page = order.last().and_then(|&i| page_of(i));

        let mut vitals: BTreeMap<&str, VitalSummary> = BTreeMap::new();
        for v in &self.vitals {
            let slot = vitals.entry(&v.name).or_insert(VitalSummary { value: v.value, rating: None });
            if v.value > slot.value {
                slot.value = v.value;
            }
            slot.rating = apdex::vital_rating(&v.name, slot.value);
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
        let properties: BTreeMap<&str, &str> = self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let user_type = if ua.robot {
            "robot"
        } else if self.synthetic {
            "synthetic"
        } else {
            "real"
        };
        let summary = Summary {
            session_id: &id,
            client_sid: &self.sid,
            part: self.part,
            app: &self.app,
            user_tag: self.user_tag.as_deref(),
            visitor_id: self.visitor_id.as_deref(),
            start,
            end,
            duration_ms: end - start,
            end_reason: end_reason.map(EndReason::as_str),
            live: end_reason.is_none(),
            ux_score: ux_score.map(UxScore::as_str),
            apdex: counts.score(),
            apdex_counts: counts,
            action_count: self.actions.len(),
            error_count: self.errors.len(),
            errors_by_kind,
            has_error: !self.errors.is_empty(),
            bounce: self.actions.len() <= 1,
            entry_page,
            exit_page,
            rage_clicks: self.rage.len(),
            vitals,
            action_names,
            browser: Software { family: &ua.browser.family, version: ua.browser.version.as_deref() },
            os: Software { family: &ua.os.family, version: ua.os.version.as_deref() },
            device_type: ua.device_type,
            screen: self.screen.as_deref(),
            ip: self.ip.as_deref(),
            country: None,
            user_type,
            properties: properties.clone(),
        };
        let actions: Vec<ActionOut> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| {
                let a = &self.actions[i];
                let x = a.extra();
                ActionOut {
                    index: pos,
                    kind: a.kind.as_str(),
                    name: &a.name,
                    url: a.url.as_deref(),
                    page: self.page(a),
                    method: x.method.as_deref(),
                    start: a.t,
                    duration: a.dur,
                    apdex: categories[pos].as_str(),
                    status: a.status,
                    traceparent: x.traceparent.as_deref(),
                    trace_id: x.traceparent.as_deref().map(|t| &t[3..35]),
                    timings: x.timings.iter().map(|(k, v)| (&**k, *v)).collect(),
                    resources: x.resources.iter().map(ResourceOut::from).collect(),
                    error_count: action_errors[pos],
                }
            })
            .collect();
        let detail = Detail {
            actions,
            errors: self
                .errors
                .iter()
                .zip(&error_action)
                .map(|(e, a)| ErrorOut {
                    kind: e.kind.as_str(),
                    message: e.message.as_deref(),
                    stack: e.stack.as_deref(),
                    start: e.t,
                    action: *a,
                })
                .collect(),
            vitals: self
                .vitals
                .iter()
                .map(|v| VitalOut { name: &v.name, value: v.value, rating: apdex::vital_rating(&v.name, v.value), start: v.t })
                .collect(),
            rage_clicks: self.rage.iter().map(|r| RageOut { target: r.target.as_deref(), count: r.count, start: r.t }).collect(),
            user_tags: self.user_tags.iter().map(|(tag, at)| TagOut { tag, at: *at }).collect(),
            properties,
            end_detail: self.end.as_ref().and_then(|e| e.0.as_deref()),
        };
        if let Some(m) = metrics {
            for (pos, &i) in order.iter().enumerate() {
                let key = (self.app.clone(), self.actions[i].kind.as_str(), categories[pos].as_str());
                *m.actions.entry(key).or_default() += 1;
            }
            for e in &self.errors {
                *m.errors.entry((self.app.clone(), e.kind.as_str())).or_default() += 1;
            }
            for v in &self.vitals {
                m.vitals.push((self.app.clone(), v.name.clone(), v.value));
            }
        }
        Closed {
            session_id: id.clone(),
            app: self.app.clone(),
            user_tag: self.user_tag.clone(),
            start_ms: start,
            end_ms: end,
            end_reason,
            summary: serde_json::to_vec(&summary).expect("summary serializes"),
            detail: serde_json::to_vec(&detail).expect("detail serializes"),
        }
    }
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
