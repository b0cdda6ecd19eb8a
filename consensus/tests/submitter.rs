//! The submitter core driven step by step, as the node drives it: bid windows, the choice of workers,
//! commit-reveal, the credit rule, replacements, caps, and reputation rebuilt from receipts.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use fleetmesh_consensus::job::Outcome;
use fleetmesh_consensus::submitter::{
    Action, CreditCap, JobResult, MAX_BIDS_PER_JOB, Randomness, Replication, SubmitError, Submitter,
    SubmitterConfig, rebuild_reputation,
};
use fleetmesh_consensus::trust::TrustConfig;
use fleetmesh_protocol::messages::{
    AgreementRule, Bid, Budget, JobInput, JobOffer, NumericClass, Receipt, ResultCommit, ResultReveal,
    Verdict, WorkClaim,
};
use fleetmesh_protocol::{JobId, ModelId, NodeId, NodeKey, Signed};
use proptest::prelude::*;

struct Fixed(f64);

impl Randomness for Fixed {
    fn unit(&mut self) -> f64 {
        self.0
    }
}

fn key(i: u8) -> NodeKey {
    NodeKey::from_seed([i; 32])
}

fn class() -> NumericClass {
    NumericClass {
        backend: "test".into(),
        features: "none".into(),
        arch: "test".into(),
    }
}

const SUBMITTER: u8 = 200;

fn submitter(trust: TrustConfig) -> Submitter {
    Submitter::new(
        key(SUBMITTER).node_id(),
        SubmitterConfig {
            max_extra: 2,
            step_timeout_ms: 100,
            bid_window_ms: 25,
            trust,
            ..SubmitterConfig::default()
        },
    )
}

/// A budget of a test payer for `holder`, large enough for any test.
fn budget_for(holder: NodeId) -> Signed<Budget> {
    let payer = NodeKey::from_seed([250; 32]);
    let b = Budget {
        payer: payer.node_id(),
        holder,
        serial: 1,
        amount: u64::MAX,
        expires_ms: u64::MAX,
    };
    Signed::sign(b, &payer).unwrap()
}

fn offer(nonce: u64, replicas: u8, now: u64) -> JobOffer {
    JobOffer {
        submitter: key(SUBMITTER).node_id(),
        nonce,
        model: ModelId::of(b"model"),
        input: JobInput::Inline(vec![1, 2, 3]),
        rule: AgreementRule::Exact,
        replicas,
        reward: 1_000,
        created_ms: now,
        expires_ms: now + 10_000,
        deadline_ms: now + 60_000,
        budget: budget_for(key(SUBMITTER).node_id()),
    }
}

fn bid(job: JobId, worker: u8, cost: u64) -> Bid {
    Bid {
        job,
        worker: key(worker).node_id(),
        class: class(),
        price: 1_000,
        energy_cost: cost,
        est_ms: 1,
        expires_ms: u64::MAX,
    }
}

/// A worker's honest answer to a reveal request: its reveal and signed claim.
fn report(job: JobId, worker: u8, output: &[u8], credit: u64) -> (ResultReveal, Signed<WorkClaim>) {
    let salt = [worker; 32];
    let reveal = ResultReveal {
        job,
        worker: key(worker).node_id(),
        output: output.to_vec(),
        salt,
        compute_us: 10,
        energy_uwh: 1,
    };
    let claim = WorkClaim {
        job,
        model: ModelId::of(b"model"),
        worker: key(worker).node_id(),
        submitter: key(SUBMITTER).node_id(),
        output_digest: *blake3::hash(output).as_bytes(),
        compute_us: 10,
        energy_uwh: 1,
        claimed_credit: credit,
        claimed_ms: 0,
    };
    (reveal, Signed::sign(claim, &key(worker)).unwrap())
}

fn commit(job: JobId, worker: u8, output: &[u8]) -> ResultCommit {
    let w = key(worker).node_id();
    ResultCommit {
        job,
        worker: w,
        commitment: ResultCommit::commitment_for(&job, &w, output, &[worker; 32]),
    }
}

fn assigned(actions: &[Action]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Assign { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}

fn decided(actions: &[Action]) -> Option<(JobResult, Vec<Receipt>)> {
    actions.iter().find_map(|a| match a {
        Action::Decide { result, receipts, .. } => Some((result.clone(), receipts.clone())),
        _ => None,
    })
}

/// Runs one job whose workers answer with `outputs` (worker number -> output; absent: silent) until its
/// verdict, which every job reaches by its deadline; returns it.
fn run_job(
    s: &mut Submitter,
    nonce: u64,
    replicas: u8,
    replication: Replication,
    bidders: &[u8],
    outputs: &BTreeMap<u8, Vec<u8>>,
    now: u64,
) -> (JobResult, Vec<Receipt>) {
    let bids: Vec<(u8, u64)> = bidders.iter().map(|w| (*w, 0)).collect();
    run_job_bids(
        s,
        nonce,
        replicas,
        replication,
        &bids,
        outputs,
        now,
        &mut Fixed(0.5),
    )
}

/// [`run_job`] with a cost per bidder (bids arrive in this order) and a given randomness.
#[allow(clippy::too_many_arguments)]
fn run_job_bids(
    s: &mut Submitter,
    nonce: u64,
    replicas: u8,
    replication: Replication,
    bids: &[(u8, u64)],
    outputs: &BTreeMap<u8, Vec<u8>>,
    now: u64,
    rng: &mut dyn Randomness,
) -> (JobResult, Vec<Receipt>) {
    let actions = run_job_refuting(s, nonce, replicas, replication, bids, outputs, now, rng, &[]);
    decided(&actions).expect("a verdict")
}

/// [`run_job_bids`] where the submitter refutes the reports of the workers in `refuted` with a check of
/// its own; returns the actions that came with the verdict.
#[allow(clippy::too_many_arguments)]
fn run_job_refuting(
    s: &mut Submitter,
    nonce: u64,
    replicas: u8,
    replication: Replication,
    bids: &[(u8, u64)],
    outputs: &BTreeMap<u8, Vec<u8>>,
    now: u64,
    rng: &mut dyn Randomness,
    refuted: &[u8],
) -> Vec<Action> {
    let o = offer(nonce, replicas, now);
    let (mut id, mut deadline) = (o.id(), o.deadline_ms);
    s.offer(id, o, replication);
    let mut actions = Vec::new();
    for (w, cost) in bids {
        actions.extend(s.on_bid(bid(id, *w, *cost), now, bids.len(), rng).unwrap());
    }
    let mut reoffers = 0;
    let by_id: BTreeMap<NodeId, u8> = bids.iter().map(|(w, _)| (key(*w).node_id(), *w)).collect();
    let mut t = now;
    while t <= deadline + 1_000 {
        if decided(&actions).is_some() {
            assert_eq!(s.in_flight(), 0, "a job other than this one is in flight");
            return actions;
        }
        if actions.is_empty() {
            t += 101;
            actions = s.on_tick(t);
            continue;
        }
        let mut next = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::Assign { worker, .. } => {
                    let w = by_id[&worker];
                    if let Some(out) = outputs.get(&w) {
                        next.extend(s.on_commit(&commit(id, w, out), t).unwrap_or_default());
                    }
                }
                Action::RequestReveal { worker, .. } => {
                    let w = by_id[&worker];
                    let (reveal, claim) = report(id, w, &outputs[&w], 900 + u64::from(w));
                    next.extend(if refuted.contains(&w) {
                        s.on_refuted_report(&reveal, claim, t).unwrap_or_default()
                    } else {
                        s.on_report(&reveal, claim, t).unwrap_or_default()
                    });
                }
                Action::WakeAt { job, at_ms } => next.extend(s.on_wake(job, at_ms.max(t), rng)),
                // (Tests that refute follow a job offered again; the others leave it starved.)
                Action::Reoffer { original, .. } if !refuted.is_empty() => {
                    reoffers += 1;
                    let o = offer(nonce + 1_000_000 * reoffers, replicas, t);
                    (id, deadline) = (o.id(), o.deadline_ms);
                    s.offer(original, o, replication);
                    for (w, cost) in bids {
                        next.extend(
                            s.on_bid(bid(id, *w, *cost), t, bids.len(), rng)
                                .unwrap_or_default(),
                        );
                    }
                }
                Action::Reoffer { .. } | Action::Recheck { .. } | Action::Revise { .. } => {}
                Action::Decide { .. } => unreachable!("handled above"),
            }
        }
        actions = next;
    }
    panic!("no verdict by the deadline");
}

/// A seeded generator (splitmix64) for tests that need many different draws.
struct Seeded(u64);

impl Randomness for Seeded {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_fixed_job_without_trusted_bidders_draws_three_workers_once_the_window_closes() {
    let mut s = submitter(TrustConfig::default());
    let o = offer(1, 2, 0);
    let id = o.id();
    s.offer(id, o, Replication::Fixed);
    let mut rng = Fixed(0.5);
    // Nothing is assigned while the window is open.
    let first = s.on_bid(bid(id, 1, 500), 0, 3, &mut rng).unwrap();
    assert_eq!(first, vec![Action::WakeAt { job: id, at_ms: 25 }]);
    assert!(s.on_bid(bid(id, 2, 10), 1, 3, &mut rng).unwrap().is_empty());
    assert_eq!(
        s.on_bid(bid(id, 2, 10), 1, 3, &mut rng),
        Err(SubmitError::DuplicateBid)
    );
    // The third bid closes the window. Nobody here has validated history, so two agreeing workers
    // would prove nothing: all three run the job, however much one of them asks.
    let actions = s.on_bid(bid(id, 3, 20), 2, 3, &mut rng).unwrap();
    let mut workers = assigned(&actions);
    workers.sort();
    let mut all = vec![key(1).node_id(), key(2).node_id(), key(3).node_id()];
    all.sort();
    assert_eq!(workers, all);
    // The scheduled wake-up finds the plan made.
    assert!(s.on_wake(id, 25, &mut rng).is_empty());
}

#[test]
fn a_window_that_does_not_fill_closes_at_its_end() {
    let mut s = submitter(TrustConfig::default());
    let o = offer(2, 2, 0);
    let id = o.id();
    s.offer(id, o, Replication::Fixed);
    let mut rng = Fixed(0.5);
    assert_eq!(s.on_bid(bid(id, 1, 5), 0, 10, &mut rng).unwrap().len(), 1);
    assert!(s.on_bid(bid(id, 2, 1), 3, 10, &mut rng).unwrap().is_empty());
    let mut workers = assigned(&s.on_wake(id, 25, &mut rng));
    workers.sort();
    let mut both = vec![key(1).node_id(), key(2).node_id()];
    both.sort();
    assert_eq!(workers, both);
    // A third untrusted worker is still wanted: a late bid joins.
    assert_eq!(
        assigned(&s.on_bid(bid(id, 3, 0), 30, 10, &mut rng).unwrap()),
        vec![key(3).node_id()]
    );
}

#[test]
fn agreeing_workers_earn_the_least_claim_and_an_outvoted_one_nothing() {
    let mut s = submitter(TrustConfig::default());
    let mut outputs = BTreeMap::new();
    for w in 1u8..=5 {
        outputs.insert(
            w,
            if w == 2 {
                b"wrong".to_vec()
            } else {
                b"right".to_vec()
            },
        );
    }
    let (result, receipts) = run_job(&mut s, 3, 2, Replication::Fixed, &[1, 2, 3, 4, 5], &outputs, 0);
    let Outcome::Accepted {
        output,
        agreeing,
        disagreeing,
    } = &result.outcome
    else {
        panic!("{result:?}");
    };
    assert_eq!(output, b"right");
    // (Randomness 0.5 draws workers 3, 5 and 2; worker 2 is out-voted and one backup joins.)
    assert_eq!(agreeing.len(), 3);
    assert_eq!(disagreeing, &vec![key(2).node_id()]);
    assert_eq!(result.workers_assigned, 4);
    assert!(!result.unverified);
    assert_eq!(receipts.len(), 4);
    let least = receipts
        .iter()
        .filter(|r| agreeing.contains(&r.claim.body.worker))
        .map(|r| r.claim.body.claimed_credit)
        .min()
        .unwrap();
    for r in &receipts {
        if r.claim.body.worker == key(2).node_id() {
            assert_eq!((r.verdict, r.credit), (Verdict::Rejected, 0));
        } else {
            assert_eq!((r.verdict, r.credit), (Verdict::Accepted, least));
        }
    }
    // The job left the machine; late messages find nothing.
    assert_eq!(s.in_flight(), 0);
    let id = offer(3, 2, 0).id();
    assert_eq!(
        s.on_commit(&commit(id, 1, b"right"), 10),
        Err(SubmitError::UnknownJob)
    );
    // The out-voted worker lost its standing.
    assert_eq!(s.reputation().record(&key(2).node_id()).invalid, 1);
}

#[test]
fn a_credit_cap_pays_agreeing_workers_for_what_the_output_took_whatever_they_claimed() {
    let mut s = submitter(TrustConfig::default());
    // Priced per output byte at 3 a byte: "right" earns 15, though every worker claims more.
    s.cap_credit(CreditCap(std::sync::Arc::new(|_offer, output| {
        3 * output.len() as u64
    })));
    let outputs: BTreeMap<u8, Vec<u8>> = (1u8..=3).map(|w| (w, b"right".to_vec())).collect();
    let (result, receipts) = run_job(&mut s, 9, 2, Replication::Fixed, &[1, 2, 3], &outputs, 0);
    assert!(matches!(result.outcome, Outcome::Accepted { .. }), "{result:?}");
    assert!(receipts.iter().all(|r| r.claim.body.claimed_credit > 15));
    for r in &receipts {
        assert_eq!((r.verdict, r.credit), (Verdict::Accepted, 15));
    }
}

#[test]
fn a_silent_worker_is_replaced_before_the_deadline() {
    let mut s = submitter(TrustConfig::default());
    let mut outputs = BTreeMap::new();
    for w in [1u8, 2, 4] {
        outputs.insert(w, b"x".to_vec());
    }
    // Worker 3 bids and never commits (randomness 0.5 draws it first, with 2 and 4).
    let (result, _) = run_job(&mut s, 4, 2, Replication::Fixed, &[1, 2, 3, 4], &outputs, 0);
    let Outcome::Accepted { agreeing, .. } = &result.outcome else {
        panic!("{result:?}");
    };
    assert!(!agreeing.contains(&key(3).node_id()));
    assert_eq!(agreeing.len(), 3);
    assert_eq!(result.workers_assigned, 4);
    // A miss is not a lie: the silent worker keeps its standing until it has missed MAX_MISSED times in
    // a row (jobs missed together count once), then counts as invalid.
    use fleetmesh_consensus::trust::{MAX_MISSED, MISSED_TOGETHER_MS};
    let silent = key(3).node_id();
    let first = s.reputation().record(&silent);
    assert_eq!((first.missed, first.invalid), (1, 0));
    let t0 = first.last_missed_ms.unwrap();
    let mut reputation = s.reputation().clone();
    // Many jobs held by a car that crashed: one time.
    for dt in [1, 100, MISSED_TOGETHER_MS - 1] {
        reputation.missed(silent, t0 + dt);
    }
    assert_eq!(reputation.record(&silent).missed, 1);
    for k in 1..u64::from(MAX_MISSED) {
        reputation.missed(silent, t0 + k * MISSED_TOGETHER_MS);
    }
    assert_eq!(reputation.record(&silent).invalid, 1);
    // A validated result between misses starts the count again.
    let mut reputation = s.reputation().clone();
    reputation.validated(silent);
    for k in 1..u64::from(MAX_MISSED) {
        reputation.missed(silent, t0 + k * MISSED_TOGETHER_MS);
    }
    assert_eq!(reputation.record(&silent).invalid, 0);
}

#[test]
fn two_colluding_fresh_keys_that_underbid_never_get_a_wrong_result_accepted() {
    // Workers 1 and 2 collude: they bid nothing and return the same wrong output. Workers 3-7 are
    // honest and ask a normal price. Honest workers earn trust over the run. (Colluders that first
    // earn trust with right answers and then lie are the rare-liar case, caught by spot checks.)
    for replication in [Replication::Fixed, Replication::Adaptive] {
        let mut s = submitter(small_trust());
        let mut rng = Seeded(7);
        let (mut wrong, mut accepted) = (0, 0);
        for n in 0..300u64 {
            let mut bids = vec![(1u8, 0u64), (2, 0)];
            bids.extend((3u8..=7).map(|w| (w, 1_000 + u64::from(w))));
            let outputs: BTreeMap<u8, Vec<u8>> = (1u8..=7)
                .map(|w| {
                    (
                        w,
                        if w <= 2 {
                            b"wrong".to_vec()
                        } else {
                            b"right".to_vec()
                        },
                    )
                })
                .collect();
            let replicas = if replication == Replication::Fixed { 2 } else { 1 };
            let (result, _) = run_job_bids(
                &mut s,
                1_000 + n,
                replicas,
                replication,
                &bids,
                &outputs,
                n * 100_000,
                &mut rng,
            );
            if let Outcome::Accepted { output, .. } = &result.outcome {
                accepted += 1;
                wrong += usize::from(output == b"wrong");
            }
        }
        assert_eq!(wrong, 0, "{replication:?}: wrong results accepted");
        assert!(
            accepted >= 290,
            "{replication:?}: only {accepted} of 300 accepted"
        );
    }
}

#[test]
fn one_replica_asked_for_runs_once_and_is_marked_unverified() {
    let mut s = submitter(TrustConfig::default());
    let outputs: BTreeMap<u8, Vec<u8>> = (1u8..=3).map(|w| (w, b"out".to_vec())).collect();
    let (result, receipts) = run_job(&mut s, 20, 1, Replication::Fixed, &[1, 2, 3], &outputs, 0);
    assert!(matches!(result.outcome, Outcome::Accepted { .. }));
    assert_eq!(result.workers_assigned, 1);
    assert!(result.unverified);
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].verdict, Verdict::Unverified);
    assert!(receipts[0].credit > 0);
    // One worker alone validates nothing.
    let w = receipts[0].claim.body.worker;
    assert_eq!(s.reputation().record(&w).valid, 0);
}

#[test]
fn a_claim_that_does_not_match_its_reveal_is_refused() {
    let mut s = submitter(TrustConfig::default());
    let o = offer(5, 1, 0);
    let id = o.id();
    s.offer(id, o, Replication::Fixed);
    let mut rng = Fixed(0.5);
    s.on_bid(bid(id, 1, 0), 0, 1, &mut rng).unwrap();
    let reveal_actions = s.on_commit(&commit(id, 1, b"out"), 1).unwrap();
    assert!(matches!(reveal_actions[..], [Action::RequestReveal { .. }]));
    let (reveal, _) = report(id, 1, b"out", 1_000);
    let (_, other_claim) = report(id, 1, b"another output", 1_000);
    assert_eq!(
        s.on_report(&reveal, other_claim, 2),
        Err(SubmitError::ClaimMismatch)
    );
    assert!(s.reveal_due(&id, &key(1).node_id()));
    let (reveal, claim) = report(id, 1, b"out", 1_000);
    let (result, receipts) = decided(&s.on_report(&reveal, claim, 3).unwrap()).expect("decided");
    assert!(matches!(result.outcome, Outcome::Accepted { .. }));
    assert!(result.unverified);
    assert_eq!(receipts.len(), 1);
}

#[test]
fn a_job_takes_a_bounded_number_of_bids() {
    let mut s = submitter(TrustConfig::default());
    let o = offer(6, 2, 0);
    let id = o.id();
    s.offer(id, o, Replication::Fixed);
    let mut rng = Fixed(0.5);
    for i in 0..MAX_BIDS_PER_JOB {
        let mut b = bid(id, 0, 0);
        b.worker = NodeKey::from_seed(blake3::hash(&i.to_le_bytes()).into()).node_id();
        s.on_bid(b, 0, usize::MAX, &mut rng).unwrap();
    }
    assert_eq!(
        s.on_bid(bid(id, 1, 0), 0, usize::MAX, &mut rng),
        Err(SubmitError::Busy)
    );
}

#[test]
fn an_offer_made_again_replaces_the_one_in_force() {
    let mut s = submitter(TrustConfig::default());
    let first = offer(7, 2, 0);
    let original = first.id();
    s.offer(original, first, Replication::Fixed);
    let again = offer(8, 2, 1_000);
    s.offer(original, again.clone(), Replication::Fixed);
    assert_eq!(s.in_flight(), 1);
    assert!(!s.contains(&original));
    assert!(s.contains(&again.id()));
}

#[test]
fn a_job_whose_offer_drew_too_few_bids_is_offered_again_a_bounded_number_of_times() {
    let mut s = submitter(TrustConfig::default());
    let mut rng = Fixed(0.5);
    let first = offer(9, 2, 0);
    let original = first.id();
    s.offer(original, first, Replication::Fixed);
    // One bid for a job that needs two workers; the window closes at its end.
    s.on_bid(bid(original, 1, 0), 0, 5, &mut rng).unwrap();
    assert_eq!(
        assigned(&s.on_wake(original, 25, &mut rng)),
        vec![key(1).node_id()]
    );
    let reoffers = |actions: Vec<Action>| {
        actions
            .into_iter()
            .filter(|a| matches!(a, Action::Reoffer { .. }))
            .count()
    };
    // Not before `reoffer_after_ms` (3 s), then once.
    assert_eq!(reoffers(s.on_tick(2_000)), 0);
    assert_eq!(reoffers(s.on_tick(3_100)), 1);
    assert_eq!(reoffers(s.on_tick(3_200)), 0);
    // Offered again (twice at most), each fresh offer starved in turn.
    for n in 0..3u64 {
        let fresh = offer(100 + n, 2, 10_000 * (n + 1));
        let id = fresh.id();
        s.offer(original, fresh, Replication::Fixed);
        assert_eq!(s.in_flight(), 1);
        let t = 10_000 * (n + 1);
        s.on_bid(bid(id, 2, 0), t, 5, &mut rng).unwrap();
        s.on_wake(id, t + 25, &mut rng);
        let asked = reoffers(s.on_tick(t + 3_100));
        assert_eq!(asked, usize::from(n < 1), "offer {n} of the job");
    }
}

#[test]
fn a_budget_is_not_promised_twice_to_jobs_in_flight() {
    let mut s = submitter(TrustConfig::default());
    let o = offer(40, 2, 0);
    let budget = o.budget.clone();
    let per_job = s.reservation(o.reward, o.replicas);
    // Three untrusted workers and two extra ones, paid in full: 5 x 1,000.
    assert_eq!(per_job, 5_000);
    let left = |s: &Submitter| s.spending().left(&budget.body);
    let all = left(&s);
    s.offer(o.id(), o.clone(), Replication::Fixed);
    assert_eq!(left(&s), all - per_job);
    // A budget that covers one such job has nothing left for a second while the first is in flight.
    let small = Budget {
        amount: per_job,
        ..budget.body.clone()
    };
    assert_eq!(s.spending().left(&small), 0);
    // Offered again under a fresh offer: the old reservation is given back, the new one taken.
    let again = offer(41, 2, 1_000);
    s.offer(o.id(), again.clone(), Replication::Fixed);
    assert_eq!(left(&s), all - per_job);
    // Dropped: all of it is back.
    assert!(s.forget(&again.id()));
    assert_eq!(left(&s), all);
    // Decided: what was granted is spent, the rest given back.
    let outputs: BTreeMap<u8, Vec<u8>> = (1..=3).map(|w| (w, vec![7])).collect();
    let (_, receipts) = run_job(&mut s, 42, 2, Replication::Fixed, &[1, 2, 3], &outputs, 0);
    let granted: u64 = receipts.iter().map(|r| r.credit).sum();
    assert!(granted > 0);
    assert_eq!(s.spending().reserved(&budget.body), 0);
    assert_eq!(left(&s), all - granted);
}

#[test]
fn a_budget_taken_for_an_offer_is_set_aside_at_once_and_can_be_given_back() {
    let mut s = submitter(TrustConfig::default());
    let o = offer(60, 2, 0);
    let per_job = s.reservation(o.reward, o.replicas);
    let payer = NodeKey::from_seed([250; 32]);
    let small = Signed::sign(
        Budget {
            amount: per_job,
            ..o.budget.body.clone()
        },
        &payer,
    )
    .unwrap();
    let budgets = [small.clone()];
    // Two offers made at the same time: only the first gets the budget.
    let first = s.take_budget(&budgets, o.reward, o.replicas, o.deadline_ms);
    assert!(first.is_some());
    assert!(
        s.take_budget(&budgets, o.reward, o.replicas, o.deadline_ms)
            .is_none()
    );
    // The first was not made after all: the credit is back.
    s.give_back(&small.body, o.reward, o.replicas);
    assert_eq!(s.spending().left(&small.body), per_job);
    // Made: offered with the credit already set aside (not twice).
    let taken = s
        .take_budget(&budgets, o.reward, o.replicas, o.deadline_ms)
        .unwrap();
    let made = JobOffer { budget: taken, ..o };
    s.offer_reserved(made.id(), made.clone(), Replication::Fixed);
    assert_eq!(s.spending().reserved(&small.body), per_job);
    assert!(s.forget(&made.id()));
    assert_eq!(s.spending().reserved(&small.body), 0);
}

#[test]
fn two_untrusted_workers_decide_only_in_a_small_fleet_that_allows_it() {
    for small_fleet in [false, true] {
        let mut s = Submitter::new(
            key(SUBMITTER).node_id(),
            SubmitterConfig {
                max_extra: 2,
                step_timeout_ms: 100,
                small_fleet,
                ..SubmitterConfig::default()
            },
        );
        let mut rng = Fixed(0.5);
        let o = offer(50, 2, 0);
        let id = o.id();
        s.offer(id, o, Replication::Fixed);
        // Two peers, both bid: the window closes with two bids ("enough" is the two peers).
        s.on_bid(bid(id, 1, 0), 0, 2, &mut rng).unwrap();
        let actions = s.on_bid(bid(id, 2, 0), 0, 2, &mut rng).unwrap();
        let mut actions: Vec<Action> = actions.into_iter().chain(s.on_wake(id, 25, &mut rng)).collect();
        let mut t = 25;
        let mut verdict = None;
        while t < 70_000 && verdict.is_none() {
            let mut next = Vec::new();
            for a in actions.drain(..) {
                match a {
                    Action::Assign { worker, .. } => {
                        let w = if worker == key(1).node_id() { 1 } else { 2 };
                        next.extend(s.on_commit(&commit(id, w, &[7]), t).unwrap_or_default());
                    }
                    Action::RequestReveal { worker, .. } => {
                        let w = if worker == key(1).node_id() { 1 } else { 2 };
                        let (reveal, claim) = report(id, w, &[7], 900);
                        next.extend(s.on_report(&reveal, claim, t).unwrap_or_default());
                    }
                    Action::Decide { result, .. } => verdict = Some(result),
                    _ => {}
                }
            }
            if next.is_empty() {
                t += 1_000;
                next = s.on_tick(t);
            }
            actions = next;
        }
        let accepted = verdict.is_some_and(|r| matches!(r.outcome, Outcome::Accepted { .. }));
        assert_eq!(accepted, small_fleet, "small_fleet {small_fleet}");
    }
}

#[test]
fn a_worker_whose_output_the_submitter_refutes_is_replaced_rejected_and_its_lone_results_rechecked() {
    let mut s = submitter(small_trust());
    let honest = |n: u64| -> BTreeMap<u8, Vec<u8>> { (1u8..=6).map(|w| (w, vec![7, n as u8])).collect() };
    // (jobs run so far, time)
    let mut at = (0u64, 0u64);
    let step = |s: &mut Submitter,
                at: &mut (u64, u64),
                bidders: &[u8],
                outputs: &BTreeMap<u8, Vec<u8>>,
                refuted: &[u8]| {
        at.0 += 1;
        at.1 += 100_000;
        let bids: Vec<(u8, u64)> = bidders.iter().map(|w| (*w, 0)).collect();
        run_job_refuting(
            s,
            at.0,
            1,
            Replication::Adaptive,
            &bids,
            outputs,
            at.1,
            &mut Fixed(0.5),
            refuted,
        )
    };
    // Worker 1 earns trust beside others, then runs jobs alone: accepted on its word.
    while !s.reputation().is_trusted(&key(1).node_id(), at.1) {
        let out = honest(at.0);
        step(&mut s, &mut at, &[1, 2, 3], &out, &[]);
    }
    let mut alone = 0;
    for _ in 0..3 {
        let out = honest(at.0);
        let actions = step(&mut s, &mut at, &[1], &out, &[]);
        let (result, _) = decided(&actions).unwrap();
        assert!(matches!(&result.outcome, Outcome::Accepted { agreeing, .. } if agreeing.len() == 1));
        alone += 1;
    }
    // Its next answer fails the submitter's own check (here: the output is wrong): the job goes on
    // without it, it gets a Rejected receipt and no credit, loses trust, and its lone results are
    // rechecked with that receipt as evidence.
    let mut out = honest(at.0);
    out.insert(1, vec![0xee]);
    // (Its only other bidders are untrusted: three of them must agree.)
    let actions = step(&mut s, &mut at, &[1, 4, 5, 6], &out, &[1]);
    let (result, receipts) = decided(&actions).unwrap();
    match &result.outcome {
        Outcome::Accepted { output, agreeing, .. } => {
            assert_eq!(output, &out[&4]);
            assert!(!agreeing.contains(&key(1).node_id()), "{agreeing:?}");
        }
        other => panic!("{other:?}"),
    }
    let rejected = receipts
        .iter()
        .find(|r| r.claim.body.worker == key(1).node_id())
        .expect("a receipt for the refuted worker");
    assert_eq!((rejected.verdict, rejected.credit), (Verdict::Rejected, 0));
    let rechecks: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Recheck {
                rejection, recheck, ..
            } => Some((rejection, recheck)),
            _ => None,
        })
        .collect();
    assert_eq!(rechecks.len(), alone);
    for (rejection, recheck) in rechecks {
        assert_eq!(recheck.suspect, key(1).node_id());
        assert_eq!(rejection.claim.body.worker, key(1).node_id());
        assert_eq!(rejection.verdict, Verdict::Rejected);
    }
    assert!(!s.reputation().is_trusted(&key(1).node_id(), at.1));
}

fn small_trust() -> TrustConfig {
    TrustConfig {
        trust_after: 2,
        probation_ms: 1_000_000,
        spot_check: 0.1,
        explore: 0.3,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The reputation a node rebuilds from its own receipts after a restart equals the one it held, when
    /// no worker timed out (timeouts leave no receipt), and every verdict names a quorum of distinct
    /// workers with one output.
    #[test]
    fn reputation_rebuilt_from_receipts_equals_the_live_one(
        jobs in proptest::collection::vec((proptest::collection::btree_set(1u8..9, 3..6), any::<u8>()), 1..30),
        liars in proptest::collection::btree_set(1u8..9, 0..3),
    ) {
        let mut s = submitter(small_trust());
        let key_s = key(SUBMITTER);
        let mut signed: Vec<Signed<Receipt>> = Vec::new();
        for (n, (bidders, salt)) in jobs.iter().enumerate() {
            let bidders: Vec<u8> = bidders.iter().copied().collect();
            let outputs: BTreeMap<u8, Vec<u8>> = bidders
                .iter()
                .map(|w| (*w, if liars.contains(w) { vec![*w, *salt] } else { vec![0, *salt] }))
                .collect();
            let now = n as u64 * 100_000;
            let (result, receipts) =
                run_job(&mut s, n as u64, 1, Replication::Adaptive, &bidders, &outputs, now);
            if let Outcome::Accepted { output, agreeing, .. } = &result.outcome {
                let distinct: std::collections::BTreeSet<_> = agreeing.iter().collect();
                prop_assert_eq!(distinct.len(), agreeing.len());
                for w in agreeing {
                    let r = receipts.iter().find(|r| r.claim.body.worker == *w).unwrap();
                    prop_assert_eq!(r.claim.body.output_digest, *blake3::hash(output).as_bytes());
                }
            }
            signed.extend(receipts.into_iter().map(|r| Signed::sign(r, &key_s).unwrap()));
        }
        let rebuilt = rebuild_reputation(&key_s.node_id(), small_trust(), &signed);
        for w in 1u8..9 {
            let id = key(w).node_id();
            let live = s.reputation().record(&id);
            let again = rebuilt.record(&id);
            prop_assert_eq!((live.streak, live.valid, live.invalid), (again.streak, again.valid, again.invalid));
        }
    }
}

#[test]
fn keys_that_underbid_everyone_are_drawn_no_more_often_than_chance_allows() {
    // 20 bidders, nobody trusted: 4 colluding keys bid nothing, 16 honest cars bid 1,000-1,150. Whether
    // the job has a fixed replica count (raised to three untrusted workers) or adaptive replication,
    // the three workers are drawn among bidders that price cannot narrow to the colluders: all three are
    // colluders in about C(4,3)/C(20,3) = 0.35 % of plans, not in most of them (fixed: the pool anchored
    // on the cheapest bid held only the colluders) nor in ~3 % (adaptive: neighbours in bid order).
    use fleetmesh_consensus::assign::fixed_plan;
    use fleetmesh_consensus::trust::{Reputation, plan_preferring};
    let job = JobId::from_bytes([7; 32]);
    let colluders: Vec<NodeId> = (1..=4).map(|i| key(i).node_id()).collect();
    let mut bids: Vec<Bid> = (1..=4).map(|i| bid(job, i, 0)).collect();
    bids.extend((5..=20).map(|i| bid(job, i, u64::from(i) * 10)));
    for b in bids.iter_mut().take(4) {
        b.price = 0;
    }
    bids.sort_by_key(|b| b.price + b.energy_cost);
    let sorted: Vec<&Bid> = bids.iter().collect();
    let everyone: Vec<NodeId> = bids.iter().map(|b| b.worker).collect();
    let reputation = Reputation::new(TrustConfig::default());
    let mut rng = Seeded(1);
    let trials = 20_000;
    let (mut fixed_captured, mut adaptive_captured) = (0, 0);
    for _ in 0..trials {
        let p = fixed_plan(&sorted, 2, &reputation, 0, &mut rng).unwrap();
        assert_eq!(p.workers.len(), 3);
        fixed_captured += usize::from(p.workers.iter().all(|w| colluders.contains(w)));
        let q = plan_preferring(&everyone, &reputation, 0, &mut rng, &everyone[..4]).unwrap();
        assert_eq!(q.workers.len(), 3);
        adaptive_captured += usize::from(q.workers.iter().all(|w| colluders.contains(w)));
    }
    // Expected 70 of 20,000 each (0.35 %); a bound of 1 % leaves room for chance and none for a bias.
    for (what, n) in [("fixed", fixed_captured), ("adaptive", adaptive_captured)] {
        assert!(n < trials / 100, "{what}: colluders took {n} of {trials} jobs");
        assert!(
            n > 0,
            "{what}: colluders never drawn together, the draw is not uniform"
        );
    }
}
