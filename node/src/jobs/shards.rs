//! The node's place in the capacity directory ([`fleetmesh_consensus::directory`]): while the car admits
//! work it is in one shard of offers for each model it serves and one shard of offers for any model,
//! subscribed to their topics and announced as a provider of its slot's key; when admission ends it
//! leaves them and withdraws the announcements. The shard counts follow the directory (members found
//! under a few slots, offers received). A submitter publishes an offer on a shard of its model, found
//! through the DHT when this node is not in it, and on a shard for any model when the model's shard
//! has too few members this node can reach (cars that lack the model see the offer there and fetch it).

use std::collections::{BTreeMap, HashMap};

use fleetmesh_consensus::directory::{self, Family, Shard};
use fleetmesh_protocol::ModelId;
use tracing::{debug, info};

use super::{Jobs, lock, now_ms};
use crate::net::NetError;

/// How often the node's shards are looked at again (and at once when admission changes).
const UPKEEP_EVERY_MS: u64 = 30_000;
/// How often the shard counts are estimated again from the directory (each estimate is a few DHT
/// lookups per family: at 1,000 nodes the lookups of every node every 30 s were most of the DHT's load).
/// A node estimates at its own point of the period (from its peer id), so that the fleet's lookups are
/// spread over the whole period (at one wall-clock time for all, 950 clients' 12 lookups each fall
/// within one upkeep period), and a new count takes effect at the next wall-clock multiple of the period, so
/// that the nodes of a shard still move to it together, within one upkeep period.
const ESTIMATE_EVERY_MS: u64 = 300_000;
/// An estimate is made early (at the next upkeep, at most this often) when a shard brings more than
/// twice [`directory::MAX_OFFERS_PER_S`]: load that calls for more shards is not left waiting for the
/// next common time.
const EARLY_ESTIMATE_AFTER_MS: u64 = 30_000;
/// Members a submitter dials when it is not in the shard it publishes to.
const DIAL_MEMBERS: usize = 4;
/// How long a submitter waits for dialled members' subscriptions to arrive.
const SUBSCRIPTION_WAIT_MS: u64 = 2_000;
/// The first look at the directory after a start, when the node's own announcements are out.
const FIRST_ESTIMATE_AFTER_MS: u64 = 5_000;
/// How long a submitter looks for the members of a shard it is not in before it tries another.
const SAMPLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The shards this node is in, the shard counts it uses, and the offers counted per family.
#[derive(Default)]
pub(super) struct Membership {
    joined: BTreeMap<Family, Shard>,
    shards: HashMap<Family, u32>,
    /// The last estimate from the directory of the members of this node's shard of each family: the
    /// count bids go by, and its cautious count ([`directory::members_lower_bound`]) splits go by.
    estimates: HashMap<Family, (usize, usize)>,
    /// Offers received per family since `counted_since_ms`.
    offers: HashMap<Family, u64>,
    counted_since_ms: u64,
    next_upkeep_ms: u64,
    next_estimate_ms: u64,
    /// Shard counts estimated and not yet in effect, and when they take effect.
    pending: HashMap<Family, u32>,
    apply_at_ms: u64,
    running: bool,
    /// Whether the car admitted work at the last upkeep.
    admitted: bool,
    /// Models served at the last upkeep (a model fetched from peers joins its shard at once).
    models: usize,
}

impl Jobs {
    fn shards_of(&self, family: Family) -> u32 {
        lock(&self.inner.membership)
            .shards
            .get(&family)
            .copied()
            .unwrap_or(1)
    }

    /// Whether this node bids on the offer `job` for `model`, with [`directory::bid_probability`] for the
    /// members of its shard (drawn from the job and this node's id, so an offer seen twice gets the same
    /// answer).
    pub(super) fn draws_bid(&self, job: &fleetmesh_protocol::JobId, model: &ModelId) -> bool {
        let members = lock(&self.inner.membership)
            .estimates
            .get(&Family::Model(*model))
            .map_or(0, |(members, _)| *members);
        let p = directory::bid_probability(members);
        if p >= 1.0 {
            return true;
        }
        let h = blake3::Hasher::new_derive_key("fleetmesh bid draw v1")
            .update(job.as_bytes())
            .update(self.inner.me.as_bytes())
            .finalize();
        let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
        (x as f64 / u64::MAX as f64) < p
    }

    /// Counts an offer received (for the shard count's offer rate).
    pub(super) fn count_offer(&self, model: &ModelId) {
        let mut m = lock(&self.inner.membership);
        let family = if m.joined.contains_key(&Family::Model(*model)) {
            Family::Model(*model)
        } else {
            Family::Any
        };
        *m.offers.entry(family).or_default() += 1;
    }

    /// Runs [`Jobs::keep_shards`] when it is due or admission or the models served changed, one at a
    /// time.
    pub(super) fn maybe_keep_shards(&self, now: u64) {
        let admitted = self.inner.car.admitted();
        let models = self.registry().models().len();
        {
            let mut m = lock(&self.inner.membership);
            let changed = admitted != m.admitted || models != m.models;
            let due = now >= m.next_upkeep_ms
                || (m.next_estimate_ms > 0 && now >= m.next_estimate_ms)
                || (!m.pending.is_empty() && now >= m.apply_at_ms);
            if m.running || (!due && !changed) {
                return;
            }
            m.running = true;
            m.next_upkeep_ms = now + UPKEEP_EVERY_MS;
        }
        let this = self.clone();
        self.spawn(async move {
            this.keep_shards().await;
            lock(&this.inner.membership).running = false;
        });
    }

    /// Joins the shards this node belongs in now and leaves the others: the shard counts are updated
    /// from the directory first (after the first pass), then the node subscribes to each shard's topic
    /// and provides its slot's key, or, when the car does not admit work, leaves every shard.
    pub async fn keep_shards(&self) {
        let now = now_ms();
        let admitted = self.inner.car.admitted();
        let me = self.inner.net.peer_id().to_bytes();
        let slot = directory::slot_of(&me);
        let models = self.registry().models();
        let mut families = Vec::new();
        if admitted {
            families.push(Family::Any);
            families.extend(models.iter().map(|m| Family::Model(m.id())));
        }
        let (first, estimate) = {
            let m = lock(&self.inner.membership);
            let first = m.counted_since_ms == 0;
            let elapsed = now.saturating_sub(m.counted_since_ms);
            let busiest = m.offers.values().copied().max().unwrap_or(0) as f64;
            let overloaded = elapsed >= EARLY_ESTIMATE_AFTER_MS
                && busiest / (elapsed as f64 / 1000.0) > 2.0 * directory::MAX_OFFERS_PER_S;
            (
                first,
                (!first && (now >= m.next_estimate_ms || overloaded)).then_some(overloaded),
            )
        };
        // Counts that fell due take effect before a new estimate replaces them.
        apply_pending(&mut lock(&self.inner.membership), now);
        if let Some(at_once) = estimate {
            self.update_shard_counts(now, slot).await;
            let mut m = lock(&self.inner.membership);
            m.next_estimate_ms = next_estimate_after(now, &me);
            m.apply_at_ms = if at_once {
                now
            } else {
                now / ESTIMATE_EVERY_MS * ESTIMATE_EVERY_MS + ESTIMATE_EVERY_MS
            };
            apply_pending(&mut m, now);
        }
        let wanted: BTreeMap<Family, Shard> = families
            .into_iter()
            .map(|f| (f, Shard::of(f, self.shards_of(f), &me, now)))
            .collect();
        let (leave, join) = {
            let mut m = lock(&self.inner.membership);
            let leave: Vec<Shard> = m
                .joined
                .iter()
                .filter(|(f, s)| wanted.get(f) != Some(s))
                .map(|(_, s)| *s)
                .collect();
            let join: Vec<Shard> = wanted
                .iter()
                .filter(|(f, s)| m.joined.get(f) != Some(s))
                .map(|(_, s)| *s)
                .collect();
            m.joined = wanted;
            m.admitted = admitted;
            m.models = models.len();
            m.next_upkeep_ms = m.next_upkeep_ms.max(now + UPKEEP_EVERY_MS);
            if first {
                m.counted_since_ms = now;
                m.next_upkeep_ms = now + FIRST_ESTIMATE_AFTER_MS;
                m.next_estimate_ms = now + FIRST_ESTIMATE_AFTER_MS;
            }
            (leave, join)
        };
        let net = &self.inner.net;
        for s in &leave {
            debug!(topic = %s.topic(), "leaving an offer shard");
            let _ = net.subscribe(s.topic(), false).await;
            let _ = net.stop_providing(s.head_key()).await;
            let _ = net.stop_providing(s.provider_key(slot)).await;
        }
        for s in &join {
            debug!(topic = %s.topic(), "joining an offer shard");
            let _ = net.subscribe(s.topic(), true).await;
            let _ = net.provide(s.head_key()).await;
            let _ = net.provide(s.provider_key(slot)).await;
        }
        let joined = lock(&self.inner.membership).joined.len();
        self.inner.metrics.offer_shards.set(joined as i64);
        if !leave.is_empty() && join.is_empty() && !admitted {
            info!("not admitting work: left every offer shard");
        }
    }

    /// Updates the shard count of every family this node is in from the directory: the members found
    /// under a few slots of its shard, and the offers it received since the last update.
    async fn update_shard_counts(&self, now: u64, own_slot: u32) {
        let (joined, offers, since) = {
            let mut m = lock(&self.inner.membership);
            let since = std::mem::replace(&mut m.counted_since_ms, now);
            (m.joined.clone(), std::mem::take(&mut m.offers), since)
        };
        let seconds = (now.saturating_sub(since) as f64 / 1000.0).max(1.0);
        debug!(
            families = joined.len(),
            "estimating the offer shard counts from the directory"
        );
        for (family, shard) in joined {
            // A sample that timed out says nothing (counting it as an empty slot made a 1,000-car shard
            // look like ~80 cars under load, and every member bid as if its shard were that small).
            // One after another, each as long as the DHT lets it (30 s): in the saturated 1,000-node
            // run (with estimates that needed half their samples), six at once found less (estimates
            // p50 21 against 288) and a 10 s cap each left 918 estimates without a count (a node
            // without one bids on every offer).
            let mut found = Vec::with_capacity(directory::SAMPLED_SLOTS);
            for slot in directory::sampled_slots(own_slot) {
                match self.inner.net.sample_providers(shard.provider_key(slot)).await {
                    Ok(providers) => found.push(providers.len()),
                    Err(e) => debug!(slot, error = %e, "a directory sample failed; not counted"),
                }
            }
            // None answered: the last estimate and its cautious count stand (an offer rate can still
            // split the shard).
            let (members, floor) = if found.is_empty() {
                let Some(last) = lock(&self.inner.membership).estimates.get(&family).copied() else {
                    debug!(family = ?family, "no directory sample answered; no shard count yet");
                    continue;
                };
                last
            } else {
                let estimate = (
                    directory::members_estimate(&found),
                    directory::members_lower_bound(&found),
                );
                lock(&self.inner.membership).estimates.insert(family, estimate);
                estimate
            };
            let rate = offers.get(&family).copied().unwrap_or(0) as f64 / seconds;
            // Split and merge on the cautious count: noise in a small sample must not split a shard.
            let next = directory::next_shards(shard.shards, floor, rate);
            debug!(family = ?family, shards = shard.shards, next, members, answered = found.len(), offers_per_s = rate, "offer shards estimated");
            lock(&self.inner.membership).pending.insert(family, next);
        }
    }

    /// Publishes an offer for `model`: on a shard of the model (this node's own when it is in one, else
    /// one found through the DHT), and on this node's shard for any model when fewer than `needed`
    /// members of the model's shard are connected (cars that lack the model fetch it from there).
    pub(super) async fn publish_offer(
        &self,
        model: ModelId,
        needed: usize,
        data: Vec<u8>,
    ) -> Result<(), NetError> {
        let net = &self.inner.net;
        let shard = self.shard_to_publish(Family::Model(model)).await;
        let mut members = 0;
        let mut result = Err(NetError::Publish("no shard of the model has members".into()));
        if let Some(shard) = shard {
            members = net.topic_peers(shard.topic()).await.unwrap_or(0);
            if members > 0 {
                result = net.publish_on(shard.topic(), data.clone()).await;
            }
        }
        if members < needed
            && let Some(any) = self.shard_to_publish(Family::Any).await
        {
            let published = net.publish_on(any.topic(), data).await;
            if result.is_err() {
                result = published;
            }
        }
        result
    }

    /// This node's own shard of `family`, or else one found through the DHT ([`Jobs::find_shard`]).
    async fn shard_to_publish(&self, family: Family) -> Option<Shard> {
        let own = lock(&self.inner.membership).joined.get(&family).copied();
        match own {
            Some(s) => Some(s),
            None => self.find_shard(family).await,
        }
    }

    /// A shard of `family` with members this node is connected to: one whose providers it finds in the
    /// DHT (at its shard count, then half and double), dialled and waited for until their subscription
    /// is known.
    async fn find_shard(&self, family: Family) -> Option<Shard> {
        debug!(family = ?family, "looking for a shard in the directory");
        let net = &self.inner.net;
        let shards = self.shards_of(family);
        let mut counts = vec![shards];
        if shards > 1 {
            counts.push(shards / 2);
        }
        counts.push(shards.saturating_mul(2).min(directory::MAX_SHARDS));
        let seed = now_ms();
        for (i, count) in counts.into_iter().enumerate() {
            let shard = Shard {
                family,
                shards: count,
                index: (seed as u32).wrapping_add(i as u32) & (count - 1),
            };
            if net.topic_peers(shard.topic()).await.unwrap_or(0) > 0 {
                return Some(shard);
            }
            // (A lookup may take up to the DHT's 30 s query timeout.)
            let sample = tokio::time::timeout(SAMPLE_WAIT, net.sample_providers(shard.head_key()));
            let providers = sample.await.ok().and_then(Result::ok).unwrap_or_default();
            if providers.is_empty() {
                continue;
            }
            for peer in providers.into_iter().take(DIAL_MEMBERS) {
                let _ = net.dial_peer(peer).await;
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(SUBSCRIPTION_WAIT_MS);
            while std::time::Instant::now() < deadline {
                if net.topic_peers(shard.topic()).await.unwrap_or(0) > 0 {
                    return Some(shard);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        None
    }
}

/// Puts the pending shard counts in effect when they are due, and a family's first count at once (a node
/// that just joined uses the count the others use).
fn apply_pending(m: &mut Membership, now: u64) {
    let due = now >= m.apply_at_ms;
    let pending = std::mem::take(&mut m.pending);
    for (family, next) in pending {
        if !due && m.shards.contains_key(&family) {
            m.pending.insert(family, next);
        } else if let Some(from) = m.shards.insert(family, next)
            && from != next
        {
            info!(family = ?family, from, to = next, "offer shards resized");
        }
    }
}

/// The next time after `now_ms` at this node's own point of the estimate period (the node's provider
/// records are announced again at the same point, see the net room's reprovide, so that one round of
/// connections to the servers serves both).
fn next_estimate_after(now_ms: u64, me: &[u8]) -> u64 {
    crate::clock::next_phase_point_apart(now_ms, ESTIMATE_EVERY_MS, me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_waits_for_its_time_unless_it_is_the_familys_first() {
        let mut m = Membership::default();
        // First count of a family: at once.
        m.pending.insert(Family::Any, 2);
        m.apply_at_ms = 300_000;
        apply_pending(&mut m, 10_000);
        assert_eq!(m.shards.get(&Family::Any), Some(&2));
        // A later count waits until it is due, then takes effect (and is not lost meanwhile).
        m.pending.insert(Family::Any, 4);
        apply_pending(&mut m, 299_999);
        assert_eq!((m.shards.get(&Family::Any), m.pending.len()), (Some(&2), 1));
        apply_pending(&mut m, 300_000);
        assert_eq!((m.shards.get(&Family::Any), m.pending.len()), (Some(&4), 0));
    }
}
