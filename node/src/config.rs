//! Node configuration: a TOML file (`--config fleetmesh.toml`) plus command-line overrides, validated at start.
//!
//! Every field has a default, so an empty file (or none) gives a working node. Unknown keys are an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Why a configuration could not be used. Reported as one line; the CLI exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("config file {path}{location}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// ` line N` where known.
        location: String,
        /// What is wrong, naming the key and the expected type.
        message: String,
    },
    /// A value parses but is not usable.
    #[error("config: {0}")]
    Invalid(String),
}

pub use crate::net::config::{KadMode, NetConfig};

/// The local HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the local HTTP API (loopback by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The file holding the token that state-changing calls need (created, mode 0600, if missing)
    /// [default: HOME/api.token; a node started without a home keeps a random token in memory].
    pub token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            token_file: None,
        }
    }
}

/// Work and pay: prices, capacity and adaptive replication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Credit this node claims per job as a worker, and offers as a submitter, in micro-credits.
    pub price: u64,
    /// Price per model name, overriding `price` (e.g. `{ minilm = 5000 }`).
    pub model_prices: std::collections::BTreeMap<String, u64>,
    /// Jobs this node runs at once as a worker.
    pub max_active_work: usize,
    /// Inference workers. One worker uses every core inside each forward pass; several run one job
    /// (batch) each and share the cores out (one thread apiece on two cores). Default: 2 where the
    /// machine has two cores or more (on two cores measured faster than one worker on both:
    /// `scripts/bench-inference.sh`, the `-exec` rows), else 1.
    pub threads: usize,
    /// How long an inference thread waits for more jobs of the same model to run them as one batch (ms).
    pub batch_linger_ms: u64,
    /// Replicate jobs submitted without a replica count by the workers' reputation.
    pub adaptive: bool,
    /// Consecutive validated results that make a worker trusted.
    pub trust_after: u32,
    /// Fraction of a trusted worker's jobs that are checked by a second worker anyway.
    pub spot_check: f64,
    /// Fraction of jobs given to untrusted workers (with a trusted partner) so newcomers can earn trust.
    pub explore: f64,
    /// Hours a worker that returned an invalid result is not drawn again.
    pub probation_hours: u64,
    /// Node ids of the payers whose budgets this node honours: it bids only on jobs they fund and its
    /// ledger counts credit only against their budgets. None: this node works for nobody.
    pub payers: Vec<String>,
    /// Budget files (from `fleetmesh budget issue`) this node pays its own jobs from. None: it cannot
    /// submit jobs.
    pub budgets: Vec<PathBuf>,
    /// With fewer than three peers, accept two agreeing workers that have no validated history here
    /// (a local testnet of one owner). Off: such jobs wait for a third worker or a trusted one, since
    /// two fresh keys cost an attacker nothing.
    pub small_fleet: bool,
    /// Length of an epoch, in seconds: once one has ended (and a grace of up to a minute for late
    /// receipts), this node seals its receipts of it under a signed Merkle root published in the DHT,
    /// against which anyone can check its balance claim. 2 s to 1 day.
    pub epoch_secs: u64,
}

/// Two inference workers of one thread each where the machine has two cores or more, else one.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

impl Default for JobsSection {
    fn default() -> Self {
        let t = fleetmesh_consensus::trust::TrustConfig::default();
        Self {
            price: 1_000,
            model_prices: std::collections::BTreeMap::new(),
            max_active_work: 64,
            threads: default_workers(),
            batch_linger_ms: 1,
            adaptive: true,
            trust_after: t.trust_after,
            spot_check: t.spot_check,
            explore: t.explore,
            probation_hours: t.probation_ms / 3_600_000,
            payers: Vec::new(),
            budgets: Vec::new(),
            small_fleet: false,
            epoch_secs: 600,
        }
    }
}

impl JobsSection {
    /// The job roles' settings from this section (payer ids parsed, budget files read and checked).
    pub fn jobs_config(&self) -> Result<crate::jobs::JobsConfig, ConfigError> {
        let mut payers = Vec::with_capacity(self.payers.len());
        for p in &self.payers {
            payers.push(
                p.parse::<fleetmesh_protocol::NodeId>().map_err(|e| {
                    ConfigError::Invalid(format!("jobs.payers: {p:?} is not a node id ({e})"))
                })?,
            );
        }
        let mut budgets = Vec::with_capacity(self.budgets.len());
        for path in &self.budgets {
            budgets.push(crate::pay::load(path).map_err(|e| ConfigError::Invalid(e.to_string()))?);
        }
        Ok(crate::jobs::JobsConfig {
            payers: fleetmesh_consensus::payment::Payers::new(payers),
            budgets,
            price: self.price,
            model_prices: self.model_prices.clone(),
            max_active_work: self.max_active_work,
            small_fleet: self.small_fleet,
            epoch_ms: self.epoch_secs.saturating_mul(1_000),
            adaptive: self.adaptive.then_some(fleetmesh_consensus::trust::TrustConfig {
                trust_after: self.trust_after,
                probation_ms: self.probation_hours.saturating_mul(3_600_000),
                spot_check: self.spot_check,
                explore: self.explore,
            }),
            ..crate::jobs::JobsConfig::default()
        })
    }
}

/// The dotted key (`section.key`) written on the line holding byte `at` of `text`, if that line is
/// `key = value`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Mesh settings.
    pub net: NetConfig,
    /// Local API settings.
    pub api: ApiConfig,
    /// Work and pay.
    pub jobs: JobsSection,
    /// The vehicle source and the local clock.
    pub car: crate::vehicle::CarSection,
    /// The owner's rules for lending the car's computer.
    pub owner: crate::vehicle::OwnerPolicy,
    /// Power model and electricity tariff.
    pub energy: crate::vehicle::EnergySection,
}

impl NodeConfig {
    /// Reads a config file; a missing optional file is the caller's decision.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start.min(text.len()));
            let location = match offset {
                Some(at) => {
                    let line = text[..at].matches('\n').count() + 1;
                    match key_at(text, at) {
                        Some(key) => format!(" line {line}, key `{key}`"),
                        None => format!(" line {line}"),
                    }
                }
                None => String::new(),
            };
            ConfigError::Parse {
                path: path.to_owned(),
                location,
                message: e.message().lines().next().unwrap_or("invalid").to_string(),
            }
        })
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.net.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "net.listen needs at least one address".into(),
            ));
        }
        if !(self.net.offers_per_submitter_per_s > 0.0 && self.net.offer_burst_per_submitter >= 1.0) {
            return Err(ConfigError::Invalid(
                "net.offers_per_submitter_per_s must be above 0 and net.offer_burst_per_submitter at least 1"
                    .into(),
            ));
        }
        if self.net.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "net.max_request_bytes must be at least 1024".into(),
            ));
        }
        let j = &self.jobs;
        for (key, v) in [("spot_check", j.spot_check), ("explore", j.explore)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "jobs.{key} must be between 0 and 1, got {v}"
                )));
            }
        }
        if j.threads == 0 || j.threads > 256 {
            return Err(ConfigError::Invalid(format!(
                "jobs.threads must be 1 to 256, got {}",
                j.threads
            )));
        }
        if j.trust_after == 0 {
            return Err(ConfigError::Invalid(
                "jobs.trust_after must be at least 1 (0 would trust newcomers)".into(),
            ));
        }
        if !(2..=86_400).contains(&j.epoch_secs) {
            return Err(ConfigError::Invalid(format!(
                "jobs.epoch_secs must be 2 to 86400 (a day), got {}",
                j.epoch_secs
            )));
        }
        self.car_config().validate().map_err(ConfigError::Invalid)
    }

    /// The car's settings: `[car]`, `[owner]` and `[energy]`.
    pub fn car_config(&self) -> crate::vehicle::CarConfig {
        crate::vehicle::CarConfig {
            car: self.car.clone(),
            owner: self.owner.clone(),
            energy: self.energy.clone(),
        }
    }

    /// The complete default configuration as commented TOML.
    pub fn example() -> String {
        let d = NodeConfig::default();
        let list = |v: &[Multiaddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            r#"# fleetmesh node configuration. Every key is optional; shown are the defaults.

[net]
# Addresses to listen on (TCP and QUIC; IPv4 or IPv6).
listen = [{listen}]
# Peers to join the mesh through, e.g. "/ip4/192.0.2.1/tcp/4001/p2p/12D3Koo...". Ordinary nodes; retried with backoff.
bootstrap = []
# Addresses others can reach this node at, if known.
external_addresses = []
# The listen addresses are reachable as they are (public IP or local testnet): advertise them without AutoNAT.
public = {public}
# Kademlia DHT mode: "auto" (server when AutoNAT finds the node reachable), "server" or "client".
kademlia_mode = "auto"
# Relay traffic for peers that cannot be dialled directly (needs a confirmed external address: see public).
relay_server = {relay}
# Keep dialling peers from the routing table until this many are connected. A node that is not public
# also closes its least recently used connections when it holds more than twice as many.
target_peers = {target}
# Seconds between random-walk lookups that keep the routing table fresh (public nodes only).
random_walk_secs = {walk}
# Seconds an idle connection stays open.
idle_timeout_secs = {idle}
# Largest request accepted over request-response, in bytes.
max_request_bytes = {maxreq}
# Offers of one submitter taken from gossip per second, and at once (revocations: five times as many); more
# are dropped and not forwarded.
offers_per_submitter_per_s = 50.0
offer_burst_per_submitter = 250.0

[api]
# Local HTTP API; loopback only by default. Port 0 picks a free port.
listen = "{api}"
# File of the token that POST calls need (`Authorization: Bearer TOKEN`); created, mode 0600, if missing.
# token_file = "HOME/api.token"

[jobs]
# Credit claimed per job as a worker (and offered as a submitter), in micro-credits.
price = {price}
# Price per model name, overriding price, e.g. {{ minilm = 5000 }}.
model_prices = {{}}
# Jobs run at once as a worker; no bids beyond.
max_active_work = {maxwork}
# Inference workers (1: one worker on every core; more: the cores shared out), and how long one waits for more
# jobs of the same model to run them as one batch (ms).
threads = {threads}
batch_linger_ms = {linger}
# Jobs submitted without a replica count: replicas follow the workers' reputation.
adaptive = {adaptive}
# Consecutive validated results that make a worker trusted.
trust_after = {trust}
# Fraction of a trusted worker's jobs checked by a second worker anyway (drawn by the submitter once bids are in; workers cannot tell).
spot_check = {spot}
# Fraction of jobs given to untrusted workers, next to a trusted one, so newcomers can earn trust.
explore = {explore}
# Hours a worker that returned an invalid result is not drawn again.
probation_hours = {probation}
# Node ids of the payers whose budgets this node honours: it bids only on jobs they fund, and counts
# credit only against their budgets (empty: this node works for nobody). `fleetmesh run --payer ID` adds one.
payers = []
# Budget files (`fleetmesh budget issue`, by a payer) this node pays its own jobs from (empty: it cannot
# submit). `fleetmesh run --budget FILE` adds one.
budgets = []
# Epoch length (s): once an epoch has ended (plus up to a minute for late receipts), this node seals its
# receipts of it under a signed Merkle root in the DHT, against which anyone can check its balance claim.
epoch_secs = {epoch}

[car]
# Where the vehicle state comes from: "none" (not a car: always admitted), "simulated" (a commuter car on a
# simulated clock) or "external" (a vehicle integration POSTs JSON to /v1/vehicle; no work until it does,
# none once it is silent for stale_after_s).
source = "none"
# Seed of the simulated car.
seed = {seed}
# Where the simulated clock starts, "ddd hh:mm".
sim_start = "{sim_start}"
# Simulated seconds per real second.
sim_speed = {sim_speed:?}
# Local time = UTC + this many minutes (owner's hours, tariff windows, departure history).
utc_offset_min = {offset}
# Seconds an external feed may be silent before work stops.
stale_after_s = {stale}

[owner]
# No work below this state of charge (%) while plugged in, and while unplugged.
soc_floor_plugged_pct = {floor_p:?}
soc_floor_unplugged_pct = {floor_u:?}
# Work resumes only this far above a floor or below a temperature limit (% or °C).
hysteresis = {hyst:?}
# No work above these temperatures (°C).
max_battery_temp_c = {bat:?}
max_cabin_temp_c = {cabin:?}
# Minutes between two admission changes for charge, temperature or hours (a driver stops work at once).
min_dwell_min = {dwell}
# Local hours (0-23) in which work may run; [] means any hour.
allowed_hours = []
# No bid on a job expected to outlast the predicted parked time; a departure slot counts once this
# fraction of the observed weeks left then.
departure_confidence = {conf:?}
# On a metered link, no model larger than this (MiB) is downloaded; models already here still run.
metered_max_download_mib = {metered}

[energy]
# Power of the awake car computer with nothing to do (W), and extra power per busy inference thread (W).
awake_w = {awake:?}
active_w_per_thread = {active:?}
# Energy to wake the computer (Wh); it sleeps again after idle_after_s without work.
wake_wh = {wake:?}
idle_after_s = {idle_after}
# Electricity prices in micro-credits per kWh, and the local hours of the off-peak tariff.
peak_price = {peak}
offpeak_price = {offpeak}
offpeak_hours = {offpeak_hours:?}
"#,
            listen = list(&d.net.listen),
            relay = d.net.relay_server,
            public = d.net.public,
            target = d.net.target_peers,
            walk = d.net.random_walk_secs,
            idle = d.net.idle_timeout_secs,
            maxreq = d.net.max_request_bytes,
            api = d.api.listen,
            price = d.jobs.price,
            maxwork = d.jobs.max_active_work,
            threads = d.jobs.threads,
            linger = d.jobs.batch_linger_ms,
            adaptive = d.jobs.adaptive,
            trust = d.jobs.trust_after,
            spot = d.jobs.spot_check,
            explore = d.jobs.explore,
            probation = d.jobs.probation_hours,
            epoch = d.jobs.epoch_secs,
            seed = d.car.seed,
            sim_start = d.car.sim_start,
            sim_speed = d.car.sim_speed,
            offset = d.car.utc_offset_min,
            stale = d.car.stale_after_s,
            floor_p = d.owner.soc_floor_plugged_pct,
            floor_u = d.owner.soc_floor_unplugged_pct,
            hyst = d.owner.hysteresis,
            bat = d.owner.max_battery_temp_c,
            cabin = d.owner.max_cabin_temp_c,
            dwell = d.owner.min_dwell_min,
            conf = d.owner.departure_confidence,
            metered = d.owner.metered_max_download_mib,
            awake = d.energy.awake_w,
            active = d.energy.active_w_per_thread,
            wake = d.energy.wake_wh,
            idle_after = d.energy.idle_after_s,
            peak = d.energy.peak_price,
            offpeak = d.energy.offpeak_price,
            offpeak_hours = d.energy.offpeak_hours,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_to_the_defaults() {
        let parsed = NodeConfig::parse(&NodeConfig::example(), Path::new("example.toml")).unwrap();
        let d = NodeConfig::default();
        assert_eq!(parsed.net.listen, d.net.listen);
        assert_eq!(parsed.api.listen, d.api.listen);
        assert_eq!(parsed.net.target_peers, d.net.target_peers);
        assert_eq!(parsed.jobs.spot_check, d.jobs.spot_check);
        assert_eq!(parsed.jobs.trust_after, d.jobs.trust_after);
        assert_eq!(parsed.jobs.probation_hours, 24);
        assert_eq!(parsed.car_config(), d.car_config());
    }

    #[test]
    fn car_sections_are_checked() {
        let cfg = NodeConfig::parse(
            "[car]\nsource = \"simulated\"\nsim_start = \"sat 09:30\"\n[owner]\nallowed_hours = [0, 1]\n",
            Path::new("f.toml"),
        )
        .unwrap();
        assert!(cfg.validate().is_ok());
        for (text, key) in [
            ("[car]\nsim_start = \"someday\"\n", "car.sim_start"),
            ("[owner]\nallowed_hours = [25]\n", "owner.allowed_hours"),
            ("[energy]\nawake_w = -1.0\n", "energy.awake_w"),
            (
                "[owner]\ndeparture_confidence = 2.0\n",
                "owner.departure_confidence",
            ),
        ] {
            let cfg = NodeConfig::parse(text, Path::new("f.toml")).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let err = NodeConfig::parse("[car]\nsource = \"bus\"\n", Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn jobs_section_sets_prices_per_model_and_replication() {
        let cfg = NodeConfig::parse(
            "[jobs]\nprice = 10\nmodel_prices = { minilm = 50 }\nadaptive = false\n",
            Path::new("f.toml"),
        )
        .unwrap();
        let jobs = cfg.jobs.jobs_config().unwrap();
        assert_eq!(jobs.price_of(Some("minilm")), 50);
        assert_eq!(jobs.price_of(Some("digits")), 10);
        assert_eq!(jobs.price_of(None), 10);
        assert!(jobs.adaptive.is_none());
        let bad = NodeConfig::parse("[jobs]\nspot_check = 1.5\n", Path::new("f.toml")).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("jobs.spot_check")
        );
        let bad = NodeConfig::parse("[jobs]\ntrust_after = 0\n", Path::new("f.toml")).unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_key_file_and_line() {
        let err = NodeConfig::parse("[net]\nlisten = []\nfrobnicate = 1\n", Path::new("f.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("f.toml line 3") && text.contains("frobnicate"),
            "{text}"
        );
        let err = NodeConfig::parse("[net]\ntarget_peers = \"many\"\n", Path::new("f.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("f.toml line 2, key `net.target_peers`") && text.contains("expected usize"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        let err =
            NodeConfig::parse("[net]\nbootstrap = [\"not an address\"]\n", Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
