//! The `fleetmesh keys` commands as a user runs them: real binary, real files.
#![allow(missing_docs, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn fleetmesh(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmesh"))
        .env("FLEETMESH_HOME", home)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generate_then_show_prints_the_same_node_id() {
    let home = tempfile::tempdir().unwrap();
    let generated = fleetmesh(home.path(), &["keys", "generate"]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let id = String::from_utf8(generated.stdout).unwrap();
    assert_eq!(id.trim().len(), 64);
    let key_path = home.path().join("node.key");
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let shown = fleetmesh(home.path(), &["keys", "show"]);
    assert!(shown.status.success());
    assert_eq!(String::from_utf8(shown.stdout).unwrap(), id);

    // No silent overwrite; --force replaces.
    let again = fleetmesh(home.path(), &["keys", "generate"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(stderr(&again).lines().count(), 1);
    let forced = fleetmesh(home.path(), &["keys", "generate", "--force"]);
    assert!(forced.status.success());
    assert_ne!(String::from_utf8(forced.stdout).unwrap(), id);
}

#[test]
fn bad_key_files_give_one_line_and_fail() {
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("node.key");

    let missing = fleetmesh(home.path(), &["keys", "show"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("no key file"));

    assert!(fleetmesh(home.path(), &["keys", "generate"]).status.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = fleetmesh(home.path(), &["keys", "show"]);
    assert!(!open.status.success());
    assert_eq!(stderr(&open).lines().count(), 1, "{}", stderr(&open));
    assert!(stderr(&open).contains("chmod 600"));

    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let garbage = fleetmesh(home.path(), &["keys", "show"]);
    assert!(!garbage.status.success());
    assert_eq!(stderr(&garbage).lines().count(), 1);
    assert!(stderr(&garbage).contains("malformed"));

    let usage = fleetmesh(home.path(), &["keys", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}
