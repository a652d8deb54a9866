//! The `[decision]` section of the configuration (its keys and defaults are listed in
//! libs/config/src/defaults.toml).

use serde::Deserialize;

/// How decisions are made, learned from and measured.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionSettings {
    /// Share of all customers held out of every decision (0 to 0.5), for uplift against doing nothing.
    pub global_holdout_share: f64,
    /// Salt of the global holdout's hash, so it can be redrawn.
    pub global_holdout_salt: String,
    /// An outcome sent with a customer but no decision id is attributed to that customer's latest decision
    /// within this many seconds before it.
    pub attribution_window_seconds: i64,
    /// The outcome kinds that count as a success for the bandit: "clicked", "converted".
    pub reward: String,
    /// Segment the bandit by this profile path (e.g. "computed.lifecycle_stage"); empty for one posterior
    /// per offer.
    pub bandit_segment_field: String,
    /// Posterior draws used to estimate each offer's choice probability (Monte Carlo).
    pub choice_probability_draws: usize,
    /// Seconds between writes of the bandit's counts to the database (and reads of other replicas').
    pub bandit_flush_seconds: f64,
    /// The time zone of customers without a `time_zone` trait (IANA name).
    pub default_time_zone: String,
    /// The consent region of customers without a two-letter `country` trait; empty: consent's default.
    pub default_region: String,
    /// Milliseconds between checks for campaign timers that are due.
    pub timer_poll_ms: u64,
    /// Seconds a claimed timer stays claimed before another worker may take it (a crashed worker's).
    pub timer_lease_seconds: i64,
    /// Milliseconds between checks of scheduled campaigns' cron expressions.
    pub schedule_poll_ms: u64,
    /// Customers decided and sent per batch of a scheduled campaign.
    pub schedule_batch: usize,
}

impl Default for DecisionSettings {
    fn default() -> Self {
        Self {
            global_holdout_share: 0.0,
            global_holdout_salt: "global-holdout".into(),
            attribution_window_seconds: 7 * 86_400,
            reward: "clicked".into(),
            bandit_segment_field: String::new(),
            choice_probability_draws: 200,
            bandit_flush_seconds: 1.0,
            default_time_zone: "UTC".into(),
            default_region: String::new(),
            timer_poll_ms: 1000,
            timer_lease_seconds: 60,
            schedule_poll_ms: 10_000,
            schedule_batch: 200,
        }
    }
}

impl DecisionSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=0.5).contains(&self.global_holdout_share) {
            return Err("decision.global_holdout_share: must be between 0 and 0.5".into());
        }
        if self.attribution_window_seconds <= 0 {
            return Err("decision.attribution_window_seconds: must be positive".into());
        }
        if !matches!(self.reward.as_str(), "clicked" | "converted") {
            return Err(format!("decision.reward: `{}` must be clicked or converted", self.reward));
        }
        if !(1..=10_000).contains(&self.choice_probability_draws) {
            return Err("decision.choice_probability_draws: must be between 1 and 10000".into());
        }
        if !self.bandit_flush_seconds.is_finite() || self.bandit_flush_seconds <= 0.0 {
            return Err("decision.bandit_flush_seconds: must be positive".into());
        }
        if self.default_time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!("decision.default_time_zone: `{}` is not an IANA time zone", self.default_time_zone));
        }
        if self.timer_poll_ms == 0 || self.schedule_poll_ms == 0 {
            return Err("decision.timer_poll_ms and decision.schedule_poll_ms: must be positive".into());
        }
        if self.timer_lease_seconds <= 0 {
            return Err("decision.timer_lease_seconds: must be positive".into());
        }
        if !(1..=1000).contains(&self.schedule_batch) {
            return Err("decision.schedule_batch: must be between 1 and 1000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_defaults_are_these_defaults() {
        let s =
            rapport_config::Settings::load_with_env(None, &rapport_config::Overrides::default(), Vec::new()).unwrap();
        let loaded: DecisionSettings = s.section("decision").unwrap();
        let d = DecisionSettings::default();
        assert_eq!(format!("{loaded:?}"), format!("{d:?}"));
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(DecisionSettings::default().validate().is_ok());
        let bad = DecisionSettings { global_holdout_share: 0.9, ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("decision.global_holdout_share"));
        let bad = DecisionSettings { default_time_zone: "Mars/Olympus".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("decision.default_time_zone"));
        let bad = DecisionSettings { reward: "opened".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("decision.reward"));
    }
}
