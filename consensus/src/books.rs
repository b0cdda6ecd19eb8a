//! Receipts kept by their parties, and balance claims anyone can check.
//!
//! A receipt travels only to its worker; its submitter keeps it too. Each node, once an epoch has closed,
//! seals the receipts it is party to that were issued in the epoch: it orders them by leaf hash, builds a
//! Merkle tree (blake3, domain-separated leaves and inner nodes; an odd node is carried up unchanged),
//! signs an [`EpochRoot`] and publishes it. Its balance claim is then its receipts, page by page
//! ([`ClaimPage`]), each with its path to the epoch's root. A verifier ([`ClaimCheck`]) accepts a claim
//! only if every root is signed by the claimant and equal to the root the claimant published, every
//! receipt lies under its root, in its epoch, with the claimant as a party, every epoch is shown whole,
//! and no two epochs overlap; the balance is then the [`Ledger`] of those receipts (with the revocations
//! the verifier holds). Nothing here depends on having been online when a receipt travelled: the claim
//! carries everything, and a verifier needs only the published roots.

use std::collections::BTreeMap;
use std::ops::Range;

use fleetmesh_protocol::codec;
use fleetmesh_protocol::messages::{ClaimPage, EpochRoot, MAX_EPOCH_RECEIPTS, Receipt, Revocation};
use fleetmesh_protocol::{NodeId, Signed};

use crate::ledger::{Balance, Ledger};
use crate::payment::Payers;

/// A 32-byte tree hash.
pub type Hash = [u8; 32];

/// The root of a tree with no leaves.
pub fn empty_root() -> Hash {
    *blake3::Hasher::new_derive_key("fleetmesh receipt tree empty v1")
        .finalize()
        .as_bytes()
}

/// The leaf hash of a receipt: over its canonical encoding, signatures included.
pub fn leaf(receipt: &Signed<Receipt>) -> Hash {
    *blake3::Hasher::new_derive_key("fleetmesh receipt leaf v1")
        .update(&codec::encode(receipt))
        .finalize()
        .as_bytes()
}

fn inner(left: &Hash, right: &Hash) -> Hash {
    *blake3::Hasher::new_derive_key("fleetmesh receipt tree node v1")
        .update(left)
        .update(right)
        .finalize()
        .as_bytes()
}

/// A Merkle tree over leaf hashes, every level kept (for inclusion paths).
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree over `leaves`, in the order given.
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => inner(l, r),
                    [odd] => *odd,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root ([`empty_root`] for no leaves).
    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|l| l.first()) {
            Some(root) if !self.is_empty() => *root,
            _ => empty_root(),
        }
    }

    /// The sibling hashes from leaf `index` up to the root; `None` beyond the leaves.
    pub fn path(&self, index: usize) -> Option<Vec<Hash>> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                path.push(*sibling);
            }
            i /= 2;
        }
        Some(path)
    }
}

/// Whether `path` leads from `leaf`, at `index` among `count` leaves, to `root`.
pub fn verify_path(leaf: &Hash, index: u32, count: u32, path: &[Hash], root: &Hash) -> bool {
    if index >= count {
        return false;
    }
    let (mut hash, mut i, mut n) = (*leaf, index, count);
    let mut siblings = path.iter();
    while n > 1 {
        if i % 2 == 1 {
            let Some(s) = siblings.next() else { return false };
            hash = inner(s, &hash);
        } else if i + 1 < n {
            let Some(s) = siblings.next() else { return false };
            hash = inner(&hash, s);
        }
        i /= 2;
        n = n.div_ceil(2);
    }
    siblings.next().is_none() && hash == *root
}

/// The epoch of length `epoch_ms` that holds the instant `t_ms` (epochs are aligned to the Unix epoch).
pub fn epoch_of(t_ms: u64, epoch_ms: u64) -> Range<u64> {
    let start = t_ms - t_ms % epoch_ms.max(1);
    start..start.saturating_add(epoch_ms.max(1))
}

/// `node`'s sealed epoch `epoch`: the receipts given that were issued in it and have `node` as a party,
/// in leaf order (duplicates once), and the root over them (to be signed by `node`). `None` if more
/// than [`MAX_EPOCH_RECEIPTS`] qualify (epochs must be short enough for that never to happen).
pub fn seal(
    node: NodeId,
    epoch: Range<u64>,
    receipts: impl IntoIterator<Item = Signed<Receipt>>,
) -> Option<(EpochRoot, Vec<Signed<Receipt>>)> {
    let mut leaves: BTreeMap<Hash, Signed<Receipt>> = BTreeMap::new();
    for r in receipts {
        if epoch.contains(&r.body.issued_ms) && is_party(&node, &r) {
            leaves.insert(leaf(&r), r);
        }
    }
    let count = u32::try_from(leaves.len())
        .ok()
        .filter(|n| *n <= MAX_EPOCH_RECEIPTS)?;
    let root = Tree::new(leaves.keys().copied().collect()).root();
    let body = EpochRoot {
        node,
        start_ms: epoch.start,
        end_ms: epoch.end,
        receipts: count,
        root,
    };
    Some((body, leaves.into_values().collect()))
}

/// Whether `node` is the worker or the submitter of `r`.
pub fn is_party(node: &NodeId, r: &Signed<Receipt>) -> bool {
    r.body.claim.body.worker == *node || r.body.claim.body.submitter == *node
}

/// Why a balance claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// A root is not signed by the claimant (or its signature does not verify).
    #[error("the root of epoch {start_ms} is not signed by the claimant")]
    ForgedRoot {
        /// The epoch's start.
        start_ms: u64,
    },
    /// The claimant published no root for an epoch of its claim.
    #[error("no published root for epoch {start_ms}")]
    NotPublished {
        /// The epoch's start.
        start_ms: u64,
    },
    /// The claimant published two different roots for the epoch.
    #[error("two different roots published for epoch {start_ms}")]
    Equivocation {
        /// The epoch's start.
        start_ms: u64,
    },
    /// The root shown differs from the root the claimant published for the epoch.
    #[error("the root shown for epoch {start_ms} is not the one published")]
    RootMismatch {
        /// The epoch's start.
        start_ms: u64,
    },
    /// A receipt's path does not lead to its epoch's root.
    #[error("receipt {index} of epoch {start_ms} is not under the epoch's root")]
    NotInRoot {
        /// The epoch's start.
        start_ms: u64,
        /// Its leaf index.
        index: u32,
    },
    /// A receipt was issued outside its epoch, or the claimant is not one of its parties.
    #[error("receipt {index} of epoch {start_ms} is outside the epoch or not the claimant's")]
    NotOwn {
        /// The epoch's start.
        start_ms: u64,
        /// Its leaf index.
        index: u32,
    },
    /// A page does not continue where the epoch's last page ended, or covers an overlapping epoch.
    #[error("page of epoch {start_ms} from leaf {first} does not follow the pages before it")]
    OutOfOrder {
        /// The epoch's start.
        start_ms: u64,
        /// The page's first leaf.
        first: u32,
    },
    /// An epoch was not shown whole.
    #[error("epoch {start_ms} shows {shown} of its {receipts} receipts")]
    Incomplete {
        /// The epoch's start.
        start_ms: u64,
        /// Receipts shown.
        shown: u32,
        /// Receipts under the root.
        receipts: u32,
    },
    /// A receipt's signatures do not verify (or its worker is its submitter).
    #[error("{0} receipts of the claim are forged")]
    Forged(usize),
}

/// What a verifier learnt from a claim that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaim {
    /// The claimant.
    pub node: NodeId,
    /// Epochs shown.
    pub epochs: usize,
    /// Their receipts (the claimant as worker or submitter).
    pub receipts: usize,
    /// The claimant's balance as a worker under the verifier's payers.
    pub balance: Balance,
    /// The span of time the epochs cover (first start to last end), if any.
    pub span: Option<Range<u64>>,
}

/// A balance claim being checked, page by page.
#[derive(Debug)]
pub struct ClaimCheck {
    claimant: NodeId,
    /// Epoch start -> (its root, leaves shown so far).
    epochs: BTreeMap<u64, (EpochRoot, u32)>,
    receipts: Vec<Signed<Receipt>>,
}

impl ClaimCheck {
    /// An empty claim of `claimant`.
    pub fn new(claimant: NodeId) -> Self {
        Self {
            claimant,
            epochs: BTreeMap::new(),
            receipts: Vec::new(),
        }
    }

    /// Adds a page, given what was found published for its epoch (roots that are not the claimant's,
    /// not of this epoch or not validly signed are disregarded). Pages of one epoch must come in leaf
    /// order without gaps.
    pub fn add_page(&mut self, page: &ClaimPage, published: &[Signed<EpochRoot>]) -> Result<(), ClaimError> {
        let root = &page.root.body;
        let start_ms = root.start_ms;
        if root.node != self.claimant || page.root.verify().is_err() {
            return Err(ClaimError::ForgedRoot { start_ms });
        }
        let mut genuine: Vec<&Signed<EpochRoot>> = Vec::new();
        for p in published {
            if p.body.node == self.claimant
                && p.body.start_ms == start_ms
                && !genuine.contains(&p)
                && p.verify().is_ok()
            {
                genuine.push(p);
            }
        }
        match genuine.as_slice() {
            [] => return Err(ClaimError::NotPublished { start_ms }),
            [one] if *one == &page.root => {}
            [_] => return Err(ClaimError::RootMismatch { start_ms }),
            _ => return Err(ClaimError::Equivocation { start_ms }),
        }
        let out_of_order = ClaimError::OutOfOrder {
            start_ms,
            first: page.first,
        };
        match self.epochs.get(&start_ms) {
            Some((known, shown)) if known == root && *shown == page.first => {}
            Some(_) => return Err(out_of_order),
            None => {
                let overlaps = self
                    .epochs
                    .values()
                    .any(|(e, _)| e.start_ms < root.end_ms && root.start_ms < e.end_ms);
                if page.first != 0 || overlaps {
                    return Err(out_of_order);
                }
            }
        }
        for (i, entry) in page.entries.iter().enumerate() {
            let index = page.first + i as u32;
            let r = &entry.receipt;
            if !(root.start_ms..root.end_ms).contains(&r.body.issued_ms) || !is_party(&self.claimant, r) {
                return Err(ClaimError::NotOwn { start_ms, index });
            }
            if !verify_path(&leaf(r), index, root.receipts, &entry.path, &root.root) {
                return Err(ClaimError::NotInRoot { start_ms, index });
            }
        }
        let shown = page.first + page.entries.len() as u32;
        self.epochs.insert(start_ms, (root.clone(), shown));
        self.receipts
            .extend(page.entries.iter().map(|e| e.receipt.clone()));
        Ok(())
    }

    /// Whether epoch `start_ms` is shown whole, and the next leaf wanted if not.
    pub fn next_leaf(&self, start_ms: u64) -> Option<u32> {
        self.epochs
            .get(&start_ms)
            .and_then(|(root, shown)| (*shown < root.receipts).then_some(*shown))
    }

    /// Ends the check: every epoch must be whole and every receipt genuine. The balance is the ledger of
    /// the receipts shown, with `revocations` (those the verifier holds) and under `payers`.
    pub fn finish(
        self,
        revocations: &[Signed<Revocation>],
        payers: &Payers,
    ) -> Result<VerifiedClaim, ClaimError> {
        for (root, shown) in self.epochs.values() {
            if *shown != root.receipts {
                return Err(ClaimError::Incomplete {
                    start_ms: root.start_ms,
                    shown: *shown,
                    receipts: root.receipts,
                });
            }
        }
        let ledger = Ledger::with_revocations(&self.receipts, revocations, payers);
        if ledger.forged > 0 {
            return Err(ClaimError::Forged(ledger.forged));
        }
        let span = match (self.epochs.values().next(), self.epochs.values().last()) {
            (Some((first, _)), Some((last, _))) => Some(first.start_ms..last.end_ms),
            _ => None,
        };
        Ok(VerifiedClaim {
            node: self.claimant,
            epochs: self.epochs.len(),
            receipts: self.receipts.len(),
            balance: ledger.balances.get(&self.claimant).copied().unwrap_or_default(),
            span,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| *blake3::hash(&(i as u64).to_le_bytes()).as_bytes())
            .collect()
    }

    #[test]
    fn every_leaf_of_every_tree_size_has_a_path_and_no_other_leaf_fits_it() {
        for n in 0..40 {
            let l = leaves(n);
            let tree = Tree::new(l.clone());
            assert_eq!(tree.len(), n);
            if n == 0 {
                assert_eq!(tree.root(), empty_root());
            }
            for (i, leaf) in l.iter().enumerate() {
                let path = tree.path(i).unwrap();
                assert!(
                    verify_path(leaf, i as u32, n as u32, &path, &tree.root()),
                    "n={n} i={i}"
                );
                // Another index, another leaf, a path one hash short or long, an index past the end: refused.
                if n > 1 {
                    let other = (i as u32 + 1) % n as u32;
                    assert!(!verify_path(leaf, other, n as u32, &path, &tree.root()));
                }
                assert!(!verify_path(leaf, n as u32, n as u32, &path, &tree.root()));
                assert!(!verify_path(&[7; 32], i as u32, n as u32, &path, &tree.root()));
                let mut longer = path.clone();
                longer.push([0; 32]);
                assert!(!verify_path(leaf, i as u32, n as u32, &longer, &tree.root()));
                if let Some((_, shorter)) = path.split_last() {
                    assert!(!verify_path(leaf, i as u32, n as u32, shorter, &tree.root()));
                }
            }
            assert!(tree.path(n).is_none());
        }
    }
}
