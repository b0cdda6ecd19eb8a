//! What a run measured: collected while it runs, summed up in one JSON object (and plots) at its end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use fleetmesh_protocol::JobId;
use serde_json::{Value, json};

use crate::SimConfig;
use crate::engine::CarStats;

/// A credit is a second of a car's compute; priced like a rented GPU at about $1 an hour.
const USD_PER_CREDIT: f64 = 1.0 / 3_600.0;
/// Electricity in $/kWh: off-peak (00:00-07:00) and peak.
const TARIFF_OFF_PEAK: f64 = 0.12;
const TARIFF_PEAK: f64 = 0.30;
/// A job still in flight this close to the end is left out of the success rate.
const SETTLE_MS: u64 = 120_000;

/// One user job, as its submitter saw it.
#[derive(Debug, Clone, Copy, Default)]
struct UserJob {
    submitted_ms: u64,
    assigned_ms: Option<u64>,
    verdict_ms: Option<u64>,
    accepted: bool,
    reoffered: bool,
}

/// One sample of the time series (every 15 simulated minutes).
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    admitted: usize,
    verified: u64,
    assign_ms: Vec<u32>,
    shards: Vec<u32>,
}

/// Everything counted during a run.
#[derive(Default)]
pub(crate) struct Collector {
    cars: usize,
    jobs: Vec<UserJob>,
    verified: u64,
    failed: u64,
    wrong_before_revision: u64,
    /// Jobs whose accepted output is wrong now (revisions take them out).
    pub(crate) wrong: HashSet<JobId>,
    pub(crate) rechecks: u64,
    pub(crate) revised: u64,
    workers_assigned: u64,
    decided: u64,
    flops: f64,
    preempted: u64,
    preempted_ms: u64,
    computed_ms: u64,
    lookups: u64,
    lookup_hops: u64,
    lookup_ms: Vec<u32>,
    publish_delay_ms: Vec<u32>,
    dht_requests: u64,
    relayed: HashMap<u32, u64>,
    samples: Option<Vec<Sample>>,
    window_verified: u64,
    window_assign: Vec<u32>,
}

impl Collector {
    pub(crate) fn new(cars: usize, plots: bool) -> Self {
        Self {
            cars,
            samples: plots.then(Vec::new),
            ..Self::default()
        }
    }

    pub(crate) fn submit(&mut self, now: u64) -> usize {
        self.jobs.push(UserJob {
            submitted_ms: now,
            ..UserJob::default()
        });
        self.jobs.len() - 1
    }

    pub(crate) fn submitted(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn verified(&self) -> u64 {
        self.verified
    }

    pub(crate) fn assigned(&mut self, user: usize, now: u64) {
        let job = &mut self.jobs[user];
        if job.assigned_ms.is_none() {
            job.assigned_ms = Some(now);
            let ms = (now - job.submitted_ms).min(u64::from(u32::MAX)) as u32;
            self.window_assign.push(ms);
        }
    }

    pub(crate) fn reoffered(&mut self, user: usize) {
        self.jobs[user].reoffered = true;
    }

    pub(crate) fn verdict(
        &mut self,
        user: usize,
        now: u64,
        accepted: bool,
        wrong: bool,
        workers: usize,
        flops: f64,
    ) {
        let job = &mut self.jobs[user];
        if job.verdict_ms.is_some() {
            return;
        }
        job.verdict_ms = Some(now);
        job.accepted = accepted;
        self.decided += 1;
        self.workers_assigned += workers as u64;
        if accepted {
            self.verified += 1;
            self.window_verified += 1;
            self.flops += flops;
            self.wrong_before_revision += u64::from(wrong);
        } else {
            self.failed += 1;
        }
    }

    pub(crate) fn preempted(&mut self, ran_ms: u64) {
        self.preempted += 1;
        self.preempted_ms += ran_ms;
    }

    pub(crate) fn computed(&mut self, ms: u64) {
        self.computed_ms += ms;
    }

    pub(crate) fn lookup(&mut self, hops: u64, ms: f64) {
        self.lookups += 1;
        self.lookup_hops += hops;
        self.lookup_ms.push(ms as u32);
    }

    pub(crate) fn published(&mut self, delay_ms: u64) {
        self.publish_delay_ms
            .push(delay_ms.min(u64::from(u32::MAX)) as u32);
    }

    pub(crate) fn dht_requests(&mut self, n: u64) {
        self.dht_requests += n;
    }

    pub(crate) fn relayed(&mut self, relay: u32) {
        *self.relayed.entry(relay).or_default() += 1;
    }

    pub(crate) fn sample(&mut self, now: u64, admitted: usize, shards: &[u32]) {
        let verified = std::mem::take(&mut self.window_verified);
        let assign_ms = std::mem::take(&mut self.window_assign);
        if let Some(samples) = &mut self.samples {
            samples.push(Sample {
                at_ms: now,
                admitted,
                verified,
                assign_ms,
                shards: shards.to_vec(),
            });
        }
    }

    /// The report: one JSON object with every figure, and the plots when asked for.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn report(
        &mut self,
        cfg: &SimConfig,
        cars: &[(bool, bool, &CarStats)],
        servers: usize,
        submitters: usize,
        shards: BTreeMap<String, u32>,
        max_reservations: usize,
        events: u64,
        jobs_per_s: f64,
        end_ms: u64,
        wall: Instant,
    ) -> Report {
        let secs = cfg.seconds() as f64;
        let days = secs / 86_400.0;
        // Jobs submitted in the last two minutes are left out, decided or not (keeping the decided
        // ones would favour fast jobs).
        let counted: Vec<&UserJob> = self
            .jobs
            .iter()
            .filter(|j| j.submitted_ms + SETTLE_MS <= end_ms)
            .collect();
        let assigned = counted.iter().filter(|j| j.assigned_ms.is_some()).count();
        let first_offer = counted
            .iter()
            .filter(|j| j.assigned_ms.is_some() && !j.reoffered)
            .count();
        let mut assign: Vec<u32> = counted
            .iter()
            .filter_map(|j| j.assigned_ms.map(|a| (a - j.submitted_ms) as u32))
            .collect();
        let mut verdict: Vec<u32> = counted
            .iter()
            .filter(|j| j.accepted)
            .filter_map(|j| j.verdict_ms.map(|v| (v - j.submitted_ms) as u32))
            .collect();
        assign.sort_unstable();
        verdict.sort_unstable();
        self.lookup_ms.sort_unstable();
        let pct = |v: &[u32], p: f64| -> Value {
            if v.is_empty() {
                return Value::Null;
            }
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            json!(round3(f64::from(v[i]) / 1_000.0))
        };
        // Per car: messages and bytes a second, cellular MB a month, by role.
        let per_car = |pick: &dyn Fn(bool) -> bool| {
            let chosen: Vec<&CarStats> = cars
                .iter()
                .filter(|(enrolled, reachable, _)| *enrolled && pick(*reachable))
                .map(|(_, _, s)| *s)
                .collect();
            let mut msgs: Vec<f64> = chosen.iter().map(|s| s.msgs as f64 / secs).collect();
            let mut bytes: Vec<f64> = chosen.iter().map(|s| s.bytes as f64 / secs).collect();
            let mut cell: Vec<f64> = chosen
                .iter()
                .map(|s| s.cell_bytes as f64 / days * 30.0 / 1e6)
                .collect();
            for v in [&mut msgs, &mut bytes, &mut cell] {
                v.sort_by(f64::total_cmp);
            }
            let stat = |v: &[f64]| {
                json!({
                    "mean": round3(mean(v)),
                    "p99": round3(fpct(v, 0.99)),
                    "max": round3(v.last().copied().unwrap_or(0.0)),
                })
            };
            (
                json!({
                    "cars": chosen.len(),
                    "msgs_per_s": stat(&msgs),
                    "bytes_per_s": stat(&bytes),
                    "cellular_mb_month": stat(&cell),
                }),
                msgs,
                bytes,
            )
        };
        let (all, msgs, bytes) = per_car(&|_| true);
        let (clients, _, _) = per_car(&|r| !r);
        let (servers_role, _, _) = per_car(&|r| r);
        // Owners: earnings and electricity a month, per enrolled car.
        let owners: Vec<&CarStats> = cars.iter().filter(|(e, _, _)| *e).map(|(_, _, s)| *s).collect();
        let month = 30.0 / days;
        let gross: Vec<f64> = owners
            .iter()
            .map(|s| s.credit as f64 / 1e6 * USD_PER_CREDIT * month)
            .collect();
        let energy_cost: Vec<f64> = owners
            .iter()
            .map(|s| {
                (s.busy_wh_off_peak * TARIFF_OFF_PEAK
                    + s.busy_wh_peak * TARIFF_PEAK
                    + s.awake_wh * (7.0 * TARIFF_OFF_PEAK + 17.0 * TARIFF_PEAK) / 24.0)
                    / 1_000.0
                    * month
            })
            .collect();
        let kwh = |f: &dyn Fn(&CarStats) -> f64| owners.iter().map(|s| f(s)).sum::<f64>() / 1_000.0;
        let admitted_share = owners.iter().map(|s| s.admitted_ms as f64).sum::<f64>()
            / (owners.len().max(1) as f64 * secs * 1_000.0);
        let relayed_max = self.relayed.values().copied().max().unwrap_or(0);
        let wrong_after = self.wrong.len() as u64;
        self.publish_delay_ms.sort_unstable();
        let publish_p99 = pct(&self.publish_delay_ms, 0.99);
        let wall_s = wall.elapsed().as_secs_f64();
        let json = json!({
            "cars": self.cars,
            "days": cfg.minutes.is_none().then_some(cfg.days),
            "minutes": cfg.minutes,
            "seed": cfg.seed,
            "wall_s": round3(wall_s),
            "peak_rss_mb": peak_rss_mb(),
            "events": events,
            "events_per_s": (events as f64 / wall_s.max(1e-9)).round(),
            "reachable": servers,
            "submitters": submitters,
            "participation": cfg.participation,
            "adversary": cfg.adversary.name(),
            "adversary_share": cfg.adversary_share,
            "off_peak_only": cfg.off_peak_only,
            "cellular_only": cfg.cellular_only,
            "jobs_asked_per_s": round3(jobs_per_s),
            "jobs_submitted_per_s": round3(self.jobs.len() as f64 / secs),
            "jobs_submitted": self.jobs.len(),
            "jobs_verified": self.verified,
            "jobs_failed": self.failed,
            "fleet_jobs_per_s": round3(self.verified as f64 / secs),
            "publish_delay_p99_s": publish_p99,
            "fleet_flops_per_s": (self.flops / secs).round(),
            "assign_success": if counted.is_empty() {
                Value::Null
            } else {
                json!(round4(assigned as f64 / counted.len() as f64))
            },
            "assigned_first_offer": round4(first_offer as f64 / assigned.max(1) as f64),
            "assign_p50_s": pct(&assign, 0.5),
            "assign_p99_s": pct(&assign, 0.99),
            "assign_p999_s": pct(&assign, 0.999),
            "verdict_p50_s": pct(&verdict, 0.5),
            "verdict_p99_s": pct(&verdict, 0.99),
            "verdict_p999_s": pct(&verdict, 0.999),
            "replicas_per_job": round3(self.workers_assigned as f64 / self.decided.max(1) as f64),
            "wrong_accepted": wrong_after,
            "wrong_accepted_rate": wrong_after as f64 / self.verified.max(1) as f64,
            "wrong_before_revision": self.wrong_before_revision,
            "rechecks": self.rechecks,
            "revised": self.revised,
            "preempted": self.preempted,
            "wasted_fraction": round4(self.preempted_ms as f64 / (self.computed_ms + self.preempted_ms).max(1) as f64),
            "per_car_msgs_mean": round3(mean(&msgs)),
            "per_car_msgs_p99": round3(fpct(&msgs, 0.99)),
            "per_car_bytes_mean": round3(mean(&bytes)),
            "per_car_bytes_p99": round3(fpct(&bytes, 0.99)),
            "by_role": { "all": all, "client": clients, "server": servers_role },
            "dht_lookups": self.lookups,
            "dht_hops_mean": round3(self.lookup_hops as f64 / self.lookups.max(1) as f64),
            "dht_lookup_p50_s": pct(&self.lookup_ms, 0.5),
            "dht_lookup_p99_s": pct(&self.lookup_ms, 0.99),
            "server_dht_requests_per_s": round3(self.dht_requests as f64 / servers.max(1) as f64 / secs),
            "max_reservations_per_relay": max_reservations,
            "max_relayed_messages_per_relay": relayed_max,
            "offer_shards": shards,
            "admitted_share": round4(admitted_share),
            "owner_earnings_month_mean": round3(mean(&gross)),
            "owner_energy_cost_month_mean": round3(mean(&energy_cost)),
            "owner_net_month_mean": round3(mean(&gross) - mean(&energy_cost)),
            "energy_kwh_off_peak": round3(kwh(&|s| s.busy_wh_off_peak)),
            "energy_kwh_peak": round3(kwh(&|s| s.busy_wh_peak)),
            "energy_kwh_awake": round3(kwh(&|s| s.awake_wh)),
        });
        let plots = match (&cfg.plots, &self.samples) {
            (Some(dir), Some(samples)) => match write_plots(dir, samples, &msgs) {
                Ok(files) => files,
                Err(e) => vec![format!("plots not written: {e}")],
            },
            _ => Vec::new(),
        };
        Report { json, plots }
    }
}

/// A run's figures.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every figure, as printed on the last line.
    pub json: Value,
    /// The plot files written (or why not).
    pub plots: Vec<String>,
}

impl Report {
    /// A figure by name (`None` when absent or not a number).
    pub fn number(&self, name: &str) -> Option<f64> {
        self.json.get(name).and_then(Value::as_f64)
    }
}

fn write_plots(dir: &std::path::Path, samples: &[Sample], msgs: &[f64]) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let hours: Vec<f64> = samples
        .iter()
        .map(|s| (s.at_ms - samples[0].at_ms) as f64 / 3_600_000.0)
        .collect();
    let mut files = Vec::new();
    let mut write = |name: &str, svg: String| -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, svg)?;
        files.push(path.display().to_string());
        Ok(())
    };
    let admitted: Vec<f64> = samples.iter().map(|s| s.admitted as f64).collect();
    write(
        "admitted.svg",
        crate::svg::lines(
            "Cars admitting work",
            "hour",
            "cars",
            &hours,
            &[("admitted", &admitted)],
        ),
    )?;
    let per_s: Vec<f64> = samples.iter().map(|s| s.verified as f64 / 900.0).collect();
    write(
        "throughput.svg",
        crate::svg::lines(
            "Verified jobs a second",
            "hour",
            "jobs/s",
            &hours,
            &[("verified", &per_s)],
        ),
    )?;
    let p = |q: f64| -> Vec<f64> {
        samples
            .iter()
            .map(|s| {
                let mut v = s.assign_ms.clone();
                v.sort_unstable();
                if v.is_empty() {
                    0.0
                } else {
                    f64::from(v[((v.len() - 1) as f64 * q).round() as usize]) / 1_000.0
                }
            })
            .collect()
    };
    let (p50, p99) = (p(0.5), p(0.99));
    write(
        "assignment.svg",
        crate::svg::lines(
            "Time to assignment",
            "hour",
            "seconds",
            &hours,
            &[("p50", &p50), ("p99", &p99)],
        ),
    )?;
    let shards: Vec<f64> = samples
        .iter()
        .map(|s| s.shards.iter().copied().max().unwrap_or(0) as f64)
        .collect();
    write(
        "shards.svg",
        crate::svg::lines(
            "Offer shards (largest family)",
            "hour",
            "shards",
            &hours,
            &[("S", &shards)],
        ),
    )?;
    write(
        "per-car-messages.svg",
        crate::svg::cdf("Messages a second received per car", "msgs/s", msgs),
    )?;
    Ok(files)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Percentile of sorted values.
fn fpct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Peak resident memory of this process (MB), from `/proc/self/status`.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0).round())
}
