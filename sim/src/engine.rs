//! The event loop: cars change state, submitters offer jobs, messages travel, and fleetmesh's own code
//! decides (see the crate's documentation for which code and what is modelled instead).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::Instant;

use fleetmesh_consensus::assign::Randomness;
use fleetmesh_consensus::directory::{self, Family, Shard};
use fleetmesh_consensus::job::Outcome;
use fleetmesh_consensus::submitter::{Action, Replication, Submitter};
use fleetmesh_node::jobs::JobsConfig;
use fleetmesh_node::vehicle::{Activity, Admission, DeparturePredictor, Link, OwnerPolicy, Reason};
use fleetmesh_protocol::messages::{
    AgreementRule, Bid, Budget, JobInput, JobOffer, NumericClass, ResultCommit, ResultReveal, WithdrawReason,
    WorkClaim,
};
use fleetmesh_protocol::signing::SignatureBytes;
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};

use crate::cars::{self, DAY_MIN, Profile};
use crate::report::{Collector, Report};
use crate::rng::{Rng, mix, unit_of};
use crate::{Adversary, JobMix, Profiles, SimConfig};

/// The simulation starts on the Monday of the third week, so each car has two weeks of history.
const START_DAY: u64 = 14;
const MIN_MS: u64 = 60_000;
const DAY_MS: u64 = DAY_MIN * MIN_MS;
/// How often a member re-announces its shard and the shard counts are estimated (the node's periods).
const DIRECTORY_EVERY_MS: u64 = 300_000;
/// How often a submitter with jobs in flight lets time pass in its core.
const TICK_MS: u64 = 1_000;
/// Peers a submitter is connected to (the count that closes a bid window early), as measured in the
/// real-node scale runs: ~13 for a car behind NAT, ~300 for a reachable server.
const PEERS_CLIENT: usize = 13;
const PEERS_SERVER: usize = 300;
/// Gossipsub's mesh degree: the fan-out of each hop an offer takes inside its shard.
const MESH_DEGREE: f64 = 6.0;
/// Kademlia's parallelism and replication: a lookup asks 3 peers a step; a record goes to 20.
const KAD_ALPHA: u64 = 3;
const KAD_K: u64 = 20;
/// Share of relayed connections that hole punching upgrades to direct ones.
const HOLE_PUNCH_SUCCESS: f64 = 0.7;
/// Power of a busy car computer, and of one awake and waiting for work (W).
const BUSY_W: f64 = 200.0;
const AWAKE_W: f64 = 15.0;

/// Message sizes on the wire (bytes), as the node encodes them.
const OFFER_BYTES: u64 = 560;
const BID_BYTES: u64 = 260;
const ASSIGN_BYTES: u64 = 220;
const COMMIT_BYTES: u64 = 180;
const REVEAL_REQUEST_BYTES: u64 = 150;
const RECEIPT_BYTES: u64 = 700;
const REVOCATION_BYTES: u64 = 1_000;
const DHT_REQUEST_BYTES: u64 = 200;

/// A model the submitters use: what one run costs a car, its size on the wire, its work.
pub(crate) struct ModelSpec {
    pub(crate) name: &'static str,
    pub(crate) id: ModelId,
    /// Compute time on a car (ms).
    pub(crate) compute_ms: u64,
    pub(crate) input_bytes: u64,
    pub(crate) output_bytes: u64,
    /// Floating-point operations of one run.
    pub(crate) flops: f64,
    /// Reward offered per worker (micro-credits): a credit is a second of a car's compute.
    pub(crate) reward: u64,
}

fn models(mix: JobMix) -> Vec<(ModelSpec, f64)> {
    let spec = |name: &'static str, compute_ms: u64, input_bytes, output_bytes, flops| ModelSpec {
        name,
        id: ModelId::of(name.as_bytes()),
        compute_ms,
        input_bytes,
        output_bytes,
        flops,
        reward: compute_ms * 1_000,
    };
    let digits = spec("digits", 3, 64, 40, 2.0e5);
    let minilm = spec("minilm", 40, 256, 1_536, 5.6e9);
    let llm = spec("smollm2", 3_000, 200, 128, 1.7e10);
    match mix {
        JobMix::Small => vec![(digits, 1.0)],
        JobMix::Mixed => vec![(digits, 0.70), (minilm, 0.25), (llm, 0.05)],
        JobMix::Large => vec![(llm, 1.0)],
    }
}

/// One car.
struct Car {
    profile: Profile,
    reachable: bool,
    enrolled: bool,
    adversary: bool,
    /// Its DHT server and relay (a reachable car), when it is not one.
    relay: u32,
    /// Which of a shard's slots it announces under.
    slot: u32,
    activity: Activity,
    soc: f32,
    soc_at_ms: u64,
    admission: Admission,
    admitted_since: Option<u64>,
    /// The node's departure predictor, with the car's two weeks of history before the run.
    predictor: DeparturePredictor,
    /// When the car is predicted to leave (the node's departure predictor), while parked.
    leaves_at_ms: u64,
    /// When its admission is looked at again (0: not planned); one planned look at a time.
    recheck_at: u64,
    /// The job it is running: (submitter, job, started, done at).
    busy: Option<(u32, JobId, u64, u64)>,
    /// Shard index per model while a member, and the shard's offer count when it joined.
    shard: Vec<Option<Member>>,
    id: Option<NodeId>,
    stats: CarStats,
}

/// A car's place in one family's shards: the shard, its index in the shard's member list, and the
/// shard's offer count when it joined (what it has received since is the difference).
#[derive(Debug, Clone, Copy)]
struct Member {
    shard: u32,
    pos: u32,
    seen: u64,
}

/// What one car received and earned.
#[derive(Default, Clone)]
pub(crate) struct CarStats {
    pub(crate) msgs: u64,
    pub(crate) bytes: u64,
    pub(crate) cell_bytes: u64,
    pub(crate) credit: i64,
    pub(crate) jobs: u64,
    pub(crate) busy_wh_off_peak: f64,
    pub(crate) busy_wh_peak: f64,
    pub(crate) awake_wh: f64,
    pub(crate) admitted_ms: u64,
}

/// A job in flight at a submitter, under the offer id it runs as.
struct InFlight {
    original: JobId,
    /// Index of the user's job in the collector (`None`: a recheck).
    user: Option<usize>,
    model: usize,
    /// Each worker's output and salt, once it computed.
    computed: BTreeMap<NodeId, (Vec<u8>, [u8; 32])>,
    offer: JobOffer,
}

struct Sub {
    car: u32,
    me: NodeId,
    core: Submitter,
    budget: Signed<Budget>,
    nonce: u64,
    /// Per model: until when it knows members of a shard it is not in (found through the DHT).
    knows_shard_until: Vec<u64>,
    jobs: HashMap<JobId, InFlight>,
    ticking: bool,
}

/// The shards of one model's family.
struct FamilyState {
    family: Family,
    count: u32,
    members: Vec<Vec<u32>>,
    /// Offers published on each shard so far.
    offers: Vec<u64>,
    offers_since_estimate: u64,
    /// Members of a shard, as last estimated from the directory (what a member uses to draw its bid).
    estimate: usize,
}

enum Msg {
    Bid(Bid),
    Commit(ResultCommit),
    /// A reveal with the worker's claim, and its size on the wire.
    Reveal(ResultReveal, WorkClaim, u64),
    Withdraw(JobId, NodeId),
    Refused(JobId, NodeId),
}

enum Ev {
    /// A car's next stretch of the day begins.
    Stretch {
        car: u32,
        activity: Activity,
    },
    /// A car's day: its stretches are scheduled.
    Day {
        car: u32,
        day: u64,
    },
    /// Admission is looked at again (a dwell ends, charge crosses a floor, an hour begins).
    Recheck {
        car: u32,
    },
    /// The next job is submitted.
    Submit,
    /// A message reaches a submitter.
    ToSub {
        sub: u32,
        msg: Box<Msg>,
    },
    Wake {
        sub: u32,
        job: JobId,
    },
    Tick {
        sub: u32,
    },
    /// An assignment reaches a worker.
    Assign {
        car: u32,
        sub: u32,
        job: JobId,
    },
    /// A reveal request reaches a worker.
    RevealRequest {
        car: u32,
        sub: u32,
        job: JobId,
    },
    /// A worker's computation ends.
    Computed {
        car: u32,
        sub: u32,
        job: JobId,
    },
    /// Members re-announce their shards; the shard counts are estimated.
    Directory,
    /// A sample for the time series.
    Sample,
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct World {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    end: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    events: u64,
    cars: Vec<Car>,
    servers: Vec<u32>,
    subs: Vec<Sub>,
    by_id: HashMap<NodeId, u32>,
    models: Vec<(ModelSpec, f64)>,
    families: Vec<FamilyState>,
    class: NumericClass,
    jobs_cfg: JobsConfig,
    rate_per_ms: f64,
    out: Collector,
    /// Whether the shard counts were set once (see [`World::directory`]).
    warm: bool,
    /// The model of every job, by the id its user knows (for rechecks).
    model_of: HashMap<JobId, u8>,
    /// Revocations gossiped on the fleet-wide topic (every enrolled car receives each).
    revocations: u64,
    /// When the next job is submitted (ms, unrounded: the rate is kept exactly).
    next_submit: f64,
}

/// Runs the simulation and returns its report.
pub fn run(cfg: &SimConfig) -> Result<Report, String> {
    cfg.validate()?;
    let wall = Instant::now();
    let mut w = World::new(cfg.clone());
    if w.servers.is_empty() {
        return Err(format!(
            "no car of the {} drew reachable (--reachable {}, seed {}): the fleet has no DHT server",
            cfg.cars, cfg.reachable, cfg.seed
        ));
    }
    if cfg.progress {
        eprintln!(
            "fleet-sim: {} cars ({} reachable), {} submitters, {:.1} jobs/s, set up in {:.1} s",
            w.cars.len(),
            w.servers.len(),
            w.subs.len(),
            w.rate_per_ms * 1_000.0,
            wall.elapsed().as_secs_f64()
        );
    }
    let mut next_progress = w.now + 3_600_000;
    while let Some(Reverse(q)) = w.queue.pop() {
        if q.at > w.end {
            break;
        }
        w.now = q.at;
        w.events += 1;
        w.handle(q.ev);
        if cfg.progress && w.now >= next_progress {
            next_progress += 3_600_000;
            let hours = (w.now - START_DAY * DAY_MS) as f64 / 3_600_000.0;
            eprintln!(
                "  {hours:>5.0} h simulated: {} jobs submitted, {} verified, {:.0} s wall, {:.2} M events/s",
                w.out.submitted(),
                w.out.verified(),
                wall.elapsed().as_secs_f64(),
                w.events as f64 / wall.elapsed().as_secs_f64() / 1e6
            );
        }
    }
    w.now = w.end;
    Ok(w.finish(wall))
}

impl World {
    fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let start = START_DAY * DAY_MS;
        let end = start + cfg.seconds() * 1_000;
        let models = models(cfg.mix);
        let mut policy = OwnerPolicy::default();
        if cfg.off_peak_only {
            policy.allowed_hours = (0..7).collect();
        }
        let n = cfg.cars;
        let mut cars = Vec::with_capacity(n);
        let mut servers = Vec::new();
        for i in 0..n as u64 {
            let h = mix(cfg.seed ^ mix(i));
            let enrolled = unit_of(h, 1, 0) < cfg.participation;
            let reachable = enrolled && unit_of(h, 2, 0) < cfg.reachable;
            let profile = match cfg.profiles {
                Profiles::Stationary => Profile::Stationary,
                Profiles::Mixed if reachable => Profile::Stationary,
                Profiles::Mixed => Profile::mixed(cfg.seed, i),
            };
            if reachable {
                servers.push(i as u32);
            }
            cars.push(Car {
                profile,
                reachable,
                enrolled,
                adversary: false,
                relay: 0,
                slot: directory::slot_of(&seed_bytes(cfg.seed, i)),
                activity: Activity::Home,
                soc: 50.0 + 40.0 * unit_of(h, 3, 0) as f32,
                soc_at_ms: start,
                admission: Admission::new(policy.clone()),
                admitted_since: None,
                predictor: cars::warmed_predictor(profile, i ^ cfg.seed, START_DAY),
                leaves_at_ms: u64::MAX,
                recheck_at: 0,
                busy: None,
                shard: vec![None; models.len()],
                id: None,
                stats: CarStats::default(),
            });
        }
        // Adversaries among the enrolled cars that are not servers, by a draw of their own.
        if cfg.adversary != Adversary::None {
            for (i, car) in cars.iter_mut().enumerate() {
                car.adversary =
                    car.enrolled && !car.reachable && unit_of(cfg.seed, i as u64, 0xAD) < cfg.adversary_share;
            }
        }
        for car in cars.iter_mut() {
            if !car.reachable && !servers.is_empty() {
                car.relay = servers[rng.below(servers.len())];
            }
        }
        let enrolled: Vec<u32> = (0..n as u32)
            .filter(|i| {
                let c = &cars[*i as usize];
                c.enrolled && !c.adversary && (c.reachable || !cfg.reachable_submitters)
            })
            .collect();
        let subs_wanted = if cfg.submitters > 0 {
            cfg.submitters
        } else {
            (n / 1_000).max(10)
        }
        .min(enrolled.len());
        let jobs_cfg = JobsConfig::default();
        let payer = NodeKey::from_seed([0xEF; 32]);
        let mut subs = Vec::with_capacity(subs_wanted);
        let mut taken = HashSet::new();
        while subs.len() < subs_wanted {
            let car = enrolled[rng.below(enrolled.len())];
            if !taken.insert(car) {
                continue;
            }
            let key = NodeKey::from_seed(seed_bytes(cfg.seed, u64::from(car)));
            let me = key.node_id();
            cars[car as usize].id = Some(me);
            let budget = Budget {
                payer: payer.node_id(),
                holder: me,
                serial: 1,
                amount: u64::MAX / 4,
                expires_ms: u64::MAX,
            };
            let Ok(budget) = Signed::sign(budget, &payer) else {
                continue;
            };
            subs.push(Sub {
                car,
                me,
                core: Submitter::new(me, jobs_cfg.submitter_config()),
                budget,
                nonce: 0,
                knows_shard_until: vec![0; models.len()],
                jobs: HashMap::new(),
                ticking: false,
            });
        }
        let mut by_id = HashMap::new();
        for (i, car) in cars.iter().enumerate() {
            if let Some(id) = car.id {
                by_id.insert(id, i as u32);
            }
        }
        let families = models
            .iter()
            .map(|(m, _)| FamilyState {
                family: Family::Model(m.id),
                count: 1,
                members: vec![Vec::new()],
                offers: vec![0],
                offers_since_estimate: 0,
                estimate: 0,
            })
            .collect();
        let rate_per_s = cfg
            .jobs_per_s
            .unwrap_or(cfg.jobs_per_car_day * n as f64 / 86_400.0);
        let plots = cfg.plots.is_some();
        let mut w = World {
            rng,
            now: start,
            end,
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            servers,
            subs,
            by_id,
            families,
            class: NumericClass {
                backend: "burn-flex-0.22".into(),
                features: "simd+rayon".into(),
                arch: "aarch64-neon".into(),
            },
            jobs_cfg,
            rate_per_ms: rate_per_s / 1_000.0,
            out: Collector::new(n, plots),
            warm: false,
            model_of: HashMap::new(),
            revocations: 0,
            next_submit: 0.0,
            models,
            cars,
            cfg,
        };
        for car in 0..n as u32 {
            if w.cars[car as usize].enrolled {
                w.at(start, Ev::Day { car, day: START_DAY });
            }
        }
        // The shard counts are set right after the first stretches admitted their cars, before any
        // offer (see `World::directory`).
        w.at(start + 1, Ev::Directory);
        if w.rate_per_ms > 0.0 {
            w.next_submit = (start + 1_000) as f64 + w.rng.exp(1.0 / w.rate_per_ms);
            if w.next_submit < end as f64 {
                w.at(w.next_submit as u64, Ev::Submit);
            }
        }
        w.at(start, Ev::Sample);
        w
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Day { car, day } => self.day(car, day),
            Ev::Stretch { car, activity } => self.stretch(car, activity),
            Ev::Recheck { car } => {
                // Only the look still planned (a later plan replaced an earlier one).
                if self.cars[car as usize].recheck_at == self.now {
                    self.cars[car as usize].recheck_at = 0;
                    self.admit(car);
                }
            }
            Ev::Submit => self.submit(),
            Ev::ToSub { sub, msg } => self.deliver(sub, *msg),
            Ev::Wake { sub, job } => {
                let actions = self.subs[sub as usize].core.on_wake(job, self.now, &mut self.rng);
                self.act(sub, actions);
            }
            Ev::Tick { sub } => self.tick(sub),
            Ev::Assign { car, sub, job } => self.assigned(car, sub, job),
            Ev::RevealRequest { car, sub, job } => self.reveal_request(car, sub, job),
            Ev::Computed { car, sub, job } => self.computed(car, sub, job),
            Ev::Directory => self.directory(),
            Ev::Sample => {
                let admitted = self.cars.iter().filter(|c| c.admitted_since.is_some()).count();
                let shards: Vec<u32> = self.families.iter().map(|f| f.count).collect();
                self.out.sample(self.now, admitted, &shards);
                self.at(self.now + 15 * MIN_MS, Ev::Sample);
            }
        }
    }

    // ---- cars ----

    fn day(&mut self, car: u32, day: u64) {
        let c = &self.cars[car as usize];
        let plan = cars::day_plan(c.profile, u64::from(car) ^ self.cfg.seed, day);
        let base = day * DAY_MS;
        for (i, (minute, activity)) in plan.into_iter().enumerate() {
            let at = base + minute * MIN_MS;
            // The first stretch of a later day continues the night: only on the first day it starts.
            if i == 0 && day != START_DAY {
                continue;
            }
            self.at(at, Ev::Stretch { car, activity });
        }
        self.at((day + 1) * DAY_MS, Ev::Day { car, day: day + 1 });
    }

    fn stretch(&mut self, car: u32, activity: Activity) {
        let now = self.now;
        let c = &mut self.cars[car as usize];
        c.soc = cars::soc_after(c.activity, c.soc, (now - c.soc_at_ms) as f32 / MIN_MS as f32);
        c.soc_at_ms = now;
        let leaving = activity == Activity::Driving && c.activity != Activity::Driving;
        // Offers received so far came over the link the car had until now.
        self.settle_offers(car);
        let c = &mut self.cars[car as usize];
        c.activity = activity;
        if leaving && let Some((sub, job, started, _)) = c.busy.take() {
            // Preempted: the driver comes first; the worker hands the job back.
            self.out.preempted(now - started);
            let delay = self.one_way(car, self.subs[sub as usize].car);
            let id = self.node_id(car);
            self.at(
                now + delay,
                Ev::ToSub {
                    sub,
                    msg: Box::new(Msg::Withdraw(job, id)),
                },
            );
        }
        self.admit(car);
        // The node's departure predictor, asked when the car parks.
        let c = &mut self.cars[car as usize];
        c.leaves_at_ms = if activity == Activity::Driving {
            now
        } else {
            let confidence = c.admission.policy().departure_confidence;
            c.predictor
                .parked_for_min(now / MIN_MS, confidence)
                .map_or(u64::MAX, |m| now + m * MIN_MS)
        };
    }

    /// Feeds the car's state to the node's admission policy and joins or leaves the shards.
    fn admit(&mut self, car: u32) {
        let now = self.now;
        let cellular_only = self.cfg.cellular_only;
        let off_peak_only = self.cfg.off_peak_only;
        let c = &mut self.cars[car as usize];
        let soc = cars::soc_after(c.activity, c.soc, (now - c.soc_at_ms) as f32 / MIN_MS as f32);
        let state = cars::vehicle_state(c.activity, soc, cellular_only);
        let decision = c.admission.update(&state, now / MIN_MS);
        let was = c.admitted_since.is_some();
        // When to look again: a dwell ends, the battery charges past its floor, the hour changes.
        let policy = c.admission.policy();
        let again = match decision.reason {
            Reason::Dwell => Some(now + policy.min_dwell_min * MIN_MS),
            Reason::LowCharge if state.plugged_in => {
                cars::minutes_to_charge(soc, policy.soc_floor_plugged_pct + policy.hysteresis)
                    .map(|m| now + m * MIN_MS)
            }
            _ if off_peak_only && state.parked => Some((now / 3_600_000 + 1) * 3_600_000),
            _ => None,
        };
        if decision.admitted && !was {
            c.admitted_since = Some(now);
            self.join_shards(car);
        } else if !decision.admitted && was {
            let since = c.admitted_since.take().unwrap_or(now);
            c.stats.admitted_ms += now - since;
            c.stats.awake_wh += AWAKE_W * (now - since) as f64 / 3_600_000.0;
            self.leave_shards(car);
        }
        if let Some(t) = again.map(|t| t.max(now + 1)) {
            let c = &mut self.cars[car as usize];
            if c.recheck_at <= now || t < c.recheck_at {
                c.recheck_at = t;
                self.at(t, Ev::Recheck { car });
            }
        }
    }

    fn join_shards(&mut self, car: u32) {
        let bytes = seed_bytes(self.cfg.seed, u64::from(car));
        for f in 0..self.families.len() {
            let fam = &mut self.families[f];
            let shard = Shard::of(fam.family, fam.count, &bytes, self.now).index;
            let pos = fam.members[shard as usize].len() as u32;
            fam.members[shard as usize].push(car);
            let seen = fam.offers[shard as usize];
            self.cars[car as usize].shard[f] = Some(Member { shard, pos, seen });
        }
    }

    fn leave_shards(&mut self, car: u32) {
        for f in 0..self.families.len() {
            let Some(Member { shard, pos, seen }) = self.cars[car as usize].shard[f].take() else {
                continue;
            };
            let fam = &mut self.families[f];
            let list = &mut fam.members[shard as usize];
            list.swap_remove(pos as usize);
            if let Some(&moved) = list.get(pos as usize)
                && let Some(m) = self.cars[moved as usize].shard[f].as_mut()
            {
                m.pos = pos;
            }
            let offers = fam.offers[shard as usize] - seen;
            self.count_offers(car, offers, f);
        }
    }

    /// Counts the offers the car received on its shards since the last count (at the link it has now).
    fn settle_offers(&mut self, car: u32) {
        for f in 0..self.families.len() {
            let Some(m) = self.cars[car as usize].shard[f] else {
                continue;
            };
            let now = self.families[f].offers[m.shard as usize];
            self.count_offers(car, now - m.seen, f);
            if let Some(m) = self.cars[car as usize].shard[f].as_mut() {
                m.seen = now;
            }
        }
    }

    /// `offers` offers of model `f` received on the car's shard.
    fn count_offers(&mut self, car: u32, offers: u64, f: usize) {
        let bytes = offers * (OFFER_BYTES + self.models[f].0.input_bytes);
        self.receive(car, offers, bytes);
    }

    /// Counts messages a car received (gossip messages and requests, as the node's metrics do).
    fn receive(&mut self, car: u32, msgs: u64, bytes: u64) {
        let c = &mut self.cars[car as usize];
        c.stats.msgs += msgs;
        c.stats.bytes += bytes;
        if self.cfg.cellular_only || c.activity != Activity::Home {
            c.stats.cell_bytes += bytes;
        }
    }

    fn node_id(&mut self, car: u32) -> NodeId {
        if let Some(id) = self.cars[car as usize].id {
            return id;
        }
        let id = NodeKey::from_seed(seed_bytes(self.cfg.seed, u64::from(car))).node_id();
        self.cars[car as usize].id = Some(id);
        self.by_id.insert(id, car);
        id
    }

    fn link(&self, car: u32) -> Link {
        let c = &self.cars[car as usize];
        if !self.cfg.cellular_only && c.activity == Activity::Home {
            Link::Wifi
        } else {
            Link::Metered
        }
    }

    /// One-way delay of a message from `a` to `b` (ms): half of each side's round trip, a
    /// retransmission when lost, and a relay hop when neither side is reachable and hole punching
    /// failed for them.
    fn one_way(&mut self, a: u32, b: u32) -> u64 {
        self.delay(a, b, true)
    }

    /// [`World::one_way`]; `direct` false for a gossip hop (between mesh neighbours, not these two).
    fn delay(&mut self, a: u32, b: u32, direct: bool) -> u64 {
        let (la, lb) = (self.link(a), self.link(b));
        let (ra, rb) = (self.cars[a as usize].reachable, self.cars[b as usize].reachable);
        if self.cfg.lan {
            return 1;
        }
        let mut ms = (cars::rtt_ms(la, ra, self.rng.unit()) + cars::rtt_ms(lb, rb, self.rng.unit())) / 4.0;
        for (l, r) in [(la, ra), (lb, rb)] {
            if self.rng.unit() < cars::loss(l, r) {
                ms += 200.0 + cars::rtt_ms(l, r, self.rng.unit());
            }
        }
        if direct && !ra && !rb {
            let (lo, hi) = (a.min(b), a.max(b));
            if unit_of(u64::from(lo), u64::from(hi), self.cfg.seed) >= HOLE_PUNCH_SUCCESS {
                // Through the receiver's relay: one more hop on a fixed line.
                ms += cars::rtt_ms(Link::Wifi, true, self.rng.unit());
                let relay = self.cars[b as usize].relay;
                self.out.relayed(relay);
            }
        }
        ms.round() as u64 + 1
    }

    /// A DHT lookup from `car` (ms) and the requests it sends to servers: hops x a round trip to
    /// servers, hops drawn around log16 of the servers (a lookup asks `KAD_ALPHA` servers a step).
    fn lookup(&mut self, car: u32) -> (u64, u64) {
        let servers = self.servers.len().max(2) as f64;
        let base = (servers.ln() / 16f64.ln()).max(1.0);
        let hops = (base + self.rng.unit()).floor().max(1.0) as u64;
        let link = self.link(car);
        let reachable = self.cars[car as usize].reachable;
        let mut ms = 0.0;
        for _ in 0..hops {
            if self.cfg.lan {
                ms += 2.0;
                continue;
            }
            ms += cars::rtt_ms(link, reachable, self.rng.unit()).max(cars::rtt_ms(
                Link::Wifi,
                true,
                self.rng.unit(),
            ));
        }
        self.out.lookup(hops, ms);
        (ms.round() as u64, hops * KAD_ALPHA)
    }

    // ---- the directory ----

    fn directory(&mut self) {
        let now = self.now;
        let secs = DIRECTORY_EVERY_MS as f64 / 1_000.0;
        let mut dht_requests = 0u64;
        for f in 0..self.families.len() {
            let members: usize = self.families[f].members.iter().map(Vec::len).sum();
            // Each member announces two keys of its shard (a lookup and `KAD_K` ADD_PROVIDERs each)
            // and samples the directory's slots (a lookup each, ending at the first answer).
            let servers = self.servers.len().max(2) as f64;
            let hops = (servers.ln() / 16f64.ln()).max(1.0).ceil() as u64;
            dht_requests += members as u64
                * (2 * (hops * KAD_ALPHA + KAD_K) + directory::SAMPLED_SLOTS as u64 * (hops * KAD_ALPHA));
            let fam = &self.families[f];
            if members == 0 {
                continue;
            }
            if !self.warm {
                // The fleet did not appear at once: it grew to this size over weeks, an estimate every
                // 5 minutes, and its shard count grew with it (an estimate sees at most 20 members a
                // slot, so the count at most doubles per estimate). Start where that growth ends.
                let count = directory::next_shards(1, members, 0.0);
                self.families[f].estimate = members / count as usize;
                if count != self.families[f].count {
                    self.reshard(f, count);
                }
                continue;
            }
            // The shard count, as the node computes it: members found under the sampled slots of one
            // shard, and the offers it brought. (Every member then adopts it: see the crate's notes.)
            let shard = self.rng.below(fam.count as usize);
            let own_slot = self.rng.below(directory::SLOTS as usize) as u32;
            let found: Vec<usize> = directory::sampled_slots(own_slot)
                .map(|slot| {
                    fam.members[shard]
                        .iter()
                        .filter(|m| self.cars[**m as usize].slot == slot)
                        .count()
                        .min(directory::MAX_PROVIDERS_PER_KEY)
                })
                .collect();
            let estimate = directory::members_estimate(&found);
            let rate = fam.offers_since_estimate as f64 / secs / f64::from(fam.count);
            let next = directory::next_shards(fam.count, directory::members_lower_bound(&found), rate);
            let fam = &mut self.families[f];
            fam.offers_since_estimate = 0;
            fam.estimate = if next == fam.count {
                estimate
            } else {
                (estimate as f64 * f64::from(fam.count) / f64::from(next)) as usize
            };
            if next != fam.count {
                self.reshard(f, next);
            }
        }
        // Servers answer the directory's requests, spread evenly.
        let per_server = dht_requests / self.servers.len().max(1) as u64;
        for s in self.servers.clone() {
            self.receive(s, per_server, per_server * DHT_REQUEST_BYTES);
        }
        self.out.dht_requests(dht_requests);
        self.warm = true;
        self.at(now + DIRECTORY_EVERY_MS, Ev::Directory);
    }

    /// Moves every member of family `f` to its shard under `count` shards.
    fn reshard(&mut self, f: usize, count: u32) {
        let members: Vec<u32> = self.families[f].members.iter().flatten().copied().collect();
        for car in &members {
            if let Some(Member { shard, seen, .. }) = self.cars[*car as usize].shard[f].take() {
                let offers = self.families[f].offers[shard as usize] - seen;
                self.count_offers(*car, offers, f);
            }
        }
        let fam = &mut self.families[f];
        fam.count = count;
        fam.members = vec![Vec::new(); count as usize];
        fam.offers = vec![0; count as usize];
        for car in members {
            let bytes = seed_bytes(self.cfg.seed, u64::from(car));
            let fam = &mut self.families[f];
            let shard = Shard::of(fam.family, count, &bytes, self.now).index;
            let pos = fam.members[shard as usize].len() as u32;
            fam.members[shard as usize].push(car);
            self.cars[car as usize].shard[f] = Some(Member { shard, pos, seen: 0 });
        }
    }

    // ---- submitters ----

    fn submit(&mut self) {
        let now = self.now;
        self.next_submit += self.rng.exp(1.0 / self.rate_per_ms);
        if self.next_submit < self.end as f64 {
            self.at(self.next_submit as u64, Ev::Submit);
        }
        if self.subs.is_empty() {
            return;
        }
        let sub = self.rng.below(self.subs.len()) as u32;
        let mut pick = self.rng.unit();
        let mut model = self.models.len() - 1;
        for (i, (_, share)) in self.models.iter().enumerate() {
            if pick < *share {
                model = i;
                break;
            }
            pick -= share;
        }
        let user = self.out.submit(now);
        let (replicas, replication) = self.replication();
        let offer = self.new_offer(sub, model, replicas);
        let id = offer.id();
        self.model_of.insert(id, model as u8);
        let s = &mut self.subs[sub as usize];
        s.core.offer(id, offer.clone(), replication);
        s.jobs.insert(
            id,
            InFlight {
                original: id,
                user: Some(user),
                model,
                computed: BTreeMap::new(),
                offer: offer.clone(),
            },
        );
        self.publish(sub, model, &offer);
    }

    /// Replicas an offer asks for, and how the core replicates: adaptive (the node's default, the offer
    /// asks for one) or fixed.
    fn replication(&self) -> (u8, Replication) {
        match self.cfg.replicas {
            Some(r) => (r, Replication::Fixed),
            None => (1, Replication::Adaptive),
        }
    }

    fn new_offer(&mut self, sub: u32, model: usize, replicas: u8) -> JobOffer {
        let now = self.now;
        let cfg = &self.jobs_cfg;
        let (ttl, deadline) = (cfg.offer_ttl_ms, cfg.deadline_ms);
        let spec = &self.models[model].0;
        let (id, reward) = (spec.id, spec.reward);
        let s = &mut self.subs[sub as usize];
        s.nonce += 1;
        JobOffer {
            submitter: s.me,
            nonce: s.nonce,
            model: id,
            input: JobInput::Inline(s.nonce.to_le_bytes().to_vec()),
            rule: AgreementRule::Exact,
            replicas,
            reward,
            created_ms: now,
            expires_ms: now + ttl,
            deadline_ms: now + deadline,
            budget: s.budget.clone(),
        }
    }

    /// Publishes `offer` on a shard of its model: the submitter's own when it is a member, else one it
    /// finds through the DHT (remembered for the directory period); its members draw their bids.
    fn publish(&mut self, sub: u32, model: usize, offer: &JobOffer) {
        let now = self.now;
        let sub_car = self.subs[sub as usize].car;
        let own = self.cars[sub_car as usize].shard[model].map(|m| m.shard);
        let mut delay = 0;
        let shard = match own {
            Some(s) => s,
            None => {
                if self.subs[sub as usize].knows_shard_until[model] <= now {
                    // Look up a shard's head key, dial a few providers, wait for their subscriptions.
                    let (ms, requests) = self.lookup(sub_car);
                    delay = ms + 2 * self.one_way(sub_car, self.servers[0]);
                    self.out.dht_requests(requests);
                    self.subs[sub as usize].knows_shard_until[model] = now + DIRECTORY_EVERY_MS;
                }
                self.rng.below(self.families[model].count as usize) as u32
            }
        };
        self.out.published(delay);
        let fam = &mut self.families[model];
        fam.offers[shard as usize] += 1;
        fam.offers_since_estimate += 1;
        // Gossip does not bring a node its own message.
        if let Some(m) = self.cars[sub_car as usize].shard[model].as_mut()
            && m.shard == shard
        {
            m.seen += 1;
        }
        let members = &fam.members[shard as usize];
        let n = members.len();
        if n == 0 {
            return;
        }
        let p = directory::bid_probability(fam.estimate.max(n.min(directory::BIDS_PER_OFFER)));
        let bidders: Vec<u32> = if p >= 1.0 {
            members.clone()
        } else {
            // (In draw order: a hash set's order would differ from run to run.)
            let k = self.rng.poisson(p * n as f64).min(n);
            let mut picked = Vec::with_capacity(k);
            while picked.len() < k {
                let m = members[self.rng.below(n)];
                if !picked.contains(&m) {
                    picked.push(m);
                }
            }
            picked
        };
        // Gossip hops inside the shard: about log6 of its members.
        let depth = ((n as f64).ln() / MESH_DEGREE.ln()).ceil().max(1.0) as usize;
        let spec = &self.models[model].0;
        let (compute_ms, expires) = (spec.compute_ms, offer.expires_ms);
        let job = offer.id();
        for car in bidders {
            if car == sub_car {
                continue;
            }
            let c = &self.cars[car as usize];
            // The node's own checks before a bid: admitted, not busy, the job ends before the
            // predicted departure.
            if c.admitted_since.is_none() || c.busy.is_some() || now + compute_ms >= c.leaves_at_ms {
                continue;
            }
            let liar = c.adversary;
            let hops = 1 + self.rng.below(depth);
            let mut t = now + delay;
            for _ in 0..hops {
                t += self.delay(sub_car, car, false) / 2 + 1;
            }
            t += self.one_way(car, sub_car);
            let worker = self.node_id(car);
            let cheap = liar
                && matches!(
                    self.cfg.adversary,
                    Adversary::BidCostLiar | Adversary::UnderbiddingColluders
                );
            let bid = Bid {
                job,
                worker,
                class: self.class.clone(),
                price: if cheap {
                    spec_reward(&self.models, model) / 2
                } else {
                    spec_reward(&self.models, model)
                },
                energy_cost: if cheap { 0 } else { compute_ms * 10 },
                est_ms: u32::try_from(if cheap {
                    (compute_ms / 10).max(1)
                } else {
                    compute_ms
                })
                .unwrap_or(u32::MAX),
                expires_ms: expires,
            };
            self.at(
                t,
                Ev::ToSub {
                    sub,
                    msg: Box::new(Msg::Bid(bid)),
                },
            );
        }
        self.ensure_tick(sub);
    }

    fn ensure_tick(&mut self, sub: u32) {
        if !self.subs[sub as usize].ticking {
            self.subs[sub as usize].ticking = true;
            self.at(self.now + TICK_MS, Ev::Tick { sub });
        }
    }

    fn tick(&mut self, sub: u32) {
        let actions = self.subs[sub as usize].core.on_tick(self.now);
        self.act(sub, actions);
        let s = &mut self.subs[sub as usize];
        // A job the core let go of without a verdict (none should be) leaves here too.
        let core = &s.core;
        s.jobs.retain(|id, _| core.contains(id));
        if s.core.in_flight() > 0 || !s.jobs.is_empty() {
            self.at(self.now + TICK_MS, Ev::Tick { sub });
        } else {
            s.ticking = false;
        }
    }

    fn deliver(&mut self, sub: u32, msg: Msg) {
        let now = self.now;
        let sub_car = self.subs[sub as usize].car;
        let (bytes, request) = match &msg {
            Msg::Bid(_) => (BID_BYTES, true),
            Msg::Commit(_) => (COMMIT_BYTES, true),
            // The reveal answers the submitter's request: not a request received.
            Msg::Reveal(_, _, bytes) => (*bytes, false),
            Msg::Withdraw(..) => (160, true),
            Msg::Refused(..) => (80, false),
        };
        self.receive(sub_car, u64::from(request), bytes);
        let peers = if self.cars[sub_car as usize].reachable {
            PEERS_SERVER
        } else {
            PEERS_CLIENT
        };
        let s = &mut self.subs[sub as usize];
        let actions = match msg {
            Msg::Bid(bid) => s.core.on_bid(bid, now, peers, &mut self.rng).unwrap_or_default(),
            Msg::Commit(c) => s.core.on_commit(&c, now).unwrap_or_default(),
            Msg::Reveal(r, claim, _) => {
                let claim = Signed {
                    body: claim,
                    signature: SignatureBytes([0; 64]),
                };
                s.core.on_report(&r, claim, now).unwrap_or_default()
            }
            Msg::Withdraw(job, worker) => {
                let w = fleetmesh_protocol::messages::Withdraw {
                    job,
                    worker,
                    reason: WithdrawReason::Preempted,
                    at_ms: now,
                };
                s.core.on_withdraw(&w, now).unwrap_or_default()
            }
            Msg::Refused(job, worker) => s.core.on_assignment_refused(job, worker, now),
        };
        self.act(sub, actions);
    }

    /// Carries out the core's actions, as the node's submitter does.
    fn act(&mut self, sub: u32, actions: Vec<Action>) {
        let now = self.now;
        let sub_car = self.subs[sub as usize].car;
        for action in actions {
            match action {
                Action::Assign { job, worker, .. } => {
                    let Some(&car) = self.by_id.get(&worker) else {
                        continue;
                    };
                    if let Some(user) = self.subs[sub as usize].jobs.get(&job).and_then(|j| j.user) {
                        self.out.assigned(user, now);
                    }
                    let t = now + self.one_way(sub_car, car);
                    self.at(t, Ev::Assign { car, sub, job });
                }
                Action::RequestReveal { job, worker } => {
                    let Some(&car) = self.by_id.get(&worker) else {
                        continue;
                    };
                    let t = now + self.one_way(sub_car, car);
                    self.at(t, Ev::RevealRequest { car, sub, job });
                }
                Action::WakeAt { job, at_ms } => self.at(at_ms, Ev::Wake { sub, job }),
                Action::Reoffer { job, original } => self.reoffer(sub, job, original),
                Action::Decide {
                    job,
                    result,
                    receipts,
                } => {
                    let Some(flight) = self.subs[sub as usize].jobs.remove(&job) else {
                        continue;
                    };
                    for r in &receipts {
                        let Some(&car) = self.by_id.get(&r.claim.body.worker) else {
                            continue;
                        };
                        let c = &mut self.cars[car as usize].stats;
                        c.credit += r.credit as i64;
                        c.jobs += u64::from(r.verdict.is_accepted());
                        self.receive(car, 1, RECEIPT_BYTES);
                    }
                    let spec = &self.models[flight.model].0;
                    let (flops, truth) = (spec.flops, truth(&flight.original));
                    match (&result.outcome, flight.user) {
                        (Outcome::Accepted { output, .. }, Some(user)) => {
                            self.out.verdict(
                                user,
                                now,
                                true,
                                *output != truth,
                                result.workers_assigned,
                                flops,
                            );
                            if *output != truth {
                                self.out.wrong.insert(flight.original);
                            }
                        }
                        (Outcome::Failed(_), Some(user)) => {
                            self.out
                                .verdict(user, now, false, false, result.workers_assigned, 0.0)
                        }
                        _ => {}
                    }
                }
                Action::Recheck { recheck, .. } => {
                    // The suspect's receipt for the job it ran alone is revoked (its credit taken back)
                    // and the job offered again with two replicas.
                    self.out.rechecks += 1;
                    self.revocations += 1;
                    let model = self.model_of.get(&recheck.of).copied().unwrap_or(0) as usize;
                    if let Some(&car) = self.by_id.get(&recheck.suspect) {
                        let stats = &mut self.cars[car as usize].stats;
                        stats.credit -= self.models[model].0.reward as i64;
                        stats.jobs = stats.jobs.saturating_sub(1);
                    }
                    let offer = self.new_offer(sub, model, 2);
                    let id = offer.id();
                    let s = &mut self.subs[sub as usize];
                    s.core.offer_recheck(id, offer.clone(), recheck);
                    s.jobs.insert(
                        id,
                        InFlight {
                            original: recheck.of,
                            user: None,
                            model,
                            computed: BTreeMap::new(),
                            offer: offer.clone(),
                        },
                    );
                    self.publish(sub, model, &offer);
                }
                Action::Revise { job, output, .. } => {
                    self.out.revised += 1;
                    if output == truth(&job) {
                        self.out.wrong.remove(&job);
                    } else {
                        self.out.wrong.insert(job);
                    }
                }
            }
        }
    }

    /// A job that drew too few bids is offered again under a fresh offer (the node's `reoffer`).
    fn reoffer(&mut self, sub: u32, job: JobId, original: JobId) {
        let Some(mut flight) = self.subs[sub as usize].jobs.remove(&job) else {
            return;
        };
        let s = &mut self.subs[sub as usize];
        s.core.release(&job);
        let replicas = flight.offer.replicas;
        let offer = self.new_offer(sub, flight.model, replicas);
        let id = offer.id();
        flight.computed.clear();
        flight.offer = offer.clone();
        if let Some(user) = flight.user {
            self.out.reoffered(user);
        }
        let model = flight.model;
        let replication = self.replication().1;
        let s = &mut self.subs[sub as usize];
        s.core.offer(original, offer.clone(), replication);
        s.jobs.insert(id, flight);
        self.publish(sub, model, &offer);
    }

    // ---- workers ----

    fn assigned(&mut self, car: u32, sub: u32, job: JobId) {
        let now = self.now;
        self.receive(car, 1, ASSIGN_BYTES);
        let sub_car = self.subs[sub as usize].car;
        let Some(model) = self.subs[sub as usize].jobs.get(&job).map(|j| j.model) else {
            return;
        };
        let c = &self.cars[car as usize];
        let silent = c.adversary && self.cfg.adversary == Adversary::Silent;
        if c.admitted_since.is_none() || c.busy.is_some() {
            let id = self.node_id(car);
            let t = now + self.one_way(car, sub_car);
            self.at(
                t,
                Ev::ToSub {
                    sub,
                    msg: Box::new(Msg::Refused(job, id)),
                },
            );
            return;
        }
        if silent {
            return;
        }
        let done = now + self.models[model].0.compute_ms;
        self.cars[car as usize].busy = Some((sub, job, now, done));
        self.at(done, Ev::Computed { car, sub, job });
    }

    fn computed(&mut self, car: u32, sub: u32, job: JobId) {
        let now = self.now;
        let c = &mut self.cars[car as usize];
        match c.busy {
            Some((s, j, _, _)) if s == sub && j == job => c.busy = None,
            // Preempted before it ended.
            _ => return,
        }
        let Some(flight) = self.subs[sub as usize].jobs.get(&job) else {
            return;
        };
        let model = flight.model;
        let truth = truth(&flight.original);
        let copied = flight.computed.values().next().cloned();
        let spec = &self.models[model].0;
        let wh = BUSY_W * spec.compute_ms as f64 / 3_600_000.0;
        self.out.computed(spec.compute_ms);
        let hour = (now / 3_600_000) % 24;
        let stats = &mut self.cars[car as usize].stats;
        if hour < 7 {
            stats.busy_wh_off_peak += wh;
        } else {
            stats.busy_wh_peak += wh;
        }
        let worker = self.node_id(car);
        let mut salt = [0u8; 32];
        salt[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        let lying = self.cars[car as usize].adversary;
        let output = match (lying, self.cfg.adversary) {
            (true, Adversary::AlwaysWrong) => truth
                .iter()
                .zip(worker.as_bytes())
                .map(|(x, k)| !(x ^ k))
                .collect(),
            (true, Adversary::RareLiar(p)) if self.rng.unit() < p => truth.iter().map(|x| x ^ 1).collect(),
            (true, Adversary::Colluding | Adversary::UnderbiddingColluders) => {
                truth.iter().map(|x| x.wrapping_add(1)).collect()
            }
            (true, Adversary::Lazy) => match copied {
                // Copies another worker's output and salt instead of computing: its commitment is not
                // the one those open under its own id.
                Some((output, salt)) => {
                    let commit = ResultCommit {
                        job,
                        worker,
                        commitment: ResultCommit::commitment_for(&job, &worker, &output, &[0; 32]),
                    };
                    self.send_commit(car, sub, job, commit, output, salt);
                    return;
                }
                None => vec![0; truth.len()],
            },
            _ => truth.to_vec(),
        };
        let commit = ResultCommit {
            job,
            worker,
            commitment: ResultCommit::commitment_for(&job, &worker, &output, &salt),
        };
        self.send_commit(car, sub, job, commit, output, salt);
    }

    fn send_commit(
        &mut self,
        car: u32,
        sub: u32,
        job: JobId,
        commit: ResultCommit,
        output: Vec<u8>,
        salt: [u8; 32],
    ) {
        let worker = commit.worker;
        if let Some(flight) = self.subs[sub as usize].jobs.get_mut(&job) {
            flight.computed.insert(worker, (output, salt));
        }
        let t = self.now + self.one_way(car, self.subs[sub as usize].car);
        self.at(
            t,
            Ev::ToSub {
                sub,
                msg: Box::new(Msg::Commit(commit)),
            },
        );
    }

    fn reveal_request(&mut self, car: u32, sub: u32, job: JobId) {
        self.receive(car, 1, REVEAL_REQUEST_BYTES);
        let worker = self.node_id(car);
        let sub_id = self.subs[sub as usize].me;
        let Some(flight) = self.subs[sub as usize].jobs.get(&job) else {
            return;
        };
        let Some((output, salt)) = flight.computed.get(&worker).cloned() else {
            return;
        };
        let spec = &self.models[flight.model].0;
        let spec_output = spec.output_bytes;
        let claim = WorkClaim {
            job,
            model: spec.id,
            worker,
            submitter: sub_id,
            output_digest: *blake3::hash(&output).as_bytes(),
            compute_us: spec.compute_ms * 1_000,
            energy_uwh: (BUSY_W * spec.compute_ms as f64 / 3.6) as u64,
            claimed_credit: spec.reward,
            claimed_ms: self.now,
        };
        let reveal = ResultReveal {
            job,
            worker,
            output,
            salt,
            compute_us: claim.compute_us,
            energy_uwh: claim.energy_uwh,
        };
        let t = self.now + self.one_way(car, self.subs[sub as usize].car);
        self.at(
            t,
            Ev::ToSub {
                sub,
                msg: Box::new(Msg::Reveal(reveal, claim, spec_output + 300)),
            },
        );
    }

    // ---- the end ----

    fn finish(mut self, wall: Instant) -> Report {
        let now = self.now;
        for car in 0..self.cars.len() as u32 {
            self.settle_offers(car);
            if self.cars[car as usize].enrolled && self.revocations > 0 {
                self.receive(car, self.revocations, self.revocations * REVOCATION_BYTES);
            }
            let c = &mut self.cars[car as usize];
            if let Some(since) = c.admitted_since {
                c.stats.admitted_ms += now - since;
                c.stats.awake_wh += AWAKE_W * (now - since) as f64 / 3_600_000.0;
            }
        }
        let shards: BTreeMap<String, u32> = self
            .families
            .iter()
            .zip(&self.models)
            .map(|(f, (m, _))| (m.name.to_string(), f.count))
            .collect();
        let roles: Vec<(bool, bool, &CarStats)> = self
            .cars
            .iter()
            .map(|c| (c.enrolled, c.reachable, &c.stats))
            .collect();
        let reservations = {
            let mut per: HashMap<u32, usize> = HashMap::new();
            for c in self.cars.iter().filter(|c| c.enrolled && !c.reachable) {
                *per.entry(c.relay).or_default() += 1;
            }
            per.values().copied().max().unwrap_or(0)
        };
        let mut out = std::mem::take(&mut self.out);
        out.report(
            &self.cfg,
            &roles,
            self.servers.len(),
            self.subs.len(),
            shards,
            reservations,
            self.events,
            self.rate_per_ms * 1_000.0,
            self.end,
            wall,
        )
    }
}

fn spec_reward(models: &[(ModelSpec, f64)], model: usize) -> u64 {
    models[model].0.reward
}

/// The bytes a car's key (and its place in the directory) derive from.
fn seed_bytes(seed: u64, car: u64) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("fleetmesh sim car v1")
        .update(&seed.to_le_bytes())
        .update(&car.to_le_bytes())
        .finalize()
        .as_bytes()
}

/// The true output of the job its user knows as `job`.
fn truth(job: &JobId) -> Vec<u8> {
    blake3::hash(job.as_bytes()).as_bytes()[..8].to_vec()
}
