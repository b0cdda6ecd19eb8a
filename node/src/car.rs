//! The car at run time: where its state comes from (a simulated car, an external feed, or none for a
//! stationary node), the admission decision and its changes, the departure history, the computer's
//! awake/asleep power state, the power model that meters each job's energy, and the electricity tariff.
//!
//! A [`Car`] is shared (cheaply cloned) by the job roles, the local API and the node's car task. The pure
//! policy lives in [`crate::vehicle`]; this module adds the clock and the bookkeeping.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::Store;
use crate::vehicle::{
    Admission, Decision, DeparturePredictor, Link, OwnerPolicy, Reason, SimulatedCar, VehicleState, WEEK_MIN,
};

/// Where the car's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Not a car (a bench machine, a home server): always admitted, no vehicle state.
    #[default]
    None,
    /// A simulated car following a weekly commute ([`SimulatedCar`]), on a clock that may run fast.
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

/// Everything a [`Car`] is configured with.
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

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses `"ddd hh:mm"` (e.g. `"tue 01:00"`) into minutes since Monday 00:00.
pub fn parse_week_time(s: &str) -> Result<u64, String> {
    let bad = || format!("expected \"ddd hh:mm\" such as \"tue 01:00\", got \"{s}\"");
    let (day, hm) = s.trim().split_once(' ').ok_or_else(bad)?;
    let day = DAYS
        .iter()
        .position(|d| d.eq_ignore_ascii_case(day.trim()))
        .ok_or_else(bad)? as u64;
    let (h, m) = hm.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u64, u64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(day * 24 * 60 + h * 60 + m)
}

/// Formats minutes (since a Monday 00:00) as `"ddd hh:mm"`.
pub fn week_time(min: u64) -> String {
    let m = min % WEEK_MIN;
    format!(
        "{} {:02}:{:02}",
        DAYS[(m / (24 * 60)) as usize],
        (m / 60) % 24,
        m % 60
    )
}

/// Local minutes since the Monday before the Unix epoch (1970-01-01 was a Thursday) at `unix_ms`.
fn local_min(unix_ms: u64, utc_offset_min: i32) -> u64 {
    (unix_ms / 60_000 + 3 * 24 * 60).saturating_add_signed(i64::from(utc_offset_min))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the car's subscribers follow: whether work may run, and how many times admission has ended so far
/// (a subscriber that sees the count grow preempts, even if admission returned in between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSignal {
    /// Work may run now.
    pub admitted: bool,
    /// Times admission has ended since the node started.
    pub ended: u64,
}

/// Why this node does not bid on a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBid {
    /// The car is not admitted for work (driving, driver present, charge, temperature, hours, no data).
    NotAdmitted(Reason),
    /// The job would likely still run when the owner usually leaves.
    WouldOverrunDeparture {
        /// The job's expected duration, ms.
        est_ms: u64,
        /// The predicted parked time left, minutes.
        parked_min: u64,
    },
}

impl std::fmt::Display for NoBid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoBid::NotAdmitted(r) => write!(f, "not admitted ({r:?})"),
            NoBid::WouldOverrunDeparture { est_ms, parked_min } => write!(
                f,
                "a {est_ms} ms job would overrun the predicted departure in {parked_min} min"
            ),
        }
    }
}

/// A state report that was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// This node's car is not fed from outside.
    #[error("this node's vehicle source is '{0}'; set [car] source = \"external\" to push state")]
    NotExternal(&'static str),
    /// Only a simulated car's driver can be moved.
    #[error("this node's car is not simulated")]
    NotSimulated,
    /// Values outside what a car can report.
    #[error("invalid vehicle state: {0}")]
    Invalid(String),
}

/// The car as `GET /v1/vehicle` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CarView {
    /// `none`, `simulated` or `external`.
    pub source: SourceKind,
    /// Local time of the car's clock, `"ddd hh:mm"`.
    pub local_time: String,
    /// The last reported state (none for a stationary node or before the first report).
    pub state: Option<VehicleState>,
    /// Work may run now.
    pub admitted: bool,
    /// Why (or why not).
    pub reason: Reason,
    /// Seconds admitted since the node started.
    pub admitted_s: f64,
    /// Predicted minutes until the owner usually leaves (none before a departure has been recorded).
    pub predicted_parked_min: Option<u64>,
    /// Electricity price now, micro-credits per kWh.
    pub price_per_kwh: u64,
    /// The off-peak tariff applies now.
    pub offpeak: bool,
    /// The car computer is awake (it sleeps after `energy.idle_after_s` without work).
    pub awake: bool,
    /// Times the computer was woken for work.
    pub wakes: u64,
    /// Jobs computed (whatever their verdict).
    pub jobs_computed: u64,
    /// Energy metered for computed jobs, Wh.
    pub jobs_wh: f64,
    /// Energy of the awake computer, including idle time and wake-ups, Wh.
    pub awake_wh: f64,
    /// Running jobs cancelled and handed back because admission ended.
    pub preempted: u64,
    /// Offers not bid on because of the car (not admitted, or the job would overrun the predicted
    /// departure).
    pub bids_refused: u64,
}

struct Sim {
    car: SimulatedCar,
    start_min: u64,
    speed: f64,
    started: Instant,
    /// The same moment in ms since the Unix epoch (to place receipts on the simulated clock).
    started_unix_ms: u64,
    /// The last simulated minute applied.
    at_min: u64,
    /// The driver got in (an event the demo injects), whatever the profile says.
    driver_in: bool,
}

struct Inner {
    cfg: CarConfig,
    threads: usize,
    sim: Option<Sim>,
    store: Option<Store>,
    admission: Admission,
    predictor: DeparturePredictor,
    state: Option<VehicleState>,
    last_report: Option<Instant>,
    decision: Decision,
    admitted_since: Option<Instant>,
    admitted_total: Duration,
    awake: bool,
    last_work: Option<Instant>,
    awake_mark: Instant,
    awake_uwh: f64,
    wakes: u64,
    jobs_uwh: u64,
    jobs_computed: u64,
    preempted: u64,
    bids_refused: u64,
    /// Jobs computing now (the computer never sleeps while one runs).
    active: usize,
    /// Times admission has ended.
    ended: u64,
    /// A departure history to write to the store once the lock is released.
    unsaved: Option<DeparturePredictor>,
}

/// The node's car (cheap to clone).
#[derive(Clone)]
pub struct Car {
    inner: Arc<Mutex<Inner>>,
    signal: Arc<watch::Sender<AdmissionSignal>>,
}

impl std::fmt::Debug for Car {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Car({:?})", self.lock().cfg.car.source)
    }
}

impl Inner {
    fn now_min(&self) -> u64 {
        match &self.sim {
            Some(s) => s
                .start_min
                .saturating_add((s.started.elapsed().as_secs_f64() * s.speed / 60.0) as u64),
            None => local_min(unix_ms_now(), self.cfg.car.utc_offset_min),
        }
    }

    /// The car's clock (minutes since a Monday 00:00, local) at `unix_ms`.
    fn min_at(&self, unix_ms: u64) -> u64 {
        match &self.sim {
            Some(s) => {
                let real_s = (unix_ms as f64 - s.started_unix_ms as f64) / 1000.0;
                (s.start_min as f64 + real_s * s.speed / 60.0).max(0.0) as u64
            }
            None => local_min(unix_ms, self.cfg.car.utc_offset_min),
        }
    }

    /// Takes a state at `now_min`: departure history, then admission.
    fn apply(&mut self, s: VehicleState, now_min: u64) {
        if self.state.is_some_and(|old| old.parked) && !s.parked {
            self.predictor.record_departure(now_min);
            if self.store.is_some() && self.cfg.car.source == SourceKind::External {
                self.unsaved = Some(self.predictor.clone());
            }
        }
        self.predictor.observe(now_min);
        self.state = Some(s);
        let d = self.admission.update(&s, now_min);
        self.set_decision(d);
    }

    fn set_decision(&mut self, d: Decision) {
        if d.admitted && self.admitted_since.is_none() {
            self.admitted_since = Some(Instant::now());
        }
        if !d.admitted
            && let Some(since) = self.admitted_since.take()
        {
            self.admitted_total += since.elapsed();
            self.ended += 1;
        }
        self.decision = d;
    }

    /// Integrates the awake computer's baseline power up to now, and lets it sleep when idle.
    fn account_awake(&mut self) {
        let now = Instant::now();
        if self.awake {
            let dt = now.duration_since(self.awake_mark).as_secs_f64();
            self.awake_uwh += self.cfg.energy.awake_w * dt / 3600.0 * 1e6;
            let idle = Duration::from_secs(self.cfg.energy.idle_after_s);
            // A stationary node's computer never sleeps.
            if self.cfg.car.source != SourceKind::None
                && self.active == 0
                && self.last_work.is_none_or(|t| t.elapsed() > idle)
            {
                self.awake = false;
            }
        }
        self.awake_mark = now;
    }

    fn refresh(&mut self) {
        self.account_awake();
        let now_min = self.now_min();
        match self.cfg.car.source {
            SourceKind::None => {}
            SourceKind::Simulated => {
                let compute_w = if self.awake {
                    self.cfg.energy.awake_w as f32
                } else {
                    0.0
                };
                let Some(at) = self.sim.as_ref().map(|s| s.at_min) else {
                    return;
                };
                // Minute by minute (so that no departure is skipped), at most a week per refresh.
                for t in (at + 1..=now_min).take(WEEK_MIN as usize) {
                    let Some(sim) = self.sim.as_mut() else { return };
                    let mut s = sim.car.advance(t, compute_w);
                    s.driver_present |= sim.driver_in;
                    sim.at_min = t;
                    self.apply(s, t);
                }
            }
            SourceKind::External => {
                let stale = Duration::from_secs(self.cfg.car.stale_after_s);
                match self.last_report {
                    Some(t) if t.elapsed() <= stale => {
                        if let Some(s) = self.state {
                            let d = self.admission.update(&s, now_min);
                            self.set_decision(d);
                        }
                    }
                    _ => {
                        let d = self.admission.halt(Reason::NoData, now_min);
                        self.set_decision(d);
                    }
                }
            }
        }
    }

    fn offpeak_at(&self, min: u64) -> bool {
        let hour = ((min % (24 * 60)) / 60) as u8;
        self.cfg.energy.offpeak_hours.contains(&hour)
    }

    fn price_at_min(&self, min: u64) -> u64 {
        let e = &self.cfg.energy;
        if self.offpeak_at(min) {
            e.offpeak_price
        } else {
            e.peak_price
        }
    }

    /// Power drawn by one busy thread's job: its active power plus its share of the awake baseline (W).
    fn job_watts(&self) -> f64 {
        let e = &self.cfg.energy;
        e.active_w_per_thread + e.awake_w / self.threads.max(1) as f64
    }
}

impl Car {
    /// A car from `cfg`, whose inference runs on `threads` threads; an external source's departure
    /// history is kept in (and read back from) `store`. A simulated car comes with two weeks of history,
    /// simulated before its start time.
    pub fn new(cfg: CarConfig, threads: usize, store: Option<Store>) -> Result<Self, String> {
        cfg.validate()?;
        let mut predictor = DeparturePredictor::default();
        let mut state = None;
        let sim = match cfg.car.source {
            SourceKind::Simulated => {
                let start_min = 2 * WEEK_MIN + parse_week_time(&cfg.car.sim_start)?;
                let mut car = SimulatedCar::new(cfg.car.seed, 0);
                let mut parked = true;
                for t in 1..=start_min {
                    let s = car.advance(t, 0.0);
                    if parked && !s.parked {
                        predictor.record_departure(t);
                    }
                    parked = s.parked;
                    state = Some(s);
                }
                predictor.observe(start_min);
                Some(Sim {
                    car,
                    start_min,
                    speed: cfg.car.sim_speed,
                    started: Instant::now(),
                    started_unix_ms: unix_ms_now(),
                    at_min: start_min,
                    driver_in: false,
                })
            }
            SourceKind::External => {
                if let Some(history) = store.as_ref().and_then(Store::departures) {
                    predictor = history;
                }
                None
            }
            SourceKind::None => None,
        };
        let admitted = cfg.car.source == SourceKind::None;
        let mut inner = Inner {
            admission: Admission::new(cfg.owner.clone()),
            cfg,
            threads,
            sim,
            store,
            predictor,
            state: None,
            last_report: None,
            decision: Decision {
                admitted,
                reason: if admitted {
                    Reason::Admitted
                } else {
                    Reason::NoData
                },
            },
            admitted_since: admitted.then(Instant::now),
            admitted_total: Duration::ZERO,
            awake: admitted,
            last_work: None,
            awake_mark: Instant::now(),
            awake_uwh: 0.0,
            wakes: 0,
            jobs_uwh: 0,
            jobs_computed: 0,
            preempted: 0,
            bids_refused: 0,
            active: 0,
            ended: 0,
            unsaved: None,
        };
        if let Some(s) = state {
            let now = inner.now_min();
            inner.apply(s, now);
        }
        let (tx, _) = watch::channel(AdmissionSignal {
            admitted: inner.decision.admitted,
            ended: inner.ended,
        });
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            signal: Arc::new(tx),
        })
    }

    /// A stationary node: always admitted, the default power model and tariff.
    pub fn stationary() -> Self {
        match Self::new(CarConfig::default(), 1, None) {
            Ok(car) => car,
            Err(e) => unreachable!("the default car config is valid: {e}"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Publishes the admission decision to subscribers if it changed (called with the car locked, so that
    /// signals go out in the order of the decisions), and returns a departure history to store.
    fn publish(&self, inner: &mut Inner) -> Option<DeparturePredictor> {
        let now = AdmissionSignal {
            admitted: inner.decision.admitted,
            ended: inner.ended,
        };
        self.signal.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
        inner.unsaved.take()
    }

    /// Writes a departure history to the store (outside the car's lock).
    fn save(&self, history: Option<DeparturePredictor>) {
        let store = self.lock().store.clone();
        if let (Some(history), Some(store)) = (history, store)
            && let Err(e) = store.put_departures(&history)
        {
            tracing::warn!(error = %e, "cannot store the departure history");
        }
    }

    /// Moves the clock on: advances a simulated car, notices a silent external feed, lets an idle computer
    /// sleep. Called by the node a few times a second.
    pub fn refresh(&self) {
        let history = {
            let mut inner = self.lock();
            inner.refresh();
            self.publish(&mut inner)
        };
        self.save(history);
    }

    /// Takes a state pushed by a vehicle integration (`POST /v1/vehicle`); a change out of admission is
    /// published at once (running work is preempted by the node's car task).
    pub fn report(&self, s: VehicleState) -> Result<CarView, ReportError> {
        let history = {
            let mut inner = self.lock();
            match inner.cfg.car.source {
                SourceKind::External => {}
                SourceKind::None => return Err(ReportError::NotExternal("none")),
                SourceKind::Simulated => return Err(ReportError::NotExternal("simulated")),
            }
            s.validate().map_err(ReportError::Invalid)?;
            inner.account_awake();
            let now = inner.now_min();
            inner.last_report = Some(Instant::now());
            inner.apply(s, now);
            self.publish(&mut inner)
        };
        self.save(history);
        Ok(self.view())
    }

    /// Simulated car only: the driver gets in (`true`, a hard stop: running work is preempted) or leaves
    /// again, whatever the day profile says. The demo uses it to show preemption.
    pub fn set_driver_in(&self, present: bool) -> Result<(), ReportError> {
        let mut inner = self.lock();
        let Some(sim) = inner.sim.as_mut() else {
            return Err(ReportError::NotSimulated);
        };
        sim.driver_in = present;
        let now = sim.at_min;
        if let Some(mut s) = inner.state {
            s.driver_present = present;
            inner.apply(s, now);
        }
        self.publish(&mut inner);
        Ok(())
    }

    /// Whether work may run now.
    pub fn admitted(&self) -> bool {
        self.lock().decision.admitted
    }

    /// Whether the car computer is awake.
    pub fn awake(&self) -> bool {
        self.lock().awake
    }

    /// Follows the admission decision.
    pub fn subscribe(&self) -> watch::Receiver<AdmissionSignal> {
        self.signal.subscribe()
    }

    /// Whether to bid on a job expected to take `est_ms` (real time): admitted now, and (once a departure
    /// has been recorded) not expected to still run when the owner usually leaves.
    pub fn may_bid(&self, est_ms: u64) -> Result<(), NoBid> {
        let mut inner = self.lock();
        let refused = if !inner.decision.admitted {
            Some(NoBid::NotAdmitted(inner.decision.reason))
        } else if est_ms == 0 {
            None // nothing to overrun: no need to consult the departure history
        } else {
            let now = inner.now_min();
            let conf = inner.cfg.owner.departure_confidence;
            // On a simulated clock the job lasts `speed` times longer in the car's time.
            let car_ms = match &inner.sim {
                Some(sim) => (est_ms as f64 * sim.speed) as u64,
                None => est_ms,
            };
            match inner.predictor.parked_for_min(now, conf) {
                Some(parked_min) if car_ms > parked_min.saturating_mul(60_000) => {
                    Some(NoBid::WouldOverrunDeparture { est_ms, parked_min })
                }
                _ => None,
            }
        };
        match refused {
            Some(why) => {
                inner.bids_refused += 1;
                Err(why)
            }
            None => Ok(()),
        }
    }

    /// Energy of a job that kept one inference thread busy for `compute`: active power plus its share of
    /// the awake baseline, in µWh (at least 1).
    pub fn job_energy_uwh(&self, compute: Duration) -> u64 {
        let watts = self.lock().job_watts();
        ((watts * compute.as_secs_f64() / 3600.0 * 1e6).round() as u64).max(1)
    }

    /// The electricity cost of running a job expected to take `est_ms` now, in micro-credits (rounded up):
    /// its energy at the current tariff, plus waking the computer (and keeping it awake until it may sleep
    /// again) if it is asleep. Sent in bids, so submitters prefer awake cars in off-peak hours.
    pub fn bid_energy_cost(&self, est_ms: u64) -> u64 {
        let inner = self.lock();
        let e = &inner.cfg.energy;
        let mut wh = inner.job_watts() * est_ms as f64 / 3_600_000.0;
        if !inner.awake {
            wh += e.wake_wh + e.awake_w * e.idle_after_s as f64 / 3600.0;
        }
        let price = inner.price_at_min(inner.now_min());
        (wh / 1000.0 * price as f64).ceil() as u64
    }

    /// A job starts computing: wakes the computer if it sleeps; it stays awake until every started job
    /// has finished.
    pub fn work_started(&self) {
        let mut inner = self.lock();
        inner.account_awake();
        if !inner.awake {
            inner.awake = true;
            inner.wakes += 1;
            inner.awake_uwh += inner.cfg.energy.wake_wh * 1e6;
        }
        inner.active += 1;
        inner.last_work = Some(Instant::now());
    }

    /// A started job stopped computing: metered at `energy_uwh` if it completed, `None` if it was
    /// cancelled or failed.
    pub fn work_finished(&self, energy_uwh: Option<u64>) {
        let mut inner = self.lock();
        inner.active = inner.active.saturating_sub(1);
        if let Some(uwh) = energy_uwh {
            inner.jobs_uwh += uwh;
            inner.jobs_computed += 1;
        }
        inner.last_work = Some(Instant::now());
    }

    /// `n` running jobs were cancelled and handed back.
    pub fn count_preempted(&self, n: u64) {
        self.lock().preempted += n;
    }

    /// The largest model this node downloads now: the owner's limit on a metered link, else unlimited.
    pub fn download_limit(&self) -> u64 {
        let inner = self.lock();
        match inner.state.map(|s| s.link) {
            Some(Link::Metered) => inner.cfg.owner.metered_max_download_mib.saturating_mul(1 << 20),
            _ => u64::MAX,
        }
    }

    /// Electricity cost of jobs given as (ms since the Unix epoch when each ran, µWh) — as
    /// [`Jobs::receipts_of`](crate::jobs::Jobs::receipts_of) lists them — each at this car's tariff of
    /// that time, in micro-credits.
    pub fn electricity_cost(&self, jobs: &[(u64, u64)]) -> f64 {
        let inner = self.lock();
        jobs.iter()
            .map(|(unix_ms, uwh)| *uwh as f64 / 1e9 * inner.price_at_min(inner.min_at(*unix_ms)) as f64)
            .sum::<f64>()
            + 0.0 // (an empty f64 sum is -0.0)
    }

    /// The car as `GET /v1/vehicle` shows it.
    pub fn view(&self) -> CarView {
        let inner = self.lock();
        let now = inner.now_min();
        let price = inner.price_at_min(now);
        CarView {
            source: inner.cfg.car.source,
            local_time: week_time(now),
            state: inner.state,
            admitted: inner.decision.admitted,
            reason: inner.decision.reason,
            admitted_s: (inner.admitted_total + inner.admitted_since.map_or(Duration::ZERO, |t| t.elapsed()))
                .as_secs_f64(),
            predicted_parked_min: inner
                .predictor
                .parked_for_min(now, inner.cfg.owner.departure_confidence),
            price_per_kwh: price,
            offpeak: inner.offpeak_at(now),
            awake: inner.awake,
            wakes: inner.wakes,
            jobs_computed: inner.jobs_computed,
            jobs_wh: inner.jobs_uwh as f64 / 1e6,
            awake_wh: inner.awake_uwh / 1e6,
            preempted: inner.preempted,
            bids_refused: inner.bids_refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn week_times_parse_and_print() {
        assert_eq!(parse_week_time("tue 01:00"), Ok(24 * 60 + 60));
        assert_eq!(parse_week_time("Sun 23:59"), Ok(WEEK_MIN - 1));
        assert_eq!(week_time(WEEK_MIN + 24 * 60 + 61), "tue 01:01");
        for bad in ["", "tue", "xyz 01:00", "mon 24:00", "mon 1:60", "mon aa:00"] {
            assert!(parse_week_time(bad).is_err(), "{bad}");
        }
        // 1970-01-01 00:00 UTC was a Thursday.
        assert_eq!(week_time(local_min(0, 0)), "thu 00:00");
        assert_eq!(week_time(local_min(0, 90)), "thu 01:30");
    }

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
}
