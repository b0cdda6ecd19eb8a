//! The car's configuration: `[car]` (where the vehicle state comes from, and the local clock), `[energy]`
//! (the power model and the electricity tariff), and [`CarConfig`], which adds the owner's rules and checks
//! the three together.

use serde::{Deserialize, Serialize};

use super::policy::OwnerPolicy;
use super::week::parse_week_time;

/// Where the car's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Not a car (a bench machine, a home server): always admitted, no vehicle state.
    #[default]
    None,
    /// A simulated car following a weekly commute ([`SimulatedCar`](super::SimulatedCar)), on a clock that
    /// may run fast.
    Simulated,
    /// A vehicle integration pushes state with `POST /v1/vehicle`: no work until it has reported, and
    /// none once it has been silent for `stale_after_s`.
    External,
}

/// `[car]` in the config file: the vehicle source and the local clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CarSection {
    /// `none` (not a car), `simulated` or `external`.
    pub source: SourceKind,
    /// Seed of the simulated car's randomness.
    pub seed: u64,
    /// Where the simulated clock starts: `"ddd hh:mm"`, e.g. `"tue 01:00"`.
    pub sim_start: String,
    /// Simulated seconds per real second.
    pub sim_speed: f64,
    /// Local time = UTC + this many minutes (the owner's hours, tariff windows, departure history).
    pub utc_offset_min: i32,
    /// An external feed silent for this many seconds stops work.
    pub stale_after_s: u64,
}

impl Default for CarSection {
    fn default() -> Self {
        Self {
            source: SourceKind::None,
            seed: 1,
            sim_start: "tue 01:00".into(),
            sim_speed: 1.0,
            utc_offset_min: 0,
            stale_after_s: 30,
        }
    }
}

/// `[energy]` in the config file: the power model and the electricity tariff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergySection {
    /// Power of the awake car computer with nothing to do (W).
    pub awake_w: f64,
    /// Extra power per busy inference thread (W).
    pub active_w_per_thread: f64,
    /// Energy to wake the computer from sleep (Wh).
    pub wake_wh: f64,
    /// The computer sleeps again after this many seconds without work.
    pub idle_after_s: u64,
    /// Electricity price outside the off-peak hours, micro-credits per kWh.
    pub peak_price: u64,
    /// Electricity price in the off-peak hours, micro-credits per kWh.
    pub offpeak_price: u64,
    /// Local hours (0-23) of the off-peak tariff.
    pub offpeak_hours: Vec<u8>,
}

impl Default for EnergySection {
    fn default() -> Self {
        Self {
            awake_w: 30.0,
            active_w_per_thread: 15.0,
            wake_wh: 0.5,
            idle_after_s: 60,
            peak_price: 300_000,
            offpeak_price: 100_000,
            offpeak_hours: vec![22, 23, 0, 1, 2, 3, 4, 5, 6],
        }
    }
}

/// Everything a [`Car`](super::Car) is configured with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CarConfig {
    /// Source and clock.
    pub car: CarSection,
    /// The owner's rules.
    pub owner: OwnerPolicy,
    /// Power model and tariff.
    pub energy: EnergySection,
}

impl CarConfig {
    /// Checks values that parse but cannot work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        parse_week_time(&self.car.sim_start).map_err(|e| format!("car.sim_start: {e}"))?;
        if !(self.car.sim_speed > 0.0 && self.car.sim_speed <= 100_000.0) {
            return Err(format!(
                "car.sim_speed must be above 0 and at most 100000, got {}",
                self.car.sim_speed
            ));
        }
        let o = &self.owner;
        if !(0.0..=1.0).contains(&o.departure_confidence) {
            return Err(format!(
                "owner.departure_confidence must be between 0 and 1, got {}",
                o.departure_confidence
            ));
        }
        for (key, hours) in [
            ("owner.allowed_hours", &o.allowed_hours),
            ("energy.offpeak_hours", &self.energy.offpeak_hours),
        ] {
            if let Some(h) = hours.iter().find(|h| **h > 23) {
                return Err(format!("{key}: hours are 0 to 23, got {h}"));
            }
        }
        let e = &self.energy;
        for (key, w) in [
            ("energy.awake_w", e.awake_w),
            ("energy.active_w_per_thread", e.active_w_per_thread),
            ("energy.wake_wh", e.wake_wh),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("{key} must be zero or more, got {w}"));
            }
        }
        Ok(())
    }
}
