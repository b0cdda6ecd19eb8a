//! The job state machine driven step by step: every path, then invariants under random schedules.
#![allow(missing_docs, clippy::unwrap_used)]

use fleetmesh_consensus::job::{Action, FailReason, Job, JobConfig, JobError, Outcome, SlotState};
use fleetmesh_protocol::messages::*;
use fleetmesh_protocol::{ModelId, NodeId, NodeKey, Signed};
use proptest::prelude::*;

fn node(i: u8) -> NodeId {
    NodeKey::from_seed([i; 32]).node_id()
}

fn class(name: &str) -> NumericClass {
    NumericClass {
        backend: "burn-flex-0.22.1".into(),
        features: "simd+rayon".into(),
        arch: name.into(),
    }
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

fn offer(replicas: u8) -> JobOffer {
    JobOffer {
        submitter: node(200),
        nonce: 1,
        model: ModelId::of(b"digits"),
        input: JobInput::Inline(vec![1, 2, 3]),
        rule: AgreementRule::Exact,
        replicas,
        reward: 100,
        created_ms: 0,
        expires_ms: 5_000,
        deadline_ms: 60_000,
        budget: budget_for(node(200)),
    }
}

fn bid(job: &Job, worker: u8, price: u64) -> Bid {
    Bid {
        job: job.id(),
        worker: node(worker),
        class: class("x86_64-avx512"),
        price,
        energy_cost: 0,
        est_ms: 10,
        expires_ms: 100_000,
    }
}

fn salt(worker: u8) -> [u8; 32] {
    [worker; 32]
}

fn commit(job: &Job, worker: u8, output: &[u8]) -> ResultCommit {
    let w = node(worker);
    ResultCommit {
        job: job.id(),
        worker: w,
        commitment: ResultCommit::commitment_for(&job.id(), &w, output, &salt(worker)),
    }
}

fn reveal(job: &Job, worker: u8, output: &[u8]) -> ResultReveal {
    ResultReveal {
        job: job.id(),
        worker: node(worker),
        output: output.to_vec(),
        salt: salt(worker),
        compute_us: 5,
        energy_uwh: 1,
    }
}

fn assigned(actions: &[Action]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Assign { worker, .. } = a {
                Some(*worker)
            } else {
                None
            }
        })
        .collect()
}

fn reveal_requests(actions: &[Action]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::RequestReveal { worker } = a {
                Some(*worker)
            } else {
                None
            }
        })
        .collect()
}

fn decided(actions: &[Action]) -> Option<Outcome> {
    actions.iter().find_map(|a| {
        if let Action::Decide(o) = a {
            Some(o.clone())
        } else {
            None
        }
    })
}

fn new_job(replicas: u8, max_extra: usize) -> Job {
    let o = offer(replicas);
    Job::new(&o, JobConfig::for_offer(&o, max_extra))
}

/// Runs commit + reveal for `worker` with `output`, returning the actions of the reveal.
fn work(job: &mut Job, worker: u8, output: &[u8], now: u64) -> Vec<Action> {
    job.on_commit(&commit(job, worker, output), now).unwrap();
    job.on_reveal(&reveal(job, worker, output), now)
        .unwrap_or_default()
}

#[test]
fn happy_path_two_agreeing_workers() {
    let mut job = new_job(2, 2);
    assert!(assigned(&job.on_bid(bid(&job, 1, 10), 0).unwrap()).len() == 1);
    assert_eq!(assigned(&job.on_bid(bid(&job, 2, 10), 0).unwrap()), vec![node(2)]);
    assert!(
        reveal_requests(&job.on_commit(&commit(&job, 1, b"7"), 1).unwrap()).is_empty(),
        "reveal before all commits"
    );
    assert_eq!(
        reveal_requests(&job.on_commit(&commit(&job, 2, b"7"), 2).unwrap()).len(),
        2
    );
    assert!(decided(&job.on_reveal(&reveal(&job, 1, b"7"), 3).unwrap()).is_none());
    let outcome = decided(&job.on_reveal(&reveal(&job, 2, b"7"), 4).unwrap()).unwrap();
    assert_eq!(
        outcome,
        Outcome::Accepted {
            output: b"7".to_vec(),
            agreeing: vec![node(1), node(2)],
            disagreeing: vec![]
        }
    );
    assert_eq!(job.on_bid(bid(&job, 3, 1), 5), Err(JobError::Decided));
}

#[test]
fn bids_are_assigned_in_the_order_given_not_by_price() {
    let mut job = new_job(1, 0);
    // One replica: the first bid is assigned at once.
    assert_eq!(assigned(&job.on_bid(bid(&job, 5, 50), 0).unwrap()), vec![node(5)]);
    let mut job = new_job(2, 0);
    job.on_bid(bid(&job, 1, 90), 0).unwrap();
    job.on_bid(bid(&job, 2, 10), 0).unwrap();
    let assigned_all: Vec<_> = job.slots().map(|(w, _)| *w).collect();
    assert_eq!(assigned_all, vec![node(1), node(2)]);
    // Spare bids wait in the order given (the submitter's draw): a replacement is the first of them,
    // not the cheapest (keys that underbid everyone would otherwise take every extra worker).
    let mut job = new_job(1, 2);
    job.on_bid(bid(&job, 1, 50), 0).unwrap();
    job.on_bid(bid(&job, 2, 90), 0).unwrap();
    job.on_bid(bid(&job, 3, 10), 0).unwrap();
    assert_eq!(assigned(&job.on_tick(10_001)), vec![node(2)]);
}

#[test]
fn a_timed_out_worker_is_replaced() {
    let mut job = new_job(2, 2);
    for w in [1, 2, 3] {
        job.on_bid(bid(&job, w, u64::from(w)), 0).unwrap();
    }
    job.on_commit(&commit(&job, 1, b"7"), 1).unwrap();
    // Worker 2 never commits: after the commit timeout, worker 3 takes its place.
    let actions = job.on_tick(10_001);
    assert_eq!(assigned(&actions), vec![node(3)]);
    assert_eq!(
        job.on_commit(&commit(&job, 2, b"7"), 10_002),
        Err(JobError::NotAssigned(node(2)))
    );
    let actions = job.on_commit(&commit(&job, 3, b"7"), 10_003).unwrap();
    assert_eq!(reveal_requests(&actions), vec![node(1), node(3)]);
    job.on_reveal(&reveal(&job, 1, b"7"), 10_004).unwrap();
    let outcome = decided(&job.on_reveal(&reveal(&job, 3, b"7"), 10_005).unwrap()).unwrap();
    assert!(matches!(outcome, Outcome::Accepted { agreeing, .. } if agreeing == vec![node(1), node(3)]));
}

#[test]
fn a_withdrawn_worker_is_replaced_and_not_counted() {
    let mut job = new_job(2, 2);
    for w in [1, 2, 3] {
        job.on_bid(bid(&job, w, u64::from(w)), 0).unwrap();
    }
    let withdraw = Withdraw {
        job: job.id(),
        worker: node(2),
        reason: WithdrawReason::Preempted,
        at_ms: 5,
    };
    assert_eq!(assigned(&job.on_withdraw(&withdraw, 5).unwrap()), vec![node(3)]);
    job.on_commit(&commit(&job, 1, b"x"), 6).unwrap();
    assert_eq!(
        reveal_requests(&job.on_commit(&commit(&job, 3, b"x"), 7).unwrap()).len(),
        2
    );
    job.on_reveal(&reveal(&job, 1, b"x"), 8).unwrap();
    let outcome = decided(&job.on_reveal(&reveal(&job, 3, b"x"), 8).unwrap()).unwrap();
    assert!(matches!(outcome, Outcome::Accepted { agreeing, .. } if !agreeing.contains(&node(2))));
}

#[test]
fn keys_that_take_a_job_and_hand_it_back_draw_a_bounded_number_of_workers() {
    // Two replicas and two extra: at most 3 x 4 = 12 workers drawn in all, however many keys bid.
    let mut job = new_job(2, 2);
    let bidders = 40u8;
    for w in 1..=bidders {
        job.on_bid(bid(&job, w, u64::from(w)), 0).unwrap();
    }
    let mut drawn = 0;
    let mut withdrawn = 0;
    let mut pending: Vec<NodeId> = job
        .slots()
        .filter(|(_, s)| matches!(s, SlotState::Assigned { .. }))
        .map(|(w, _)| *w)
        .collect();
    drawn += pending.len();
    let mut outcome = None;
    while let Some(worker) = pending.pop() {
        let w = (1..=bidders).find(|i| node(*i) == worker).unwrap();
        let wd = Withdraw {
            job: job.id(),
            worker: node(w),
            reason: WithdrawReason::Preempted,
            at_ms: 5,
        };
        let actions = job.on_withdraw(&wd, 5).unwrap();
        withdrawn += 1;
        let fresh = assigned(&actions);
        drawn += fresh.len();
        pending.extend(fresh);
        outcome = outcome.or(decided(&actions));
    }
    assert_eq!(drawn, 3 * 4, "workers drawn");
    assert_eq!(withdrawn, drawn);
    // Nobody is left to do the work: the job ends now instead of drawing keys until its deadline.
    let outcome = outcome.or_else(|| decided(&job.on_tick(10)));
    assert!(
        matches!(outcome, Some(Outcome::Failed(FailReason::NotEnoughWorkers))),
        "{outcome:?}"
    );
}

#[test]
fn disagreement_escalates_and_the_liar_is_outvoted() {
    let mut job = new_job(2, 2);
    for w in [1, 2, 3, 4] {
        job.on_bid(bid(&job, w, u64::from(w)), 0).unwrap();
    }
    job.on_commit(&commit(&job, 1, b"right"), 1).unwrap();
    job.on_commit(&commit(&job, 2, b"wrong"), 1).unwrap();
    job.on_reveal(&reveal(&job, 1, b"right"), 2).unwrap();
    let actions = job.on_reveal(&reveal(&job, 2, b"wrong"), 2).unwrap();
    assert_eq!(assigned(&actions), vec![node(3)], "a third worker breaks the tie");
    let outcome = decided(&work(&mut job, 3, b"right", 3)).unwrap();
    assert_eq!(
        outcome,
        Outcome::Accepted {
            output: b"right".to_vec(),
            agreeing: vec![node(1), node(3)],
            disagreeing: vec![node(2)]
        }
    );
}

#[test]
fn all_disagreeing_fails_with_a_reason() {
    let mut job = new_job(2, 1);
    for w in [1, 2, 3] {
        job.on_bid(bid(&job, w, u64::from(w)), 0).unwrap();
    }
    job.on_commit(&commit(&job, 1, b"a"), 1).unwrap();
    job.on_commit(&commit(&job, 2, b"b"), 1).unwrap();
    job.on_reveal(&reveal(&job, 1, b"a"), 2).unwrap();
    job.on_reveal(&reveal(&job, 2, b"b"), 2).unwrap();
    let outcome = decided(&work(&mut job, 3, b"c", 3)).unwrap();
    assert_eq!(outcome, Outcome::Failed(FailReason::NoAgreement));
}

#[test]
fn no_workers_fails_at_the_deadline() {
    let mut job = new_job(2, 1);
    job.on_bid(bid(&job, 1, 1), 0).unwrap();
    assert!(decided(&job.on_tick(30_000)).is_none());
    assert_eq!(
        decided(&job.on_tick(60_001)),
        Some(Outcome::Failed(FailReason::NotEnoughWorkers))
    );
}

#[test]
fn commit_before_reveal_is_enforced_and_a_bad_opening_is_invalid() {
    let mut job = new_job(2, 2);
    for w in [1, 2, 3] {
        job.on_bid(bid(&job, w, u64::from(w)), 0).unwrap();
    }
    assert_eq!(
        job.on_reveal(&reveal(&job, 1, b"7"), 1),
        Err(JobError::RevealTooEarly)
    );
    job.on_commit(&commit(&job, 1, b"7"), 1).unwrap();
    assert_eq!(
        job.on_reveal(&reveal(&job, 1, b"7"), 1),
        Err(JobError::RevealTooEarly)
    );
    job.on_commit(&commit(&job, 2, b"7"), 2).unwrap();
    // Worker 2 reveals another output than it committed to (it copied worker 1 late): invalid, replaced.
    let actions = job.on_reveal(&reveal(&job, 2, b"8"), 3).unwrap();
    assert_eq!(assigned(&actions), vec![node(3)]);
    assert!(
        job.slots()
            .any(|(w, s)| *w == node(2) && *s == SlotState::Invalid)
    );
    assert_eq!(
        job.on_commit(&commit(&job, 9, b"7"), 3),
        Err(JobError::NotAssigned(node(9)))
    );
}

#[test]
fn exact_rule_assigns_one_numeric_class() {
    let mut job = new_job(2, 0);
    job.on_bid(bid(&job, 1, 1), 0).unwrap();
    let mut other = bid(&job, 2, 0);
    other.class = class("aarch64-neon");
    assert!(
        assigned(&job.on_bid(other, 0).unwrap()).is_empty(),
        "another class must not be paired under Exact"
    );
    assert_eq!(assigned(&job.on_bid(bid(&job, 3, 5), 0).unwrap()), vec![node(3)]);
}

/// One worker's behaviour in a random schedule.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Honest,
    Wrong,
    Silent,
    BadOpening,
    Withdraws,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        4 => Just(Behaviour::Honest),
        2 => Just(Behaviour::Wrong),
        1 => Just(Behaviour::Silent),
        1 => Just(Behaviour::BadOpening),
        1 => Just(Behaviour::Withdraws),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the workers do and in whatever order: the verdict never changes once reached; an accepted
    /// output has `r` distinct agreeing workers (or a strict majority of at least two); nobody's reveal counts
    /// before every active worker committed.
    #[test]
    fn invariants_hold_under_random_schedules(
        replicas in 1u8..=3,
        max_extra in 0usize..=3,
        workers in proptest::collection::vec(behaviour(), 1..8),
        order in proptest::collection::vec(any::<u16>(), 0..200),
    ) {
        let mut job = new_job(replicas, max_extra);
        let r = usize::from(replicas);
        for (i, _) in workers.iter().enumerate() {
            let _ = job.on_bid(bid(&job, i as u8 + 1, i as u64), 0);
        }
        let mut first_outcome: Option<Outcome> = None;
        let mut now = 1;
        for step in order {
            now += 100;
            let i = usize::from(step) % workers.len();
            let w = i as u8 + 1;
            let output: &[u8] = match workers[i] { Behaviour::Wrong => b"wrong", _ => b"right" };
            let actions = match (step / 7) % 4 {
                0 if !matches!(workers[i], Behaviour::Silent) => job.on_commit(&commit(&job, w, output), now).unwrap_or_default(),
                1 => {
                    let shown: &[u8] = if matches!(workers[i], Behaviour::BadOpening) { b"other" } else { output };
                    let before: Vec<SlotState> = job.slots().filter(|(n, _)| **n == node(w)).map(|(_, s)| s.clone()).collect();
                    let result = job.on_reveal(&reveal(&job, w, shown), now);
                    if result.is_ok() {
                        prop_assert!(matches!(before.first(), Some(SlotState::RevealDue { .. })), "reveal accepted outside the reveal phase");
                    }
                    result.unwrap_or_default()
                }
                2 if matches!(workers[i], Behaviour::Withdraws) => {
                    let wd = Withdraw { job: job.id(), worker: node(w), reason: WithdrawReason::Preempted, at_ms: now };
                    job.on_withdraw(&wd, now).unwrap_or_default()
                }
                _ => job.on_tick(now),
            };
            if let Some(o) = decided(&actions) {
                prop_assert!(first_outcome.is_none(), "a second Decide");
                first_outcome = Some(o);
            }
            if let Some(first) = &first_outcome {
                prop_assert_eq!(job.outcome(), Some(first));
            }
        }
        let tail = job.on_tick(now + 1_000_000);
        if let Some(o) = decided(&tail) {
            prop_assert!(first_outcome.is_none());
            first_outcome = Some(o);
        }
        prop_assert!(first_outcome.is_some(), "a job past its deadline must be decided");
        if let Some(Outcome::Accepted { output, agreeing, disagreeing }) = first_outcome {
            let mut distinct = agreeing.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), agreeing.len());
            prop_assert!(agreeing.len() >= r || (agreeing.len() >= 2 && agreeing.len() > disagreeing.len()));
            // Every agreeing worker revealed exactly the accepted output (Exact rule).
            for (w, s) in job.slots() {
                if agreeing.contains(w) {
                    let revealed_accepted = matches!(s, SlotState::Revealed { output: o, .. } if *o == output);
                    prop_assert!(revealed_accepted, "an agreeing worker did not reveal the accepted output");
                }
            }
        }
    }
}
