//! The car-side policy without I/O: admission with hysteresis, a simulated week, departure prediction.
#![allow(missing_docs, clippy::unwrap_used)]

use fleetmesh_node::vehicle::{
    Activity, Admission, DeparturePredictor, OwnerPolicy, SimulatedCar, VehicleState, WEEK_MIN,
};
use proptest::prelude::*;

fn parked(soc: f32, battery: f32) -> VehicleState {
    VehicleState {
        battery_temp_c: battery,
        ..VehicleState::parked(soc, false)
    }
}

proptest! {
    /// Charge hovering around the unplugged floor (60 %) and battery temperature around its limit (45 °C),
    /// sampled every minute: admission changes at most once per dwell period.
    #[test]
    fn hovering_inputs_cause_at_most_one_transition_per_dwell_period(
        socs in proptest::collection::vec(57.0f32..68.0, 200),
        temps in proptest::collection::vec(38.0f32..47.0, 200),
    ) {
        let policy = OwnerPolicy::default();
        let dwell = policy.min_dwell_min;
        let mut a = Admission::new(policy);
        let mut transitions = Vec::new();
        let mut was = a.admitted();
        for (t, (soc, temp)) in socs.iter().zip(&temps).enumerate() {
            let now = t as u64;
            let d = a.update(&parked(*soc, *temp), now);
            if d.admitted != was {
                transitions.push(now);
                was = d.admitted;
            }
        }
        for pair in transitions.windows(2) {
            prop_assert!(pair[1] - pair[0] >= dwell, "transitions at {:?}", transitions);
        }
    }
}

#[test]
fn a_simulated_week_is_admitted_when_parked_and_never_while_driving() {
    let mut car = SimulatedCar::new(7, 0);
    let mut a = Admission::new(OwnerPolicy::default());
    let (mut admitted, mut nights_ok) = (0u64, 0u64);
    for now in 1..=WEEK_MIN {
        let s = car.advance(now, 20.0);
        let d = a.update(&s, now);
        if car.activity(now) == Activity::Driving {
            assert!(!d.admitted, "admitted while driving at minute {now}");
        }
        admitted += u64::from(d.admitted);
        let t = now % (24 * 60);
        if (60..300).contains(&t) && d.admitted {
            nights_ok += 1;
        }
    }
    // Every night from 01:00 to 05:00 the car is home, plugged in and admitted.
    assert_eq!(nights_ok, 7 * 240);
    let share = admitted as f64 / WEEK_MIN as f64;
    assert!((0.6..0.97).contains(&share), "admitted {share:.2} of the week");
}

#[test]
fn after_two_weeks_of_commuting_long_jobs_that_would_overrun_departure_are_refused() {
    let mut car = SimulatedCar::new(11, 0);
    let mut predictor = DeparturePredictor::default();
    let mut was_parked = true;
    for now in 1..=2 * WEEK_MIN {
        let s = car.advance(now, 0.0);
        if was_parked && !s.parked {
            predictor.record_departure(now);
        }
        was_parked = s.parked;
        predictor.observe(now);
    }
    // Week 3, Tuesday 06:00: the car usually leaves between 07:15 and 07:45.
    let now = 2 * WEEK_MIN + 24 * 60 + 6 * 60;
    let parked_for = predictor.parked_for_min(now, 0.8).unwrap();
    assert!((60..=105).contains(&parked_for), "predicted {parked_for} min");
    // The rule the car bids by: a job must end before the predicted departure.
    let fits = |job_min: u64| predictor.job_fits(now, 0.8, job_min * 60_000);
    assert_eq!(fits(45), Ok(()), "a 45-minute job should be accepted");
    assert_eq!(
        fits(parked_for),
        Ok(()),
        "a job ending at the predicted departure fits"
    );
    assert_eq!(
        fits(parked_for + 1),
        Err(parked_for),
        "one minute more overruns it"
    );
    assert_eq!(
        fits(180),
        Err(parked_for),
        "a 3-hour job would overrun the usual departure"
    );
    // Saturday 09:00: no commute; the weekend errand leaves at 11:00 at the earliest.
    let saturday = 2 * WEEK_MIN + 5 * 24 * 60 + 9 * 60;
    let weekend = predictor.parked_for_min(saturday, 0.8).unwrap();
    assert!(weekend >= 105, "predicted {weekend} min on Saturday morning");
}
