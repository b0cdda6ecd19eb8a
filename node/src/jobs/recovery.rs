//! After a restart: what the store holds is picked up again. Receipts and revocations go back into the
//! book and rebuild the submitter's reputation and its audit of results accepted on one worker's word;
//! decided jobs keep their verdicts (and revisions); rechecks stay rechecks; unfinished submitted jobs are offered
//! again under a fresh offer (the id their user knows stays); finished but unrevealed work sends its
//! commitment again; unfinished work is run again if its deadline allows.

use std::collections::{BTreeSet, HashMap};

use fleetmesh_consensus::payment::Spending;
use fleetmesh_consensus::revision::rebuild_audit;
use fleetmesh_consensus::submitter::rebuild_reputation;
use fleetmesh_protocol::messages::JobInput;
use fleetmesh_protocol::{JobId, NodeId};
use tracing::Instrument;

use super::views::receipt_id;
use super::{Jobs, Submitted, Work, job_span, now_ms};
use crate::inference::executor::CancelFlag;

impl Jobs {
    /// Picks up what the store holds after a restart (see the module's documentation). Call once, before
    /// the node takes requests.
    pub fn resume(&self) {
        let store = &self.inner.store;
        let now = now_ms();
        let (mut pending, mut decided, mut recommit, mut rerun) = (0, 0, 0, 0);
        let (receipts, revoked) = {
            let mut book = self.book();
            for r in store.receipts() {
                // Nothing foreign is held yet: no revocation to take over.
                let _ = book.keep(r);
            }
            for r in store.revocations() {
                book.keep_revocation(r);
            }
            let revoked: BTreeSet<(JobId, NodeId)> = book.revocations.keys().copied().collect();
            (book.receipts.values().cloned().collect::<Vec<_>>(), revoked)
        };
        let mut revisions: HashMap<JobId, _> = store.revisions().into_iter().collect();
        let trust = self.inner.cfg.submitter_config().trust;
        let reputation = rebuild_reputation(&self.inner.me, trust, &receipts);
        let mut receipt_ids: HashMap<JobId, Vec<String>> = HashMap::new();
        for r in &receipts {
            receipt_ids
                .entry(r.body.claim.body.job)
                .or_default()
                .push(receipt_id(r));
        }
        {
            let mut side = self.submitter();
            side.core.set_reputation(reputation);
            // The numbers and running totals of this node's budgets, from its own receipts (each is on
            // disk before it leaves), so no number is used twice after a crash.
            side.core
                .set_spending(Spending::restore(&self.inner.me, &receipts));
            let mut records = store.submitted();
            // Oldest first, so that the decided jobs kept in memory are the most recent.
            records.sort_by_key(|(_, r)| r.offer.created_ms);
            let mut verdicts = Vec::new();
            for (original, record) in records {
                // A decided job keeps its verdict; an unfinished one waits to be offered again (its old
                // offer is unknown to the submitter core meanwhile, so late messages for it are refused).
                if record.result.is_none() {
                    pending += 1;
                    side.to_reoffer.push(original);
                } else {
                    decided += 1;
                    verdicts.push(original);
                }
                let id = record.offer.id();
                side.by_offer.insert(id, original);
                side.jobs.insert(
                    original,
                    Submitted {
                        offer: record.offer,
                        adaptive: record.adaptive,
                        receipt_ids: receipt_ids.remove(&id).unwrap_or_default(),
                        waiters: Vec::new(),
                        result: record.result,
                        revised: revisions.remove(&original),
                    },
                );
            }
            for original in verdicts {
                side.decided(original);
            }
            let audit = rebuild_audit(&self.inner.me, &receipts, &revoked, |job| {
                side.by_offer.get(job).copied()
            });
            side.core.set_audit(audit);
            side.rechecks = store.rechecks().into_iter().collect();
        }
        for (job, record) in store.work() {
            if record.offer.deadline_ms <= now || record.revealed {
                let _ = store.remove_work(&job);
                continue;
            }
            let cancel = CancelFlag::default();
            {
                let mut side = self.worker();
                side.offers.insert(job, record.offer.clone());
                side.work.insert(
                    job,
                    Work {
                        offer: record.offer.clone(),
                        done_ms: record.done.is_some().then_some(now),
                        done: record.done.clone(),
                        cancel: cancel.clone(),
                        revealed: false,
                    },
                );
            }
            let this = self.clone();
            match (record.done, record.offer.input.clone()) {
                (Some(done), _) => {
                    recommit += 1;
                    let (submitter, deadline) = (record.offer.submitter, record.offer.deadline_ms);
                    self.spawn(
                        async move { this.send_commit(job, submitter, deadline, &done).await }
                            .instrument(job_span(job, "worker", submitter, None)),
                    );
                }
                (None, JobInput::Inline(input)) => {
                    rerun += 1;
                    let offer = record.offer;
                    let span = job_span(job, "worker", offer.submitter, None);
                    self.spawn(async move { this.compute(job, offer, input, cancel).await }.instrument(span));
                }
                (None, JobInput::Content { .. }) => {}
            }
        }
        if pending + decided + recommit + rerun > 0 {
            tracing::info!(
                pending,
                decided,
                recommit,
                rerun,
                receipts = receipts.len(),
                "resumed from the store"
            );
        }
    }
}
