//! Apdex per action and web-vital ratings.
use serde::{Deserialize, Serialize};

/// How a user experienced one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApdexCategory {
    /// Duration ≤ T and no JS or request error.
    Satisfied,
    /// T < duration ≤ F and no JS or request error.
    Tolerating,
    /// Duration > F, or a JS or request error happened in the action.
    Frustrated,
}

impl ApdexCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ApdexCategory::Satisfied => "satisfied",
            ApdexCategory::Tolerating => "tolerating",
            ApdexCategory::Frustrated => "frustrated",
        }
    }
}

/// Apdex thresholds in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub t: f64,
    pub f: f64,
}

impl Default for Thresholds {
    /// T = 3 s, F = 12 s: DESIGN's defaults for load, XHR and custom actions.
    fn default() -> Self {
        Thresholds { t: 3000.0, f: 12000.0 }
    }
}

pub fn rate(duration_ms: f64, has_error: bool, th: Thresholds) -> ApdexCategory {
    if has_error {
        ApdexCategory::Frustrated
    } else if duration_ms <= th.t {
        ApdexCategory::Satisfied
    } else if duration_ms <= th.f {
        ApdexCategory::Tolerating
    } else {
        ApdexCategory::Frustrated
    }
}

/// Counts of actions per category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApdexCounts {
    pub satisfied: u32,
    pub tolerating: u32,
    pub frustrated: u32,
}

impl ApdexCounts {
    pub fn add(&mut self, c: ApdexCategory) {
        match c {
            ApdexCategory::Satisfied => self.satisfied += 1,
            ApdexCategory::Tolerating => self.tolerating += 1,
            ApdexCategory::Frustrated => self.frustrated += 1,
        }
    }

    /// (satisfied + tolerating / 2) / total; `None` without actions.
    pub fn score(&self) -> Option<f64> {
        let n = self.satisfied + self.tolerating + self.frustrated;
        (n > 0).then(|| (f64::from(self.satisfied) + f64::from(self.tolerating) / 2.0) / f64::from(n))
    }
}

/// Rating of a web vital against its good / needs-improvement limits (web-vitals thresholds).
pub fn vital_rating(name: &str, value: f64) -> Option<&'static str> {
    let (good, ni) = match name {
        "LCP" => (2500.0, 4000.0),
        "INP" => (200.0, 500.0),
        "CLS" => (0.1, 0.25),
        "FCP" => (1800.0, 3000.0),
        "TTFB" => (800.0, 1800.0),
        _ => return None,
    };
    Some(if value <= good {
        "good"
    } else if value <= ni {
        "needs-improvement"
    } else {
        "poor"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    const TH: Thresholds = Thresholds { t: 3000.0, f: 12000.0 };

    #[test]
    fn exactly_t_is_satisfied_and_exactly_f_is_tolerating() {
        assert_eq!(rate(3000.0, false, TH), ApdexCategory::Satisfied);
        assert_eq!(rate(3000.5, false, TH), ApdexCategory::Tolerating);
        assert_eq!(rate(12000.0, false, TH), ApdexCategory::Tolerating);
        assert_eq!(rate(12000.1, false, TH), ApdexCategory::Frustrated);
    }

    #[test]
    fn an_error_frustrates_a_fast_action() {
        assert_eq!(rate(1.0, true, TH), ApdexCategory::Frustrated);
    }

    #[test]
    fn every_category_has_its_name() {
        for c in [ApdexCategory::Satisfied, ApdexCategory::Tolerating, ApdexCategory::Frustrated] {
            let name = match c {
                ApdexCategory::Satisfied => "satisfied",
                ApdexCategory::Tolerating => "tolerating",
                ApdexCategory::Frustrated => "frustrated",
            };
            assert_eq!(c.as_str(), name);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn score_is_satisfied_plus_half_tolerating() {
        let mut c = ApdexCounts::default();
        assert_eq!(c.score(), None);
        c.add(ApdexCategory::Satisfied);
        c.add(ApdexCategory::Tolerating);
        c.add(ApdexCategory::Frustrated);
        c.add(ApdexCategory::Satisfied);
        assert!((c.score().unwrap() - 0.625).abs() < 1e-12);
    }

    #[test]
    fn vital_ratings_at_the_limits() {
        assert_eq!(vital_rating("LCP", 2500.0), Some("good"));
        assert_eq!(vital_rating("LCP", 4000.0), Some("needs-improvement"));
        assert_eq!(vital_rating("LCP", 4000.1), Some("poor"));
        assert_eq!(vital_rating("CLS", 0.1), Some("good"));
        assert_eq!(vital_rating("CLS", 0.26), Some("poor"));
        assert_eq!(vital_rating("INP", 201.0), Some("needs-improvement"));
        assert_eq!(vital_rating("FCP", 1800.0), Some("good"));
        assert_eq!(vital_rating("TTFB", 1801.0), Some("poor"));
        assert_eq!(vital_rating("FID", 10.0), None);
    }
}
