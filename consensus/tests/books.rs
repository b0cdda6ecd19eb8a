//! Balance claims are checked from receipts, inclusion paths and the roots the claimant published: a
//! whole, honest claim gives the same balance as the ledger of the claimant's receipts; a receipt that is
//! not under the root, a root signed by another key or differing from the published one, a page that
//! skips or repeats leaves, an epoch shown in part, a receipt of someone else or from outside the epoch,
//! and a forged receipt under a genuine root are each refused with their own error. A revocation counts
//! against a claim with the evidence it carries, whatever the claimant left out.
#![allow(missing_docs, clippy::unwrap_used)]

use fleetmesh_consensus::books::{self, ClaimCheck, ClaimError, Tree};
use fleetmesh_consensus::ledger::Ledger;
use fleetmesh_consensus::payment::Payers;
use fleetmesh_protocol::messages::{
    Budget, ClaimEntry, ClaimPage, EpochRoot, MAX_CLAIM_PAGE, Receipt, Revocation, Verdict, WorkClaim,
};
use fleetmesh_protocol::{JobId, ModelId, NodeKey, Signed};

fn key(i: u8) -> NodeKey {
    NodeKey::from_seed([i; 32])
}

const PAYER: u8 = 100;
const WORKER: u8 = 1;
const EPOCH_MS: u64 = 60_000;

fn payers() -> Payers {
    Payers::new([key(PAYER).node_id()])
}

/// Receipt number `n` for `worker` from submitter `submitter`, issued at `issued_ms` (accepted, 10 µc).
fn receipt(worker: u8, submitter: u8, n: u32, issued_ms: u64) -> Signed<Receipt> {
    let budget = Budget {
        payer: key(PAYER).node_id(),
        holder: key(submitter).node_id(),
        serial: 1,
        amount: 1_000_000,
        expires_ms: 10 * EPOCH_MS,
    };
    let claim = WorkClaim {
        job: JobId::of(&n.to_le_bytes()),
        model: ModelId::of(b"m"),
        worker: key(worker).node_id(),
        submitter: key(submitter).node_id(),
        output_digest: [1; 32],
        compute_us: 10,
        energy_uwh: 7,
        claimed_credit: 10,
        claimed_ms: issued_ms,
    };
    let body = Receipt {
        claim: Signed::sign(claim, &key(worker)).unwrap(),
        verdict: Verdict::Accepted,
        credit: 10,
        issued_ms,
        budget: Signed::sign(budget, &key(PAYER)).unwrap(),
        seq: u64::from(n),
        spent: 10 * (u64::from(n) + 1),
    };
    Signed::sign(body, &key(submitter)).unwrap()
}

/// The worker's receipts of epochs 0 and 1 (from two submitters), and a receipt where it is the submitter.
fn receipts() -> Vec<Signed<Receipt>> {
    let mut all: Vec<_> = (0..300u32)
        .map(|n| receipt(WORKER, 2 + (n % 2) as u8, n, 1 + u64::from(n) * 37))
        .collect();
    all.extend((300..310u32).map(|n| receipt(WORKER, 2, n, EPOCH_MS + u64::from(n))));
    all.push(receipt(5, WORKER, 999, 10));
    all
}

/// An epoch sealed as a node seals it: the signed root and the pages of its claim.
fn sealed(epoch: u64, all: &[Signed<Receipt>]) -> (Signed<EpochRoot>, Vec<ClaimPage>) {
    let (root, leaves) = books::seal(
        key(WORKER).node_id(),
        books::epoch_of(epoch * EPOCH_MS, EPOCH_MS),
        all.iter().cloned(),
    )
    .unwrap();
    let root = Signed::sign(root, &key(WORKER)).unwrap();
    (root.clone(), pages(&root, &leaves))
}

fn pages(root: &Signed<EpochRoot>, leaves: &[Signed<Receipt>]) -> Vec<ClaimPage> {
    let tree = Tree::new(leaves.iter().map(books::leaf).collect());
    assert_eq!(tree.root(), root.body.root);
    leaves
        .chunks(MAX_CLAIM_PAGE)
        .enumerate()
        .map(|(p, chunk)| ClaimPage {
            root: root.clone(),
            first: (p * MAX_CLAIM_PAGE) as u32,
            entries: chunk
                .iter()
                .enumerate()
                .map(|(i, r)| ClaimEntry {
                    receipt: r.clone(),
                    path: tree.path(p * MAX_CLAIM_PAGE + i).unwrap(),
                })
                .collect(),
        })
        .collect()
}

/// Checks the pages against `published` and finishes the claim.
fn check(pages: &[ClaimPage], published: &[&Signed<EpochRoot>]) -> Result<books::VerifiedClaim, ClaimError> {
    let mut claim = ClaimCheck::new(key(WORKER).node_id());
    let published: Vec<Signed<EpochRoot>> = published.iter().map(|r| (*r).clone()).collect();
    for page in pages {
        claim.add_page(page, &published)?;
    }
    claim.finish(&[], &payers())
}

#[test]
fn a_whole_claim_gives_the_ledger_of_the_claimants_receipts() {
    let all = receipts();
    let (root0, pages0) = sealed(0, &all);
    let (root1, pages1) = sealed(1, &all);
    assert_eq!(root0.body.receipts, 301, "300 as worker, 1 as submitter");
    assert_eq!(pages0.len(), 2, "two pages for epoch 0");
    let claim = check(&[pages0, pages1].concat(), &[&root0, &root1]).unwrap();
    let ledger = Ledger::from_receipts(&all, &payers());
    assert_eq!(claim.balance, ledger.balances[&key(WORKER).node_id()]);
    assert_eq!(claim.balance.jobs, 310);
    assert_eq!((claim.epochs, claim.receipts), (2, 311));
    assert_eq!(claim.span, Some(0..2 * EPOCH_MS));
}

#[test]
fn a_receipt_missing_from_the_root_is_refused() {
    let all = receipts();
    let (root, mut pages) = sealed(0, &all);
    // A receipt minted after sealing, put in place of a sealed one with that one's path.
    pages[0].entries[3].receipt = receipt(WORKER, 2, 5_000, 100);
    assert!(matches!(
        check(&pages, &[&root]),
        Err(ClaimError::NotInRoot { index: 3, .. })
    ));
    // Or added at the end of the last page (beyond the root's count: the page does not even decode).
    let (root, mut pages) = sealed(0, &all);
    let extra = ClaimEntry {
        receipt: receipt(WORKER, 2, 5_001, 100),
        path: pages[1].entries[0].path.clone(),
    };
    pages[1].entries.push(extra);
    assert!(matches!(
        check(&pages, &[&root]),
        Err(ClaimError::NotInRoot { .. })
    ));
    let bytes = fleetmesh_protocol::codec::encode(&pages[1]);
    assert!(fleetmesh_protocol::codec::decode::<ClaimPage>(&bytes).is_err());
}

#[test]
fn a_forged_or_unpublished_root_is_refused() {
    let all = receipts();
    let (root, pages) = sealed(0, &all);
    // A root over a larger set, signed by another key in the claimant's name.
    let mut bigger = all.clone();
    bigger.push(receipt(WORKER, 2, 6_000, 200));
    let (body, leaves) = books::seal(key(WORKER).node_id(), 0..EPOCH_MS, bigger).unwrap();
    let forged = Signed {
        signature: key(9).sign_digest(&fleetmesh_protocol::signing::signing_digest(&body)),
        body: body.clone(),
    };
    let forged_pages = pages_with(&forged, &leaves);
    assert!(matches!(
        check(&forged_pages, &[&forged]),
        Err(ClaimError::ForgedRoot { start_ms: 0 })
    ));
    // The same larger root honestly signed, but not the one published: refused too.
    let second = Signed::sign(body, &key(WORKER)).unwrap();
    assert!(matches!(
        check(&pages_with(&second, &leaves), &[&root]),
        Err(ClaimError::RootMismatch { start_ms: 0 })
    ));
    assert!(matches!(
        check(&pages, &[]),
        Err(ClaimError::NotPublished { start_ms: 0 })
    ));
    // A forged root in the DHT is disregarded; two genuine roots for one epoch are proof of
    // equivocation.
    assert!(matches!(
        check(&pages, &[&forged]),
        Err(ClaimError::NotPublished { start_ms: 0 })
    ));
    assert!(matches!(
        check(&pages, &[&root, &second]),
        Err(ClaimError::Equivocation { start_ms: 0 })
    ));
}

fn pages_with(root: &Signed<EpochRoot>, leaves: &[Signed<Receipt>]) -> Vec<ClaimPage> {
    pages(root, leaves)
}

#[test]
fn pages_must_be_whole_in_order_and_the_claimants() {
    let all = receipts();
    let (root, pages) = sealed(0, &all);
    assert!(matches!(
        check(&pages[..1], &[&root]),
        Err(ClaimError::Incomplete {
            shown: 256,
            receipts: 301,
            ..
        })
    ));
    assert!(matches!(
        check(&[pages[0].clone(), pages[0].clone()], &[&root]),
        Err(ClaimError::OutOfOrder { first: 0, .. })
    ));
    assert!(matches!(
        check(&pages[1..], &[&root]),
        Err(ClaimError::OutOfOrder { first: 256, .. })
    ));
    // Someone else's receipt, or one from another epoch, under a root the claimant signed.
    for stranger in [receipt(7, 2, 7_000, 100), receipt(WORKER, 2, 7_001, EPOCH_MS + 5)] {
        let mut leaves: Vec<_> = all
            .iter()
            .filter(|r| r.body.issued_ms < EPOCH_MS)
            .cloned()
            .collect();
        leaves.push(stranger);
        let body = EpochRoot {
            node: key(WORKER).node_id(),
            start_ms: 0,
            end_ms: EPOCH_MS,
            receipts: leaves.len() as u32,
            root: Tree::new(leaves.iter().map(books::leaf).collect()).root(),
        };
        let root = Signed::sign(body, &key(WORKER)).unwrap();
        assert!(matches!(
            check(&pages_with(&root, &leaves), &[&root]),
            Err(ClaimError::NotOwn { .. })
        ));
    }
}

#[test]
fn a_forged_receipt_under_a_genuine_root_is_refused() {
    let mut all = receipts();
    let mut fake = receipt(WORKER, 2, 8_000, 100);
    // The submitter's countersignature made with the worker's own key.
    fake.signature = key(WORKER).sign_digest(&fleetmesh_protocol::signing::signing_digest(&fake.body));
    all.push(fake);
    let (root, pages) = sealed(0, &all);
    assert_eq!(check(&pages, &[&root]), Err(ClaimError::Forged(1)));
}

#[test]
fn a_claim_that_leaves_out_its_rejection_still_loses_the_revoked_credit() {
    // The worker's epoch 0 as it sealed it: its accepted receipts only. Submitter 2 rejected it on
    // another job (job 1000) and revoked receipt 0; the worker kept that rejection out of its books.
    let all = receipts();
    let (root0, pages0) = sealed(0, &all);
    let (root1, pages1) = sealed(1, &all);
    let rejection = {
        let mut body = receipt(WORKER, 2, 1000, 50).body;
        body.verdict = Verdict::Rejected;
        body.credit = 0;
        Signed::sign(body, &key(2)).unwrap()
    };
    let revoked = &all[0];
    assert_eq!(revoked.body.claim.body.submitter, key(2).node_id());
    let revocation = Signed::sign(
        Revocation {
            job: revoked.body.claim.body.job,
            worker: key(WORKER).node_id(),
            submitter: key(2).node_id(),
            evidence: rejection,
            issued_ms: 60,
        },
        &key(2),
    )
    .unwrap();
    let mut claim = ClaimCheck::new(key(WORKER).node_id());
    for page in [pages0, pages1].concat() {
        claim.add_page(&page, &[root0.clone(), root1.clone()]).unwrap();
    }
    let checked = claim.finish(&[revocation], &payers()).unwrap();
    assert_eq!(checked.balance.jobs, 309, "one of 310 receipts revoked");
    assert_eq!(checked.balance.credit, 309 * 10);
}
