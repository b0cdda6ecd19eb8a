//! Modelled cars: how each kind of owner spends a day, and the links a car has where it is.
//!
//! The decisions about a car's computer are the node's own ([`Admission`] and [`DeparturePredictor`]);
//! this module only says where the car is and what its battery holds.

use fleetmesh_node::vehicle::{Activity, DeparturePredictor, Link, VehicleState};

use crate::rng::mix;

/// Minutes in a day.
pub(crate) const DAY_MIN: u64 = 24 * 60;

/// How an owner uses the car.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// Weekdays: home, drive to work ~07:30, parked unplugged at work, home ~17:00; weekends an errand.
    Commuter,
    /// Weekdays: home by day (plugged in), at work by night.
    NightShift,
    /// Drives most of the day in long stretches with short stops; at the depot (plugged) by night.
    Taxi,
    /// Stays home; an errand on two days of seven.
    Weekend,
    /// Parked and plugged in all the time.
    Stationary,
}

impl Profile {
    /// The profile of car `i` in the mixed fleet (55 % commuters, 10 % night shift, 10 % taxis, 25 %
    /// weekend cars).
    pub(crate) fn mixed(seed: u64, i: u64) -> Self {
        match mix(seed ^ mix(i ^ 0x0F11E)) % 100 {
            0..55 => Self::Commuter,
            55..65 => Self::NightShift,
            65..75 => Self::Taxi,
            _ => Self::Weekend,
        }
    }
}

/// A car's day `day` (0 is a Monday): stretches as (minute of the day it starts, activity), the first
/// at minute 0, in order.
pub(crate) fn day_plan(profile: Profile, car: u64, day: u64) -> Vec<(u64, Activity)> {
    use Activity::{Away, Driving, Home};
    let r = |salt: u64, span: u64| mix(car ^ mix(day ^ mix(salt))) % span.max(1);
    let weekday = day % 7 < 5;
    let errand = |start: u64| {
        let away = 30 + r(11, 150);
        vec![
            (0, Home),
            (start, Driving),
            (start + 15, Away),
            (start + 15 + away, Driving),
            (start + 30 + away, Home),
        ]
    };
    match profile {
        Profile::Stationary => vec![(0, Home)],
        Profile::Commuter if weekday => {
            let leave = 7 * 60 + r(1, 60);
            let back = 16 * 60 + 30 + r(2, 90);
            let drive = 20 + r(3, 20);
            vec![
                (0, Home),
                (leave, Driving),
                (leave + drive, Away),
                (back, Driving),
                (back + drive, Home),
            ]
        }
        Profile::NightShift if weekday => {
            let home = 6 * 60 + r(4, 60);
            let leave = 21 * 60 + r(5, 60);
            vec![
                (0, Away),
                (home, Driving),
                (home + 30, Home),
                (leave, Driving),
                (leave + 30, Away),
            ]
        }
        Profile::Taxi => {
            let start = 5 * 60 + 30 + r(6, 60);
            let end = 21 * 60 + r(7, 120);
            let mut plan = vec![(0, Home)];
            let mut t = start;
            let mut k = 0;
            while t < end {
                plan.push((t, Driving));
                let drive = 60 + r(20 + k, 90);
                let stop = 10 + r(40 + k, 20);
                if t + drive >= end {
                    break;
                }
                plan.push((t + drive, Away));
                t += drive + stop;
                k += 1;
            }
            plan.push((end, Driving));
            plan.push((end + 20, Home));
            plan
        }
        Profile::Weekend if r(8, 7) < 2 => errand(10 * 60 + r(9, 300)),
        Profile::Commuter | Profile::NightShift => errand(11 * 60 + r(10, 240)),
        Profile::Weekend => vec![(0, Home)],
    }
}

/// Feeds two weeks of the car's own departures before `start_day` to a fresh predictor (the history a
/// car that ran the node before the simulation would have).
pub(crate) fn warmed_predictor(profile: Profile, car: u64, start_day: u64) -> DeparturePredictor {
    let mut p = DeparturePredictor::default();
    let first = start_day.saturating_sub(14);
    p.observe(first * DAY_MIN);
    for day in first..start_day {
        let plan = day_plan(profile, car, day + 7 * 1_000);
        for (at, a) in plan {
            if a == Activity::Driving {
                p.record_departure(day * DAY_MIN + at);
            }
        }
    }
    p.observe(start_day * DAY_MIN);
    p
}

/// The car's state for the admission policy: where it is, charge, temperatures, link.
pub(crate) fn vehicle_state(activity: Activity, soc_pct: f32, cellular_only: bool) -> VehicleState {
    let home = activity == Activity::Home;
    VehicleState {
        parked: activity != Activity::Driving,
        driver_present: activity == Activity::Driving,
        plugged_in: home,
        charging: home && soc_pct < 90.0,
        soc_pct,
        battery_temp_c: if activity == Activity::Driving { 30.0 } else { 22.0 },
        cabin_temp_c: 22.0,
        link: if home && !cellular_only {
            Link::Wifi
        } else {
            Link::Metered
        },
    }
}

/// State of charge after `minutes` of `activity` from `soc_pct`: a 60 kWh battery loses 0.25 % a
/// minute driving (~9 kW), gains 0.2 % a minute on a home charger (~7 kW) up to 90 %, and holds
/// while parked unplugged (the computer's draw is counted in energy, not here).
pub(crate) fn soc_after(activity: Activity, soc_pct: f32, minutes: f32) -> f32 {
    match activity {
        Activity::Driving => (soc_pct - 0.25 * minutes).max(5.0),
        Activity::Home if soc_pct < 90.0 => (soc_pct + 0.2 * minutes).min(90.0),
        _ => soc_pct,
    }
}

/// Minutes of charging at home until `soc_pct` exceeds `target` (`None`: it never does).
pub(crate) fn minutes_to_charge(soc_pct: f32, target: f32) -> Option<u64> {
    (target < 90.0).then(|| ((target - soc_pct).max(0.0) / 0.2).ceil() as u64 + 1)
}

/// Round-trip time of a link in ms, drawn for one exchange: home wifi ~25 ms, cellular ~70 ms with a
/// long tail, a reachable server on a fixed line ~10 ms.
pub(crate) fn rtt_ms(link: Link, reachable: bool, u: f64) -> f64 {
    let tail = -(1.0 - u).max(1e-12).ln();
    if reachable {
        8.0 + 4.0 * tail
    } else {
        match link {
            Link::Wifi => 20.0 + 10.0 * tail,
            Link::Metered => 60.0 + 40.0 * tail,
        }
    }
}

/// Loss per message on a link: a lost message costs a retransmission (one more round trip and a
/// timeout of 200 ms).
pub(crate) fn loss(link: Link, reachable: bool) -> f64 {
    match (reachable, link) {
        (true, _) => 0.0005,
        (false, Link::Wifi) => 0.002,
        (false, Link::Metered) => 0.01,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_starts_at_midnight_and_goes_forward() {
        for profile in [
            Profile::Commuter,
            Profile::NightShift,
            Profile::Taxi,
            Profile::Weekend,
            Profile::Stationary,
        ] {
            for car in 0..200 {
                for day in 0..7 {
                    let plan = day_plan(profile, car, day);
                    assert_eq!(plan[0].0, 0);
                    assert!(plan.windows(2).all(|w| w[0].0 < w[1].0), "{profile:?} {plan:?}");
                    assert!(plan.iter().all(|(t, _)| *t < DAY_MIN), "{profile:?} {plan:?}");
                }
            }
        }
    }

    #[test]
    fn a_commuter_is_predicted_to_leave_in_the_morning() {
        let p = warmed_predictor(Profile::Commuter, 7, 14);
        // Monday 03:00 of the third week: parked until about 07:00-08:00.
        let parked = p.parked_for_min(14 * DAY_MIN + 180, 0.5).unwrap_or(0);
        assert!((180..=330).contains(&parked), "{parked}");
    }
}
