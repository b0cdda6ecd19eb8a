//! Lies undone after the fact, the node's side ([`fleetmesh_consensus::revision`] decides): when the
//! submitter core catches a worker that had results accepted on its word alone, this node signs, stores
//! and gossips a `Revocation` of each of those receipts (and sends it to the worker), and offers each
//! job again as a recheck (two replicas, the suspect excluded); a recheck that accepts another output
//! revises the job's verdict (`GET /v1/jobs/{id}` then says `revised`, with the corrected output).
//! Revocations from other submitters arrive by gossip (topic `fleetmesh/revocations/v2`), or from the
//! submitter when this node is the worker, and count in the ledger with the evidence they carry.

use fleetmesh_consensus::submitter::Recheck;
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{Receipt, Revocation};
use fleetmesh_protocol::{JobId, NodeId, Signed};
use tracing::{debug, info, warn};

use super::{Jobs, now_ms};
use crate::net::Topic;
use crate::store::RevisionRecord;

/// Seconds before each try to hand a revocation to its worker.
const REVOCATION_SEND_BACKOFF_S: [u64; 4] = [0, 2, 10, 30];

impl Jobs {
    /// The worker `recheck.suspect` was caught (`rejection` is this node's receipt body rejecting it):
    /// revokes its receipt for the offer `job` with the signed rejection as evidence (durable before it
    /// leaves), then offers the job `recheck.of` again as a recheck.
    pub(super) fn recheck(&self, job: JobId, rejection: Receipt, recheck: Recheck) {
        let caught_on = rejection.claim.body.job;
        // The same signature as the receipt stored with the verdict (ed25519 signs deterministically).
        let Ok(evidence) = Signed::sign(rejection, &self.inner.key) else {
            return;
        };
        let revocation = Revocation {
            job,
            worker: recheck.suspect,
            submitter: self.inner.me,
            evidence,
            issued_ms: now_ms(),
        };
        let Ok(signed) = Signed::sign(revocation, &self.inner.key) else {
            return;
        };
        let this = self.clone();
        self.spawn(async move {
            // At the pace of this node's offers (a caught worker may have thousands of results to revoke,
            // and each revocation spends this node's gossip allowance on every peer).
            this.paced().await;
            let to_store = signed.clone();
            let stored = this
                .inner
                .store
                .off_thread(move |s| s.put_revocation(&to_store))
                .await;
            match stored {
                Ok(_) => {
                    if let Err(e) = this.inner.store.flush().await {
                        warn!(error = %e, "cannot flush a revocation");
                    }
                    // The receipt it revokes may still be on its way into the book (its verdict being
                    // stored): kept as foreign until then.
                    this.book_revocation(signed.clone());
                    let data = codec::encode(&signed);
                    if let Err(e) = this.inner.net.publish(Topic::Revocations, data.clone()).await {
                        debug!(error = %e, "revocation not gossiped");
                    }
                    this.send_to_worker(signed.body.worker, data);
                }
                Err(e) => warn!(job = %job.short(), error = %e, "cannot store a revocation"),
            }
            this.inner.metrics.rechecks.inc();
            info!(
                job = %recheck.of.short(),
                suspect = %recheck.suspect.short(),
                caught_on = %caught_on.short(),
                "worker caught lying: its receipt revoked, the job it ran alone checked again"
            );
            // The job's input, from memory or (decided long ago) from the store.
            let known = this.submitter().jobs.get(&recheck.of).map(|s| s.offer.clone());
            let of = recheck.of;
            let old = match known {
                Some(offer) => Some(offer),
                None => this
                    .inner
                    .store
                    .off_thread(move |s| Ok(s.submitted_one(&of).map(|r| r.offer)))
                    .await
                    .ok()
                    .flatten(),
            };
            let Some(old) = old else {
                warn!(job = %recheck.of.short(), "cannot recheck a job this node no longer holds");
                return;
            };
            this.paced().await;
            let offered = match this.new_offer(old.model, old.input, old.rule, 2) {
                // A recheck is a job of its own (its receipts pay its workers); the job it checks keeps its
                // verdict until the recheck revises it. Marked in the store first: after a restart it is
                // offered again as a recheck.
                Ok(fresh) => {
                    let id = fresh.id();
                    this.submitter().rechecks.insert(id, recheck);
                    let marked = this
                        .inner
                        .store
                        .off_thread(move |s| s.put_recheck(&id, &recheck))
                        .await;
                    let offered = match marked {
                        Ok(()) => this.offer(id, fresh, false, None, Some(recheck)).await,
                        Err(e) => {
                            this.give_back(&fresh);
                            Err(e.into())
                        }
                    };
                    if offered.is_err() {
                        // Neither in flight nor marked any more.
                        this.forget(id).await;
                    }
                    offered
                }
                Err(e) => Err(e),
            };
            if let Err(e) = offered {
                warn!(job = %recheck.of.short(), error = %e, "cannot offer the recheck");
            }
        });
    }

    /// The recheck `recheck` accepted `output` for the job its user knows as `original`, unlike the output
    /// accepted before: the verdict is revised (stored, then shown).
    pub(super) fn revise(&self, original: JobId, recheck: JobId, output: Vec<u8>, agreeing: Vec<NodeId>) {
        let record = RevisionRecord {
            output,
            agreeing,
            recheck,
            revised_ms: now_ms(),
        };
        let this = self.clone();
        self.spawn(async move {
            let to_store = record.clone();
            let stored = this
                .inner
                .store
                .off_thread(move |s| s.put_revision(&original, &to_store))
                .await;
            if let Err(e) = stored {
                warn!(job = %original.short(), error = %e, "cannot store a revised verdict");
                return;
            }
            if let Err(e) = this.inner.store.flush().await {
                warn!(job = %original.short(), error = %e, "cannot flush a revised verdict");
            }
            this.inner.metrics.revisions.inc();
            info!(job = %original.short(), "verdict revised: a recheck accepted another output");
            if let Some(sub) = this.submitter().jobs.get_mut(&original) {
                sub.revised = Some(record);
            }
        });
    }

    /// Sends a revocation to the worker it names as well, so that the worker's own books honour it
    /// whether or not the gossip reached it (tried a few times; the worker's claims are checked with the
    /// revocations the checker holds either way).
    fn send_to_worker(&self, worker: NodeId, data: Vec<u8>) {
        let this = self.clone();
        self.spawn(async move {
            for wait in REVOCATION_SEND_BACKOFF_S {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
                    _ = this.inner.stopping.cancelled() => return,
                }
                match this
                    .inner
                    .net
                    .request(crate::net::peer_id_of(&worker), data.clone())
                    .await
                {
                    // Busy: the worker has not got the receipt yet; tried again later. (A refusal is
                    // final: the worker has no receipt of this submitter for the job.)
                    Ok(answer) => match codec::decode::<fleetmesh_protocol::messages::Reply>(&answer) {
                        Ok(r) if r.code == fleetmesh_protocol::messages::ReplyCode::Busy => {
                            debug!(worker = %worker.short(), "revocation waits for its receipt at the worker")
                        }
                        _ => return,
                    },
                    Err(e) => {
                        debug!(worker = %worker.short(), error = %e, "revocation not sent to its worker yet")
                    }
                }
            }
        });
    }

    /// A gossiped revocation (signature checked): kept and stored if it revokes a receipt this node
    /// holds from its signer; otherwise kept in memory with the foreign ones, and taken over (and
    /// stored) if that receipt arrives later ([`Jobs::keep_receipts`]).
    pub(super) fn on_revocation(&self, revocation: Signed<Revocation>) {
        if self.book_revocation(revocation.clone()) {
            let this = self.clone();
            self.spawn(async move { this.store_revocations(vec![revocation]).await });
        }
    }

    /// A revocation its submitter sent to this node, the worker it names: as [`Jobs::on_revocation`],
    /// but stored and flushed before this returns (the caller then acknowledges it). Returns whether it
    /// revokes a receipt this node holds.
    pub(super) async fn on_revocation_sent(&self, revocation: Signed<Revocation>) -> bool {
        let mine = self.book_revocation(revocation.clone());
        if mine {
            self.store_revocations(vec![revocation]).await;
        }
        mine
    }

    /// Keeps `revocation` in the book: as this node's own when it revokes a receipt held here from its
    /// signer (returns true), else with the foreign ones.
    fn book_revocation(&self, revocation: Signed<Revocation>) -> bool {
        // A revocation of another node's receipt is kept for claim checks (its evidence travels with it)
        // and changes no trust here: the evidence shows only that its submitter rejected the worker once,
        // which a submitter with a grudge can do to an honest worker.
        let mut book = self.book();
        book.keep_revocation(revocation.clone()) || {
            book.keep_foreign(revocation);
            false
        }
    }

    /// Stores `revocations` and flushes the store.
    async fn store_revocations(&self, revocations: Vec<Signed<Revocation>>) {
        for revocation in revocations {
            let stored = self
                .inner
                .store
                .off_thread(move |s| s.put_revocation(&revocation))
                .await;
            if let Err(e) = stored {
                warn!(error = %e, "cannot store a revocation");
            }
        }
        if let Err(e) = self.inner.store.flush().await {
            warn!(error = %e, "cannot flush a revocation");
        }
    }

    /// Puts `receipts` in the book; a revocation of one of them that arrived before it is stored and
    /// flushed now, before the caller answers anyone (a kill -9 after the answer cannot lose it).
    pub(super) async fn keep_receipts(&self, receipts: impl IntoIterator<Item = Signed<Receipt>>) {
        let early: Vec<_> = {
            let mut book = self.book();
            receipts.into_iter().filter_map(|r| book.keep(r)).collect()
        };
        if early.is_empty() {
            return;
        }
        debug!(
            count = early.len(),
            "revocations that came before their receipts taken over"
        );
        self.store_revocations(early).await;
    }
}
