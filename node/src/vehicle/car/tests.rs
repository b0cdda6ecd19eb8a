//! Tests of the car at run time: admission from each source, preemption signals, departure history kept
//! across a restart, the power model and the tariff.

use super::*;
use crate::vehicle::{CarSection, EnergySection};

#[test]
fn a_stationary_node_is_always_admitted_and_meters_energy() {
    let car = Car::stationary();
    assert!(car.admitted());
    assert_eq!(car.may_bid(u64::MAX), Ok(()));
    // 1 s on one thread: 15 W active + 30 W awake baseline = 45 W -> 12.5 mWh.
    assert_eq!(car.job_energy_uwh(Duration::from_secs(1)), 12_500);
    assert!(car.report(parked()).is_err());
}

fn parked() -> VehicleState {
    VehicleState::parked(80.0, true)
}

fn external() -> Car {
    let cfg = CarConfig {
        car: CarSection {
            source: SourceKind::External,
            ..CarSection::default()
        },
        ..CarConfig::default()
    };
    Car::new(cfg, 1, None).unwrap()
}

#[test]
fn an_external_feed_admits_after_its_first_report_and_a_driver_stops_work_at_once() {
    let car = external();
    let mut rx = car.subscribe();
    assert!(!car.admitted());
    assert!(matches!(car.may_bid(1), Err(NoBid::NotAdmitted(Reason::NoData))));
    assert!(car.report(parked()).unwrap().admitted);
    assert!(rx.borrow_and_update().admitted);
    let v = car
        .report(VehicleState {
            driver_present: true,
            ..parked()
        })
        .unwrap();
    assert_eq!((v.admitted, v.reason), (false, Reason::DriverPresent));
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        *rx.borrow_and_update(),
        AdmissionSignal {
            admitted: false,
            ended: 1
        }
    );
    let bad = VehicleState {
        soc_pct: 140.0,
        ..parked()
    };
    assert!(matches!(car.report(bad), Err(ReportError::Invalid(_))));
}

#[test]
fn a_simulated_commuter_refuses_jobs_that_would_overrun_its_usual_departure() {
    let at = |start: &str| {
        let cfg = CarConfig {
            car: CarSection {
                source: SourceKind::Simulated,
                sim_start: start.into(),
                seed: 7,
                ..CarSection::default()
            },
            ..CarConfig::default()
        };
        Car::new(cfg, 1, None).unwrap()
    };
    // Two simulated weeks of commuting (leaving 07:15-07:45 on weekdays) are the car's history.
    let early = at("tue 06:00");
    let v = early.view();
    assert!(v.admitted, "{v:?}");
    let parked = v.predicted_parked_min.unwrap();
    // (The usual departure is 75-105 min away; the prediction errs early by up to its one-hour window.)
    assert!((30..=105).contains(&parked), "{parked}");
    assert_eq!(early.may_bid(20 * 60_000), Ok(()));
    assert!(matches!(
        early.may_bid(3 * 3_600_000),
        Err(NoBid::WouldOverrunDeparture { .. })
    ));
    // On a clock running 60x, one real minute of work is an hour of the car's time: it would overrun.
    let fast = Car::new(
        CarConfig {
            car: CarSection {
                source: SourceKind::Simulated,
                sim_start: "tue 06:00".into(),
                sim_speed: 60.0,
                seed: 7,
                ..CarSection::default()
            },
            ..CarConfig::default()
        },
        1,
        None,
    )
    .unwrap();
    assert_eq!(early.may_bid(60_000), Ok(()));
    assert!(matches!(
        fast.may_bid(60_000),
        Err(NoBid::WouldOverrunDeparture { .. })
    ));
    // Saturday morning has no usual departure soon: a three-hour job fits.
    assert_eq!(at("sat 06:00").may_bid(3 * 3_600_000), Ok(()));
    // Tuesday 12:00 the car is parked at work, unplugged: admitted while charge allows.
    let noon = at("tue 12:00").view();
    let s = noon.state.unwrap();
    assert!(s.parked && !s.plugged_in && s.link == Link::Metered, "{noon:?}");
    assert_eq!(at("tue 12:00").download_limit(), 16 << 20);
    assert_eq!(early.download_limit(), u64::MAX);
}

#[test]
fn a_silent_feed_ends_admission_and_signals_preemption() {
    let cfg = CarConfig {
        car: CarSection {
            source: SourceKind::External,
            stale_after_s: 0,
            ..CarSection::default()
        },
        ..CarConfig::default()
    };
    let car = Car::new(cfg, 1, None).unwrap();
    let mut rx = car.subscribe();
    assert!(car.report(parked()).unwrap().admitted);
    std::thread::sleep(Duration::from_millis(5));
    car.refresh();
    let v = car.view();
    assert_eq!((v.admitted, v.reason), (false, Reason::NoData));
    assert_eq!(rx.borrow_and_update().ended, 1);
}

#[test]
fn an_external_cars_departure_history_survives_a_restart() {
    let store = Store::temporary().unwrap();
    let cfg = CarConfig {
        car: CarSection {
            source: SourceKind::External,
            ..CarSection::default()
        },
        ..CarConfig::default()
    };
    let car = Car::new(cfg.clone(), 1, Some(store.clone())).unwrap();
    car.report(parked()).unwrap();
    assert_eq!(car.view().predicted_parked_min, None);
    car.report(VehicleState {
        parked: false,
        driver_present: true,
        ..parked()
    })
    .unwrap();
    let predicted = car.view().predicted_parked_min;
    assert!(predicted.is_some());
    drop(car);
    let again = Car::new(cfg, 1, Some(store)).unwrap();
    let after = again.view().predicted_parked_min.unwrap();
    assert!(
        after.abs_diff(predicted.unwrap()) <= 1,
        "{after} vs {predicted:?}"
    );
}

#[test]
fn a_sleeping_computer_costs_a_wake_up_and_off_peak_is_cheaper() {
    let at = |offpeak: bool| {
        let cfg = CarConfig {
            car: CarSection {
                source: SourceKind::Simulated,
                ..CarSection::default()
            },
            energy: EnergySection {
                offpeak_hours: if offpeak { (0..24).collect() } else { Vec::new() },
                ..EnergySection::default()
            },
            ..CarConfig::default()
        };
        Car::new(cfg, 1, None).unwrap()
    };
    let (peak, offpeak) = (at(false), at(true));
    // Asleep: 0.5 Wh wake + 30 W x 60 s = 1 Wh awake tail, + the job.
    let asleep_peak = peak.bid_energy_cost(1_000);
    let asleep_off = offpeak.bid_energy_cost(1_000);
    assert!(asleep_off < asleep_peak, "{asleep_off} vs {asleep_peak}");
    assert_eq!(asleep_peak, ((1.0 + 45.0 / 3600.0) * 300.0f64).ceil() as u64);
    peak.work_started();
    let awake_peak = peak.bid_energy_cost(1_000);
    assert!(awake_peak < asleep_peak / 10, "{awake_peak}");
    let v = peak.view();
    assert!(v.awake && v.wakes == 1 && v.awake_wh >= 0.5);
    // The driver gets in: a hard stop.
    peak.set_driver_in(true).unwrap();
    assert!(!peak.admitted());
    // The driver leaves again: work resumes only after the dwell time.
    peak.set_driver_in(false).unwrap();
    assert_eq!(peak.view().reason, Reason::Dwell);
    // With no work for idle_after_s the computer sleeps again.
    let quick = Car::new(
        CarConfig {
            car: CarSection {
                source: SourceKind::Simulated,
                ..CarSection::default()
            },
            energy: EnergySection {
                idle_after_s: 0,
                ..EnergySection::default()
            },
            ..CarConfig::default()
        },
        1,
        None,
    )
    .unwrap();
    quick.work_started();
    quick.work_finished(Some(10));
    assert!(quick.view().awake);
    std::thread::sleep(Duration::from_millis(5));
    quick.refresh();
    let v = quick.view();
    assert!(!v.awake && v.wakes == 1 && v.jobs_computed == 1, "{v:?}");
    // A stationary node never sleeps: no wake-up cost.
    assert_eq!(Car::stationary().bid_energy_cost(10), 1);
}
