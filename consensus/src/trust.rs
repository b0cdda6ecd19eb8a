//! Reputation and adaptive replication, in the spirit of BOINC's adaptive replication, without a central
//! validator: each submitter keeps its own reputation table from the verdicts it reached (and receipts it
//! checked), and picks how many replicas each job gets from the trust of the worker it drew.
//!
//! - A node starts untrusted: a fresh identity is worth nothing until it has done validated work, so making
//!   many worker identities (Sybil) buys no trust.
//! - Only *validated* results count ([`validated_by`]): a result that agreed with a trusted worker's, or
//!   one of three or more agreeing results. A result that ran alone, or agreed with one untrusted worker
//!   (who may collude), proves nothing and leaves the streak as it is.
//! - [`TrustConfig::trust_after`] consecutive validated results make a node trusted; one invalid result
//!   makes it untrusted at once, resets its streak and starts a probation during which it is not drawn to
//!   earn trust again. A job taken and not delivered in time is a miss, not a lie (cars crash and lose
//!   their link): only [`MAX_MISSED`] misses in a row count as an invalid result.
//! - A trusted worker runs alone except for a random spot-check fraction; an untrusted one always gets an
//!   independent partner, trusted if any is available. The submitter draws the spot check once the bids
//!   are in, from randomness the worker never sees; every offer asks for one replica and the worker's
//!   protocol is identical either way, so a worker cannot tell a checked job from another.

use std::collections::BTreeMap;

use fleetmesh_protocol::NodeId;

use crate::assign::{Randomness, draw_up_to};

/// Reputation and replication settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrustConfig {
    /// Consecutive validated results that make a node trusted.
    pub trust_after: u32,
    /// After an invalid result, how long (ms) the node is not drawn to earn trust again.
    pub probation_ms: u64,
    /// Fraction of a trusted worker's jobs that get a second replica anyway.
    pub spot_check: f64,
    /// Fraction of jobs given to an untrusted worker (with a partner) so newcomers can earn trust.
    pub explore: f64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            trust_after: 10,
            probation_ms: 24 * 3600 * 1000,
            spot_check: 0.03,
            explore: 0.06,
        }
    }
}

/// What one submitter knows of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Validated results since the last invalid one.
    pub streak: u32,
    /// Validated results in total.
    pub valid: u64,
    /// Invalid results in total.
    pub invalid: u64,
    /// When the last invalid result was seen.
    pub last_invalid_ms: Option<u64>,
    /// Times since the last validated result that jobs taken were not delivered ([`Reputation::missed`]).
    pub missed: u32,
    /// When the last of those times began.
    pub last_missed_ms: Option<u64>,
}

/// Times in a row a worker may take jobs and not deliver them (a crash, a lost link) before that counts as
/// an invalid result: a car that restarts keeps its standing, a worker that never answers does not.
pub const MAX_MISSED: u32 = 3;

/// Jobs missed within this long of the first count as one time: a car that crashes misses every job it
/// held at once.
pub const MISSED_TOGETHER_MS: u64 = 30_000;

impl Record {
    /// How the record stands at `now_ms` under `cfg` (see [`Reputation::standing`]).
    pub fn standing(&self, cfg: &TrustConfig, now_ms: u64) -> Standing {
        match self.last_invalid_ms {
            Some(t) if now_ms < t.saturating_add(cfg.probation_ms) => Standing::Probation,
            _ if self.streak >= cfg.trust_after => Standing::Trusted,
            _ => Standing::Untrusted,
        }
    }
}

/// How a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Enough consecutive validated results, none invalid since.
    Trusted,
    /// New, or not yet enough validated results.
    Untrusted,
    /// Recently returned an invalid result.
    Probation,
}

/// Reputation of every node one submitter has judged.
#[derive(Debug, Clone, Default)]
pub struct Reputation {
    cfg: TrustConfig,
    records: BTreeMap<NodeId, Record>,
}

impl Reputation {
    /// An empty table.
    pub fn new(cfg: TrustConfig) -> Self {
        Self {
            cfg,
            records: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &TrustConfig {
        &self.cfg
    }

    /// A result of `node` agreed with an independent replica.
    pub fn validated(&mut self, node: NodeId) {
        let r = self.records.entry(node).or_default();
        r.streak = r.streak.saturating_add(1);
        r.valid += 1;
        r.missed = 0;
    }

    /// `node` took a job and did not deliver in time. Jobs missed within [`MISSED_TOGETHER_MS`] count as
    /// one time; the [`MAX_MISSED`]-th time without a validated result between counts as an invalid result
    /// ([`Reputation::invalid`]).
    pub fn missed(&mut self, node: NodeId, now_ms: u64) {
        let r = self.records.entry(node).or_default();
        if r.last_missed_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < MISSED_TOGETHER_MS && r.missed > 0)
        {
            return;
        }
        r.last_missed_ms = Some(now_ms);
        r.missed = r.missed.saturating_add(1);
        if r.missed >= MAX_MISSED {
            r.missed = 0;
            self.invalid(node, now_ms);
        }
    }

    /// Every node judged, with its record.
    pub fn records(&self) -> impl Iterator<Item = (&NodeId, &Record)> {
        self.records.iter()
    }

    /// A result of `node` was out-voted (or it failed to deliver a committed result).
    pub fn invalid(&mut self, node: NodeId, now_ms: u64) {
        let r = self.records.entry(node).or_default();
        r.streak = 0;
        r.invalid += 1;
        r.last_invalid_ms = Some(now_ms);
    }

    /// Another submitter's receipts show `node` out-voted ([`crate::revision::outvoted`]): it is no longer
    /// trusted here and must earn trust again (no probation: the notice is that submitter's judgement, not
    /// this one's).
    pub fn distrust(&mut self, node: NodeId) {
        if let Some(r) = self.records.get_mut(&node) {
            r.streak = 0;
        }
    }

    /// The record of `node`.
    pub fn record(&self, node: &NodeId) -> Record {
        self.records.get(node).copied().unwrap_or_default()
    }

    /// How `node` stands at `now_ms`.
    pub fn standing(&self, node: &NodeId, now_ms: u64) -> Standing {
        self.record(node).standing(&self.cfg, now_ms)
    }

    /// Whether `node` is trusted at `now_ms`.
    pub fn is_trusted(&self, node: &NodeId, now_ms: u64) -> bool {
        self.standing(node, now_ms) == Standing::Trusted
    }
}

/// The workers whose results count as validated when `agreeing` agreed on an accepted output: those that
/// agreed with at least one other worker trusted at the time, or all of them when three or more agreed.
/// Two untrusted workers agreeing with each other prove nothing (they may collude), so they earn no trust.
pub fn validated_by(agreeing: &[NodeId], reputation: &Reputation, now_ms: u64) -> Vec<NodeId> {
    if agreeing.len() >= 3 {
        return agreeing.to_vec();
    }
    let trusted = agreeing
        .iter()
        .filter(|w| reputation.is_trusted(w, now_ms))
        .count();
    agreeing
        .iter()
        .copied()
        .filter(|w| trusted - usize::from(reputation.is_trusted(w, now_ms)) >= 1)
        .collect()
}

/// The replication plan for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Workers to assign first, in order (one to three).
    pub workers: Vec<NodeId>,
    /// Agreeing workers required.
    pub replicas: usize,
    /// Whether this is a spot check of a trusted worker.
    pub spot_check: bool,
    /// Workers to draw from, in order, when a worker drops out or results disagree: trusted ones only,
    /// unless nobody among the bidders is trusted (then untrusted ones). Two adversaries must never be
    /// able to form a quorum through escalation.
    pub backups: Vec<NodeId>,
}

/// Most backups a plan lists.
pub const MAX_BACKUPS: usize = 3;

/// Chooses the workers of a job from `candidates` (the bidders, in bid order) given `reputation`.
///
/// `rng` is the submitter's private randomness. Its first three numbers decide whether to explore an
/// untrusted worker, which candidate runs the job and whether to spot-check; further ones draw the other
/// workers and the order of the backups, each uniformly among the eligible bidders, never by position
/// in the bid order (which bidders choose through what they bid). Returns `None` if there are no
/// candidates.
pub fn plan(
    candidates: &[NodeId],
    reputation: &Reputation,
    now_ms: u64,
    rng: &mut dyn Randomness,
) -> Option<Plan> {
    plan_preferring(candidates, reputation, now_ms, rng, &[])
}

/// [`plan`], with the trusted worker that runs a job drawn from the trusted candidates in `preferred`
/// (e.g. the cheapest bids) when there is one. Only that choice changes: spot-check partners, the
/// untrusted workers' checks and the backups are drawn from every candidate as before, so a preference
/// (which bidders can influence through what they bid) never weakens verification.
pub fn plan_preferring(
    candidates: &[NodeId],
    reputation: &Reputation,
    now_ms: u64,
    rng: &mut dyn Randomness,
    preferred: &[NodeId],
) -> Option<Plan> {
    let cfg = reputation.config();
    let (mut trusted, mut fresh) = (Vec::new(), Vec::new());
    for c in candidates {
        match reputation.standing(c, now_ms) {
            Standing::Trusted => trusted.push(*c),
            Standing::Untrusted => fresh.push(*c),
            Standing::Probation => {}
        }
    }
    let (explore_u, primary_u, spot_u) = (rng.unit(), rng.unit(), rng.unit());
    let pick = |from: &[NodeId], u: f64| from[((u * from.len() as f64) as usize).min(from.len() - 1)];
    let backup_pool = if trusted.is_empty() { &fresh } else { &trusted };
    let explore = trusted.is_empty() || (!fresh.is_empty() && explore_u < cfg.explore);
    if !explore {
        let favoured: Vec<NodeId> = trusted
            .iter()
            .copied()
            .filter(|t| preferred.contains(t))
            .collect();
        let pool = if favoured.is_empty() { &trusted } else { &favoured };
        let primary = pick(pool, primary_u);
        if spot_u >= cfg.spot_check {
            return Some(Plan {
                backups: draw_up_to(backup_pool, &[primary], MAX_BACKUPS, rng),
                workers: vec![primary],
                replicas: 1,
                spot_check: false,
            });
        }
        // Spot check: a second, independent worker (another trusted one if there is one).
        let others = if trusted.len() > 1 { &trusted } else { &fresh };
        let workers: Vec<NodeId> = std::iter::once(primary)
            .chain(draw_up_to(others, &[primary], 1, rng))
            .collect();
        // (With nobody else among the bidders the check cannot happen; the job runs alone.)
        return Some(Plan {
            replicas: workers.len(),
            backups: draw_up_to(backup_pool, &workers, MAX_BACKUPS, rng),
            spot_check: workers.len() > 1,
            workers,
        });
    }
    // An untrusted worker earns trust next to a trusted partner. With nobody trusted among the bidders,
    // three untrusted workers must all agree: two adversaries that happen to agree (a shared bug, or
    // collusion) are not enough. Each is drawn on its own: candidates come cheapest first, so keys that
    // bid alike sit side by side, and drawing neighbours would hand a block of underbidding keys a
    // whole job whenever the draw fell among them.
    if fresh.is_empty() {
        return None;
    }
    let primary = pick(&fresh, primary_u);
    let partners = if trusted.is_empty() {
        draw_up_to(&fresh, &[primary], 2, rng)
    } else {
        draw_up_to(&trusted, &[], 1, rng)
    };
    let workers: Vec<NodeId> = std::iter::once(primary).chain(partners).collect();
    Some(Plan {
        backups: draw_up_to(backup_pool, &workers, MAX_BACKUPS, rng),
        // (Two when fewer than three bid and nobody is trusted: a small fleet cannot do better.)
        replicas: workers.len().max(2),
        workers,
        spot_check: false,
    })
}
