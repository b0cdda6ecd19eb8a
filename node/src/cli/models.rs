//! `fleetmesh models`: the installed models (embedded, and fetched under the assets folder) with their id,
//! weights size and agreement rule, and the numeric class this node's outputs belong to.

use std::path::Path;

use fleetmesh_node::inference::{Registry, numeric_class};

/// Prints one line per model installed with the assets under `assets`.
pub(crate) fn run(assets: &Path) -> anyhow::Result<()> {
    let registry = Registry::with_defaults(Some(assets))?;
    println!("{:<10} {:<64} {:>10}  rule", "name", "id", "weights");
    for m in registry.models() {
        let man = m.manifest();
        println!(
            "{:<10} {:<64} {:>7} kB  {:?}",
            man.name,
            m.id(),
            man.weights_len / 1024,
            man.rule
        );
    }
    let class = numeric_class();
    println!(
        "numeric class: {} {} {} (Exact results agree only within one class)",
        class.backend, class.features, class.arch
    );
    if registry.by_name("mnist-cnn").is_none() {
        eprintln!("(mnist-cnn not installed: run scripts/fetch-assets.sh mnist)");
    }
    Ok(())
}
