//! Engine settings, validated as a whole.

use serde::{Deserialize, Serialize};

use crate::agg::{MAX_MOMENT_GOALS, MAX_SEGMENT_DIMS};
use crate::rules::Rules;
use crate::time::{HumanDuration, Millis, DAY, HOUR, MINUTE};

/// Most configured breakdown attributes (the built-in `source` and `first_touchpoint` come on top).
pub const MAX_BREAKDOWNS: usize = 6;

/// Everything the engine needs to know besides the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// A longer gap between two events of a customer starts a new session.
    pub session_gap: Millis,
    /// A session is split once it would last longer than this.
    pub session_max_duration: Millis,
    /// How far behind the largest event time seen an event may arrive and still be on time.
    pub allowed_lateness: Millis,
    /// Events beyond this many in one open session are rejected.
    pub session_max_events: usize,
    /// Conversion window: a journey covers events up to `t0 + journey_window`.
    pub journey_window: Millis,
    /// Attribute paths whose first-touch value breaks journeys down.
    pub breakdowns: Vec<String>,
    /// Distinct values kept per breakdown dimension; the rest fold into `other`.
    pub breakdown_max_values: usize,
    /// Breakdown dimensions (names of [`EngineConfig::dimension_names`]) that carry full
    /// aggregates per value, so every report can be restricted to one value
    /// (`segment=DIM:VALUE`); at most [`MAX_SEGMENT_DIMS`], each with at most
    /// `breakdown_max_values` values plus `(none)` and `other` (`breakdown.segment_dimensions`).
    pub segment_dimensions: Vec<String>,
    /// Goal phases whose moments of truth are tracked (`moments.goal_phases`, at most
    /// [`MAX_MOMENT_GOALS`]); the first is the default of `/v1/moments`. Empty: derived from
    /// the rules when a shard is created ([`EngineConfig::moment_goals`]).
    pub goal_phases: Vec<String>,
    /// How long minute buckets are kept.
    pub retention_fine: Millis,
    /// How long hour buckets are kept.
    pub retention_total: Millis,
    /// An event whose `(customer_id, event_id)` was seen within this much event time before
    /// the latest event is a duplicate and is dropped. `0` turns duplicate suppression off.
    pub dedup_horizon: Millis,
    /// Most event ids remembered per shard; the oldest are forgotten first.
    pub dedup_max_ids: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            session_gap: 30 * MINUTE,
            session_max_duration: 24 * HOUR,
            allowed_lateness: 5 * MINUTE,
            session_max_events: 10_000,
            journey_window: 30 * DAY,
            breakdowns: Vec::new(),
            breakdown_max_values: 100,
            segment_dimensions: Vec::new(),
            goal_phases: Vec::new(),
            retention_fine: 48 * HOUR,
            retention_total: 90 * DAY,
            dedup_horizon: 10 * MINUTE,
            dedup_max_ids: 1_000_000,
        }
    }
}

impl EngineConfig {
    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        let mut positive = |key: &str, v: Millis| {
            if v <= 0 {
                errs.push(format!("{key} must be positive, got {}", v));
            }
        };
        positive("session.gap", self.session_gap);
        positive("session.max_duration", self.session_max_duration);
        positive("journey.window", self.journey_window);
        if self.allowed_lateness < 0 {
            errs.push("session.allowed_lateness must not be negative".into());
        }
        if self.journey_window < self.allowed_lateness {
            errs.push(format!(
                "journey.window ({}) must be at least session.allowed_lateness ({})",
                HumanDuration(self.journey_window),
                HumanDuration(self.allowed_lateness)
            ));
        }
        if self.session_max_events == 0 {
            errs.push("session.max_events must be at least 1".into());
        }
        if self.retention_fine < MINUTE {
            errs.push("retention.fine must be at least 1m".into());
        }
        if self.retention_total < self.retention_fine.max(HOUR) {
            errs.push(format!(
                "retention.total ({}) must be at least retention.fine ({}) and 1h",
                HumanDuration(self.retention_total),
                HumanDuration(self.retention_fine)
            ));
        }
        if self.dedup_horizon < 0 {
            errs.push("dedup.horizon must not be negative".into());
        }
        if self.dedup_horizon > 0 && self.dedup_max_ids == 0 {
            errs.push("dedup.max_ids must be at least 1 while dedup.horizon is set".into());
        }
        if !(1..=60_000).contains(&self.breakdown_max_values) {
            errs.push(format!(
                "breakdown.max_values must be between 1 and 60000, got {}",
                self.breakdown_max_values
            ));
        }
        if self.breakdowns.len() > MAX_BREAKDOWNS {
            errs.push(format!(
                "breakdown.attributes: at most {MAX_BREAKDOWNS} allowed, got {}",
                self.breakdowns.len()
            ));
        }
        for (i, b) in self.breakdowns.iter().enumerate() {
            if b.is_empty() || b.split('.').any(str::is_empty) {
                errs.push(format!(
                    "breakdown.attributes[{i}]: `{b}` is not an attribute path"
                ));
            } else if ["source", "first_touchpoint"].contains(&b.as_str()) {
                errs.push(format!(
                    "breakdown.attributes[{i}]: `{b}` is built in, remove it"
                ));
            } else if self.breakdowns[..i].contains(b) {
                errs.push(format!("breakdown.attributes[{i}]: duplicate `{b}`"));
            }
        }
        if self.segment_dimensions.len() > MAX_SEGMENT_DIMS {
            errs.push(format!(
                "breakdown.segment_dimensions: at most {MAX_SEGMENT_DIMS} allowed, got {}",
                self.segment_dimensions.len()
            ));
        }
        let dims = self.dimension_names();
        for (i, d) in self.segment_dimensions.iter().enumerate() {
            if !dims.contains(d) {
                errs.push(format!(
                    "breakdown.segment_dimensions[{i}]: `{d}` is no breakdown dimension (expected one of: {})",
                    dims.join(", ")
                ));
            } else if self.segment_dimensions[..i].contains(d) {
                errs.push(format!(
                    "breakdown.segment_dimensions[{i}]: duplicate `{d}`"
                ));
            }
        }
        if self.goal_phases.len() > MAX_MOMENT_GOALS {
            errs.push(format!(
                "moments.goal_phases: at most {MAX_MOMENT_GOALS} allowed, got {}",
                self.goal_phases.len()
            ));
        }
        for (i, g) in self.goal_phases.iter().enumerate() {
            if g.is_empty() {
                errs.push(format!("moments.goal_phases[{i}]: empty phase name"));
            } else if self.goal_phases[..i].contains(g) {
                errs.push(format!("moments.goal_phases[{i}]: duplicate `{g}`"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// Names of all breakdown dimensions, built-in first.
    pub fn dimension_names(&self) -> Vec<String> {
        let mut v = vec!["source".to_string(), "first_touchpoint".to_string()];
        v.extend(self.breakdowns.iter().cloned());
        v
    }

    /// The goal phases a new shard tracks moments of truth for (docs/semantics.md §6
    /// "Moments of truth"): `goal_phases` when set; else the earliest phase (in the rules'
    /// order) holding a `goal = true` touchpoint, else the rules' last phase; none when the
    /// rules have no phases.
    pub fn moment_goals(&self, rules: &Rules) -> Vec<String> {
        if !self.goal_phases.is_empty() {
            return self.goal_phases.clone();
        }
        let phase = rules
            .touchpoints()
            .iter()
            .filter(|t| t.goal)
            .map(|t| t.phase)
            .min()
            .or_else(|| rules.phases().len().checked_sub(1));
        phase
            .and_then(|p| rules.phases().get(p))
            .cloned()
            .into_iter()
            .collect()
    }

    /// Positions of the segment dimensions in [`EngineConfig::dimension_names`], in the order
    /// of `segment_dimensions`; names that are no dimension are left out (validation refuses
    /// them).
    pub fn segment_indices(&self) -> Vec<usize> {
        let dims = self.dimension_names();
        self.segment_dimensions
            .iter()
            .filter_map(|s| dims.iter().position(|d| d == s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(EngineConfig::default().validate(), Ok(()));
    }

    #[test]
    fn reports_all_problems() {
        let cfg = EngineConfig {
            session_gap: 0,
            journey_window: MINUTE,
            allowed_lateness: 5 * MINUTE,
            retention_total: MINUTE,
            breakdowns: vec![
                "persona".into(),
                "source".into(),
                "persona".into(),
                "a..b".into(),
            ],
            ..EngineConfig::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err(),
            vec![
                "session.gap must be positive, got 0",
                "journey.window (1m) must be at least session.allowed_lateness (5m)",
                "retention.total (1m) must be at least retention.fine (2d) and 1h",
                "breakdown.attributes[1]: `source` is built in, remove it",
                "breakdown.attributes[2]: duplicate `persona`",
                "breakdown.attributes[3]: `a..b` is not an attribute path",
            ]
        );
    }

    #[test]
    fn moment_goals_default_to_the_phase_of_the_goal_touchpoints() {
        let rules = |goals: &str| {
            Rules::from_toml(&format!(
                r#"
phases = ["a", "b", "c", "d"]
[[touchpoint]]
name = "x"
phase = "c"
event = "x"
{goals}
[[touchpoint]]
name = "y"
phase = "b"
event = "y"
{goals}
"#
            ))
            .unwrap()
        };
        let cfg = EngineConfig::default();
        assert_eq!(
            cfg.moment_goals(&rules("goal = true")),
            ["b"],
            "the earliest"
        );
        assert_eq!(
            cfg.moment_goals(&rules("")),
            ["d"],
            "no goal: the last phase"
        );
        let set = EngineConfig {
            goal_phases: vec!["c".into(), "a".into()],
            ..EngineConfig::default()
        };
        assert_eq!(set.moment_goals(&rules("goal = true")), ["c", "a"]);
        let bad = EngineConfig {
            goal_phases: vec!["a".into(), "".into(), "a".into(), "b".into(), "c".into()],
            ..EngineConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            vec![
                "moments.goal_phases: at most 4 allowed, got 5",
                "moments.goal_phases[1]: empty phase name",
                "moments.goal_phases[2]: duplicate `a`",
            ]
        );
    }

    #[test]
    fn segment_dimensions_are_checked() {
        let cfg = EngineConfig {
            breakdowns: vec!["persona".into()],
            segment_dimensions: vec!["persona".into(), "utm".into(), "persona".into()],
            ..EngineConfig::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err(),
            vec![
                "breakdown.segment_dimensions: at most 2 allowed, got 3",
                "breakdown.segment_dimensions[1]: `utm` is no breakdown dimension (expected one of: source, first_touchpoint, persona)",
                "breakdown.segment_dimensions[2]: duplicate `persona`",
            ]
        );
        let ok = EngineConfig {
            breakdowns: vec!["persona".into()],
            segment_dimensions: vec!["persona".into(), "first_touchpoint".into()],
            ..EngineConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.segment_indices(), vec![2, 1]);
    }
}
