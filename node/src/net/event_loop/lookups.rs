//! Provider lookups in flight: the answers of each Kademlia provider query, gathered until the query
//! ends (or, for a sample, at its first answer that names providers), then handed to whoever asked.

use libp2p::{PeerId, kad};
use tokio::sync::oneshot;

use super::EventLoop;
use crate::net::NetError;

/// A provider lookup under way.
pub(super) struct ProviderLookup {
    /// Providers named so far (this node excluded).
    pub(super) found: std::collections::HashSet<PeerId>,
    /// Answers that named providers so far.
    pub(super) answers: usize,
    /// End the lookup after this many such answers.
    pub(super) stop_after: Option<usize>,
    /// Who waits for the providers.
    pub(super) reply: oneshot::Sender<Result<Vec<PeerId>, NetError>>,
}

impl EventLoop {
    /// One step of the provider query `id`: its answer gathered, the query ended when it is a sample's
    /// first answer naming providers, and the asker answered when the query is over.
    pub(super) fn providers_progressed(
        &mut self,
        id: kad::QueryId,
        result: kad::GetProvidersResult,
        last: bool,
    ) {
        let me = *self.swarm.local_peer_id();
        let mut failed = None;
        let finished = match result {
            Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                let mut enough = false;
                if let Some(lookup) = self.pending_providers.get_mut(&id) {
                    let others: Vec<PeerId> = providers.into_iter().filter(|p| *p != me).collect();
                    lookup.answers += usize::from(!others.is_empty());
                    lookup.found.extend(others);
                    enough = lookup.stop_after.is_some_and(|n| lookup.answers >= n);
                }
                // A sample ends early (see NetClient::sample_providers).
                if enough
                    && !last
                    && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
                {
                    query.finish();
                }
                enough || last
            }
            Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
            Err(e) => {
                failed = Some(e.to_string());
                true
            }
        };
        if finished && let Some(lookup) = self.pending_providers.remove(&id) {
            // Timed out before anyone named a provider: not known to be empty.
            let _ = lookup.reply.send(match failed {
                Some(why) if lookup.answers == 0 => Err(NetError::Lookup(why)),
                _ => Ok(lookup.found.into_iter().collect()),
            });
        }
    }
}
