//! Every decoder fed random, header-prefixed random, truncated and bit-flipped bytes: it returns `Err` for
//! anything it does not accept, never panics, and never holds more heap than its kind's size limit.
//!
//! `cargo test` runs 100,000 cases per decoder (1 % of the full run); the full run is 10 million each,
//! in release mode:
//!
//! ```text
//! FLEETMESH_FUZZ_CASES=10000000 cargo test --release -p fleetmesh-protocol --test decoders
//! ```
#![allow(missing_docs, unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use fleetmesh_protocol::codec::{self, Message};
use fleetmesh_protocol::messages::*;
use fleetmesh_protocol::{NodeKey, Signed};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// Counts the live heap bytes of the current thread while tracking is on, and their peak.
struct TrackingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize);
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        account(-(layout.size() as isize));
        out
    }
}

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// Runs `decode`, returning whether it accepted and the peak heap it held (the decoded value included).
fn measured<T: Message>(bytes: &[u8]) -> (Option<T>, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let result = codec::decode::<T>(bytes);
    TRACKING.with(|t| t.set(false));
    (result.ok(), PEAK.with(|p| p.get()).max(0) as usize)
}

fn samples<S: Strategy>(s: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| s.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// Cases per decoder: `FLEETMESH_FUZZ_CASES`, else 100,000.
fn cases() -> u32 {
    match std::env::var("FLEETMESH_FUZZ_CASES") {
        Ok(v) => v.parse().expect("FLEETMESH_FUZZ_CASES must be a number"),
        Err(_) => 100_000,
    }
}

fn fuzz<T: Message>(valid: Vec<Vec<u8>>) {
    let max_random = (T::MAX_LEN + 16).min(4096);
    let header = vec![codec::PROTOCOL_VERSION, T::tag()];
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0u8..4,
        proptest::collection::vec(any::<u8>(), 0..max_random),
        any::<usize>(),
        any::<usize>(),
    );
    runner
        .run(&strategy, |(mode, random, pick, cut)| {
            let sample = &valid[pick % valid.len()];
            let input = match mode {
                0 => random,
                1 => [header.as_slice(), &random].concat(),
                2 => sample[..cut % sample.len()].to_vec(),
                // A valid message with a few bytes flipped (positions and masks from the random bytes).
                _ => {
                    let mut flipped = sample.clone();
                    for pair in random.chunks(2).take(1 + cut % 4) {
                        let at =
                            (pair[0] as usize * 256 + *pair.get(1).unwrap_or(&0) as usize) % flipped.len();
                        flipped[at] ^= pair.get(1).copied().unwrap_or(1).max(1);
                    }
                    flipped
                }
            };
            let (decoded, peak) = measured::<T>(&input);
            prop_assert!(
                peak <= T::MAX_LEN,
                "{:?}: {} heap bytes for {} input bytes",
                T::KIND,
                peak,
                input.len()
            );
            if let Some(value) = decoded {
                prop_assert!(mode != 2, "{:?}: a truncated encoding was accepted", T::KIND);
                prop_assert_eq!(codec::encode(&value), input);
            }
            Ok(())
        })
        .unwrap();
    // The valid samples themselves decode, and an oversize input is refused before parsing.
    for sample in &valid {
        assert!(measured::<T>(sample).0.is_some());
    }
    let oversize = [header.as_slice(), &vec![0u8; T::MAX_LEN]].concat();
    assert!(matches!(
        codec::decode::<T>(&oversize),
        Err(codec::DecodeError::Oversize { .. })
    ));
}

fn signed_samples<T: fleetmesh_protocol::signing::Signable>(
    bodies: Vec<T>,
    key: &NodeKey,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let plain = bodies.iter().map(codec::encode).collect();
    let signed = bodies
        .into_iter()
        .map(|b| codec::encode(&Signed::sign(b, key).unwrap()))
        .collect();
    (plain, signed)
}

macro_rules! fuzz_signed_kind {
    ($name:ident, $T:ty, $strategy:expr, $key:expr) => {
        #[test]
        fn $name() {
            let (plain, signed) = signed_samples::<$T>(samples($strategy, 8), &$key);
            fuzz::<$T>(plain);
            fuzz::<Signed<$T>>(signed);
        }
    };
}

fuzz_signed_kind!(job_offer, JobOffer, arb_offer_for(key(1).node_id()), key(1));
fuzz_signed_kind!(bid, Bid, arb_bid_for(key(1).node_id()), key(1));
fuzz_signed_kind!(
    assignment,
    Assignment,
    arb_assignment_for(key(1).node_id()),
    key(1)
);
fuzz_signed_kind!(
    result_commit,
    ResultCommit,
    arb_commit_for(key(1).node_id()),
    key(1)
);
fuzz_signed_kind!(
    result_reveal,
    ResultReveal,
    arb_reveal_for(key(1).node_id()),
    key(1)
);
fuzz_signed_kind!(withdraw, Withdraw, arb_withdraw_for(key(1).node_id()), key(1));
fuzz_signed_kind!(
    work_claim,
    WorkClaim,
    arb_claim(key(1).node_id(), key(2).node_id()),
    key(1)
);
fuzz_signed_kind!(receipt, Receipt, arb_receipt(key(1), key(2)), key(2));
fuzz_signed_kind!(
    budget,
    Budget,
    arb_budget_for(payer().node_id(), key(2).node_id()),
    payer()
);

fuzz_signed_kind!(revocation, Revocation, arb_revocation(key(1), key(2)), key(2));

fuzz_signed_kind!(epoch_root, EpochRoot, arb_epoch_root(key(1).node_id()), key(1));

fuzz_signed_kind!(partial, Partial, arb_partial_for(key(1).node_id()), key(1));

#[test]
fn claim_messages() {
    fuzz::<ClaimRequest>(
        samples(arb_claim_request(), 8)
            .iter()
            .map(codec::encode)
            .collect(),
    );
    fuzz::<ClaimPage>(
        samples(arb_claim_page(key(1), key(2)), 8)
            .iter()
            .map(codec::encode)
            .collect(),
    );
    // A page claiming more entries than a page may hold reserves nothing for them.
    let page = samples(arb_claim_page(key(1), key(2)), 1).remove(0);
    let mut bytes = codec::encode(&ClaimPage {
        entries: Vec::new(),
        ..page
    });
    bytes.pop();
    bytes.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    let (decoded, peak) = measured::<ClaimPage>(&bytes);
    assert!(decoded.is_none());
    assert!(peak < 4096, "{peak}");
}

fuzz_signed_kind!(
    reveal_request,
    RevealRequest,
    arb_reveal_request_for(key(1).node_id()),
    key(1)
);

#[test]
fn work_report() {
    fuzz::<WorkReport>(
        samples(arb_work_report(key(1), key(2).node_id()), 8)
            .iter()
            .map(codec::encode)
            .collect(),
    );
}

#[test]
fn reply() {
    fuzz::<Reply>(samples(arb_reply(), 8).iter().map(codec::encode).collect());
}

#[test]
fn model_manifest() {
    fuzz::<ModelManifest>(samples(arb_manifest(), 8).iter().map(codec::encode).collect());
}

#[test]
fn huge_claimed_lengths_reserve_nothing() {
    // A manifest whose chunk list claims u32::MAX entries, and a reveal whose output claims 2^60 bytes.
    let mut manifest = codec::encode(&samples(arb_manifest(), 1).remove(0));
    manifest.truncate(manifest.len() / 2);
    manifest.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    let (decoded, peak) = measured::<ModelManifest>(&manifest);
    assert!(decoded.is_none());
    assert!(peak <= ModelManifest::MAX_LEN);
    let mut reveal = vec![codec::PROTOCOL_VERSION, ResultReveal::tag()];
    reveal.extend([0u8; 64]);
    reveal.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let (decoded, peak) = measured::<ResultReveal>(&reveal);
    assert!(decoded.is_none());
    assert!(peak < 1024, "{peak}");
}

#[test]
fn the_tracker_sees_the_decoded_heap() {
    let reveal = ResultReveal {
        job: fleetmesh_protocol::JobId::of(b"j"),
        worker: key(1).node_id(),
        output: vec![7; 10_000],
        salt: [0; 32],
        compute_us: 1,
        energy_uwh: 1,
    };
    let (decoded, peak) = measured::<ResultReveal>(&codec::encode(&reveal));
    assert_eq!(decoded, Some(reveal));
    assert!(peak >= 10_000, "{peak}");
}

#[test]
fn model_distribution_messages() {
    fuzz::<ManifestRequest>(
        samples(arb_manifest_request(), 8)
            .iter()
            .map(codec::encode)
            .collect(),
    );
    fuzz::<ChunkRequest>(
        samples(arb_chunk_request(), 8)
            .iter()
            .map(codec::encode)
            .collect(),
    );
    fuzz::<Chunk>(samples(arb_chunk(), 8).iter().map(codec::encode).collect());
    // A chunk claiming more bytes than the message holds, or an index past the largest manifest.
    let mut lying = vec![codec::PROTOCOL_VERSION, Chunk::tag()];
    lying.extend_from_slice(&[0u8; 32]);
    lying.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0x0f]);
    assert!(codec::decode::<Chunk>(&lying).is_err());
    let far = ChunkRequest {
        model: fleetmesh_protocol::ModelId::of(b"m"),
        index: MAX_CHUNKS as u32,
    };
    assert!(codec::decode::<ChunkRequest>(&codec::encode(&far)).is_err());
}
