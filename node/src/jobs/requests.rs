//! What arrives from peers, dispatched by kind: offers, receipts and revocations from gossip (already
//! validated by the network task), and bids, commits, withdrawals, assignments and reveal requests over
//! request-response, each checked to be signed by the peer that sent it.

use fleetmesh_protocol::Signed;
use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::messages::{
    Assignment, Bid, JobOffer, Receipt, Reply, ResultCommit, RevealRequest, Revocation, Withdraw,
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
                    self.on_offer(offer.body);
                }
            }
            Topic::Receipts => {
                if let Ok(receipt) = codec::decode::<Signed<Receipt>>(data) {
                    self.inner.receipts.put(receipt.clone());
                    let outvoted = {
                        let mut book = self.book();
                        let outvoted = book.notice(&receipt);
                        book.keep(receipt);
                        outvoted
                    };
                    self.distrust(outvoted);
                }
            }
            Topic::Revocations => {
                if let Ok(revocation) = codec::decode::<Signed<Revocation>>(data) {
                    self.on_revocation(revocation);
                }
            }
        }
    }

    /// Workers another submitter's receipts show out-voted lose the trust this node's submitter gave them.
    fn distrust(&self, outvoted: Vec<fleetmesh_protocol::NodeId>) {
        if outvoted.is_empty() {
            return;
        }
        let now = now_ms();
        let mut side = self.submitter();
        for worker in outvoted {
            if side.core.reputation().is_trusted(&worker, now) {
                debug!(worker = %worker.short(), "another submitter's receipts show this worker out-voted: no longer trusted here");
            }
            side.core.distrust(worker);
        }
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
            _ => refuse("unexpected message kind"),
        }
    }
}
