//! Reputation and adaptive replication, driven directly; and a quick run of the adversarial simulation.
#![allow(missing_docs, clippy::unwrap_used)]

use fleetmesh_consensus::assign::Randomness;
use fleetmesh_consensus::simulation::{self, Behaviour, SimConfig};
use fleetmesh_consensus::trust::{Reputation, Standing, TrustConfig, plan, plan_preferring};
use fleetmesh_protocol::{NodeId, NodeKey};
use proptest::prelude::*;

fn node(i: u8) -> NodeId {
    NodeKey::from_seed([i; 32]).node_id()
}

/// The given numbers, in order and then again.
struct Draws(Vec<f64>, usize);

impl Randomness for Draws {
    fn unit(&mut self) -> f64 {
        self.1 += 1;
        self.0[(self.1 - 1) % self.0.len()]
    }
}

fn cfg() -> TrustConfig {
    TrustConfig {
        trust_after: 3,
        probation_ms: 1_000,
        spot_check: 0.1,
        explore: 0.2,
    }
}

#[test]
fn trust_is_earned_by_validated_work_and_lost_at_once() {
    let mut rep = Reputation::new(cfg());
    let a = node(1);
    // A fresh identity is worth nothing.
    assert_eq!(rep.standing(&a, 0), Standing::Untrusted);
    for _ in 0..2 {
        rep.validated(a);
    }
    assert_eq!(rep.standing(&a, 0), Standing::Untrusted);
    rep.validated(a);
    assert_eq!(rep.standing(&a, 0), Standing::Trusted);
    // One invalid result: probation, then it starts from zero.
    rep.invalid(a, 100);
    assert_eq!(rep.standing(&a, 500), Standing::Probation);
    assert_eq!(rep.standing(&a, 1_100), Standing::Untrusted);
    for _ in 0..3 {
        rep.validated(a);
    }
    assert_eq!(rep.standing(&a, 1_100), Standing::Trusted);
    assert_eq!(rep.record(&a).invalid, 1);
}

proptest! {
    #[test]
    fn untrusted_workers_never_run_alone_and_probation_workers_are_never_drawn(
        trusted in proptest::collection::btree_set(0u8..12, 0..6),
        probation in proptest::collection::btree_set(12u8..16, 0..3),
        fresh in proptest::collection::btree_set(16u8..24, 0..6),
        draws in proptest::collection::vec(0f64..1.0, 12),
        preferred_mask in any::<u32>(),
    ) {
        let mut rep = Reputation::new(cfg());
        for t in &trusted {
            for _ in 0..3 {
                rep.validated(node(*t));
            }
        }
        for p in &probation {
            rep.invalid(node(*p), 0);
        }
        let candidates: Vec<NodeId> = trusted.iter().chain(&probation).chain(&fresh).map(|i| node(*i)).collect();
        let Some(p) = plan(&candidates, &rep, 10, &mut Draws(draws.clone(), 0)) else {
            prop_assert!(fresh.is_empty() && trusted.is_empty());
            return Ok(());
        };
        for w in p.workers.iter().chain(&p.backups) {
            prop_assert_ne!(rep.standing(w, 10), Standing::Probation);
        }
        let alone = p.replicas == 1;
        if alone {
            prop_assert!(rep.is_trusted(&p.workers[0], 10));
            prop_assert!(!p.spot_check);
        }
        if p.workers.iter().any(|w| !rep.is_trusted(w, 10)) {
            prop_assert!(p.replicas >= 2);
            // Backups are trusted whenever anyone is, so adversaries cannot out-vote through escalation.
            if !trusted.is_empty() {
                prop_assert!(p.backups.iter().all(|w| rep.is_trusted(w, 10)));
            }
        }
        let distinct: std::collections::BTreeSet<&NodeId> = p.workers.iter().collect();
        prop_assert_eq!(distinct.len(), p.workers.len());

        // A preference (the cheapest bids) changes only which trusted worker runs the job: the same
        // replication, spot checks and trusted-only backups, no probation worker.
        let preferred: Vec<NodeId> = candidates
            .iter()
            .enumerate()
            .filter(|(i, _)| preferred_mask >> (i % 32) & 1 == 1)
            .map(|(_, c)| *c)
            .collect();
        let q = plan_preferring(&candidates, &rep, 10, &mut Draws(draws, 0), &preferred).unwrap();
        prop_assert_eq!((q.replicas, q.spot_check), (p.replicas, p.spot_check));
        prop_assert_eq!(q.workers.len(), p.workers.len());
        for w in q.workers.iter().chain(&q.backups) {
            prop_assert_ne!(rep.standing(w, 10), Standing::Probation);
        }
        if q.workers.iter().any(|w| !rep.is_trusted(w, 10)) && !trusted.is_empty() {
            prop_assert!(q.backups.iter().all(|w| rep.is_trusted(w, 10)));
        }
        let first = q.workers[0];
        if rep.is_trusted(&first, 10) && preferred.iter().any(|c| rep.is_trusted(c, 10)) {
            prop_assert!(preferred.contains(&first));
        }
    }
}

#[test]
fn a_quick_adversarial_fleet_accepts_no_wrong_output_with_few_replicas() {
    for adversary in [
        Behaviour::AlwaysWrong,
        Behaviour::Lazy,
        Behaviour::Silent,
        Behaviour::ReceiptForger,
    ] {
        let r = simulation::run(&SimConfig {
            workers: 300,
            jobs: 12_000,
            adversary,
            receipts: adversary == Behaviour::ReceiptForger,
            ..SimConfig::default()
        });
        assert_eq!(r.accepted_wrong, 0, "{adversary:?}: {r:?}");
        assert!(r.steady_replicas <= 1.10, "{adversary:?}: {r:?}");
        assert!(r.accepted as f64 >= 0.99 * 12_000.0, "{adversary:?}: {r:?}");
        if adversary == Behaviour::ReceiptForger {
            assert!(r.forged_refused > 0, "{r:?}");
        }
        let adv = r.credit_per_worker.get(&adversary.name()).copied().unwrap_or(0.0);
        if matches!(
            adversary,
            Behaviour::AlwaysWrong | Behaviour::Lazy | Behaviour::Silent
        ) {
            assert_eq!(adv, 0.0, "{adversary:?} earned credit");
        }
    }
    let colluding = simulation::run(&SimConfig {
        workers: 300,
        jobs: 12_000,
        adversary: Behaviour::Colluding,
        receipts: false,
        ..SimConfig::default()
    });
    assert!(colluding.wrong_accept_rate() <= 1e-3, "{colluding:?}");
}

#[test]
fn a_rare_liar_caught_by_a_check_has_its_unchecked_results_revoked_rechecked_and_revised() {
    // 100 workers, 10 of them lying on 5 % of jobs: each does ~1,000 jobs, so most liars are caught.
    let run = |jobs| {
        simulation::run(&SimConfig {
            workers: 100,
            jobs,
            adversary: Behaviour::WrongWithProbability(0.05),
            receipts: true,
            ..SimConfig::default()
        })
    };
    let r = run(20_000);
    eprintln!("{r:?}");
    assert!(r.rechecks > 0 && r.revised > 0, "{r:?}");
    assert!(r.revised <= r.rechecks, "{r:?}");
    assert_eq!(
        r.accepted_wrong - r.wrong_after_revision,
        r.revised,
        "every revision corrects a wrong output: {r:?}"
    );
    assert!(r.revoked >= r.revised, "{r:?}");
    assert!(r.steady_replicas <= 1.10, "{r:?}");
}
