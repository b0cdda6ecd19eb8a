//! Who pays: budget files (a payer's signed budget for one submitter, as the hex of its canonical
//! bytes on one line), issuing one, and the budget a local fleet's own payer gives each of its nodes.
//!
//! A node honours the payers its configuration lists (`[jobs] payers`, like bootstrap peers): as a worker
//! it bids only on offers paid from one of their budgets, and its ledger counts credit only against
//! them. As a submitter it pays its jobs from the budgets it holds (`[jobs] budgets`); without one it
//! cannot submit. `fleetmesh budget issue` writes a budget with a payer's key file.

use std::path::Path;

use fleetmesh_protocol::messages::Budget;
use fleetmesh_protocol::{NodeId, NodeKey, Signed, codec};

/// Why a budget file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BudgetFileError {
    /// The file could not be read or written.
    #[error("budget file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The system error.
        source: std::io::Error,
    },
    /// The file is not one line of hex.
    #[error("budget file {0}: not a budget (expected one line of hex, as `fleetmesh budget issue` writes)")]
    NotHex(String),
    /// The bytes are not a signed budget.
    #[error("budget file {path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// Why the bytes are refused.
        source: codec::DecodeError,
    },
    /// The payer's signature does not verify.
    #[error("budget file {0}: the payer's signature does not verify")]
    Signature(String),
}

/// The largest budget file read (a budget's hex is about 300 bytes).
const MAX_FILE: u64 = 4_096;

/// Credit a local fleet's payer gives each node (1,000 credits, in micro-credits).
pub const LOCAL_BUDGET: u64 = 1_000_000_000;
/// When a local fleet's budgets expire (2100-01-01): fixed, so that a node started again gets the very
/// same budget (a budget signed anew with another expiry would contradict the old one's receipts).
pub const LOCAL_BUDGET_EXPIRES_MS: u64 = 4_102_444_800_000;

/// A budget of `payer` for `holder`.
pub fn issue(payer: &NodeKey, holder: NodeId, serial: u64, amount: u64, expires_ms: u64) -> Signed<Budget> {
    let budget = Budget {
        payer: payer.node_id(),
        holder,
        serial,
        amount,
        expires_ms,
    };
    match Signed::sign(budget, payer) {
        Ok(b) => b,
        Err(_) => unreachable!("a budget is signed by its own payer's key"),
    }
}

/// The budget a local fleet (the demo, tests) gives `holder` from its own `payer`: [`LOCAL_BUDGET`]
/// until [`LOCAL_BUDGET_EXPIRES_MS`], serial 1 (the same budget every time it is made).
pub fn local_budget(payer: &NodeKey, holder: NodeId) -> Signed<Budget> {
    issue(payer, holder, 1, LOCAL_BUDGET, LOCAL_BUDGET_EXPIRES_MS)
}

/// Writes `budget` to `path` as one line of hex.
pub fn save(path: &Path, budget: &Signed<Budget>) -> Result<(), BudgetFileError> {
    let text = format!("{}\n", hex::encode(codec::encode(budget)));
    std::fs::write(path, text).map_err(|source| BudgetFileError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a budget file and checks the payer's signature.
pub fn load(path: &Path) -> Result<Signed<Budget>, BudgetFileError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| BudgetFileError::Io {
        path: name.clone(),
        source,
    })?;
    // A budget is a few hundred bytes of hex; refuse anything much larger before reading it.
    if meta.len() > MAX_FILE {
        return Err(BudgetFileError::NotHex(name));
    }
    let text = std::fs::read_to_string(path).map_err(|source| BudgetFileError::Io {
        path: name.clone(),
        source,
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| BudgetFileError::NotHex(name.clone()))?;
    let budget: Signed<Budget> = codec::decode(&bytes).map_err(|source| BudgetFileError::Decode {
        path: name.clone(),
        source,
    })?;
    budget.verify().map_err(|_| BudgetFileError::Signature(name))?;
    Ok(budget)
}
