//! The user experience score of a closed session.
use crate::apdex::{ApdexCategory, ApdexCounts};
use serde::{Deserialize, Serialize};

/// How a whole session felt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UxScore {
    /// No frustrating element and at least `satisfied_ratio` of the weight satisfied.
    Satisfying,
    /// Neither satisfying nor frustrating.
    Tolerable,
    /// At least `frustrated_ratio` of the weight frustrated, or the last action frustrated.
    Frustrating,
}

impl UxScore {
    pub fn as_str(self) -> &'static str {
        match self {
            UxScore::Satisfying => "satisfying",
            UxScore::Tolerable => "tolerable",
            UxScore::Frustrating => "frustrating",
        }
    }
}

/// Weights of the elements of a session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub action: f64,
    pub error: f64,
    pub rage_click: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { action: 3.0, error: 1.0, rage_click: 2.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UxRules {
    pub weights: Weights,
    pub frustrated_ratio: f64,
    pub satisfied_ratio: f64,
    pub last_action_rule: bool,
}

/// Scores a session from its action categories, its error count and its rage clicks.
pub fn score(
    rules: &UxRules,
    actions: &ApdexCounts,
    last_action: Option<ApdexCategory>,
    errors: u32,
    rage_clicks: u32,
) -> UxScore {
    let w = rules.weights;
    let s = f64::from(actions.satisfied) * w.action;
    let t = f64::from(actions.tolerating) * w.action;
    let f = f64::from(actions.frustrated) * w.action
        + f64::from(errors) * w.error
        + f64::from(rage_clicks) * w.rage_click;
    let total = s + t + f;
    let last_frustrated = rules.last_action_rule && last_action == Some(ApdexCategory::Frustrated);
    if (total > 0.0 && f / total >= rules.frustrated_ratio) || last_frustrated {
        UxScore::Frustrating
    } else if f == 0.0 && total > 0.0 && s / total >= rules.satisfied_ratio {
        UxScore::Satisfying
    } else {
        UxScore::Tolerable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UxRules {
        UxRules { weights: Weights::default(), frustrated_ratio: 0.3, satisfied_ratio: 0.5, last_action_rule: true }
    }

    fn counts(s: u32, t: u32, f: u32) -> ApdexCounts {
        ApdexCounts { satisfied: s, tolerating: t, frustrated: f }
    }

    #[test]
    fn every_variant_has_its_name() {
        for u in [UxScore::Satisfying, UxScore::Tolerable, UxScore::Frustrating] {
            let n = match u {
                UxScore::Satisfying => "satisfying",
                UxScore::Tolerable => "tolerable",
                UxScore::Frustrating => "frustrating",
            };
            assert_eq!(u.as_str(), n);
        }
    }

    #[test]
    fn all_satisfied_is_satisfying() {
        assert_eq!(score(&rules(), &counts(3, 0, 0), Some(ApdexCategory::Satisfied), 0, 0), UxScore::Satisfying);
    }

    #[test]
    fn one_error_is_not_satisfying() {
        // 9 satisfied weight vs 1 error: F/total = 0.1 < 0.3, but an error forbids satisfying
        assert_eq!(score(&rules(), &counts(3, 0, 0), Some(ApdexCategory::Satisfied), 1, 0), UxScore::Tolerable);
    }

    #[test]
    fn thirty_percent_frustrated_is_frustrating() {
        // 7 satisfied actions (21) + 9 error weight = 30 total, F = 9 → exactly 30 %
        assert_eq!(score(&rules(), &counts(7, 0, 0), Some(ApdexCategory::Satisfied), 9, 0), UxScore::Frustrating);
        assert_eq!(score(&rules(), &counts(7, 0, 0), Some(ApdexCategory::Satisfied), 8, 0), UxScore::Tolerable);
    }

    #[test]
    fn last_action_rule_and_its_switch() {
        let c = counts(9, 0, 1);
        assert_eq!(score(&rules(), &c, Some(ApdexCategory::Frustrated), 0, 0), UxScore::Frustrating);
        let off = UxRules { last_action_rule: false, ..rules() };
        assert_eq!(score(&off, &c, Some(ApdexCategory::Frustrated), 0, 0), UxScore::Tolerable);
    }

    #[test]
    fn rage_clicks_weigh_two() {
        // 1 satisfied action (3) + 1 rage click (2): F/total = 0.4
        assert_eq!(score(&rules(), &counts(1, 0, 0), Some(ApdexCategory::Satisfied), 0, 1), UxScore::Frustrating);
    }

    #[test]
    fn mostly_tolerating_is_tolerable_and_empty_is_tolerable() {
        assert_eq!(score(&rules(), &counts(1, 2, 0), Some(ApdexCategory::Tolerating), 0, 0), UxScore::Tolerable);
        assert_eq!(score(&rules(), &counts(0, 0, 0), None, 0, 0), UxScore::Tolerable);
    }
}
