//! A fleet of cars in a discrete-event simulator, driven by fleetmesh's own decision code.
#![recursion_limit = "256"]
//!
//! No machine here can run 10^6 nodes, so this crate models what is not decision code (cars' days,
//! links, DHT lookups, gossip hops, compute times) and calls fleetmesh for every decision a node makes:
//!
//! - admission: [`fleetmesh_node::vehicle::Admission`] with the owner's
//!   [`OwnerPolicy`](fleetmesh_node::vehicle::OwnerPolicy), fed the car's state at each change;
//! - departure prediction: [`DeparturePredictor`](fleetmesh_node::vehicle::DeparturePredictor),
//!   fed two weeks of the car's own history before the run;
//! - the capacity directory: shard of a car ([`Shard::of`](fleetmesh_consensus::directory::Shard::of)), the
//!   shard count ([`next_shards`](fleetmesh_consensus::directory::next_shards) on
//!   [`members_lower_bound`](fleetmesh_consensus::directory::members_lower_bound) over the
//!   [`sampled_slots`](fleetmesh_consensus::directory::sampled_slots); the members' bid draw uses
//!   [`members_estimate`](fleetmesh_consensus::directory::members_estimate)) and how likely a member bids
//!   ([`bid_probability`](fleetmesh_consensus::directory::bid_probability));
//! - every submitter runs a [`Submitter`](fleetmesh_consensus::submitter::Submitter) core (planning by
//!   reputation, the job state machine with commit-reveal and quorum, escalation, re-offers, receipts and
//!   their credit, rechecks and revisions) with the node's default settings
//!   ([`JobsConfig::submitter_config`](fleetmesh_node::jobs::JobsConfig::submitter_config)).
//!
//! What the simulator decides itself (each a simplification of the node's rule): a car runs one job at a
//! time and bids only when idle (a node queues up to `max_active_work`); its departure is predicted once
//! when it parks (a node asks at each bid); the bidders of an offer are a Poisson draw of the expected
//! count (a node draws per member from a hash); bid prices are the model's reward. What it simplifies
//! (each says where a real fleet may differ): all members of a family adopt a new
//! shard count at the same estimate (real nodes estimate one by one and may disagree for a while);
//! gossip reaches every member of a shard, after a number of mesh hops drawn from the shard's size;
//! DHT lookups cost hops x round trip with hops drawn from the number of servers; per-car traffic counts
//! messages as the node's metrics do (gossip messages and requests received), without gossipsub's own
//! control frames; and claims are not signed (nothing in a submitter's decision reads the signature).
//!
//! `scripts/fleet-sim.sh --cars N --days D` runs it; [`run`] is the library entry.

mod cars;
mod engine;
mod report;
mod rng;
mod svg;

use std::path::PathBuf;

pub use engine::run;
pub use report::Report;

/// Most cars one run simulates (memory grows about 4 GB a million).
pub const MAX_CARS: usize = 5_000_000;

/// Who the adversaries are, and how they behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adversary {
    /// Nobody lies.
    None,
    /// Reports a wrong output of its own on every job.
    AlwaysWrong,
    /// Reports a wrong output with this probability (a rare liar).
    RareLiar(f64),
    /// All adversaries report the same wrong output.
    Colluding,
    /// Takes assignments and never answers.
    Silent,
    /// Copies another worker's commitment instead of computing.
    Lazy,
    /// Computes honestly but claims a tenth of the real cost and time in its bids.
    BidCostLiar,
    /// Colluding, and underbidding like a bid-cost liar to be drawn more often (the open-fleet attack:
    /// fresh keys that underbid to take every replica of a job).
    UnderbiddingColluders,
}

impl Adversary {
    /// Parses a `--adversary` value: `none`, `always-wrong`, `rare-liar[:P]`, `colluding`, `silent`,
    /// `lazy`, `bid-cost-liar`, `underbidding-colluders`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        let p = match arg {
            Some(a) => Some(
                a.parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("adversary probability must be 0 to 1, got '{a}'"))?,
            ),
            None => None,
        };
        Ok(match (name, p) {
            ("none", None) => Self::None,
            ("always-wrong", None) => Self::AlwaysWrong,
            ("rare-liar", p) => Self::RareLiar(p.unwrap_or(0.01)),
            ("colluding", None) => Self::Colluding,
            ("silent", None) => Self::Silent,
            ("lazy", None) => Self::Lazy,
            ("bid-cost-liar", None) => Self::BidCostLiar,
            ("underbidding-colluders", None) => Self::UnderbiddingColluders,
            _ => {
                return Err(format!(
                    "unknown adversary '{s}' (none, always-wrong, rare-liar[:P], colluding, silent, lazy, bid-cost-liar, underbidding-colluders)"
                ));
            }
        })
    }

    /// The name used in reports.
    pub fn name(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::AlwaysWrong => "always-wrong".into(),
            Self::RareLiar(p) => format!("rare-liar:{p}"),
            Self::Colluding => "colluding".into(),
            Self::Silent => "silent".into(),
            Self::Lazy => "lazy".into(),
            Self::BidCostLiar => "bid-cost-liar".into(),
            Self::UnderbiddingColluders => "underbidding-colluders".into(),
        }
    }
}

/// Which jobs the submitters send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobMix {
    /// Only the small digits classifier (a few ms on a car).
    Small,
    /// 70 % digits, 25 % sentence embeddings, 5 % short LLM generations.
    Mixed,
    /// Only LLM generations (seconds each).
    Large,
}

impl JobMix {
    /// Parses `small`, `mixed` or `large`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "small" => Ok(Self::Small),
            "mixed" => Ok(Self::Mixed),
            "large" => Ok(Self::Large),
            _ => Err(format!("unknown job mix '{s}' (small, mixed, large)")),
        }
    }
}

/// How the cars spend their days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profiles {
    /// Commuters, night-shift workers, taxis and weekend cars (55/10/10/25 %).
    Mixed,
    /// Every car parked, plugged in and admitting all day (the shape of the real-node scale run).
    Stationary,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Cars in the fleet (each runs a node).
    pub cars: usize,
    /// Simulated days, starting Monday 00:00.
    pub days: u32,
    /// Simulated minutes instead of days (a run as short as a real-node scale run, for calibration).
    pub minutes: Option<u32>,
    /// Seed of every draw.
    pub seed: u64,
    /// Fraction of the cars whose owners take part (the others never admit work).
    pub participation: f64,
    /// Fraction of the cars that are reachable (DHT servers and relays).
    pub reachable: f64,
    /// Submitting nodes (0: one per thousand cars, at least ten).
    pub submitters: usize,
    /// Jobs submitted per car and day, fleet-wide on average (ignored when `jobs_per_s` is set).
    pub jobs_per_car_day: f64,
    /// A fixed fleet-wide submission rate instead.
    pub jobs_per_s: Option<f64>,
    /// The jobs' models.
    pub mix: JobMix,
    /// The cars' days.
    pub profiles: Profiles,
    /// Owners allow work only in off-peak hours (00:00-07:00).
    pub off_peak_only: bool,
    /// No car has wifi: every link is cellular.
    pub cellular_only: bool,
    /// The adversaries' behaviour.
    pub adversary: Adversary,
    /// Their share of the cars.
    pub adversary_share: f64,
    /// Fixed replication with this many replicas per job (`None`: adaptive, the node's default).
    pub replicas: Option<u8>,
    /// Submitters are reachable cars (as in the real-node scale run, where servers submit).
    pub reachable_submitters: bool,
    /// Every link is local: 1 ms each way, no loss (the in-process memory transport of the real-node
    /// scale run, for calibration against it).
    pub lan: bool,
    /// Where to write the SVG plots (none when `None`).
    pub plots: Option<PathBuf>,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            cars: 10_000,
            days: 1,
            minutes: None,
            seed: 1,
            participation: 1.0,
            reachable: 0.05,
            submitters: 0,
            jobs_per_car_day: 10.0,
            jobs_per_s: None,
            mix: JobMix::Mixed,
            profiles: Profiles::Mixed,
            off_peak_only: false,
            cellular_only: false,
            adversary: Adversary::None,
            adversary_share: 0.0,
            replicas: None,
            reachable_submitters: false,
            lan: false,
            plots: None,
            progress: false,
        }
    }
}

impl SimConfig {
    /// The simulated time, in seconds: `minutes` when set, else `days`.
    pub fn seconds(&self) -> u64 {
        match self.minutes {
            Some(m) => u64::from(m) * 60,
            None => u64::from(self.days) * 86_400,
        }
    }

    /// Checks the values: one line saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.cars < 20 {
            return Err(format!("--cars must be at least 20, got {}", self.cars));
        }
        if self.cars > MAX_CARS {
            return Err(format!(
                "--cars must be at most {MAX_CARS} (about 4 GB of memory a million cars), got {}",
                self.cars
            ));
        }
        if self.days == 0 && self.minutes.is_none() {
            return Err("--days must be at least 1".into());
        }
        if let Some(m) = self.minutes
            && m < 3
        {
            return Err(format!(
                "--minutes must be at least 3 (jobs of the last two minutes are not counted), got {m}"
            ));
        }
        for (name, v) in [
            ("--participation", self.participation),
            ("--reachable", self.reachable),
            ("--adversary-share", self.adversary_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be 0 to 1, got {v}"));
            }
        }
        if self.participation == 0.0 {
            return Err("--participation 0 leaves no car running a node".into());
        }
        if self.reachable * self.cars as f64 * self.participation < 1.0 {
            return Err("--reachable leaves no reachable car: the fleet has no DHT server".into());
        }
        if !(self.jobs_per_car_day >= 0.0 && self.jobs_per_car_day.is_finite()) {
            return Err(format!(
                "--jobs-per-car-day must be >= 0, got {}",
                self.jobs_per_car_day
            ));
        }
        if self.replicas.is_some_and(|r| !(1..=8).contains(&r)) {
            return Err("--replicas must be 1 to 8".into());
        }
        if let Some(r) = self.jobs_per_s
            && !(r >= 0.0 && r.is_finite())
        {
            return Err(format!("--jobs-per-s must be >= 0, got {r}"));
        }
        Ok(())
    }
}
