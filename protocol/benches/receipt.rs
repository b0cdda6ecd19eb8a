//! Encode / decode throughput and sign / verify / batch-verify rates for a co-signed `Receipt`.
//!
//! `cargo bench -p fleetmesh-protocol`. Criterion prints time per iteration and elements per second.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fleetmesh_protocol::messages::{Budget, Receipt, Verdict, WorkClaim};
use fleetmesh_protocol::{JobId, ModelId, NodeKey, Signed, codec};

fn receipt(i: u64, worker: &NodeKey, submitter: &NodeKey) -> Signed<Receipt> {
    let claim = WorkClaim {
        job: JobId::of(&i.to_le_bytes()),
        model: ModelId::of(b"digits"),
        worker: worker.node_id(),
        submitter: submitter.node_id(),
        output_digest: *blake3::hash(&i.to_be_bytes()).as_bytes(),
        compute_us: 17,
        energy_uwh: 4,
        claimed_credit: 1_000,
        claimed_ms: 1_764_000_000_000 + i,
    };
    let claim = Signed::sign(claim, worker).unwrap();
    let body = Receipt {
        claim,
        verdict: Verdict::Accepted,
        credit: 1_000,
        issued_ms: 1_764_000_000_100 + i,
        budget: Signed::sign(
            Budget {
                payer: NodeKey::from_seed([3; 32]).node_id(),
                holder: submitter.node_id(),
                serial: 1,
                amount: u64::MAX,
                expires_ms: u64::MAX,
            },
            &NodeKey::from_seed([3; 32]),
        )
        .unwrap(),
        seq: i,
        spent: 1_000 * (i + 1),
    };
    Signed::sign(body, submitter).unwrap()
}

fn bench(c: &mut Criterion) {
    let worker = NodeKey::from_seed([1; 32]);
    let submitter = NodeKey::from_seed([2; 32]);
    let one = receipt(0, &worker, &submitter);
    let bytes = codec::encode(&one);

    let mut g = c.benchmark_group("receipt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| codec::encode(std::hint::black_box(&one))));
    g.bench_function("decode", |b| {
        b.iter(|| codec::decode::<Signed<Receipt>>(std::hint::black_box(&bytes)).unwrap())
    });
    g.bench_function("sign (worker claim + countersignature)", |b| {
        b.iter_batched(
            || 7u64,
            |i| receipt(i, &worker, &submitter),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("verify (2 signatures)", |b| {
        b.iter(|| std::hint::black_box(&one).verify().unwrap())
    });
    g.bench_function("decode + verify", |b| {
        b.iter(|| {
            codec::decode::<Signed<Receipt>>(std::hint::black_box(&bytes))
                .unwrap()
                .verify()
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("receipt batch");
    for n in [16u64, 64, 256] {
        let batch: Vec<Signed<Receipt>> = (0..n).map(|i| receipt(i, &worker, &submitter)).collect();
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("verify_batch {n}"), |b| {
            b.iter(|| Signed::verify_batch(std::hint::black_box(&batch)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
