//! What arrives from peers, dispatched by kind: offers and revocations from gossip (already validated by
//! the network task), and bids, commits, withdrawals, assignments, reveal requests and receipts over
//! request-response, each checked to be signed by the peer that sent it.

use fleetmesh_protocol::Signed;
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::messages::{
    Assignment, Bid, JobOffer, Partial, Receipt, Reply, ResultCommit, RevealRequest, Revocation, Withdraw,
};
use libp2p::PeerId;
use tracing::debug;

use super::{Jobs, authored, now_ms, refuse, reply};
use crate::net::Topic;

impl Jobs {
    /// Handles a validated gossip message.
    pub fn on_gossip(&self, topic: Topic, data: &[u8]) {
        match topic {
            Topic::Offers => {
                if let Ok(offer) = codec::decode::<Signed<JobOffer>>(data) {
                    self.count_offer(&offer.body.model);
                    self.on_offer(offer.body);
                }
            }
            Topic::Revocations => {
                if let Ok(revocation) = codec::decode::<Signed<Revocation>>(data) {
                    self.on_revocation(revocation);
                }
            }
        }
    }

    /// A receipt from the submitter of a job this node worked on: kept and stored (durably) before it is
    /// acknowledged, so that the submitter stops sending it only once it is safe here.
    async fn on_receipt(&self, receipt: Signed<Receipt>) -> Vec<u8> {
        if receipt.body.claim.body.worker != self.inner.me {
            return refuse("not this worker's receipt");
        }
        // Sent again, or a variant the ledger's rule would not keep: nothing to write (and no flush a peer
        // could ask for again and again).
        {
            let book = self.book();
            let key = (receipt.body.claim.body.job, receipt.body.claim.body.worker);
            if !super::replaces(book.receipts.get(&key), &receipt) {
                return reply(Reply::accepted());
            }
        }
        self.inner.receipts.put(receipt.clone());
        self.inner.receipts.sync().await;
        if let Err(e) = self.inner.store.flush().await {
            tracing::warn!(error = %e, "cannot flush a receipt");
            return codec::encode(&Reply {
                code: fleetmesh_protocol::messages::ReplyCode::Busy,
                detail: "cannot store the receipt now".into(),
            });
        }
        self.keep_receipts([receipt]).await;
        reply(Reply::accepted())
    }

    /// Answers a request from `peer`: a bid, assignment, commit, reveal request or withdrawal.
    pub async fn on_request(&self, peer: PeerId, data: &[u8]) -> Vec<u8> {
        let kind = match codec::peek_kind(data) {
            Ok((kind, true)) => kind,
            _ => return refuse("expected a signed fleetmesh message"),
        };
        let now = now_ms();
        match kind {
            Kind::Bid => match authored::<Bid>(&peer, data) {
                Ok(bid) => match self.on_bid(bid.body, now) {
                    Ok(()) => reply(Reply::accepted()),
                    Err(why) => refuse(&why),
                },
                Err(why) => refuse(why),
            },
            Kind::ResultCommit => match authored::<ResultCommit>(&peer, data) {
                Ok(c) => {
                    let result = self.submitter().core.on_commit(&c.body, now);
                    match result {
                        Ok(actions) => {
                            self.act_all(actions);
                            reply(Reply::accepted())
                        }
                        // A commit sent again (after the worker restarted, or lost the reply) by a worker
                        // still in the job: taken already; the worker must keep its work for the reveal.
                        Err(fleetmesh_consensus::submitter::SubmitError::Job(
                            fleetmesh_consensus::job::JobError::OutOfOrder,
                        )) => reply(Reply::accepted()),
                        Err(_) => refuse("commit not expected"),
                    }
                }
                Err(why) => refuse(why),
            },
            Kind::Withdraw => match authored::<Withdraw>(&peer, data) {
                Ok(w) => {
                    let result = self.submitter().core.on_withdraw(&w.body, now);
                    if let Ok(actions) = result {
                        self.inner.metrics.withdrawals.inc();
                        debug!(job = %w.body.job.short(), worker = %w.body.worker.short(), reason = ?w.body.reason, "work handed back");
                        self.act_all(actions);
                    }
                    reply(Reply::accepted())
                }
                Err(why) => refuse(why),
            },
            Kind::Assignment => match authored::<Assignment>(&peer, data) {
                Ok(a) => self.on_assignment(a.body).await,
                Err(why) => refuse(why),
            },
            Kind::RevealRequest => match authored::<RevealRequest>(&peer, data) {
                Ok(r) => self.on_reveal_request(r.body).await,
                Err(why) => refuse(why),
            },
            Kind::Partial => match authored::<Partial>(&peer, data) {
                Ok(p) => self.on_partial(p.body),
                Err(why) => refuse(why),
            },
            Kind::Receipt => match authored::<Receipt>(&peer, data) {
                Ok(r) => self.on_receipt(r).await,
                Err(why) => refuse(why),
            },
            // A revocation sent by its submitter to the worker it names (besides the gossip).
            // Busy while the receipt it revokes has not arrived: the submitter sends it again later, and
            // this node keeps it in memory meanwhile (taken over, and stored, when the receipt comes).
            Kind::Revocation => match authored::<Revocation>(&peer, data) {
                Ok(r) if r.body.worker == self.inner.me => {
                    if self.on_revocation_sent(r).await {
                        reply(Reply::accepted())
                    } else {
                        codec::encode(&Reply {
                            code: fleetmesh_protocol::messages::ReplyCode::Busy,
                            detail: "the receipt it revokes has not arrived yet".into(),
                        })
                    }
                }
                Ok(_) => refuse("the revocation names another worker"),
                Err(why) => refuse(why),
            },
            _ => refuse("unexpected message kind"),
        }
    }
}
