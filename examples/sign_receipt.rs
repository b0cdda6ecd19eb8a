//! A payer funds a submitter with a budget; a worker signs its work claim; the submitter countersigns it
//! into a receipt paid from that budget; the receipt goes out as bytes and is verified.
//!
//! ```sh
//! cargo run -p fleetmesh-examples --example sign_receipt
//! ```

use fleetmesh_protocol::messages::{Budget, Receipt, Verdict, WorkClaim};
use fleetmesh_protocol::{JobId, ModelId, NodeKey, Signed, codec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a real node the keys come from `fleetmesh keys generate`; fixed seeds keep this example repeatable.
    let worker = NodeKey::from_seed([1; 32]);
    let submitter = NodeKey::from_seed([2; 32]);
    let payer = NodeKey::from_seed([3; 32]);
    let budget = Budget {
        payer: payer.node_id(),
        holder: submitter.node_id(),
        serial: 1,
        amount: 1_000_000,
        expires_ms: 1_765_000_000_000,
    };
    let budget = Signed::sign(budget, &payer)?;

    let output = b"the worker's output bytes";
    let claim = WorkClaim {
        job: JobId::of(b"an example job"),
        model: ModelId::of(b"an example model"),
        worker: worker.node_id(),
        submitter: submitter.node_id(),
        output_digest: *blake3::hash(output).as_bytes(),
        compute_us: 12,
        energy_uwh: 3,
        claimed_credit: 1_000,
        claimed_ms: 1_764_000_000_000,
    };
    let claim = Signed::sign(claim, &worker)?;
    let receipt = Receipt {
        claim,
        verdict: Verdict::Accepted,
        credit: 1_000,
        issued_ms: 1_764_000_000_050,
        budget,
        seq: 0,
        spent: 1_000,
    };
    let receipt = Signed::sign(receipt, &submitter)?;

    let bytes = codec::encode(&receipt);
    println!("receipt: {} bytes on the wire", bytes.len());

    let received: Signed<Receipt> = codec::decode(&bytes)?;
    received.verify()?;
    println!(
        "verified: worker {} earned {} micro-credits for job {}",
        received.body.claim.body.worker.short(),
        received.body.credit,
        received.body.claim.body.job.short()
    );

    let mut forged = bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let rejected = codec::decode::<Signed<Receipt>>(&forged)
        .map_err(|e| e.to_string())
        .and_then(|r| r.verify().map_err(|e| e.to_string()));
    println!(
        "a receipt with one flipped byte: {}",
        rejected.err().unwrap_or_default()
    );
    Ok(())
}
