//! Values in the DHT: nodes' signed epoch roots, under keys derived from (node, epoch start). A node
//! stores a record a peer sends only if it is such a root, signed by its node, under its own key, and
//! not expired; provider records (model distribution) are stored as Kademlia would. So a peer cannot
//! fill the DHT with junk under fleetmesh's protocol, nor place a root in another node's name.

use std::collections::HashMap;
use std::time::Duration;

use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::EpochRoot;
use fleetmesh_protocol::{NodeId, Signed};
use libp2p::kad;
use tokio::sync::oneshot;
use tracing::debug;

/// How long a published root stays in the DHT: claims can be checked for epochs this recent.
pub const ROOT_TTL: Duration = Duration::from_secs(36 * 3600);

/// How often a node publishes its own records again.
pub const REPUBLISH: Duration = Duration::from_secs(3600);

/// Most records a node stores for others (roots are ~200 bytes).
pub const MAX_RECORDS: usize = 16_384;

/// The DHT key of `node`'s root of the epoch starting at `start_ms`.
pub fn root_key(node: &NodeId, start_ms: u64) -> Vec<u8> {
    blake3::Hasher::new_derive_key("fleetmesh epoch root key v1")
        .update(node.as_bytes())
        .update(&start_ms.to_be_bytes())
        .finalize()
        .as_bytes()
        .to_vec()
}

/// Whether a root's epoch is one a node stores for others at `now_ms`: ended (30 s of clock skew allowed)
/// and not older than [`ROOT_TTL`], so that no key can fill the store with roots of made-up epochs.
pub fn is_current(root: &EpochRoot, now_ms: u64) -> bool {
    root.end_ms <= now_ms.saturating_add(30_000)
        && root.end_ms.saturating_add(ROOT_TTL.as_millis() as u64) >= now_ms
}

/// The root a record holds, if it is a valid, signed root stored under its own key.
pub fn root_in(record: &kad::Record) -> Option<Signed<EpochRoot>> {
    let root = codec::decode::<Signed<EpochRoot>>(&record.value).ok()?;
    let key = root_key(&root.body.node, root.body.start_ms);
    (record.key.as_ref() == key.as_slice() && root.verify().is_ok()).then_some(root)
}

/// Stores what a peer asked this node to store, if it may: see the module's rules.
pub(super) fn on_inbound(kad: &mut kad::Behaviour<kad::store::MemoryStore>, request: kad::InboundRequest) {
    use kad::store::RecordStore;
    match request {
        kad::InboundRequest::PutRecord {
            source,
            record: Some(record),
            ..
        } => {
            let now = crate::clock::now_ms();
            if !root_in(&record).is_some_and(|r| is_current(&r.body, now)) {
                debug!(%source, "refused a DHT record that is not a recent signed epoch root under its key");
                return;
            }
            if let Err(e) = kad.store_mut().put(record) {
                debug!(%source, error = %e, "DHT record not stored");
            }
        }
        kad::InboundRequest::AddProvider {
            record: Some(record), ..
        } => {
            if let Err(e) = kad.store_mut().add_provider(record) {
                debug!(error = %e, "provider record not stored");
            }
        }
        _ => {}
    }
}

/// Values found so far by one lookup, and who waits for them.
type Lookup = (Vec<Vec<u8>>, oneshot::Sender<Vec<Vec<u8>>>);

/// Record lookups in flight.
#[derive(Default)]
pub(super) struct Lookups(HashMap<kad::QueryId, Lookup>);

impl Lookups {
    pub(super) fn start(&mut self, id: kad::QueryId, reply: oneshot::Sender<Vec<Vec<u8>>>) {
        self.0.insert(id, (Vec::new(), reply));
    }

    /// A lookup progressed: keeps what it found (at most 8 distinct values); answers on its last step.
    pub(super) fn progressed(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetRecordOk, kad::GetRecordError>,
        last: bool,
    ) {
        let Some((found, _)) = self.0.get_mut(&id) else {
            return;
        };
        if let Ok(kad::GetRecordOk::FoundRecord(r)) = result
            && found.len() < 8
            && !found.contains(&r.record.value)
        {
            found.push(r.record.value);
        }
        if last && let Some((found, reply)) = self.0.remove(&id) {
            let _ = reply.send(found);
        }
    }
}
