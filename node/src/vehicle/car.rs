//! The car at run time: where its state comes from (a simulated car, an external feed, or none for a
//! stationary node), the admission decision and its changes, the departure history, the computer's
//! awake/asleep power state, the power model that meters each job's energy, and the electricity tariff.
//!
//! A [`Car`] is shared (cheaply cloned) by the job roles, the local API and the node's car task. The pure
//! policy lives in [`super::policy`]; this module adds the clock and the bookkeeping.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::config::{CarConfig, SourceKind};
use super::policy::{
    Admission, Decision, DeparturePredictor, Link, Reason, SimulatedCar, VehicleState, WEEK_MIN,
};
use super::week::{local_min, parse_week_time, week_time};
use crate::clock::now_ms;
use crate::store::Store;

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
            None => local_min(now_ms(), self.cfg.car.utc_offset_min),
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
                    started_unix_ms: now_ms(),
                    at_min: start_min,
                    driver_in: false,
                })
            }
            SourceKind::External => {
                if let Some(history) = store.as_ref().and_then(Store::departures::<DeparturePredictor>) {
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

    /// Writes a departure history to the store (outside the car's lock; on tokio's blocking threads when
    /// called from the runtime, since sled may block on the disk).
    fn save(&self, history: Option<DeparturePredictor>) {
        let store = self.lock().store.clone();
        let (Some(history), Some(store)) = (history, store) else {
            return;
        };
        let write = move || {
            if let Err(e) = store.put_departures(&history) {
                tracing::warn!(error = %e, "cannot store the departure history");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
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
            match inner.predictor.job_fits(now, conf, car_ms) {
                Err(parked_min) => Some(NoBid::WouldOverrunDeparture { est_ms, parked_min }),
                Ok(()) => None,
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

    /// Electricity cost of jobs given as (ms since the Unix epoch when each ran, µWh) — as the job room's
    /// `Jobs::receipts_of` lists them (not linked: the vehicle room sits below the jobs) — each at this
    /// car's tariff of that time, in micro-credits.
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
mod tests;
