//! `fleetmesh budget`: a payer issues a budget to a submitter (a file the submitter lists under
//! `[jobs] budgets`), or anyone shows what a budget file holds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use fleetmesh_node::{keyfile, pay};
use fleetmesh_protocol::NodeId;

#[derive(Debug, Subcommand)]
pub(crate) enum BudgetAction {
    /// Sign a budget with a payer's key file and write it for its holder.
    Issue {
        /// The payer's key file (`fleetmesh keys generate --key FILE` makes one) [default: HOME/node.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Node id of the submitter that may spend it.
        #[arg(long, value_name = "NODE_ID")]
        holder: NodeId,
        /// Credit it holds, in credits (1 credit = 1,000,000 micro-credits).
        #[arg(long)]
        credits: u64,
        /// Days it stays valid.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// The payer's number for it; two budgets of one payer need two numbers [default: the time now].
        #[arg(long)]
        serial: Option<u64>,
        /// File to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a budget file's signature and print what it holds.
    Show {
        /// The budget file.
        file: PathBuf,
    },
}

/// Runs a `budget` action.
pub(crate) fn run(home: &Path, action: BudgetAction) -> anyhow::Result<()> {
    match action {
        BudgetAction::Issue {
            key,
            holder,
            credits,
            days,
            serial,
            out,
        } => {
            let path = key.unwrap_or_else(|| home.join("node.key"));
            let payer = keyfile::load(&path)?;
            anyhow::ensure!(
                payer.node_id() != holder,
                "a payer cannot fund itself: --holder is the payer's own node id"
            );
            let amount = credits.checked_mul(1_000_000).context("--credits is too large")?;
            let now = fleetmesh_node::clock::now_ms();
            let expires = now.saturating_add(days.saturating_mul(24 * 3_600_000));
            let budget = pay::issue(&payer, holder, serial.unwrap_or(now), amount, expires);
            pay::save(&out, &budget)?;
            eprintln!("wrote {}", out.display());
            println!("{}", describe(&budget.body));
        }
        BudgetAction::Show { file } => {
            let budget = pay::load(&file)?;
            println!("{}", describe(&budget.body));
        }
    }
    Ok(())
}

fn describe(b: &fleetmesh_protocol::messages::Budget) -> String {
    format!(
        "payer {} holder {} serial {} amount {} credits expires_ms {}",
        b.payer,
        b.holder,
        b.serial,
        b.amount as f64 / 1e6,
        b.expires_ms
    )
}
