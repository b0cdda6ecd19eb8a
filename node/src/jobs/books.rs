//! This node's books ([`fleetmesh_consensus::books`]): each receipt it issues goes to its worker (and to
//! nobody else), again until the worker has it stored; once an epoch has ended (and a grace for late
//! receipts has passed), the receipts it is party to from that epoch are sealed under a signed Merkle
//! root, stored, and published in the DHT; the pages of its claim (receipts with inclusion paths) are
//! served to anyone who asks; and another node's claim is checked page by page against the roots that
//! node published, then kept for the API.

use std::collections::{BTreeMap, HashMap};

use fleetmesh_consensus::books::{self, ClaimCheck, ClaimError, Tree};
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::messages::{
    ClaimEntry, ClaimPage, ClaimRequest, EpochRoot, MAX_CLAIM_PAGE, Receipt, Reply, ReplyCode,
};
use fleetmesh_protocol::{NodeId, Signed};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::{Jobs, lock, now_ms};
use crate::net::{self, records};

/// Most pages one claim check reads (each up to [`MAX_CLAIM_PAGE`] receipts: at most 65,536 receipts,
/// about 60 MB, held while a claim is checked); a longer claim is checked from a later start.
const MAX_CLAIM_PAGES: usize = 256;
/// Most checked claims kept for the API (the oldest check goes first).
const MAX_CHECKED: usize = 1_024;
/// Longest wait after an epoch's end before it is sealed (receipts still on their way get this long).
const MAX_GRACE_MS: u64 = 60_000;

/// Why another node's claim could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The claim was refused: it does not hold up against the node's published roots.
    #[error("claim refused: {0}")]
    Refused(#[from] ClaimError),
    /// The node could not be asked.
    #[error("cannot ask {node} for its claim: {reason}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The node answered with something that is not a page of its claim.
    #[error("{node} answered with something that is not a claim page: {reason}")]
    Malformed {
        /// The node.
        node: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// The claim has more than [`MAX_CLAIM_PAGES`] pages.
    #[error("the claim has more than {MAX_CLAIM_PAGES} pages; ask for a later start")]
    TooLong,
    /// A node checks others' claims, not its own.
    #[error("this is the node's own id: its balance is in /v1/earnings")]
    Own,
}

/// Another node's claim, as this node checked it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckedClaim {
    /// The node that claimed.
    pub node: String,
    /// Epochs its claim showed.
    pub epochs: usize,
    /// Their receipts (the node as worker or submitter).
    pub receipts: usize,
    /// Accepted jobs it is paid for, by this node's payers and revocations.
    pub jobs: u64,
    /// Its credit, in micro-credits.
    pub credit: u64,
    /// Energy spent on those jobs, in µWh.
    pub energy_uwh: u64,
    /// Start of the first epoch shown, ms since the Unix epoch.
    pub from_ms: Option<u64>,
    /// End of the last epoch shown.
    pub to_ms: Option<u64>,
    /// When this node checked it.
    pub checked_ms: u64,
}

/// Checked claims by node, with the order they were checked in (for the cap).
#[derive(Default)]
pub(super) struct Checked {
    by_node: BTreeMap<NodeId, CheckedClaim>,
    order: std::collections::VecDeque<NodeId>,
}

/// Waits before each try to hand a receipt to its worker: a worker that restarts or loses its link for
/// up to two minutes gets it from these tries; later, from the sweep every [`REDELIVER_EVERY_MS`].
const DELIVERY_BACKOFF_S: [u64; 5] = [0, 2, 10, 30, 60];
/// How often receipts their workers have not acknowledged are sent again (also once after a start).
const REDELIVER_EVERY_MS: u64 = 5 * 60_000;
/// Most receipts sent again per sweep.
const REDELIVER_AT_ONCE: usize = 256;
/// A receipt older than this is not sent again (its worker has been away for a day).
const REDELIVER_FOR_MS: u64 = 24 * 3_600_000;

/// The books' upkeep: when epochs are next sealed and receipts next sent again, and what is under way.
#[derive(Default)]
pub(super) struct Upkeep {
    next_seal_ms: u64,
    sealing: bool,
    /// Whether the roots of earlier runs were published again since this node started.
    republished: bool,
    next_redeliver_ms: u64,
    /// Receipts on their way to their workers, by (job, worker).
    delivering: std::collections::HashSet<(fleetmesh_protocol::JobId, NodeId)>,
}

impl Jobs {
    /// Sends a receipt this node issued to its worker until the worker acknowledges it (stored on its
    /// side) or refuses it; then it is no longer owed. A receipt already on its way is not sent twice.
    pub(super) fn deliver(&self, receipt: Signed<Receipt>) {
        let (job, worker) = (receipt.body.claim.body.job, receipt.body.claim.body.worker);
        if !lock(&self.inner.upkeep).delivering.insert((job, worker)) {
            return;
        }
        let this = self.clone();
        self.spawn(async move {
            let delivered = this.try_deliver(&receipt).await;
            if delivered
                && let Err(e) = this
                    .inner
                    .store
                    .off_thread(move |s| s.remove_undelivered(&job, &worker))
                    .await
            {
                warn!(error = %e, "cannot note a receipt delivered");
            }
            lock(&this.inner.upkeep).delivering.remove(&(job, worker));
        });
    }

    /// Whether the worker took (`true`) or refused the receipt; `false` if it could not be reached.
    async fn try_deliver(&self, receipt: &Signed<Receipt>) -> bool {
        let (job, worker) = (receipt.body.claim.body.job, receipt.body.claim.body.worker);
        let data = codec::encode(receipt);
        for wait in DELIVERY_BACKOFF_S {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
                _ = self.inner.stopping.cancelled() => return false,
            }
            match self
                .inner
                .net
                .request(net::peer_id_of(&worker), data.clone())
                .await
            {
                Ok(answer) => match codec::decode::<Reply>(&answer) {
                    Ok(Reply {
                        code: ReplyCode::Accepted,
                        ..
                    }) => return true,
                    Ok(Reply {
                        code: ReplyCode::Busy,
                        detail,
                    }) => debug!(job = %job.short(), %detail, "the worker cannot take its receipt yet"),
                    Ok(Reply { detail, .. }) => {
                        warn!(job = %job.short(), worker = %worker.short(), %detail, "the worker refused its receipt");
                        return true;
                    }
                    Err(e) => debug!(job = %job.short(), error = %e, "unreadable answer to a receipt"),
                },
                Err(e) => {
                    debug!(job = %job.short(), worker = %worker.short(), error = %e, "receipt not delivered yet")
                }
            }
        }
        debug!(job = %job.short(), worker = %worker.short(), "receipt not delivered; sent again later");
        false
    }

    /// Sends again the receipts their workers have not acknowledged (at most [`REDELIVER_AT_ONCE`]),
    /// forgetting those older than [`REDELIVER_FOR_MS`].
    pub(super) fn maybe_redeliver(&self, now: u64) {
        {
            let mut u = lock(&self.inner.upkeep);
            if now < u.next_redeliver_ms {
                return;
            }
            let first = u.next_redeliver_ms == 0;
            // The first sweep comes shortly after a start, when peers are connected again.
            u.next_redeliver_ms = now + if first { 20_000 } else { REDELIVER_EVERY_MS };
            if first {
                return;
            }
        }
        let this = self.clone();
        self.spawn(async move {
            let store = this.inner.store.clone();
            let Ok(owed) = store.off_thread(|s| Ok(s.undelivered())).await else {
                return;
            };
            let (mut resend, mut stale) = (Vec::new(), Vec::new());
            {
                let book = this.book();
                for key in owed {
                    match book.receipts.get(&key) {
                        Some(r) if r.body.issued_ms + REDELIVER_FOR_MS > now => {
                            if resend.len() < REDELIVER_AT_ONCE {
                                resend.push(r.clone());
                            }
                        }
                        _ => stale.push(key),
                    }
                }
            }
            if !stale.is_empty() {
                let _ = store
                    .off_thread(move |s| {
                        for (job, worker) in &stale {
                            s.remove_undelivered(job, worker)?;
                        }
                        Ok(())
                    })
                    .await;
            }
            for r in resend {
                this.deliver(r);
            }
        });
    }

    /// Looks for epochs to seal, at most every quarter epoch (between 0.5 and 10 s): on a task of its
    /// own, one at a time.
    pub(super) fn maybe_seal(&self, now: u64) {
        let again = {
            let mut u = lock(&self.inner.upkeep);
            if u.sealing || now < u.next_seal_ms {
                return;
            }
            u.sealing = true;
            u.next_seal_ms = now + (self.inner.cfg.epoch_ms / 4).clamp(500, 10_000);
            !std::mem::replace(&mut u.republished, true)
        };
        let this = self.clone();
        self.spawn(async move {
            this.seal_and_publish(again).await;
            lock(&this.inner.upkeep).sealing = false;
        });
    }

    /// The grace after an epoch's end before it is sealed: a minute, or the epoch's length if shorter.
    fn grace_ms(&self) -> u64 {
        self.inner.cfg.epoch_ms.min(MAX_GRACE_MS)
    }

    /// Seals every epoch whose grace has passed and that is not sealed yet: its receipts (with this
    /// node as a party) under a signed root, stored durably. Returns the new roots, to be published.
    /// Blocking (the store): call off the async threads.
    pub(super) fn seal_epochs(&self) -> Vec<Signed<EpochRoot>> {
        let epoch_ms = self.inner.cfg.epoch_ms.max(1);
        let limit = books::epoch_of(now_ms().saturating_sub(self.grace_ms()), epoch_ms).start;
        let store = &self.inner.store;
        let me = self.inner.me;
        let sealed_to = store.sealed_to();
        if sealed_to.is_some_and(|to| to >= limit) {
            return Vec::new();
        }
        // Receipts of the epochs not sealed yet, by epoch (a fresh store seals from its oldest receipt;
        // a receipt that arrives after its epoch was sealed stays out of every root).
        // An epoch never starts before the end of the last one sealed (after `epoch_secs` changed, the
        // first epoch is cut short there), so no two roots of this node overlap.
        let floor = sealed_to.unwrap_or(0);
        let mut due: BTreeMap<(u64, u64), Vec<Signed<Receipt>>> = BTreeMap::new();
        for r in self.book().receipts.values() {
            let issued = r.body.issued_ms;
            if issued < limit && issued >= floor && books::is_party(&me, r) {
                let epoch = books::epoch_of(issued, epoch_ms);
                due.entry((epoch.start.max(floor), epoch.end))
                    .or_default()
                    .push(r.clone());
            }
        }
        let mut roots = Vec::new();
        for ((start, end), receipts) in due {
            let Some((body, leaves)) = books::seal(me, start..end, receipts) else {
                warn!(
                    start,
                    "too many receipts in one epoch to seal: shorten jobs.epoch_secs"
                );
                continue;
            };
            let root = match Signed::sign(body, &self.inner.key) {
                Ok(root) => root,
                Err(e) => {
                    warn!(error = %e, "cannot sign an epoch root");
                    return roots;
                }
            };
            if let Err(e) = store.put_sealed(&root, &leaves) {
                warn!(start, error = %e, "cannot store a sealed epoch; trying again later");
                return roots;
            }
            debug!(start, receipts = leaves.len(), "epoch sealed");
            roots.push(root);
        }
        if let Err(e) = store.put_sealed_to(limit) {
            warn!(error = %e, "cannot record how far epochs are sealed");
        }
        roots
    }

    /// Seals what is due (off the async threads), flushes, and publishes the new roots in the DHT. With
    /// `again`, also publishes the roots still inside the DHT's lifetime (after a restart: the DHT
    /// forgets what a node no longer announces).
    pub(super) async fn seal_and_publish(&self, again: bool) {
        let this = self.clone();
        let mut roots = match tokio::task::spawn_blocking(move || this.seal_epochs()).await {
            Ok(roots) => roots,
            Err(e) => return warn!(error = %e, "the sealing task failed"),
        };
        if !roots.is_empty()
            && let Err(e) = self.inner.store.flush().await
        {
            return warn!(error = %e, "cannot flush sealed epochs: not published yet");
        }
        if again {
            let since = now_ms().saturating_sub(records::ROOT_TTL.as_millis() as u64);
            let store = self.inner.store.clone();
            if let Ok(old) = store.off_thread(move |s| Ok(s.roots_since(since))).await {
                roots.extend(old);
            }
        }
        for root in roots {
            let key = records::root_key(&root.body.node, root.body.start_ms);
            if self
                .inner
                .net
                .put_record(key, codec::encode(&root))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Answers a [`ClaimRequest`]: a page of this node's claim, or a refusal when no sealed epoch starts
    /// at or after the time asked. Blocking (the store): call off the async threads.
    pub fn on_claim_request(&self, data: &[u8]) -> Vec<u8> {
        let refuse = |why: &str| codec::encode(&Reply::refused(why));
        let Ok(req) = codec::decode::<ClaimRequest>(data) else {
            return refuse("malformed claim request");
        };
        let store = &self.inner.store;
        let Some(root) = store.root_after(req.after_ms) else {
            return refuse("no sealed epoch from then on");
        };
        let leaves = store.sealed_leaves(root.body.start_ms);
        if leaves.len() != root.body.receipts as usize {
            warn!(
                start = root.body.start_ms,
                "a sealed epoch's receipts cannot be read back"
            );
            return refuse("this epoch cannot be read now");
        }
        let first = req.first as usize;
        if first >= leaves.len() {
            return refuse("no such receipt in the epoch");
        }
        let tree = Tree::new(leaves.iter().map(books::leaf).collect());
        let end = (first + MAX_CLAIM_PAGE).min(leaves.len());
        let entries = (first..end)
            .filter_map(|i| {
                Some(ClaimEntry {
                    receipt: leaves[i].clone(),
                    path: tree.path(i)?,
                })
            })
            .collect();
        codec::encode(&ClaimPage {
            root,
            first: req.first,
            entries,
        })
    }

    /// Asks `node` for its claim from `from_ms` on, checks every page against the roots `node` published
    /// in the DHT, and computes its balance under this node's payers and revocations. The result is
    /// kept for [`Jobs::checked_claims`].
    pub async fn check_claim(&self, node: NodeId, from_ms: u64) -> Result<CheckedClaim, CheckError> {
        if node == self.inner.me {
            return Err(CheckError::Own);
        }
        let net = &self.inner.net;
        let peer = net::peer_id_of(&node);
        let malformed = |reason: String| CheckError::Malformed { node, reason };
        let mut check = ClaimCheck::new(node);
        let mut published: HashMap<u64, Vec<Signed<EpochRoot>>> = HashMap::new();
        let (mut after, mut first) = (from_ms, 0u32);
        let mut pages = 0;
        loop {
            if pages == MAX_CLAIM_PAGES {
                return Err(CheckError::TooLong);
            }
            pages += 1;
            let request = codec::encode(&ClaimRequest {
                after_ms: after,
                first,
            });
            let answer = net
                .request(peer, request)
                .await
                .map_err(|e| CheckError::Unreachable {
                    node,
                    reason: e.to_string(),
                })?;
            let page = match codec::peek_kind(&answer) {
                Ok((Kind::ClaimPage, false)) => {
                    codec::decode::<ClaimPage>(&answer).map_err(|e| malformed(e.to_string()))?
                }
                // No (further) sealed epoch.
                Ok((Kind::Reply, false)) if first == 0 => break,
                Ok((Kind::Reply, false)) => {
                    return Err(malformed("refused the rest of an epoch it began showing".into()));
                }
                _ => return Err(malformed("not a claim page".into())),
            };
            let start = page.root.body.start_ms;
            if start < after {
                return Err(malformed(format!("answered epoch {start}, before {after}")));
            }
            let roots = match published.entry(start) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let found = net
                        .get_record(records::root_key(&node, start))
                        .await
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|v| codec::decode::<Signed<EpochRoot>>(v).ok())
                        .collect();
                    e.insert(found)
                }
            };
            check.add_page(&page, roots)?;
            (after, first) = match check.next_leaf(start) {
                Some(next) => (start, next),
                None => (page.root.body.end_ms, 0),
            };
        }
        let revocations = self.book().all_revocations();
        let payers = self.inner.cfg.payers.clone();
        let verified = tokio::task::spawn_blocking(move || check.finish(&revocations, &payers))
            .await
            .map_err(|e| malformed(format!("the check failed: {e}")))??;
        let claim = CheckedClaim {
            node: node.to_string(),
            epochs: verified.epochs,
            receipts: verified.receipts,
            jobs: verified.balance.jobs,
            credit: verified.balance.credit,
            energy_uwh: verified.balance.energy_uwh,
            from_ms: verified.span.as_ref().map(|s| s.start),
            to_ms: verified.span.as_ref().map(|s| s.end),
            checked_ms: now_ms(),
        };
        info!(node = %node.short(), epochs = claim.epochs, jobs = claim.jobs, credit = claim.credit, "claim checked");
        let mut checked = lock(&self.inner.checked);
        if checked.by_node.insert(node, claim.clone()).is_none() {
            checked.order.push_back(node);
            if checked.order.len() > MAX_CHECKED
                && let Some(oldest) = checked.order.pop_front()
            {
                checked.by_node.remove(&oldest);
            }
        }
        Ok(claim)
    }

    /// The other nodes' claims this node checked (the last check of each).
    pub fn checked_claims(&self) -> Vec<CheckedClaim> {
        lock(&self.inner.checked).by_node.values().cloned().collect()
    }
}
