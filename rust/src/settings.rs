//! Sessionizer settings, with DESIGN's defaults; parsed from JSON so any host can pass them.
use crate::apdex::Thresholds;
use crate::error::CoreError;
use crate::privacy::Scrubber;
use crate::ux::{UxRules, Weights};
use serde::Deserialize;
use std::collections::HashMap;

/// Apdex thresholds per action type.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApdexByType {
    pub load: Thresholds,
    pub xhr: Thresholds,
    pub custom: Thresholds,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub timeout_ms: u64,
    pub max_duration_ms: u64,
    pub max_actions: u32,
    /// open sessions kept in memory; beyond, the least recently active close (`open_limit`)
    pub max_open_sessions: u64,
    pub max_events: u32,
    pub apdex: ApdexByType,
    /// app → action name → thresholds (key user actions)
    pub key_actions: HashMap<String, HashMap<String, Thresholds>>,
    pub frustrated_ratio: f64,
    pub satisfied_ratio: f64,
    pub last_action_rule: bool,
    pub weights: Weights,
    pub mask_ip: bool,
    pub scrub_pii: bool,
    pub scrub_patterns: Vec<String>,
    pub ua_cache_size: usize,
    /// Sessions one `flush` (or the flush at the end of an `ingest`) closes for their timeout
    /// or duration limit at most; `Output::more_due` says when more are due. After a long
    /// outage every open session is due at once: closed in one call they were all held in
    /// memory together (~4.7 KiB each: 200k sessions took 935 MiB more at the peak).
    pub max_closed_per_call: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout_ms: 30 * 60 * 1000,
            max_duration_ms: 6 * 3600 * 1000,
            max_actions: 200,
            max_open_sessions: 500_000,
            max_events: 500,
            apdex: ApdexByType::default(),
            key_actions: HashMap::new(),
            frustrated_ratio: 0.30,
            satisfied_ratio: 0.50,
            last_action_rule: true,
            weights: Weights::default(),
            mask_ip: true,
            scrub_pii: true,
            scrub_patterns: Vec::new(),
            ua_cache_size: 4096,
            max_closed_per_call: 10_000,
        }
    }
}

fn check_thresholds(what: &str, th: Thresholds) -> Result<(), CoreError> {
    if !(th.t.is_finite() && th.f.is_finite() && th.t >= 0.0 && th.f >= th.t) {
        return Err(CoreError::Settings(format!("{what}: need 0 <= t <= f, got t={} f={}", th.t, th.f)));
    }
    Ok(())
}

impl Settings {
    /// Parses and validates settings given as a JSON object (`{}` = all defaults).
    pub fn from_json(text: &str) -> Result<Settings, CoreError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let s: Settings = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde's message ends with "at line 1 column N": useless for a dict from Python
            let inner = inner.split(" at line ").next().unwrap_or_default().to_owned();
            if path == "." {
                CoreError::Settings(inner)
            } else {
                CoreError::Settings(format!("{path}: {inner}"))
            }
        })?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::Settings(m));
        if self.timeout_ms == 0 {
            return bad("timeout_ms must be > 0".into());
        }
        if self.max_duration_ms == 0 {
            return bad("max_duration_ms must be > 0".into());
        }
        if self.max_actions == 0 {
            return bad("max_actions must be > 0".into());
        }
        if self.max_open_sessions == 0 {
            return bad("max_open_sessions must be > 0".into());
        }
        if self.max_events == 0 {
            return bad("max_events must be > 0".into());
        }
        if self.max_closed_per_call == 0 {
            return bad("max_closed_per_call must be > 0".into());
        }
        for (name, th) in [("apdex.load", self.apdex.load), ("apdex.xhr", self.apdex.xhr), ("apdex.custom", self.apdex.custom)] {
            check_thresholds(name, th)?;
        }
        for (app, names) in &self.key_actions {
            for (name, th) in names {
                check_thresholds(&format!("key_actions[{app:?}][{name:?}]"), *th)?;
            }
        }
        for (name, r) in [("frustrated_ratio", self.frustrated_ratio), ("satisfied_ratio", self.satisfied_ratio)] {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("{name} must be within 0..1, got {r}"));
            }
        }
        let w = self.weights;
        if [w.action, w.error, w.rage_click].iter().any(|x| !x.is_finite() || *x < 0.0) {
            return bad("weights must be finite and >= 0".into());
        }
        Scrubber::new(self.scrub_pii, &self.scrub_patterns).map_err(CoreError::Settings)?;
        Ok(())
    }

    pub fn ux_rules(&self) -> UxRules {
        UxRules {
            weights: self.weights,
            frustrated_ratio: self.frustrated_ratio,
            satisfied_ratio: self.satisfied_ratio,
            last_action_rule: self.last_action_rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_gives_design_defaults() {
        let s = Settings::from_json("{}").unwrap();
        assert_eq!(s.timeout_ms, 1_800_000);
        assert_eq!(s.max_duration_ms, 21_600_000);
        assert_eq!(s.max_actions, 200);
        assert_eq!(s.apdex.xhr, Thresholds { t: 3000.0, f: 12000.0 });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Settings::from_json(r#"{"timeout": 5}"#).unwrap_err().to_string().contains("unknown field"));
        assert!(Settings::from_json(r#"{"max_actions": 0}"#).is_err());
        assert!(Settings::from_json(r#"{"apdex": {"load": {"t": 5000, "f": 100}}}"#).is_err());
        assert!(Settings::from_json(r#"{"frustrated_ratio": 1.5}"#).is_err());
        assert!(Settings::from_json(r#"{"scrub_patterns": ["("]}"#).is_err());
        let e = Settings::from_json(r#"{"timeout_ms": -1}"#).unwrap_err().to_string();
        assert!(e.contains("timeout_ms"), "{e}");
        let e = Settings::from_json(r#"{"apdex": {"xhr": {"t": 1000}}}"#).unwrap_err().to_string();
        assert!(e.contains("apdex.xhr") && e.contains("`f`"), "{e}");
    }

    #[test]
    fn key_actions_parse() {
        let s = Settings::from_json(r#"{"key_actions": {"shop": {"POST /checkout": {"t": 1000, "f": 4000}}}}"#).unwrap();
        assert_eq!(s.key_actions["shop"]["POST /checkout"].t, 1000.0);
    }
}
