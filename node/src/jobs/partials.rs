//! Streaming a job's output while it runs: a worker of a model that [`streams`](crate::inference::Model::streams)
//! (text generation) sends its output so far to the job's submitter as a signed [`Partial`], at most every
//! [`PARTIAL_EVERY`]; the submitter keeps the latest one of the first assigned worker that streams, for
//! whoever follows the job (the API's streaming answers). Advisory only: commit, reveal and quorum decide
//! what is accepted, and a follower is told at the end whether the verified output continues what it saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmesh_protocol::messages::{MAX_PARTIAL, Partial, Reply};
use fleetmesh_protocol::{JobId, NodeId, Signed, codec};
use tokio::sync::watch;

use super::{Jobs, lock, now_ms, refuse, reply};
use crate::inference::executor::PartialSink;

/// Most jobs followed at once on one node (each an API client waiting on a stream).
pub const MAX_FOLLOWED: usize = 256;
/// Least time between two partials of one job from one worker.
pub const PARTIAL_EVERY: Duration = Duration::from_millis(200);

/// The latest partial output of a followed job: the worker it came from, and the bytes.
pub type Latest = Option<(NodeId, Vec<u8>)>;

/// The followed jobs of this submitter.
#[derive(Default)]
pub(super) struct Streams(Mutex<HashMap<JobId, Arc<watch::Sender<Latest>>>>);

impl Jobs {
    /// Follows the partial outputs of a job this node submitted: the receiver sees the latest output so far
    /// of the first assigned worker that streams one. `None` when [`MAX_FOLLOWED`] jobs are followed already.
    pub fn follow_partials(&self, job: JobId) -> Option<watch::Receiver<Latest>> {
        let mut map = lock(&self.inner.streams.0);
        if let Some(tx) = map.get(&job) {
            return Some(tx.subscribe());
        }
        if map.len() >= MAX_FOLLOWED {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        map.insert(job, Arc::new(tx));
        Some(rx)
    }

    /// Stops following a job once no receiver of it is left (call after dropping yours).
    pub fn unfollow_partials(&self, job: &JobId) {
        let mut map = lock(&self.inner.streams.0);
        if map.get(job).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(job);
        }
    }

    /// A partial output, signed by the peer that sent it: kept when someone follows the job and its worker
    /// is assigned to it; the first worker to stream stays the job's voice, and only a longer output of it
    /// replaces what is kept. Workers name the offer in force; followers the job's first offer.
    pub(super) fn on_partial(&self, p: Partial) -> Vec<u8> {
        // One lock at a time: the submitter's, then the followed jobs', then the job's channel.
        let (original, assigned) = {
            let side = self.submitter();
            let original = side.by_offer.get(&p.job).copied().unwrap_or(p.job);
            let assigned = side
                .core
                .job(&p.job)
                .is_some_and(|j| j.slots().any(|(w, _)| *w == p.worker));
            (original, assigned)
        };
        let Some(tx) = lock(&self.inner.streams.0).get(&original).cloned() else {
            return reply(Reply::accepted());
        };
        if !assigned {
            return refuse("not assigned to this job");
        }
        {
            tx.send_if_modified(|latest| match latest {
                None => {
                    *latest = Some((p.worker, p.output));
                    true
                }
                Some((w, out)) if *w == p.worker && p.output.len() > out.len() => {
                    *out = p.output;
                    true
                }
                Some(_) => false,
            });
        }
        reply(Reply::accepted())
    }

    /// Where a streaming model's partial outputs go while `job` runs on this worker: a task sends the
    /// latest to the job's `submitter`, at most every [`PARTIAL_EVERY`], and ends when the sink is dropped.
    pub(super) fn partial_sink(&self, job: JobId, submitter: NodeId) -> PartialSink {
        let (tx, mut rx) = watch::channel(Vec::<u8>::new());
        let this = self.clone();
        self.spawn(async move {
            let peer = crate::net::peer_id_of(&submitter);
            while rx.changed().await.is_ok() {
                let output = rx.borrow_and_update().clone();
                if output.len() > MAX_PARTIAL {
                    break;
                }
                let partial = Partial {
                    job,
                    worker: this.inner.me,
                    output,
                    at_ms: now_ms(),
                };
                let Ok(signed) = Signed::sign(partial, &this.inner.key) else {
                    break;
                };
                // Advisory: a lost or refused partial is not sent again (the next one holds all of it).
                let _ = this.inner.net.request(peer, codec::encode(&signed)).await;
                tokio::time::sleep(PARTIAL_EVERY).await;
            }
        });
        Arc::new(move |bytes: &[u8]| {
            tx.send_replace(bytes.to_vec());
        })
    }
}
