//! Wall-clock time, in the one unit every message and record uses: milliseconds since the Unix epoch.
//! The lowest room of the node: it imports nothing. Also each node's own point of a period, which spreads
//! periodic work of a fleet over the period.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The first time after `now_ms` at the point of every `period_ms` that belongs to `seed` (a node's id):
/// an offset drawn from the seed, past each wall-clock multiple of the period. Nodes that do a periodic
/// piece of work at their own point spread it over the period, instead of all at once.
pub fn next_phase_point(now_ms: u64, period_ms: u64, seed: &[u8]) -> u64 {
    let period = period_ms.max(1);
    let h = blake3::Hasher::new_derive_key("fleetmesh period phase v1")
        .update(seed)
        .finalize();
    let phase = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default()) % period;
    let point = now_ms / period * period + phase;
    if point > now_ms { point } else { point + period }
}

/// [`next_phase_point`], but at least half a period after `now_ms` (a period later when the next point
/// is nearer): work just done at another time is not done again at once.
pub fn next_phase_point_apart(now_ms: u64, period_ms: u64, seed: &[u8]) -> u64 {
    let point = next_phase_point(now_ms, period_ms, seed);
    if point - now_ms < period_ms / 2 {
        point + period_ms.max(1)
    } else {
        point
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_point_comes_once_a_period_at_the_seeds_own_offset() {
        let (period, seed) = (300_000, b"node a".as_slice());
        let first = next_phase_point(1_000_000, period, seed);
        assert!(first > 1_000_000 && first <= 1_000_000 + period);
        assert_eq!(next_phase_point(first, period, seed), first + period);
        assert_eq!(next_phase_point(first - 1, period, seed), first);
        // Other seeds land elsewhere in the period.
        let offsets: std::collections::BTreeSet<u64> = (0..50u32)
            .map(|i| next_phase_point(0, period, &i.to_le_bytes()) % period)
            .collect();
        assert!(offsets.len() > 45, "{offsets:?}");
        // Apart: never sooner than half a period, and still at the seed's point.
        assert_eq!(next_phase_point_apart(first - 1, period, seed), first + period);
        assert_eq!(next_phase_point_apart(first - period / 2, period, seed), first);
    }
}
