//! The car: its state, the owner's admission policy (with hysteresis), a simulated car driven by a day
//! profile, and departure prediction from the car's own history.
//!
//! Everything here is pure logic with time passed in (minutes since a Monday 00:00 local time), so that it
//! is tested without I/O and a simulated week runs in milliseconds. No location is read, kept or sent:
//! the state says *whether* the car is parked and plugged in, never *where*.

use serde::{Deserialize, Serialize};

/// Minutes in a week.
pub const WEEK_MIN: u64 = 7 * 24 * 60;

/// How the car reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Home or depot wifi: unmetered.
    Wifi,
    /// Cellular, paid per byte.
    Metered,
}

/// What the car reports (from a real vehicle integration, or [`SimulatedCar`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleState {
    /// Gear in park.
    pub parked: bool,
    /// Someone is in the driver's seat (or the car is unlocked and the key is near).
    pub driver_present: bool,
    /// Charging cable connected.
    pub plugged_in: bool,
    /// Energy flowing into the battery.
    pub charging: bool,
    /// State of charge, percent.
    pub soc_pct: f32,
    /// Battery temperature, °C.
    pub battery_temp_c: f32,
    /// Cabin temperature, °C.
    pub cabin_temp_c: f32,
    /// Network link.
    pub link: Link,
}

impl VehicleState {
    /// A parked car with nobody in it, not charging, at 20 °C, on wifi.
    pub fn parked(soc_pct: f32, plugged_in: bool) -> Self {
        Self {
            parked: true,
            driver_present: false,
            plugged_in,
            charging: false,
            soc_pct,
            battery_temp_c: 20.0,
            cabin_temp_c: 20.0,
            link: Link::Wifi,
        }
    }

    /// Checks that the values are physically possible.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.soc_pct) {
            return Err(format!("soc_pct must be 0 to 100, got {}", self.soc_pct));
        }
        for (name, t) in [
            ("battery_temp_c", self.battery_temp_c),
            ("cabin_temp_c", self.cabin_temp_c),
        ] {
            if !(-60.0..=120.0).contains(&t) {
                return Err(format!("{name} must be -60 to 120 °C, got {t}"));
            }
        }
        if self.charging && !self.plugged_in {
            return Err("charging requires plugged_in".into());
        }
        Ok(())
    }
}

/// The owner's rules for lending the car's computer. Defaults are conservative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnerPolicy {
    /// No work below this state of charge while plugged in (%).
    pub soc_floor_plugged_pct: f32,
    /// No work below this state of charge while unplugged (%).
    pub soc_floor_unplugged_pct: f32,
    /// Work resumes only this far above a floor, and below a temperature limit (% or °C).
    pub hysteresis: f32,
    /// No work above this battery temperature (°C).
    pub max_battery_temp_c: f32,
    /// No work above this cabin temperature (°C).
    pub max_cabin_temp_c: f32,
    /// After admission starts or stops for a soft reason (charge, temperature, window), it does not change
    /// again for this long (minutes). A driver returning or the gear leaving park stops work at once.
    pub min_dwell_min: u64,
    /// Hours of the day (local, 0-23) in which work is allowed; empty means any hour.
    pub allowed_hours: Vec<u8>,
    /// No bid on a job expected to outlast the predicted parked time, where the prediction counts a
    /// departure slot once this fraction (0-1) of the observed weeks left then.
    pub departure_confidence: f32,
    /// On a metered link, models larger than this (MiB) are not downloaded; models already here still run.
    pub metered_max_download_mib: u64,
}

impl Default for OwnerPolicy {
    fn default() -> Self {
        Self {
            soc_floor_plugged_pct: 30.0,
            soc_floor_unplugged_pct: 60.0,
            hysteresis: 5.0,
            max_battery_temp_c: 45.0,
            max_cabin_temp_c: 50.0,
            min_dwell_min: 5,
            allowed_hours: Vec::new(),
            departure_confidence: 0.5,
            metered_max_download_mib: 16,
        }
    }
}

/// Why work is or is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// All conditions hold.
    Admitted,
    /// The gear is not in park.
    Driving,
    /// The driver is present.
    DriverPresent,
    /// State of charge at or below the owner's floor.
    LowCharge,
    /// Battery or cabin too hot.
    TooHot,
    /// Outside the owner's allowed hours.
    OutsideWindow,
    /// Holding the previous decision until the minimum dwell time has passed.
    Dwell,
    /// No state from the vehicle (an external feed that never reported, or went silent).
    NoData,
}

/// The admission decision at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Work may run.
    pub admitted: bool,
    /// Why.
    pub reason: Reason,
}

/// Admission with hysteresis: separate stop and resume thresholds, and a minimum dwell between soft
/// transitions.
#[derive(Debug, Clone)]
pub struct Admission {
    policy: OwnerPolicy,
    admitted: bool,
    changed_at_min: Option<u64>,
}

impl Admission {
    /// Starts not admitted.
    pub fn new(policy: OwnerPolicy) -> Self {
        Self {
            policy,
            admitted: false,
            changed_at_min: None,
        }
    }

    /// Whether work is admitted now.
    pub fn admitted(&self) -> bool {
        self.admitted
    }

    /// The owner's policy.
    pub fn policy(&self) -> &OwnerPolicy {
        &self.policy
    }

    /// Feeds the car's state at `now_min` (minutes since a Monday 00:00, local) and returns the decision.
    pub fn update(&mut self, s: &VehicleState, now_min: u64) -> Decision {
        let p = &self.policy;
        // Hard stops: the driver's needs come first, no dwell.
        let hard = if !s.parked {
            Some(Reason::Driving)
        } else if s.driver_present {
            Some(Reason::DriverPresent)
        } else {
            None
        };
        if let Some(reason) = hard {
            self.set(false, now_min);
            return Decision {
                admitted: false,
                reason,
            };
        }
        // Soft conditions, with a margin to resume.
        let margin = if self.admitted { 0.0 } else { p.hysteresis };
        let floor = if s.plugged_in {
            p.soc_floor_plugged_pct
        } else {
            p.soc_floor_unplugged_pct
        };
        let hour = ((now_min % (24 * 60)) / 60) as u8;
        let soft = if s.soc_pct <= floor + margin {
            Some(Reason::LowCharge)
        } else if s.battery_temp_c >= p.max_battery_temp_c - margin
            || s.cabin_temp_c >= p.max_cabin_temp_c - margin
        {
            Some(Reason::TooHot)
        } else if !p.allowed_hours.is_empty() && !p.allowed_hours.contains(&hour) {
            Some(Reason::OutsideWindow)
        } else {
            None
        };
        let want = soft.is_none();
        if want != self.admitted {
            let dwelling = self
                .changed_at_min
                .is_some_and(|t| now_min < t.saturating_add(p.min_dwell_min));
            if dwelling {
                return Decision {
                    admitted: self.admitted,
                    reason: Reason::Dwell,
                };
            }
            self.set(want, now_min);
        }
        Decision {
            admitted: self.admitted,
            reason: soft.unwrap_or(Reason::Admitted),
        }
    }

    /// Stops work at once for a reason outside the car's reported state (the vehicle stopped reporting).
    pub fn halt(&mut self, reason: Reason, now_min: u64) -> Decision {
        self.set(false, now_min);
        Decision {
            admitted: false,
            reason,
        }
    }

    fn set(&mut self, admitted: bool, now_min: u64) {
        if admitted != self.admitted {
            self.admitted = admitted;
            self.changed_at_min = Some(now_min);
        }
    }
}

/// A car driven by a weekly profile with seeded randomness: weekdays it sleeps at home plugged in, leaves
/// around 07:30, is parked unplugged at work, comes back around 17:30; weekends it stays home except a
/// midday errand.
#[derive(Debug, Clone)]
pub struct SimulatedCar {
    seed: u64,
    state: VehicleState,
    last_min: u64,
}

/// One stretch of a simulated day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Parked at home, plugged in.
    Home,
    /// Driving.
    Driving,
    /// Parked away from home, unplugged.
    Away,
}

fn mix(seed: u64, day: u64, salt: u64) -> u64 {
    let mut z = seed ^ day.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimulatedCar {
    /// A car with this seed, at home, 80 % charged, at `now_min`.
    pub fn new(seed: u64, now_min: u64) -> Self {
        Self {
            seed,
            state: VehicleState::parked(80.0, true),
            last_min: now_min,
        }
    }

    /// Weekday departure time of day `day` (minutes after midnight): 07:30 +- 15 min.
    pub fn departure_min(&self, day: u64) -> u64 {
        7 * 60 + 15 + mix(self.seed, day, 1) % 31
    }

    /// What the car does at `now_min`.
    pub fn activity(&self, now_min: u64) -> Activity {
        let day = now_min / (24 * 60);
        let t = now_min % (24 * 60);
        let weekday = day % 7 < 5;
        if weekday {
            let leave = self.departure_min(day);
            let back = 17 * 60 + 15 + mix(self.seed, day, 2) % 31;
            match t {
                _ if t < leave => Activity::Home,
                _ if t < leave + 30 => Activity::Driving,
                _ if t < back => Activity::Away,
                _ if t < back + 30 => Activity::Driving,
                _ => Activity::Home,
            }
        } else {
            let out = 11 * 60 + mix(self.seed, day, 3) % 120;
            match t {
                _ if t < out => Activity::Home,
                _ if t < out + 20 => Activity::Driving,
                _ if t < out + 80 => Activity::Away,
                _ if t < out + 100 => Activity::Driving,
                _ => Activity::Home,
            }
        }
    }

    /// Advances the car to `now_min` (minute by minute: driving drains, charging fills, a busy computer
    /// draws `compute_w`) and returns its state.
    pub fn advance(&mut self, now_min: u64, compute_w: f32) -> VehicleState {
        while self.last_min < now_min {
            self.last_min += 1;
            let a = self.activity(self.last_min);
            let s = &mut self.state;
            s.parked = a != Activity::Driving;
            s.driver_present = a == Activity::Driving;
            s.plugged_in = a == Activity::Home;
            s.charging = s.plugged_in && s.soc_pct < 90.0;
            s.link = if a == Activity::Home {
                Link::Wifi
            } else {
                Link::Metered
            };
            // A 60 kWh battery: -0.25 %/min while driving (~9 kW), +0.2 %/min charging (~7 kW).
            let per_min_pct_per_w = 100.0 / 60_000.0 / 60.0;
            if a == Activity::Driving {
                s.soc_pct -= 0.25;
            }
            if s.charging {
                s.soc_pct += 0.2;
            }
            s.soc_pct -= compute_w * per_min_pct_per_w;
            s.soc_pct = s.soc_pct.clamp(0.0, 100.0);
            s.battery_temp_c = if a == Activity::Driving { 30.0 } else { 22.0 };
        }
        self.state
    }
}

/// Learns when the owner usually leaves, per weekday and hour, from the car's own history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeparturePredictor {
    /// Observed departures, minutes since Monday 00:00 (mod one week).
    departures: Vec<u64>,
    /// Weeks of history observed.
    weeks: u64,
    first_min: Option<u64>,
    last_min: u64,
}

impl DeparturePredictor {
    /// Records that the car left (the gear left park) at `now_min`.
    pub fn record_departure(&mut self, now_min: u64) {
        self.departures.push(now_min % WEEK_MIN);
        self.observe(now_min);
    }

    /// Records that time has passed (for the number of weeks observed).
    pub fn observe(&mut self, now_min: u64) {
        let first = *self.first_min.get_or_insert(now_min);
        self.last_min = self.last_min.max(now_min);
        // Weeks observed, to the nearest whole week (at least one).
        self.weeks = ((self.last_min - first + WEEK_MIN / 2) / WEEK_MIN).max(1);
    }

    /// Whether a job expected to take `job_ms` of the car's time, started at `now_min`, ends before the
    /// predicted departure (at `confidence`). Without enough history every job fits.
    pub fn job_fits(&self, now_min: u64, confidence: f32, job_ms: u64) -> Result<(), u64> {
        match self.parked_for_min(now_min, confidence) {
            Some(parked_min) if job_ms > parked_min.saturating_mul(60_000) => Err(parked_min),
            _ => Ok(()),
        }
    }

    /// Minutes the car is expected to stay parked from `now_min`: until the first minute of the week at
    /// which at least `confidence` (0-1) of the observed weeks had a departure within the following hour
    /// window, looking at most a week ahead. `None` without at least one week of history.
    pub fn parked_for_min(&self, now_min: u64, confidence: f32) -> Option<u64> {
        if self.weeks < 1 || self.departures.is_empty() {
            return None;
        }
        let start = now_min % WEEK_MIN;
        // Departures per 15-minute slot of the week.
        let mut slots = vec![0u32; (WEEK_MIN / 15) as usize];
        for d in &self.departures {
            slots[(d / 15) as usize] += 1;
        }
        let need = (confidence * self.weeks as f32).ceil().max(1.0) as u32;
        // Walk forward slot by slot; within any 60-minute window, count departures.
        let slot_count = slots.len() as u64;
        let first_slot = start / 15;
        for ahead in 0..slot_count {
            let window: u32 = (0..4)
                .map(|k| slots[((first_slot + ahead + k) % slot_count) as usize])
                .sum();
            if window >= need {
                let at = (first_slot + ahead) * 15;
                return Some(at.saturating_sub(start));
            }
        }
        Some(WEEK_MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(soc: f32) -> VehicleState {
        VehicleState::parked(soc, false)
    }

    #[test]
    fn decisions_for_a_table_of_states() {
        let p = OwnerPolicy::default();
        let cases: Vec<(VehicleState, bool, Reason)> = vec![
            (parked(80.0), true, Reason::Admitted),
            (
                VehicleState {
                    parked: false,
                    ..parked(80.0)
                },
                false,
                Reason::Driving,
            ),
            (
                VehicleState {
                    driver_present: true,
                    ..parked(80.0)
                },
                false,
                Reason::DriverPresent,
            ),
            (parked(55.0), false, Reason::LowCharge),
            (
                VehicleState {
                    plugged_in: true,
                    ..parked(40.0)
                },
                true,
                Reason::Admitted,
            ),
            (
                VehicleState {
                    plugged_in: true,
                    ..parked(25.0)
                },
                false,
                Reason::LowCharge,
            ),
            (
                VehicleState {
                    battery_temp_c: 50.0,
                    ..parked(80.0)
                },
                false,
                Reason::TooHot,
            ),
            (
                VehicleState {
                    cabin_temp_c: 55.0,
                    ..parked(80.0)
                },
                false,
                Reason::TooHot,
            ),
        ];
        for (state, admitted, reason) in cases {
            let mut a = Admission::new(p.clone());
            let d = a.update(&state, 0);
            assert_eq!((d.admitted, d.reason), (admitted, reason), "{state:?}");
        }
        let night_only = OwnerPolicy {
            allowed_hours: vec![0, 1, 2, 3, 4, 5],
            ..p
        };
        let mut a = Admission::new(night_only);
        assert_eq!(a.update(&parked(80.0), 12 * 60).reason, Reason::OutsideWindow);
        assert!(a.update(&parked(80.0), 24 * 60 + 60).admitted);
    }

    #[test]
    fn a_driver_stops_work_at_once_even_inside_the_dwell_time() {
        let mut a = Admission::new(OwnerPolicy::default());
        assert!(a.update(&parked(80.0), 100).admitted);
        let d = a.update(
            &VehicleState {
                driver_present: true,
                ..parked(80.0)
            },
            101,
        );
        assert_eq!((d.admitted, d.reason), (false, Reason::DriverPresent));
    }

    #[test]
    fn resuming_needs_the_margin() {
        let mut a = Admission::new(OwnerPolicy::default());
        assert!(a.update(&parked(80.0), 0).admitted);
        assert!(!a.update(&parked(59.0), 10).admitted); // below the 60 % unplugged floor
        assert!(!a.update(&parked(62.0), 20).admitted); // above the floor, inside the 5 % margin
        assert!(a.update(&parked(66.0), 30).admitted);
    }
}
