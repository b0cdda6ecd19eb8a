//! The worker role: bids on offers while the car admits work, runs assigned jobs on the executor,
//! commits to the output (the salt durable before the commitment leaves), reveals it with a signed claim
//! when the submitter asks, and hands work back with a signed `Withdraw` when it cannot finish it.

use fleetmesh_consensus::submitter::Randomness;
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{
    Assignment, Bid, JobInput, JobOffer, Reply, ReplyCode, ResultCommit, ResultReveal, RevealRequest,
    Withdraw, WithdrawReason, WorkClaim, WorkReport,
};
use fleetmesh_protocol::{JobId, NodeId, Signed};
use tracing::{Instrument, debug, warn};

use super::{Jobs, OsRandom, Work, job_span, now_ms, refuse, reply};
use crate::adversary::WorkerBehaviour;
use crate::inference::executor::CancelFlag;
use crate::inference::numeric_class;
use crate::metrics::ModelLabels;
use crate::net;
use crate::store::DoneRecord;

/// A secret salt for a commitment; `None` if the system has no randomness (the job is then handed back:
/// a guessable salt would let the commitment leak the output).
fn random_salt() -> Option<[u8; 32]> {
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).ok()?;
    Some(salt)
}

/// Assigned work not yet revealed that one submitter may have this node hold.
const MAX_HELD_PER_SUBMITTER: usize = 256;

/// Assigned work not yet revealed that this node holds in all.
const MAX_HELD: usize = 4_096;

/// Computed work whose reveal nobody asked for this long is presumed abandoned: its submitter restarted or
/// offered the job again under a fresh offer (reveal requests follow the last commit within seconds). It
/// is kept for a late reveal, but no longer counts toward its submitter's share of [`MAX_HELD_PER_SUBMITTER`],
/// and it is the first to go when [`MAX_HELD`] is reached.
const ABANDONED_AFTER_MS: u64 = 30_000;

/// Work kept in all, revealed included (revealed work stays until its deadline has passed a minute, to
/// answer a repeated reveal request); beyond this the revealed work nearest its deadline is dropped.
const MAX_KEPT: usize = 16_384;

impl Jobs {
    /// An offer seen in gossip: bid on it if the car admits work, this node has capacity and the model
    /// (fetched from peers first if missing).
    pub(super) fn on_offer(&self, offer: JobOffer) {
        if offer.submitter == self.inner.me || now_ms() >= offer.expires_ms {
            return;
        }
        // Only for a payer this node honours (before anything costly: a model fetch, a bid).
        if let Some(why) = self.inner.cfg.payers.refuse(
            &offer.budget.body,
            &offer.submitter,
            offer.reward,
            offer.deadline_ms,
            now_ms(),
        ) {
            self.inner.metrics.offers_unpaid.inc();
            debug!(job = %offer.id().short(), why, "not bidding");
            return;
        }
        // Not while the car is not admitted (an estimate of 0 checks admission alone).
        if let Err(why) = self.inner.car.may_bid(0) {
            debug!(job = %offer.id().short(), %why, "not bidding");
            return;
        }
        // In a large shard only some members bid, so the submitter is not flooded with bids.
        if !self.draws_bid(&offer.id(), &offer.model) {
            return;
        }
        if self.registry().get(&offer.model).is_none() {
            // Fetch the model from peers (the submitter runs it), then bid if the offer is still open.
            let this = self.clone();
            let (model, submitter) = (offer.model, net::peer_id_of(&offer.submitter));
            self.inner
                .share
                .want(model, Some(submitter), move || this.on_offer(offer));
            return;
        }
        let id = offer.id();
        let (est_ms, job_ms) = {
            let mut side = self.worker();
            // Capacity is compute: work still computing, within its deadline. Computed work waiting for
            // its reveal costs nothing (and waits in vain if its submitter restarted and offered the job
            // again under a new offer).
            let now = now_ms();
            let busy = side
                .work
                .values()
                .filter(|w| w.done.is_none() && w.offer.deadline_ms > now)
                .count();
            if busy >= self.inner.cfg.max_active_work || side.offers.contains_key(&id) {
                return;
            }
            // Expected time to finish: the model's mean compute time, behind the jobs still computing here
            // (shared between the executor's workers).
            let ahead = side.work.values().filter(|w| w.done.is_none()).count();
            let per_job = side.compute_ms.get(&offer.model).copied().unwrap_or(10.0);
            let rounds = ahead / self.inner.executor.workers() + 1;
            let est_ms = (per_job * rounds as f64).ceil() as u64;
            if let Err(why) = self.inner.car.may_bid(est_ms) {
                debug!(job = %id.short(), %why, "not bidding");
                return;
            }
            side.offers.insert(id, offer.clone());
            (est_ms, per_job.ceil() as u64)
        };
        let bid = Bid {
            job: id,
            worker: self.inner.me,
            class: numeric_class(),
            price: self.inner.cfg.price_of(self.model_name(&offer.model).as_deref()),
            // The energy of this job alone (the jobs ahead are paid for by their own bids).
            energy_cost: self
                .inner
                .cfg
                .behaviour
                .bid_energy_cost(self.inner.car.bid_energy_cost(job_ms)),
            est_ms: u32::try_from(est_ms).unwrap_or(u32::MAX),
            // The bid stands until the job's deadline, so the submitter can still draw this worker to
            // replace one that went silent after the offer stopped taking bids.
            expires_ms: offer.deadline_ms,
        };
        let Ok(signed) = Signed::sign(bid, &self.inner.key) else {
            return;
        };
        let (net, stopping) = (self.inner.net.clone(), self.inner.stopping.clone());
        // However long the submitter says its offer lasts, this node tries no longer than its own offers last.
        let give_up_ms = offer
            .expires_ms
            .min(now_ms().saturating_add(self.inner.cfg.offer_ttl_ms));
        self.spawn(async move {
            // A bid that cannot reach the submitter (no connection to it yet: it just restarted, or the
            // link is slow to come up) is sent again, backing off from 250 ms, while the offer is open.
            let bytes = codec::encode(&signed);
            let mut backoff = std::time::Duration::from_millis(250);
            loop {
                let Err(e) = net
                    .request(net::peer_id_of(&offer.submitter), bytes.clone())
                    .await
                else {
                    return;
                };
                if now_ms().saturating_add(backoff.as_millis() as u64) >= give_up_ms {
                    debug!(job = %id.short(), error = %e, "bid not delivered");
                    return;
                }
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
        });
    }

    pub(super) async fn on_assignment(&self, a: Assignment) -> Vec<u8> {
        if a.worker != self.inner.me {
            return refuse("assignment for another worker");
        }
        if !self.inner.car.admitted() {
            return refuse("the car is not admitted for work now");
        }
        let cancel = CancelFlag::default();
        // Work dropped to make room (forgotten in the store below).
        let mut dropped: Vec<JobId> = Vec::new();
        let (offer, input, record) = {
            let mut side = self.worker();
            let Some(offer) = side.offers.get(&a.job).cloned() else {
                return refuse("unknown job");
            };
            if offer.submitter != a.submitter {
                return refuse("assignment not from the job's submitter");
            }
            if side.work.contains_key(&a.job) {
                return refuse("already assigned");
            }
            // A submitter that assigns and never asks for the reveals would have this car keep its work
            // (memory, disk) until each job's deadline, which it chooses: unrevealed work is capped per
            // submitter and in all. Work abandoned by its submitter (a restart, a job offered again) does
            // not block that submitter's new work, and goes first when the node holds too much.
            let now = now_ms();
            let waiting = |w: &&Work| {
                !w.revealed
                    && w.done_ms
                        .is_none_or(|t| now.saturating_sub(t) < ABANDONED_AFTER_MS)
            };
            let held = side
                .work
                .values()
                .filter(waiting)
                .filter(|w| w.offer.submitter == a.submitter)
                .count();
            if held >= MAX_HELD_PER_SUBMITTER {
                return refuse("too much unrevealed work held");
            }
            if side.work.values().filter(|w| !w.revealed).count() >= MAX_HELD {
                let mut abandoned: Vec<(u64, JobId)> = side
                    .work
                    .iter()
                    .filter(|(_, w)| !w.revealed && !waiting(w))
                    .map(|(id, w)| (w.done_ms.unwrap_or(0), *id))
                    .collect();
                if abandoned.is_empty() {
                    return refuse("too much unrevealed work held");
                }
                abandoned.sort_unstable();
                abandoned.truncate(MAX_HELD / 8);
                for (_, id) in &abandoned {
                    side.work.remove(id);
                }
                dropped.extend(abandoned.into_iter().map(|(_, id)| id));
            }
            // Revealed work is kept only to answer a repeated reveal request: beyond the cap, the half
            // nearest its deadline goes.
            if side.work.len() >= MAX_KEPT {
                let mut revealed: Vec<(u64, JobId)> = side
                    .work
                    .iter()
                    .filter(|(_, w)| w.revealed)
                    .map(|(id, w)| (w.offer.deadline_ms, *id))
                    .collect();
                revealed.sort_unstable();
                revealed.truncate(revealed.len() / 2 + 1);
                for (_, id) in &revealed {
                    side.work.remove(id);
                }
                dropped.extend(revealed.into_iter().map(|(_, id)| id));
            }
            let JobInput::Inline(input) = offer.input.clone() else {
                return refuse("inputs by content id are not supported yet");
            };
            let work = Work {
                offer: offer.clone(),
                done: None,
                cancel: cancel.clone(),
                revealed: false,
                done_ms: None,
            };
            let record = work.record();
            side.work.insert(a.job, work);
            (offer, input, record)
        };
        if !dropped.is_empty() {
            let store = self.inner.store.clone();
            self.spawn(async move {
                let forgotten = store
                    .off_thread(move |s| dropped.iter().try_for_each(|id| s.remove_work(id)))
                    .await;
                if let Err(e) = forgotten {
                    warn!(error = %e, "cannot forget dropped work");
                }
            });
        }
        let job = a.job;
        if let Err(e) = self
            .inner
            .store
            .off_thread(move |s| s.put_work(&job, &record))
            .await
        {
            warn!(job = %a.job.short(), error = %e, "cannot store the assignment");
            self.worker().work.remove(&a.job);
            return refuse("cannot store the assignment");
        }
        if self.inner.cfg.behaviour.is_silent() {
            return reply(Reply::accepted()); // and never heard of again
        }
        let this = self.clone();
        let span = job_span(a.job, "worker", a.submitter, self.model_name(&offer.model));
        self.spawn(async move { this.compute(a.job, offer, input, cancel).await }.instrument(span));
        reply(Reply::accepted())
    }

    pub(super) async fn compute(&self, job: JobId, offer: JobOffer, input: Vec<u8>, cancel: CancelFlag) {
        if !self.inner.car.admitted() {
            // Work found at a restart (or assigned just as the driver returned) while the car is not
            // admitted: hand it back rather than run it.
            self.withdraw(job, &offer, WithdrawReason::Preempted).await;
            return;
        }
        self.inner.car.work_started();
        let behaviour = self.inner.cfg.behaviour;
        let result = if behaviour.skips_work() {
            Ok(crate::inference::executor::JobOutput {
                outputs: vec![WorkerBehaviour::made_up_output()],
                compute: std::time::Duration::from_micros(1),
            })
        } else {
            // A model that streams (text generation) sends its output so far to the submitter as it goes.
            let sink = self
                .registry()
                .get(&offer.model)
                .filter(|m| m.streams())
                .map(|_| self.partial_sink(job, offer.submitter));
            self.inner
                .executor
                .run_streaming(&offer.model, vec![input], cancel, sink)
                .await
        };
        // Energy from the car's power model (a real car reads its power sensor behind the same call).
        let energy_uwh = result
            .as_ref()
            .ok()
            .map(|out| self.inner.car.job_energy_uwh(out.compute));
        self.inner.car.work_finished(energy_uwh);
        let mut out = match result {
            Ok(out) if out.outputs.len() == 1 => out,
            // Preempted: the job was handed back already.
            Err(crate::inference::InferenceError::Cancelled) => return,
            Ok(_) | Err(_) => {
                self.withdraw(job, &offer, WithdrawReason::ModelUnavailable).await;
                return;
            }
        };
        let mut output = out.outputs.remove(0);
        behaviour.corrupt(&mut output, OsRandom.unit());
        let compute_us = out.compute.as_micros() as u64;
        self.inner.metrics.work_done.inc();
        if let Some(name) = self.model_name(&offer.model) {
            self.inner
                .metrics
                .inference_seconds
                .get_or_create(&ModelLabels { model: name })
                .observe(out.compute.as_secs_f64());
        }
        let energy_uwh = energy_uwh.unwrap_or(1);
        {
            let ms = out.compute.as_secs_f64() * 1e3;
            let mut side = self.worker();
            let mean = side.compute_ms.entry(offer.model).or_insert(ms);
            *mean = 0.8 * *mean + 0.2 * ms;
        }
        let Some(salt) = random_salt() else {
            self.withdraw(job, &offer, WithdrawReason::Overloaded).await;
            return;
        };
        let done = DoneRecord {
            output,
            salt,
            compute_us,
            energy_uwh,
        };
        let record = {
            let mut side = self.worker();
            let Some(w) = side.work.get_mut(&job) else {
                return; // handed back meanwhile
            };
            w.done = Some(done.clone());
            w.done_ms = Some(now_ms());
            w.record()
        };
        // The salt must survive a crash before the commitment leaves, or the output could never be revealed.
        let stored = match self
            .inner
            .store
            .off_thread(move |s| s.put_work(&job, &record))
            .await
        {
            Ok(()) => self.inner.store.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            warn!(job = %job.short(), error = %e, "cannot store the result; handing the job back");
            self.withdraw(job, &offer, WithdrawReason::Overloaded).await;
            return;
        }
        self.send_commit(job, offer.submitter, offer.deadline_ms, &done)
            .await;
    }

    /// Sends the signed commitment to a computed result to the job's submitter; a commit that cannot be
    /// delivered (the submitter is restarting, or unreachable for a moment) is sent again, backing off from
    /// 250 ms to 4 s, until it is delivered, the job's `deadline_ms` passes or the work is handed back.
    pub(super) async fn send_commit(
        &self,
        job: JobId,
        submitter: NodeId,
        deadline_ms: u64,
        done: &DoneRecord,
    ) {
        let commit = ResultCommit {
            job,
            worker: self.inner.me,
            commitment: ResultCommit::commitment_for(&job, &self.inner.me, &done.output, &done.salt),
        };
        let Ok(signed) = Signed::sign(commit, &self.inner.key) else {
            return;
        };
        let bytes = codec::encode(&signed);
        let mut backoff = std::time::Duration::from_millis(250);
        loop {
            let e = match self
                .inner
                .net
                .request(net::peer_id_of(&submitter), bytes.clone())
                .await
            {
                Ok(answer) => {
                    // Refused: the submitter replaced this worker (it timed out, or its connection
                    // dropped) or the job is over. The work is dropped, so it takes no capacity.
                    if let Ok(Reply { code, detail }) = codec::decode::<Reply>(&answer)
                        && code == ReplyCode::Refused
                    {
                        debug!(job = %job.short(), %detail, "commit refused; dropping the work");
                        if let Some(w) = self.worker().work.remove(&job) {
                            w.cancel.cancel();
                        }
                        if let Err(e) = self.inner.store.off_thread(move |s| s.remove_work(&job)).await {
                            warn!(job = %job.short(), error = %e, "cannot forget refused work");
                        }
                    }
                    return;
                }
                Err(e) => e,
            };
            let late = now_ms().saturating_add(backoff.as_millis() as u64) >= deadline_ms;
            if late || !self.worker().work.contains_key(&job) {
                debug!(job = %job.short(), error = %e, "commit not delivered; giving up");
                return;
            }
            debug!(job = %job.short(), error = %e, retry_in_ms = backoff.as_millis() as u64, "commit not delivered");
            tokio::select! {
                // The result stays on disk: the commit goes out again at the next start.
                _ = self.inner.stopping.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(4));
        }
    }

    /// Hands back every job this worker has not finished computing, because the car left admission: each
    /// running or queued inference is cancelled and a signed [`Withdraw`] (reason `Preempted`) goes to its
    /// submitter, who reassigns the job; no claim is ever made for it, so no credit is paid. Results already
    /// computed are kept (revealing them costs the car nothing). Returns how many jobs were handed back,
    /// once every withdrawal was delivered (or failed).
    pub async fn preempt(&self) -> usize {
        let started = std::time::Instant::now();
        // Taken out (and cancelled) at once, so that a second preemption does not hand them back again.
        let running = self.take_unfinished();
        let n = running.len();
        if n == 0 {
            return 0;
        }
        self.inner.car.count_preempted(n as u64);
        self.inner.metrics.preemptions.inc_by(n as u64);
        futures::future::join_all(
            running
                .iter()
                .map(|(job, offer)| self.withdraw(*job, offer, WithdrawReason::Preempted)),
        )
        .await;
        tracing::info!(
            jobs = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "preempted: work handed back"
        );
        n
    }

    /// Takes every job still computing out of the work map and cancels it.
    fn take_unfinished(&self) -> Vec<(JobId, JobOffer)> {
        let mut side = self.worker();
        let ids: Vec<JobId> = side
            .work
            .iter()
            .filter(|(_, w)| w.done.is_none())
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let w = side.work.remove(&id)?;
                w.cancel.cancel();
                Some((id, w.offer))
            })
            .collect()
    }

    /// The node stops: every job still computing is cancelled and handed back with a signed [`Withdraw`]
    /// (reason `Shutdown`) so its submitter reassigns it at once instead of waiting for a timeout; then
    /// every task of the job roles (verdicts being stored among them) gets the rest of `limit` to finish,
    /// and the store is flushed. Computed results stay on disk and are committed again at the next start.
    pub async fn shutdown(&self, limit: std::time::Duration) {
        self.inner.stopping.cancel();
        let deadline = tokio::time::Instant::now() + limit;
        let running = self.take_unfinished();
        if !running.is_empty() {
            let all = futures::future::join_all(
                running
                    .iter()
                    .map(|(job, offer)| self.withdraw(*job, offer, WithdrawReason::Shutdown)),
            );
            if tokio::time::timeout_at(deadline, all).await.is_err() {
                warn!(
                    jobs = running.len(),
                    "stopping before every withdrawal was delivered"
                );
            } else {
                tracing::info!(jobs = running.len(), "stopping: unfinished work handed back");
            }
        }
        self.inner.tasks.close();
        if tokio::time::timeout_at(deadline, self.inner.tasks.wait())
            .await
            .is_err()
        {
            debug!(
                tasks = self.inner.tasks.len(),
                "stopping with tasks still running"
            );
        }
        if tokio::time::timeout_at(deadline, self.inner.receipts.sync())
            .await
            .is_err()
        {
            debug!("stopping before every received receipt was written");
        }
        if let Err(e) = self.inner.store.flush().await {
            warn!(error = %e, "cannot flush the store while stopping");
        }
    }

    /// Hands a job back to its submitter (preemption, failure) with a signed [`Withdraw`].
    pub async fn withdraw(&self, job: JobId, offer: &JobOffer, reason: WithdrawReason) {
        if let Some(w) = self.worker().work.remove(&job) {
            w.cancel.cancel();
        }
        if let Err(e) = self.inner.store.off_thread(move |s| s.remove_work(&job)).await {
            warn!(job = %job.short(), error = %e, "cannot forget handed-back work");
        }
        let w = Withdraw {
            job,
            worker: self.inner.me,
            reason,
            at_ms: now_ms(),
        };
        if let Ok(signed) = Signed::sign(w, &self.inner.key) {
            let _ = self
                .inner
                .net
                .request(net::peer_id_of(&offer.submitter), codec::encode(&signed))
                .await;
        }
    }

    pub(super) async fn on_reveal_request(&self, r: RevealRequest) -> Vec<u8> {
        if r.worker != self.inner.me {
            return refuse("reveal request for another worker");
        }
        let (done, model, record) = {
            let mut side = self.worker();
            let Some(work) = side.work.get_mut(&r.job) else {
                return refuse("unknown job");
            };
            if work.offer.submitter != r.submitter {
                return refuse("reveal request not from the job's submitter");
            }
            let Some(done) = work.done.clone() else {
                return refuse("not computed yet");
            };
            work.revealed = true;
            (done, work.offer.model, work.record())
        };
        let stored = record.clone();
        if let Err(e) = self
            .inner
            .store
            .off_thread(move |s| s.put_work(&r.job, &stored))
            .await
        {
            warn!(job = %r.job.short(), error = %e, "cannot store the reveal");
        }
        let reveal = ResultReveal {
            job: r.job,
            worker: self.inner.me,
            output: done.output.clone(),
            salt: done.salt,
            compute_us: done.compute_us,
            energy_uwh: done.energy_uwh,
        };
        let claim = WorkClaim {
            job: r.job,
            model,
            worker: self.inner.me,
            submitter: r.submitter,
            output_digest: *blake3::hash(&done.output).as_bytes(),
            compute_us: done.compute_us,
            energy_uwh: done.energy_uwh,
            claimed_credit: self
                .inner
                .cfg
                .price_of(self.model_name(&model).as_deref())
                .saturating_mul(
                    self.registry()
                        .get(&model)
                        .map_or(1, |m| m.output_units(&done.output)),
                ),
            claimed_ms: now_ms(),
        };
        if let Some(forged) = self.inner.cfg.behaviour.forged_receipt(
            claim.clone(),
            record.offer.budget.clone(),
            &self.inner.key,
        ) {
            // Handed to the job's submitter as if it were a receipt for this worker: refused there.
            let (net, submitter) = (self.inner.net.clone(), crate::net::peer_id_of(&r.submitter));
            self.spawn(async move {
                let _ = net.request(submitter, codec::encode(&forged)).await;
            });
        }
        match (
            Signed::sign(reveal, &self.inner.key),
            Signed::sign(claim, &self.inner.key),
        ) {
            (Ok(reveal), Ok(claim)) => codec::encode(&WorkReport { reveal, claim }),
            _ => refuse("cannot sign"),
        }
    }

    /// Forgets offers and finished work whose deadline passed a minute ago.
    pub(super) fn forget_old_work(&self, now: u64) {
        let expired: Vec<JobId> = {
            let mut side = self.worker();
            side.offers
                .retain(|_, o| o.deadline_ms.saturating_add(60_000) > now);
            let expired: Vec<JobId> = side
                .work
                .iter()
                .filter(|(_, w)| w.offer.deadline_ms.saturating_add(60_000) <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                side.work.remove(id);
            }
            expired
        };
        if expired.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        self.spawn(async move {
            let forgotten = store
                .off_thread(move |s| expired.iter().try_for_each(|id| s.remove_work(id)))
                .await;
            if let Err(e) = forgotten {
                warn!(error = %e, "cannot forget old work");
            }
        });
    }
}
