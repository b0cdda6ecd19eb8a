//! The submitter role, the node's half: offers jobs (signed, durable, gossiped), feeds what arrives to the
//! sans-IO [`Submitter`](fleetmesh_consensus::submitter::Submitter) core and carries out its actions:
//! assignments and reveal requests over request-response, wake-ups at the end of bid windows, and for a
//! decided job the countersigned receipts, stored before the job's waiters hear of it and then sent to
//! their workers (and to nobody else: each party keeps its own receipts).

use fleetmesh_consensus::job::Outcome;
use fleetmesh_consensus::submitter::{
    Action, JobResult, Recheck, Replication, SubmitError, UNTRUSTED_QUORUM,
};
use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{
    AgreementRule, Assignment, Bid, JobInput, JobOffer, Receipt, Reply, ReplyCode, RevealRequest, WorkReport,
};
use fleetmesh_protocol::{JobId, ModelId, NodeId, Signed};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, warn};

use super::views::receipt_id;
use super::{Jobs, OsRandom, Submitted, job_span, now_ms};
use crate::metrics::OutcomeLabels;
use crate::net;
use crate::store::SubmittedRecord;

/// Longest idempotency key a client may give a submission.
pub const MAX_SUBMIT_KEY: usize = 128;

/// Why a job could not be submitted, or its verdict not be had.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The idempotency key is empty or too long.
    #[error("an idempotency key is 1 to {MAX_SUBMIT_KEY} bytes")]
    BadKey,
    /// None of this node's budgets has enough left to pay the job's workers.
    #[error(
        "no budget to pay this job: this node holds {held} budget(s) and none has {needed} micro-credits \
         left until the deadline (a payer issues one with `fleetmesh budget issue`; list it under [jobs] \
         budgets or pass --budget)"
    )]
    NoBudget {
        /// Budgets this node holds.
        held: usize,
        /// Micro-credits the job may cost.
        needed: u64,
    },
    /// The offer did not make a valid message (too large an input, say).
    #[error("the offer is not valid: {0}")]
    Offer(#[from] fleetmesh_protocol::codec::DecodeError),
    /// The offer could not be signed.
    #[error("cannot sign the offer: {0}")]
    Sign(#[from] fleetmesh_protocol::signing::VerifyError),
    /// The system gave no randomness for the offer's nonce.
    #[error("no system randomness: {0}")]
    Random(#[from] getrandom::Error),
    /// The job could not be made durable.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The mesh did not take the offer.
    #[error("cannot publish the offer: {0}")]
    Publish(#[from] crate::net::NetError),
    /// No job of that id was submitted from this node.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// The node stopped before the job was decided.
    #[error("the node stopped before the job was decided")]
    Stopped,
}

impl Jobs {
    /// Offers a job to the fleet: signs and gossips the offer. Returns its id; see [`Jobs::wait`].
    ///
    /// The job is on disk before this returns: a restart after `kill -9` offers it again.
    pub async fn submit(&self, model: ModelId, input: Vec<u8>, replicas: u8) -> Result<JobId, JobsError> {
        self.submit_with(model, input, replicas.max(1), false, None).await
    }

    /// Offers a job whose replication this node chooses: adaptive (see
    /// [`JobsConfig::adaptive`](super::JobsConfig::adaptive)) if enabled, two replicas otherwise.
    pub async fn submit_auto(&self, model: ModelId, input: Vec<u8>) -> Result<JobId, JobsError> {
        match self.inner.cfg.adaptive {
            // The offer asks for one replica: workers cannot tell a job that runs alone from a checked one.
            Some(_) => self.submit_with(model, input, 1, true, None).await,
            None => self.submit(model, input, 2).await,
        }
    }

    /// Submits a job once per client-chosen idempotency `key`: the first call offers it (with `replicas`,
    /// or replication chosen by this node when `None`), every later call with the same key returns the
    /// same job (also after a restart), so a client that retries after a dropped connection never gets
    /// a second job. Returns the job and whether it was submitted by an earlier call.
    pub async fn submit_once(
        &self,
        key: &str,
        model: ModelId,
        input: Vec<u8>,
        replicas: Option<u8>,
    ) -> Result<(JobId, bool), JobsError> {
        if key.is_empty() || key.len() > MAX_SUBMIT_KEY {
            return Err(JobsError::BadKey);
        }
        // One keyed submission at a time, so two concurrent retries cannot both submit.
        let _one = self.inner.keyed.lock().await;
        let k = key.to_string();
        let known = self
            .inner
            .store
            .off_thread(move |s| Ok(s.submit_key(&k).map(|id| (id, s.submitted_one(&id).is_some()))))
            .await?;
        if let Some((id, stored)) = known
            && (stored || self.submitter().jobs.contains_key(&id))
        {
            return Ok((id, true));
        }
        let (replicas, adaptive) = match (replicas, self.inner.cfg.adaptive) {
            (Some(r), _) => (r.max(1), false),
            (None, Some(_)) => (1, true),
            (None, None) => (2, false),
        };
        let id = self
            .submit_with(model, input, replicas, adaptive, Some(key))
            .await?;
        Ok((id, false))
    }

    async fn submit_with(
        &self,
        model: ModelId,
        input: Vec<u8>,
        replicas: u8,
        adaptive: bool,
        key: Option<&str>,
    ) -> Result<JobId, JobsError> {
        let rule = self
            .registry()
            .get(&model)
            .map_or(AgreementRule::Exact, |m| m.manifest().rule);
        self.paced().await;
        let peers = self.inner.net.connected_peers();
        if peers < UNTRUSTED_QUORUM
            && !self.inner.cfg.small_fleet
            && !self
                .inner
                .warned_small_fleet
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(
                peers,
                "fewer than three peers: a job needs a trusted worker or three agreeing new ones, so jobs may \
                 wait for more cars (a testnet of one owner can set [jobs] small_fleet = true)"
            );
        }
        let offer = self.new_offer(model, JobInput::Inline(input), rule, replicas)?;
        let id = offer.id();
        if let Err(e) = self
            .offer(id, offer, adaptive, key.map(str::to_string), None)
            .await
        {
            self.forget(id).await;
            return Err(e);
        }
        self.inner.metrics.jobs_submitted.inc();
        Ok(id)
    }

    /// Waits until this node may publish another offer under its pace ([`JobsConfig::offers_per_s`]):
    /// an offer faster than the fleet takes would be dropped on its way and its job starve. The offer
    /// is made after the wait, so its times start when it leaves.
    pub(super) async fn paced(&self) {
        let cfg = &self.inner.cfg;
        // A little under the fleet's limit, so that jitter on the way does not push offers over it.
        let (rate, burst) = (
            0.9 * cfg.offers_per_s.max(0.001),
            (0.9 * cfg.offer_burst).max(1.0),
        );
        let mut bucket = self.inner.pacer.lock().await;
        loop {
            let now = std::time::Instant::now();
            bucket.0 = (bucket.0 + rate * now.duration_since(bucket.1).as_secs_f64()).min(burst);
            bucket.1 = now;
            if bucket.0 >= 1.0 {
                bucket.0 -= 1.0;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs_f64((1.0 - bucket.0) / rate)).await;
        }
    }

    /// A fresh offer (new nonce and times) signed by this node.
    pub(super) fn new_offer(
        &self,
        model: ModelId,
        input: JobInput,
        rule: AgreementRule,
        replicas: u8,
    ) -> Result<JobOffer, JobsError> {
        let now = now_ms();
        let cfg = &self.inner.cfg;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)?;
        // The price is per unit of work (per job, or per generated token): the reward covers the most the
        // job may take; each agreeing worker is paid for the units the accepted output took (the least
        // claim, capped by the core's `CreditCap` set in `Jobs::new`).
        let units = match (&input, self.registry().get(&model)) {
            (JobInput::Inline(bytes), Some(m)) => m.max_units(bytes).max(1),
            _ => 1,
        };
        let reward = cfg
            .price_of(self.model_name(&model).as_deref())
            .saturating_mul(units);
        let deadline_ms = now + cfg.deadline_ms;
        // Enough left for every worker the job may draw, picked and set aside in one step, so offers
        // made at the same time cannot count on one credit; given back below if the offer is not made.
        let budget = {
            let mut side = self.submitter();
            let taken = side.core.take_budget(&cfg.budgets, reward, replicas, deadline_ms);
            taken.ok_or_else(|| JobsError::NoBudget {
                held: cfg.budgets.len(),
                needed: side.core.reservation(reward, replicas),
            })?
        };
        let offer = JobOffer {
            submitter: self.inner.me,
            nonce: u64::from_le_bytes(nonce),
            model,
            input,
            rule,
            replicas,
            reward,
            created_ms: now,
            expires_ms: now + cfg.offer_ttl_ms,
            deadline_ms,
            budget,
        };
        if let Err(e) = codec::encode_checked(&offer) {
            self.give_back(&offer);
            return Err(e.into());
        }
        Ok(offer)
    }

    /// Gives back the credit [`Jobs::new_offer`] set aside for an offer that is not made after all.
    pub(super) fn give_back(&self, offer: &JobOffer) {
        self.submitter()
            .core
            .give_back(&offer.budget.body, offer.reward, offer.replicas);
    }

    /// Records `offer` as the one in force for the job its user knows as `original` (submitted under the
    /// idempotency `key`, if any), makes that durable, then gossips it.
    pub(super) async fn offer(
        &self,
        original: JobId,
        offer: JobOffer,
        adaptive: bool,
        key: Option<String>,
        recheck: Option<Recheck>,
    ) -> Result<(), JobsError> {
        let id = offer.id();
        let signed = match Signed::sign(offer.clone(), &self.inner.key) {
            Ok(signed) => signed,
            Err(e) => {
                self.give_back(&offer);
                return Err(e.into());
            }
        };
        let record = SubmittedRecord {
            offer: offer.clone(),
            adaptive,
            result: None,
        };
        // The idempotency key, if any, is on disk with the job (the flush below writes both) before
        // anyone sees the job.
        let stored = self
            .inner
            .store
            .off_thread(move |s| {
                if let Some(key) = &key {
                    s.put_submit_key(key, &original)?;
                }
                s.put_submitted(&original, &record)
            })
            .await;
        if let Err(e) = stored {
            self.give_back(&offer);
            return Err(e.into());
        }
        {
            let mut side = self.submitter();
            let replication = if adaptive && self.inner.cfg.adaptive.is_some() {
                Replication::Adaptive
            } else {
                Replication::Fixed
            };
            side.core.offer_reserved(original, offer.clone(), replication);
            if let Some(recheck) = recheck {
                side.core.mark_recheck(&id, recheck);
            }
            let waiters = match side.jobs.remove(&original) {
                Some(old) => {
                    side.by_offer.remove(&old.offer.id());
                    old.waiters
                }
                None => Vec::new(),
            };
            side.by_offer.insert(id, original);
            side.jobs.insert(
                original,
                Submitted {
                    offer,
                    adaptive,
                    receipt_ids: Vec::new(),
                    waiters,
                    result: None,
                    revised: None,
                },
            );
        }
        self.inner.store.flush().await?;
        // Enough reachable members of the model's shard for the replicas and a spare, or the offer also
        // goes where cars without the model see it.
        let needed = usize::from(signed.body.replicas).max(2) + 1;
        self.publish_offer(signed.body.model, needed, codec::encode(&signed))
            .await?;
        Ok(())
    }

    /// Drops a job whose offer could not be published.
    pub(super) async fn forget(&self, original: JobId) {
        {
            let mut side = self.submitter();
            if let Some(sub) = side.jobs.remove(&original) {
                let id = sub.offer.id();
                side.by_offer.remove(&id);
                side.core.forget(&id);
            }
            side.rechecks.remove(&original);
        }
        let _ = self
            .inner
            .store
            .off_thread(move |s| {
                s.remove_recheck(&original)?;
                s.remove_submitted(&original)
            })
            .await;
    }

    /// Offers the jobs queued for it again, under fresh offers: those found unfinished at start (once the
    /// mesh has peers to take them), and those whose offer drew too few bidders.
    pub(super) fn reoffer(&self) {
        type Todo = (JobId, JobOffer, bool, Option<Recheck>);
        let todo: Vec<Todo> = {
            let mut side = self.submitter();
            if side.to_reoffer.is_empty() || side.reoffering {
                return;
            }
            side.reoffering = true;
            let ids = std::mem::take(&mut side.to_reoffer);
            ids.into_iter()
                .filter_map(|id| {
                    let recheck = side.rechecks.get(&id).copied();
                    side.jobs
                        .get(&id)
                        .map(|s| (id, s.offer.clone(), s.adaptive, recheck))
                })
                .collect()
        };
        let this = self.clone();
        self.spawn(async move {
            let mut left = Vec::new();
            let mut done = 0usize;
            for (original, old, adaptive, recheck) in todo {
                // A job stored as adaptive, with adaptive replication now switched off, gets two replicas
                // (its offer asked for one: alone it would run unchecked).
                let (replicas, adaptive) = match (adaptive, this.inner.cfg.adaptive) {
                    (true, None) => (old.replicas.max(2), false),
                    (a, _) => (old.replicas, a),
                };
                this.paced().await;
                // What the old offer set aside goes back to its budget, for the fresh offer to take.
                this.submitter().core.release(&old.id());
                let offered = match this.new_offer(old.model, old.input.clone(), old.rule, replicas) {
                    Ok(fresh) => this.offer(original, fresh, adaptive, None, recheck).await,
                    Err(e) => {
                        // Not offered again: the old offer keeps its credit set aside.
                        this.submitter().core.hold(&old.id());
                        Err(e)
                    }
                };
                match offered {
                    Ok(()) => done += 1,
                    Err(e) => {
                        debug!(job = %original.short(), error = %e, "cannot offer the job again yet");
                        left.push(original);
                    }
                }
            }
            if done > 0 {
                tracing::info!(jobs = done, "unfinished jobs offered again");
            }
            let mut side = this.submitter();
            side.to_reoffer.extend(left);
            side.reoffering = false;
        });
    }

    /// Waits for the verdict of a job this node submitted (by the id its user knows, or its current offer's).
    pub async fn wait(&self, job: JobId) -> Result<JobResult, JobsError> {
        let (original, rx) = {
            let mut side = self.submitter();
            let original = side.by_offer.get(&job).copied().unwrap_or(job);
            match side.jobs.get_mut(&original) {
                Some(sub) => {
                    if let Some(result) = &sub.result {
                        return Ok(result.clone());
                    }
                    let (tx, rx) = oneshot::channel();
                    sub.waiters.push(tx);
                    (original, Some(rx))
                }
                None => (original, None),
            }
        };
        match rx {
            Some(rx) => rx.await.map_err(|_| JobsError::Stopped),
            // Decided long ago: its verdict left memory but not the store.
            None => self
                .inner
                .store
                .off_thread(move |s| Ok(s.submitted_one(&original).and_then(|r| r.result)))
                .await?
                .ok_or(JobsError::UnknownJob(job)),
        }
    }

    /// A bid for a job this node submitted, handed to the core with the number of connected peers as the
    /// count of bids that closes its window early.
    pub(super) fn on_bid(&self, bid: Bid, now: u64) -> Result<(), String> {
        let enough = self.inner.net.connected_peers().max(1);
        let actions = self
            .submitter()
            .core
            .on_bid(bid, now, enough, &mut OsRandom)
            .map_err(|e| e.to_string())?;
        self.act_all(actions);
        Ok(())
    }

    /// Carries out the core's actions.
    pub(super) fn act_all(&self, actions: Vec<Action>) {
        for action in actions {
            self.act(action);
        }
    }

    fn act(&self, action: Action) {
        match action {
            Action::Assign {
                job,
                worker,
                commit_by_ms,
            } => self.assign(job, worker, commit_by_ms),
            Action::RequestReveal { job, worker } => self.request_reveal(job, worker),
            Action::WakeAt { job, at_ms } => {
                let this = self.clone();
                self.spawn(async move {
                    let wait = at_ms.saturating_sub(now_ms());
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    let actions = this.submitter().core.on_wake(job, now_ms(), &mut OsRandom);
                    this.act_all(actions);
                });
            }
            Action::Decide {
                job,
                result,
                receipts,
            } => self.finish(job, result, receipts),
            Action::Recheck {
                job,
                rejection,
                recheck,
            } => self.recheck(job, *rejection, recheck),
            Action::Revise {
                job,
                recheck,
                output,
                agreeing,
            } => self.revise(job, recheck, output, agreeing),
            Action::Reoffer { job, original } => {
                debug!(job = %original.short(), "too few cars bid; offering the job again");
                {
                    let mut side = self.submitter();
                    if side.jobs.get(&original).is_none_or(|s| s.offer.id() != job) {
                        return;
                    }
                    side.to_reoffer.push(original);
                }
                self.reoffer();
            }
        }
    }

    fn assign(&self, job: JobId, worker: NodeId, commit_by_ms: u64) {
        let assignment = Assignment {
            job,
            submitter: self.inner.me,
            worker,
            commit_by_ms,
        };
        let Ok(signed) = Signed::sign(assignment, &self.inner.key) else {
            return;
        };
        let this = self.clone();
        self.spawn(
            async move {
                let answer = this
                    .inner
                    .net
                    .request(net::peer_id_of(&worker), codec::encode(&signed))
                    .await;
                let accepted = matches!(
                    answer.as_deref().map(codec::decode::<Reply>),
                    Ok(Ok(Reply {
                        code: ReplyCode::Accepted,
                        ..
                    }))
                );
                if !accepted {
                    debug!("assignment not taken; replacing the worker");
                    let actions = this.submitter().core.on_assignment_refused(job, worker, now_ms());
                    this.act_all(actions);
                }
            }
            .instrument(job_span(job, "submitter", worker, None)),
        );
    }

    fn request_reveal(&self, job: JobId, worker: NodeId) {
        let request = RevealRequest {
            job,
            submitter: self.inner.me,
            worker,
        };
        let Ok(signed) = Signed::sign(request, &self.inner.key) else {
            return;
        };
        let this = self.clone();
        self.spawn(
            async move {
                // Asked again (until the reveal deadline ends the slot) if the worker cannot be reached or
                // has no result at hand: a worker restarting after a crash reveals from its store.
                while this.submitter().core.reveal_due(&job, &worker) {
                    match this
                        .inner
                        .net
                        .request(net::peer_id_of(&worker), codec::encode(&signed))
                        .await
                    {
                        Ok(bytes) if codec::decode::<WorkReport>(&bytes).is_ok() => {
                            this.on_work_report(job, worker, &bytes).await;
                            return;
                        }
                        Ok(_) => debug!("worker could not reveal yet"),
                        Err(e) => debug!(error = %e, "reveal request failed"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            .instrument(job_span(job, "submitter", worker, None)),
        );
    }

    async fn on_work_report(&self, job: JobId, worker: NodeId, bytes: &[u8]) {
        let report = match codec::decode::<WorkReport>(bytes) {
            Ok(r) if r.reveal.body.job == job && r.reveal.body.worker == worker => r,
            _ => {
                warn!(job = %job.short(), worker = %worker.short(), "invalid work report");
                return;
            }
        };
        if report.reveal.verify().is_err() || report.claim.verify().is_err() {
            warn!(job = %job.short(), worker = %worker.short(), "work report with a bad signature");
            return;
        }
        let refuted = self.refutation(job, &report.reveal.body.output).await;
        let result = match refuted {
            Some(why) => {
                warn!(job = %job.short(), worker = %worker.short(), %why, "output refuted by this node's own check");
                self.inner.metrics.refuted.inc();
                self.submitter()
                    .core
                    .on_refuted_report(&report.reveal.body, report.claim, now_ms())
            }
            None => self
                .submitter()
                .core
                .on_report(&report.reveal.body, report.claim, now_ms()),
        };
        match result {
            Ok(actions) => self.act_all(actions),
            Err(SubmitError::UnknownJob) => debug!(job = %job.short(), "work report after the verdict"),
            Err(e) => warn!(job = %job.short(), worker = %worker.short(), error = %e, "work report refused"),
        }
    }

    /// Longest wait for a turn to check a revealed output ([`Jobs::refutation`]).
    const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

    /// Why `output`, revealed for the offer `job`, cannot be what the job's model produced, by the
    /// model's own check ([`crate::inference::Model::verify_output`]: a generation scored by one pass over
    /// prompt and claimed tokens) where this node has the model and the verdict may rest on this one
    /// output (outputs of several replicas are checked by their agreement; a check costs about a tenth
    /// of a generation); `None` when it passes or is not checked here. One check at a time, off the
    /// async threads.
    async fn refutation(&self, job: JobId, output: &[u8]) -> Option<String> {
        let offer = {
            let side = self.submitter();
            if !side.core.rests_on_one(&job) {
                return None;
            }
            side.core.offer_of(&job)?.clone()
        };
        let JobInput::Inline(input) = offer.input else {
            return None;
        };
        let model = self
            .registry()
            .get(&offer.model)
            .filter(|m| m.verifies_outputs())?;
        // Waiting long for a turn would let the reveal deadline pass on an honest worker: beyond a short
        // wait the output goes unchecked (as where this node lacks the model).
        let Ok(Ok(_turn)) = tokio::time::timeout(Self::CHECK_WAIT, self.inner.checks.acquire()).await else {
            debug!(job = %job.short(), "no turn to check a revealed output in time; unchecked");
            return None;
        };
        let output = output.to_vec();
        let started = std::time::Instant::now();
        let verdict = tokio::task::spawn_blocking(move || model.verify_output(&input, &output))
            .await
            .ok()??;
        debug!(job = %job.short(), ms = started.elapsed().as_millis() as u64, ok = verdict.is_ok(), "revealed output checked");
        verdict.err()
    }

    /// A decided job: countersigns its receipts and stores them with the verdict off the async threads,
    /// flushes, then wakes the waiters and sends each receipt to its worker.
    fn finish(&self, job: JobId, result: JobResult, bodies: Vec<Receipt>) {
        let outcome = match &result.outcome {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Failed(_) => "failed",
        };
        tracing::info!(
            job = %result.job.short(),
            outcome,
            reason = ?match &result.outcome { Outcome::Failed(r) => Some(*r), _ => None },
            workers = result.workers_assigned,
            receipts = result.receipts,
            "verdict"
        );
        self.inner
            .metrics
            .verdicts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        let this = self.clone();
        self.spawn(async move {
            let original = result.job;
            let record = {
                let side = this.submitter();
                // Only for the offer in force (a decision for an offer replaced meanwhile is not stored).
                side.jobs
                    .get(&original)
                    .filter(|s| s.offer.id() == job)
                    .map(|s| SubmittedRecord {
                        offer: s.offer.clone(),
                        adaptive: s.adaptive,
                        result: Some(result.clone()),
                    })
            };
            // A recheck decided under the offer in force is one no longer.
            let recheck_done = record.is_some() && this.submitter().rechecks.remove(&original).is_some();
            let (store, key) = (this.inner.store.clone(), this.inner.key.clone());
            let signed = tokio::task::spawn_blocking(move || {
                if recheck_done && let Err(e) = store.remove_recheck(&original) {
                    warn!(job = %job.short(), error = %e, "cannot forget a decided recheck");
                }
                let receipts: Vec<Signed<Receipt>> = bodies
                    .into_iter()
                    .filter_map(|b| Signed::sign(b, &key).ok())
                    .collect();
                if let Some(record) = &record
                    && let Err(e) = store.put_submitted(&original, record)
                {
                    warn!(job = %job.short(), error = %e, "cannot store the verdict");
                }
                let mut stored = true;
                for r in &receipts {
                    if let Err(e) = store.put_receipt(r).and_then(|_| store.put_undelivered(r)) {
                        warn!(job = %job.short(), error = %e, "cannot store a receipt");
                        stored = false;
                    }
                }
                (receipts, stored)
            })
            .await;
            let (receipts, mut stored) = match signed {
                Ok(receipts) => receipts,
                Err(e) => {
                    // Nothing was stored: nobody may hear of this verdict (waiters see the job dropped).
                    warn!(job = %job.short(), error = %e, "the task storing the verdict failed");
                    return;
                }
            };
            // Durable before anyone hears of it: a verdict a user saw survives a crash.
            if let Err(e) = this.inner.store.flush().await {
                warn!(job = %job.short(), error = %e, "cannot flush the verdict");
                stored = false;
            }
            this.keep_receipts(receipts.iter().cloned()).await;
            let waiters = {
                let mut side = this.submitter();
                match side.jobs.get_mut(&original) {
                    Some(sub) if sub.offer.id() == job => {
                        sub.result = Some(result.clone());
                        sub.receipt_ids = receipts.iter().map(receipt_id).collect();
                        let waiters = std::mem::take(&mut sub.waiters);
                        side.decided(original);
                        waiters
                    }
                    _ => Vec::new(),
                }
            };
            for tx in waiters {
                let _ = tx.send(result.clone());
            }
            // A receipt that is not on disk never leaves: after a restart its number would be used again,
            // and two receipts with one number void the budget.
            if !stored {
                warn!(job = %job.short(), "receipts not sent: they could not be stored");
                return;
            }
            for r in receipts {
                this.deliver(r);
            }
        });
    }
}
