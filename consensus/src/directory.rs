//! The capacity directory: which offer topics exist, who is in each, and how many there are.
//!
//! Offers are gossiped, but no topic spans the fleet. The cars that serve a model split into `S` shards
//! (a power of two); a car is in one shard of each model it serves, chosen from its peer id and the day
//! (so shards are reshuffled daily), and subscribes to that shard's topic while it admits work. Offers
//! for a model nobody is known to serve go to the shards of the [`Family::Any`] family, which every
//! admitting car joins (one shard each), so that a car can still see them and fetch the model.
//!
//! Members are found through the DHT: a car provides two keys of its shard, the shard's head key and
//! the key of its slot (one of [`SLOTS`], from its peer id). A submitter looks up the head key of a
//! random shard, connects to a few of the providers, and publishes there: Kademlia keeps at most 20
//! providers per key, and 20 is all a submitter needs (a sample, not the membership). The slot keys
//! hold the membership itself, at most 20 each while a shard has fewer than `20 x SLOTS` members, and
//! a few of them sampled give the shard's size.
//!
//! How a node learns `S`: from the directory itself. It looks up a few slots of its own shard and
//! counts the providers ([`members_estimate`]), and counts the offers its shard receives; [`next_shards`]
//! doubles `S` (as many times as needed at once) while a shard holds more than [`TARGET_MEMBERS`] cars or brings its members more than
//! [`MAX_OFFERS_PER_S`] offers a second, and halves it when both are far below (never splitting below
//! [`MIN_MEMBERS`] members a shard). Shard ids are stable under doubling (a car of shard `s` of `S` is
//! in `s` or `s + S` of `2S`), so nodes with neighbouring estimates still meet: a submitter that finds
//! nobody at its `S` tries half and double.

use fleetmesh_protocol::ModelId;

/// Provider keys per shard: a car provides the key of its slot only.
pub const SLOTS: u32 = 64;
/// Most providers Kademlia keeps per key.
pub const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Most cars a shard should hold.
pub const TARGET_MEMBERS: usize = 1_000;
/// A shard is not split below this many members (gossip needs peers to form a mesh, and the estimate
/// of a small shard from a few slots is noisy: at 24, a 100-car fleet split to 2 or 4 shards depending on
/// which slots a node sampled, and its nodes disagreed).
pub const MIN_MEMBERS: usize = 48;
/// Most offers a second a car should receive on its shard.
pub const MAX_OFFERS_PER_S: f64 = 1.0;
/// Most shards of one family.
pub const MAX_SHARDS: u32 = 1 << 16;
/// How long a car stays in one shard before shards are drawn again (a day).
pub const ROTATION_MS: u64 = 24 * 3_600_000;
/// Prefix of every offer topic.
pub const TOPIC_PREFIX: &str = "fleetmesh/offers/v2/";

/// A family of offer shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Offers for one model, joined by the cars that serve it.
    Model(ModelId),
    /// Offers for models no car is known to serve, joined by every admitting car.
    Any,
}

impl Family {
    fn label(&self) -> String {
        match self {
            Family::Model(m) => m.to_string(),
            Family::Any => "any".into(),
        }
    }

    /// Whether an offer for `model` belongs on this family's topics.
    pub fn admits(&self, model: &ModelId) -> bool {
        match self {
            Family::Model(m) => m == model,
            Family::Any => true,
        }
    }
}

/// One shard: its family, the shard count it belongs to, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// The family.
    pub family: Family,
    /// How many shards the family has (a power of two).
    pub shards: u32,
    /// This shard's index, below `shards`.
    pub index: u32,
}

impl Shard {
    /// The shard of `family` with `shards` shards that `peer` (its peer id bytes) is in at `now_ms`.
    pub fn of(family: Family, shards: u32, peer: &[u8], now_ms: u64) -> Self {
        let shards = clamp_shards(shards);
        let day = now_ms / ROTATION_MS;
        let h = blake3::Hasher::new_derive_key("fleetmesh offer shard v1")
            .update(peer)
            .update(&day.to_be_bytes())
            .finalize();
        let x = u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap_or_default());
        Self {
            family,
            shards,
            index: x & (shards - 1),
        }
    }

    /// The gossipsub topic name.
    pub fn topic(&self) -> String {
        format!(
            "{TOPIC_PREFIX}{}/{}/{}",
            self.family.label(),
            self.shards,
            self.index
        )
    }

    /// The shard a topic name names, if it is an offer topic.
    pub fn parse(topic: &str) -> Option<Self> {
        let rest = topic.strip_prefix(TOPIC_PREFIX)?;
        let mut parts = rest.split('/');
        let family = match parts.next()? {
            "any" => Family::Any,
            m => Family::Model(m.parse().ok()?),
        };
        let shards: u32 = parts.next()?.parse().ok()?;
        let index: u32 = parts.next()?.parse().ok()?;
        let valid =
            parts.next().is_none() && shards.is_power_of_two() && shards <= MAX_SHARDS && index < shards;
        let shard = Self {
            family,
            shards,
            index,
        };
        // One name per shard: no leading zeros or signs.
        (valid && shard.topic() == topic).then_some(shard)
    }

    /// The DHT key every member of this shard provides (Kademlia keeps 20 of them: a sample for
    /// submitters).
    pub fn head_key(&self) -> Vec<u8> {
        blake3::Hasher::new_derive_key("fleetmesh offer shard head key v1")
            .update(self.topic().as_bytes())
            .finalize()
            .as_bytes()
            .to_vec()
    }

    /// The DHT key under which members of this shard in `slot` announce themselves.
    pub fn provider_key(&self, slot: u32) -> Vec<u8> {
        blake3::Hasher::new_derive_key("fleetmesh offer shard provider key v1")
            .update(self.topic().as_bytes())
            .update(&slot.to_be_bytes())
            .finalize()
            .as_bytes()
            .to_vec()
    }
}

/// The slot of `peer` (its peer id bytes): which of a shard's [`SLOTS`] keys it provides.
pub fn slot_of(peer: &[u8]) -> u32 {
    let h = blake3::Hasher::new_derive_key("fleetmesh offer shard slot v1")
        .update(peer)
        .finalize();
    u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap_or_default()) % SLOTS
}

/// Slots a member looks up to estimate its shard's size ([`sampled_slots`]).
pub const SAMPLED_SLOTS: usize = 6;

/// The slots a member in `own_slot` looks up to estimate its shard's size: [`SAMPLED_SLOTS`] of them,
/// spread evenly around the ring, its own excluded.
pub fn sampled_slots(own_slot: u32) -> impl Iterator<Item = u32> {
    (0..SAMPLED_SLOTS as u32).map(move |i| (own_slot + 1 + i * (SLOTS / SAMPLED_SLOTS as u32)) % SLOTS)
}

/// Bids an offer should draw from its shard, whatever the shard's size: a member bids with probability
/// [`bid_probability`], so that a submitter is not sent a bid by each of a thousand cars.
pub const BIDS_PER_OFFER: usize = 16;

/// The chance that a member of a shard of `members` cars (as estimated) bids on an offer it sees: 1 in a
/// shard of at most [`BIDS_PER_OFFER`], else `BIDS_PER_OFFER / members`.
pub fn bid_probability(members: usize) -> f64 {
    if members <= BIDS_PER_OFFER {
        1.0
    } else {
        BIDS_PER_OFFER as f64 / members as f64
    }
}

fn clamp_shards(shards: u32) -> u32 {
    shards.clamp(1, MAX_SHARDS).next_power_of_two().min(MAX_SHARDS)
}

/// The members of one shard, estimated from the providers found under a few of its slots (each count
/// at most [`MAX_PROVIDERS_PER_KEY`]); a full slot means at least that many.
pub fn members_estimate(found_per_slot: &[usize]) -> usize {
    if found_per_slot.is_empty() {
        return 0;
    }
    providers_found(found_per_slot) * SLOTS as usize / found_per_slot.len()
}

/// Providers found in all, each slot's count at most [`MAX_PROVIDERS_PER_KEY`].
fn providers_found(found_per_slot: &[usize]) -> usize {
    found_per_slot
        .iter()
        .map(|n| (*n).min(MAX_PROVIDERS_PER_KEY))
        .sum()
}

/// A cautious count of a shard's members from the same samples: the estimate less two standard
/// deviations of the providers found (about 98 % of draws are above it). A split is decided on this
/// count, so that sampling noise in a small shard (a few providers a slot) does not split it below
/// [`MIN_MEMBERS`]: at 96 members, six sampled slots find about nine providers, and the point estimate
/// ranged from 32 to 160.
pub fn members_lower_bound(found_per_slot: &[usize]) -> usize {
    if found_per_slot.is_empty() {
        return 0;
    }
    let total = providers_found(found_per_slot) as f64;
    let low = (total - 2.0 * total.sqrt()).max(0.0);
    (low * f64::from(SLOTS) / found_per_slot.len() as f64) as usize
}

/// The shard count to use next, given the current one, the members of this node's shard and the offers
/// a second it brings: doubled as often as it takes (in one step, so that a fleet under load reaches its
/// count at the next estimate) while a shard would be too full or too busy, each split assumed to halve
/// both, and each half keeping at least [`MIN_MEMBERS`]; halved (one step at a time) while both are
/// under a third of their bounds at half the shards.
pub fn next_shards(current: u32, members: usize, offers_per_s: f64) -> u32 {
    let current = clamp_shards(current);
    let (mut shards, mut members_now, mut offers_now) = (current, members, offers_per_s);
    while members_now / 2 >= MIN_MEMBERS
        && shards < MAX_SHARDS
        && (members_now > TARGET_MEMBERS || offers_now > MAX_OFFERS_PER_S)
    {
        shards *= 2;
        members_now /= 2;
        offers_now /= 2.0;
    }
    if shards > current {
        return shards;
    }
    let merged_members = members * 2;
    let merged_offers = offers_per_s * 2.0;
    if current > 1 && merged_members < TARGET_MEMBERS / 3 && merged_offers < MAX_OFFERS_PER_S / 3.0 {
        return current / 2;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_refuse_what_is_not_a_shard() {
        let model = ModelId::of(b"digits");
        for shards in [1, 2, 64, MAX_SHARDS] {
            for peer in 0u8..20 {
                let s = Shard::of(Family::Model(model), shards, &[peer; 38], 5);
                assert!(s.index < shards);
                assert_eq!(Shard::parse(&s.topic()), Some(s));
                let any = Shard::of(Family::Any, shards, &[peer; 38], 5);
                assert_eq!(Shard::parse(&any.topic()), Some(any));
            }
        }
        for bad in [
            "fleetmesh/offers/v1",
            "fleetmesh/offers/v2/any/3/0",
            "fleetmesh/offers/v2/any/4/4",
            "fleetmesh/offers/v2/any/4/1/x",
            "fleetmesh/offers/v2/zz/4/1",
            "fleetmesh/offers/v2/any/131072/1",
            "fleetmesh/offers/v2/any/04/1",
            "fleetmesh/offers/v2/any/+4/1",
        ] {
            assert_eq!(Shard::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn doubling_keeps_shard_ids_nested_and_members_spread_evenly() {
        let mut counts = vec![0usize; 16];
        for i in 0u32..16_000 {
            let peer = i.to_le_bytes();
            let s8 = Shard::of(Family::Any, 8, &peer, 0);
            let s16 = Shard::of(Family::Any, 16, &peer, 0);
            assert_eq!(s16.index % 8, s8.index);
            counts[s16.index as usize] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
        // The next day, another draw.
        let moved = (0u32..1_000)
            .filter(|i| {
                let p = i.to_le_bytes();
                Shard::of(Family::Any, 16, &p, 0) != Shard::of(Family::Any, 16, &p, ROTATION_MS)
            })
            .count();
        assert!(moved > 800, "{moved}");
    }

    #[test]
    fn a_fleet_of_a_hundred_is_never_split_below_the_smallest_shard_by_sampling_noise() {
        // 96 members, each in the slot its id gives; whichever slots a member samples, the cautious
        // count never splits the shard, however many offers it brings (the point estimate would).
        let mut per_slot = vec![0usize; SLOTS as usize];
        for i in 0u32..96 {
            per_slot[slot_of(&i.to_le_bytes()) as usize] += 1;
        }
        let mut point_splits = 0;
        for own in 0..SLOTS {
            let found: Vec<usize> = sampled_slots(own).map(|s| per_slot[s as usize]).collect();
            assert_eq!(next_shards(1, members_lower_bound(&found), 10.0), 1, "{found:?}");
            point_splits += usize::from(next_shards(1, members_estimate(&found), 10.0) > 1);
        }
        assert!(
            point_splits > 0,
            "the point estimate never split: the test shows nothing"
        );
    }

    #[test]
    fn shards_grow_with_members_and_offers_and_shrink_back() {
        // A small fleet stays in one shard however many offers it gets.
        assert_eq!(next_shards(1, 5, 200.0), 1);
        assert_eq!(next_shards(1, 40, 0.1), 1);
        // Too many members, or too many offers per car: split.
        assert_eq!(next_shards(1, 1_500, 0.1), 2);
        assert_eq!(next_shards(4, 200, 3.0), 16);
        // In one step as far as needed: 1,000 cars and 10 offers a second make 16 shards (62 members
        // and 0.6 offers a second each); never below the smallest shard.
        assert_eq!(next_shards(1, 1_000, 10.0), 16);
        assert_eq!(next_shards(1, 100, 50.0), 2);
        assert_eq!(next_shards(1, 100_000, 0.0), 128);
        // Quiet and small: merge.
        assert_eq!(next_shards(8, 60, 0.1), 4);
        assert_eq!(next_shards(1, 0, 0.0), 1);
        // The cautious count: half the estimate from nine providers, near it from a hundred.
        assert_eq!(members_lower_bound(&[2, 1, 2, 1, 2, 1]), 32);
        assert!(members_lower_bound(&[16; 6]) >= 800);
        assert_eq!(members_lower_bound(&[]), 0);
        // An estimate from saturated slots.
        assert_eq!(members_estimate(&[20, 25, 20]), 20 * SLOTS as usize);
        assert_eq!(members_estimate(&[1, 0, 2, 1]), SLOTS as usize);
        assert_eq!(members_estimate(&[]), 0);
    }
}
