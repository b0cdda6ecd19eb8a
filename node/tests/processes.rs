//! Multi-process tests: real `fleetmesh` binaries on loopback, started as a user would.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fleetmesh");

/// Digit 0 from the held-out set, as the JSON array of 64 pixels a job takes.
const DIGIT_ZERO: &str = "[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]";

/// The process ids scripts/testnet.sh wrote, node 1 first.
fn testnet_pids(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Sends one request to a local API, returning the status code and the JSON body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    request(port, method, path, body, None)
}

/// POST to a testnet node's local API with its API token (`TESTNET_DIR/nodeN/api.token`).
fn post(dir: &Path, node: u16, port: u16, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    let token = std::fs::read_to_string(dir.join(format!("node{node}/api.token"))).ok()?;
    request(port, "POST", path, body, Some(token.trim()))
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    fleetmesh_node::client::exchange(addr, method, path, body, Duration::from_secs(30), token).ok()
}

/// GET a path from a local API, returning the JSON body.
fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    http(port, "GET", path, "").map(|(_, json)| json)
}

fn alive(pid: &str) -> bool {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .contains(") Z ");
    // A killed multi-threaded process shows its main thread as a zombie while other threads are still
    // exiting and holding its files (e.g. the database lock): dead only once they are gone too.
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    !zombie || threads > 1
}

/// Ports unlikely to collide with other tests or runs: derived from the process id.
fn port_base(range_start: u16) -> u16 {
    range_start + (std::process::id() % 1_000) as u16 * 10
}

/// The loopback address of a local API port.
fn api_addr_of(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Runs scripts/testnet.sh with this test's binary, folder and ports.
fn testnet(dir: &Path, p2p: u16, api: u16, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/testnet.sh"))
        .args(args)
        .env("FLEETMESH_BIN", BIN)
        .env("TESTNET_DIR", dir)
        .env("TESTNET_PORT", p2p.to_string())
        .env("TESTNET_API_PORT", api.to_string())
        // Receipts sealed under published roots within seconds, so that claims can be checked.
        .env("TESTNET_EPOCH_SECS", "2")
        .output()
        .unwrap()
}

#[test]
fn jobs_submitted_over_the_local_api_are_verified_by_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (p2p, api) = (port_base(21_000), port_base(41_000));
    assert!(testnet(dir.path(), p2p, api, &["start", "3"]).status.success());
    let result = std::panic::catch_unwind(|| {
        wait_connected(api, 3);
        // Digit 0 from the held-out set: node 1 submits, the two other processes compute and agree.
        let pixels = DIGIT_ZERO;
        // Without the node's API token nothing is submitted.
        let body = format!(r#"{{"model":"digits","input":{pixels},"replicas":2,"wait":true}}"#);
        let (code, err) = http(api, "POST", "/v1/jobs", &body).unwrap();
        assert_eq!(code, 401, "{err}");
        let body = format!(r#"{{"model":"digits","input":{pixels},"replicas":2,"wait":true,"key":"first"}}"#);
        let (code, view) = post(dir.path(), 1, api, "/v1/jobs", &body).expect("POST /v1/jobs");
        assert_eq!(code, 202, "{view}");
        // The same request again (a client retrying after a dropped connection) returns the same job.
        let (code, again) = post(dir.path(), 1, api, "/v1/jobs", &body).expect("POST /v1/jobs");
        assert_eq!((code, &again["job"]), (200, &view["job"]), "{again}");
        assert_eq!(view["state"], "accepted", "{view}");
        assert_eq!(view["agreeing"].as_array().unwrap().len(), 2);
        let values: Vec<f64> = view["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let class = (0..10).max_by(|a, b| values[*a].total_cmp(&values[*b])).unwrap();
        assert_eq!(class, 0);
        let again = get_json(api, &format!("/v1/jobs/{}", view["job"].as_str().unwrap())).unwrap();
        assert_eq!(again["state"], "accepted");
        let (code, err) = post(dir.path(), 1, api, "/v1/jobs", r#"{"model":"nope","input":[1]}"#).unwrap();
        assert_eq!(code, 404, "{err}");
        let (code, err) = post(
            dir.path(),
            1,
            api,
            "/v1/jobs",
            r#"{"model":"digits","input":[1,2,3]}"#,
        )
        .unwrap();
        assert_eq!(code, 400);
        assert!(err["error"].as_str().unwrap().contains("expected 64"), "{err}");
        let earnings = get_json(api, "/v1/earnings").unwrap();
        assert_eq!(earnings.as_array().unwrap().len(), 2, "{earnings}");
        let home = tempfile::tempdir().unwrap();
        let out = fleetmesh(home.path(), &["earnings", "--api", &format!("127.0.0.1:{api}")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let table = String::from_utf8_lossy(&out.stdout);
        assert_eq!(table.lines().count(), 3, "header and two workers:\n{table}");
        // A worker's own line: credit, energy and the electricity those jobs cost at its tariff.
        let worker = api + 1;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let rows = get_json(worker, "/v1/earnings").unwrap_or_default();
            if rows
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["this_node"] == true))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = fleetmesh(
            home.path(),
            &["earnings", "--api", &format!("127.0.0.1:{worker}")],
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("this node: 1 jobs; credit 1000 µc")
                && table.contains("electricity at its tariff"),
            "{table}"
        );
        // The worker's statement: its one job, paid by the testnet's payer, and the receipt that shows it.
        let payer_key = dir.path().join("payer.key");
        let out = fleetmesh(
            home.path(),
            &["keys", "show", "--key", payer_key.to_str().unwrap()],
        );
        let payer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let st = get_json(worker, "/v1/statement").unwrap();
        let by_payer = st["by_payer"].as_array().unwrap();
        assert_eq!(by_payer.len(), 1, "{st}");
        assert_eq!(
            (&by_payer[0]["payer"], &by_payer[0]["jobs"]),
            (&payer.into(), &1.into()),
            "{st}"
        );
        assert_eq!(st["receipt_ids"].as_array().unwrap().len(), 1, "{st}");
        let car = get_json(worker, "/v1/vehicle").unwrap();
        assert_eq!(
            (&car["source"], &car["admitted"]),
            (&"none".into(), &true.into()),
            "{car}"
        );
        assert_eq!(car["jobs_computed"], 1, "{car}");
        // Another node checks the worker's claim against the roots it published in the DHT, as a
        // payer would: its one job, confirmed from the receipt, its inclusion path and the root.
        let worker_id = get_json(worker, "/v1/status").unwrap()["node_id"]
            .as_str()
            .unwrap()
            .to_string();
        let check = ["earnings", "--api", &api_addr_of(api + 2), "--check", &worker_id];
        let confirmed = poll(Duration::from_secs(20), || {
            let out = fleetmesh(home.path(), &check);
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            (out.status.success() && line.contains(": 1 jobs")).then_some(line)
        });
        assert!(confirmed.is_some(), "the worker's claim was not confirmed");
        let rows = get_json(api + 2, "/v1/earnings").unwrap();
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["source"] == "checked claim" && r["node"] == worker_id.as_str() && r["jobs"] == 1),
            "{rows}"
        );
        // A mistaken id is one clear line and a non-zero exit.
        let out = fleetmesh(
            home.path(),
            &["earnings", "--api", &api_addr_of(api), "--check", "nope"],
        );
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);

        // The CLI submits a batch file through the same API, one job per row.
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/digits/sample.csv");
        let home = tempfile::tempdir().unwrap();
        let api_addr = format!("127.0.0.1:{api}");
        let token = dir.path().join("node1/api.token");
        let out = fleetmesh(
            home.path(),
            &[
                "submit",
                "--model",
                "digits",
                "--input",
                sample,
                "--wait",
                "--api",
                &api_addr,
                "--token-file",
                token.to_str().unwrap(),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.matches(" accepted class ").count(), 5, "{stdout}");
    });
    assert!(testnet(dir.path(), p2p, api, &["stop"]).status.success());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn testnet_script_starts_five_connected_nodes_and_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/testnet.sh");
    let (p2p, api) = (port_base(20_000), port_base(40_000));
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("FLEETMESH_BIN", BIN)
            .env("TESTNET_DIR", dir.path())
            .env("TESTNET_PORT", p2p.to_string())
            .env("TESTNET_API_PORT", api.to_string())
            .output()
            .unwrap()
    };
    let started = run(&["start", "5"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let stdout = String::from_utf8_lossy(&started.stdout).into_owned();
    assert_eq!(stdout.matches("peer_id").count(), 5, "{stdout}");
    let pids = testnet_pids(&dir.path().join("pids"));
    assert_eq!(pids.len(), 5);

    let start = Instant::now();
    let mut counts = vec![0u64; 5];
    while start.elapsed() < Duration::from_secs(30) {
        for (i, count) in counts.iter_mut().enumerate() {
            if let Some(status) = get_json(api + i as u16, "/v1/status") {
                *count = status["connected_peers"].as_u64().unwrap_or(0);
            }
        }
        if counts.iter().all(|c| *c == 4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = run(&["status"]);
    println!("{}", String::from_utf8_lossy(&status.stdout));
    let stopped = run(&["stop"]);
    assert!(stopped.status.success());
    assert_eq!(counts, vec![4; 5], "every node should see the 4 others");
    println!("5 nodes fully connected after {:?}", start.elapsed());
    // `testnet.sh stop` waits for the processes (and kills them after 5 s); their last threads may take a
    // moment longer to leave /proc.
    let stopping = Instant::now();
    for pid in &pids {
        while alive(pid) {
            assert!(
                stopping.elapsed() < Duration::from_secs(5),
                "process {pid} survived stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn fleetmesh(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env("FLEETMESH_HOME", home)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn submitting_to_an_unreachable_node_is_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/digits/sample.csv");
    let out = fleetmesh(
        home.path(),
        &[
            "submit",
            "--model",
            "digits",
            "--input",
            sample,
            "--api",
            &closed.to_string(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no fleetmesh node answers"), "{err}");
}

#[test]
fn bad_addresses_and_config_fields_are_one_line_and_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let out = fleetmesh(home.path(), &["run", "--bootstrap", "/ip4/not-an-ip/tcp/1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--bootstrap"), "{err}");

    let cfg = home.path().join("bad.toml");
    std::fs::write(&cfg, "[net]\ntarget_peers = \"lots\"\n").unwrap();
    let out = fleetmesh(home.path(), &["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml line 2, key `net.target_peers`") && err.contains("expected usize"),
        "{err}"
    );

    std::fs::write(&cfg, "[net]\nlisten = []\nsurprise = true\n").unwrap();
    let out = fleetmesh(home.path(), &["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
}

#[test]
fn an_unreachable_bootstrap_peer_is_retried_and_the_node_keeps_running() {
    let home = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let other = tempfile::tempdir().unwrap();
    assert!(fleetmesh(other.path(), &["keys", "generate"]).status.success());
    let peer = String::from_utf8(fleetmesh(other.path(), &["keys", "show", "--peer-id"]).stdout).unwrap();
    let peer = peer.trim();
    let log_path = home.path().join("node.log");
    let mut child = Command::new(BIN)
        .env("FLEETMESH_HOME", home.path())
        .env("RUST_LOG", "info")
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{closed}/p2p/{peer}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Retried with backoff (1 s, then 2 s) while the node keeps running.
    let retried = poll(Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        (log.matches("bootstrap peer unreachable").count() >= 2).then_some(())
    });
    assert!(child.try_wait().unwrap().is_none(), "the node exited");
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(retried.is_some(), "expected retries in the log:\n{log}");
}

#[test]
fn demo_verifies_every_job_and_ends_with_a_json_summary() {
    let home = tempfile::tempdir().unwrap();
    let out = fleetmesh(home.path(), &["demo", "--jobs", "60", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "jobs",
        "verified",
        "failed",
        "accuracy",
        "jobs_per_s",
        "mean_replicas",
        "receipts",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {last}");
    }
    assert_eq!(summary["jobs"], 60);
    assert_eq!(summary["verified"], 60);
    assert_eq!(summary["failed"], 0);
    // Two agreeing workers per job, three while nobody has validated history with the submitter yet.
    let receipts = summary["receipts"].as_u64().unwrap();
    assert!((120..=180).contains(&receipts), "{last}");
    assert!(summary["accuracy"].as_f64().unwrap() >= 0.9);
    // One line per car; the lines add up to the ledger's totals, and every paid job carries energy.
    let cars = summary["cars"].as_array().unwrap();
    assert_eq!(cars.len(), 5, "{last}");
    let sum = |key: &str| -> u64 { cars.iter().map(|c| c[key].as_u64().unwrap()).sum() };
    assert_eq!(sum("jobs"), receipts, "one paid job per accepted replica");
    assert_eq!(sum("energy_uwh"), summary["total_energy_uwh"].as_u64().unwrap());
    assert_eq!(sum("credit"), summary["total_credit"].as_u64().unwrap());
    assert!(sum("energy_uwh") > 0);
    for c in cars {
        assert_eq!(
            c["jobs"].as_u64() > Some(0),
            c["energy_uwh"].as_u64() > Some(0),
            "{c}"
        );
        assert_eq!(c["admission"], "admitted", "{c}");
        assert!(c["state"].as_str().unwrap().contains("parked"), "{c}");
        assert!(c["admitted_s"].as_f64().unwrap() > 0.0, "{c}");
    }
    assert_eq!(cars[0]["role"], "submitter");

    // A driver gets into one car halfway: every job is still verified, and that car ends not admitted.
    let out = fleetmesh(
        home.path(),
        &["demo", "--jobs", "100", "--drivers-return", "1", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["verified"], 100, "{summary}");
    let last_car = summary["cars"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last_car["admission"], "no: driver present", "{last_car}");
}

#[test]
fn demo_with_an_adversarial_node_accepts_no_wrong_output() {
    let home = tempfile::tempdir().unwrap();
    let out = fleetmesh(
        home.path(),
        &["demo", "--jobs", "60", "--malicious", "1", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["malicious"], 1);
    assert_eq!(summary["accepted_wrong"], 0, "{summary}");
    assert_eq!(summary["verified"], 60, "{summary}");
    // The liar is drawn for some jobs and out-voted there: those jobs needed a third worker.
    assert!(summary["mean_replicas"].as_f64().unwrap() > 2.0, "{summary}");
    // The adversary earned nothing.
    let cars = summary["cars"].as_array().unwrap();
    assert_eq!(cars[1]["role"], "adversary", "{summary}");
    assert_eq!(cars[1]["credit"], 0, "{summary}");

    // Adaptive replication with a liar and a lazy worker among six workers: still nothing wrong accepted,
    // and fewer than two workers per job once the honest ones are trusted.
    let out = fleetmesh(
        home.path(),
        &[
            "demo",
            "--nodes",
            "7",
            "--jobs",
            "300",
            "--malicious",
            "2",
            "--adaptive",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["accepted_wrong"], 0, "{summary}");
    assert_eq!(summary["verified"], 300, "{summary}");
    assert!(summary["mean_replicas"].as_f64().unwrap() < 1.6, "{summary}");

    let bad = fleetmesh(home.path(), &["demo", "--nodes", "3", "--malicious", "1"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("honest workers must outnumber adversaries"), "{err}");
}

/// Polls every node's `/v1/status` until each sees `n - 1` peers (or 30 s pass).
fn wait_connected(api: u16, n: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        // Connected to everyone, and everyone's gossip subscriptions known (offers reach every worker).
        let full = (0..n).all(|i| {
            get_json(api + i, "/v1/status").is_some_and(|s| {
                s["connected_peers"].as_u64() == Some(u64::from(n - 1))
                    && s["topic_peers"].as_u64() >= Some(u64::from(n - 1))
            })
        });
        if full {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the testnet did not connect within 30 s");
}

/// Accepted jobs over every worker in `/v1/earnings` (one per accepted receipt).
fn accepted_receipts(api: u16) -> u64 {
    get_json(api, "/v1/earnings")
        .and_then(|e| {
            e.as_array()
                .map(|rows| rows.iter().filter_map(|r| r["jobs"].as_u64()).sum())
        })
        .unwrap_or(0)
}

fn signal(pid: &str, sig: &str) {
    assert!(Command::new("kill").args([sig, pid]).status().unwrap().success());
}

#[test]
fn a_submitter_killed_with_sigkill_restarts_with_every_job_and_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let (p2p, api) = (port_base(22_000), port_base(42_000));
    assert!(testnet(dir.path(), p2p, api, &["start", "3"]).status.success());
    let pids_file = dir.path().join("pids");
    let result = std::panic::catch_unwind(|| {
        wait_connected(api, 3);
        let submitter = api + 2; // node 3; nodes 1 and 2 work
        let pixels = DIGIT_ZERO;
        let submit = |wait: bool| {
            let body = format!(r#"{{"model":"digits","input":{pixels},"replicas":2,"wait":{wait}}}"#);
            let (code, view) = post(dir.path(), 3, submitter, "/v1/jobs", &body).expect("POST /v1/jobs");
            assert_eq!(code, 202, "{view}");
            view
        };
        // Five jobs verified before the crash.
        let mut done = Vec::new();
        for _ in 0..5 {
            let view = submit(true);
            assert_eq!(view["state"], "accepted", "{view}");
            done.push(view["job"].as_str().unwrap().to_string());
        }
        let receipts_before = accepted_receipts(submitter);
        assert_eq!(receipts_before, 10);

        // Freeze the workers so that the next jobs stay pending, submit them, and kill the submitter.
        let pids = testnet_pids(&pids_file);
        signal(&pids[0], "-STOP");
        signal(&pids[1], "-STOP");
        let pending: Vec<String> = (0..10)
            .map(|_| {
                let view = submit(false);
                assert_eq!(view["state"], "pending", "{view}");
                view["job"].as_str().unwrap().to_string()
            })
            .collect();
        let argv = argv_of(&pids[2]);
        kill9(&pids[2]);

        // Restart it exactly as the script started it, and let the workers go on.
        let log = std::fs::File::create(dir.path().join("node3-restarted.log")).unwrap();
        let restarted_child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let restarted = restarted_child.id().to_string();
        std::fs::write(&pids_file, format!("{}\n{}\n{restarted}\n", pids[0], pids[1])).unwrap();
        signal(&pids[0], "-CONT");
        signal(&pids[1], "-CONT");

        let start = Instant::now();
        let mut states = Vec::new();
        while start.elapsed() < Duration::from_secs(90) {
            states = done
                .iter()
                .chain(&pending)
                .map(|id| {
                    get_json(submitter, &format!("/v1/jobs/{id}"))
                        .map(|v| v["state"].as_str().unwrap_or("?").to_string())
                        .unwrap_or_else(|| "unreachable".into())
                })
                .collect::<Vec<_>>();
            if states.iter().all(|s| s == "accepted") {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = std::fs::read_to_string(dir.path().join("node3-restarted.log")).unwrap_or_default();
        assert!(
            states.iter().all(|s| s == "accepted"),
            "after the restart: {states:?}\n{log}"
        );
        // The five earlier verdicts' receipts were on disk; the ten re-offered jobs added their own.
        assert_eq!(accepted_receipts(submitter), receipts_before + 20, "{log}");
        assert!(log.contains("resumed from the store"), "{log}");
        restarted_child
    });
    assert!(testnet(dir.path(), p2p, api, &["stop"]).status.success());
    match result {
        Ok(mut child) => {
            child.wait().unwrap();
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The command line a running process was started with.
fn argv_of(pid: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Kills a process with SIGKILL and waits until every thread of it is gone.
fn kill9(pid: &str) {
    signal(pid, "-KILL");
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(5), "kill -9 did not kill");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `limit`.
fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_killed_with_sigkill_after_committing_reveals_from_its_store_and_is_paid() {
    let dir = tempfile::tempdir().unwrap();
    let (p2p, api) = (port_base(23_000), port_base(43_000));
    assert!(testnet(dir.path(), p2p, api, &["start", "3"]).status.success());
    let pids_file = dir.path().join("pids");
    let result = std::panic::catch_unwind(|| {
        wait_connected(api, 3);
        let (worker, submitter) = (api, api + 2);
        let worker_id = get_json(worker, "/v1/status").unwrap()["node_id"]
            .as_str()
            .unwrap()
            .to_string();
        let pids = testnet_pids(&pids_file);
        // The other worker is frozen: the job gets one worker, which commits; reveals wait for the second.
        signal(&pids[1], "-STOP");
        let pixels = DIGIT_ZERO;
        let body = format!(r#"{{"model":"digits","input":{pixels},"replicas":2,"wait":false}}"#);
        let (code, view) = post(dir.path(), 3, submitter, "/v1/jobs", &body).expect("POST /v1/jobs");
        assert_eq!(code, 202, "{view}");
        let job = view["job"].as_str().unwrap().to_string();
        let committed = poll(Duration::from_secs(20), || {
            let view = get_json(submitter, &format!("/v1/jobs/{job}"))?;
            let workers = view["workers"].as_array()?.clone();
            workers
                .iter()
                .any(|w| w["node"] == worker_id.as_str() && w["state"] == "committed")
                .then_some(())
        });
        assert!(committed.is_some(), "the worker never committed");

        // kill -9 the worker that committed, restart it as the script started it, let the other go on.
        let argv = argv_of(&pids[0]);
        kill9(&pids[0]);
        let log_path = dir.path().join("node1-restarted.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let restarted = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(
            &pids_file,
            format!("{}\n{}\n{}\n", restarted.id(), pids[1], pids[2]),
        )
        .unwrap();
        signal(&pids[1], "-CONT");

        let verdict = poll(Duration::from_secs(60), || {
            let view = get_json(submitter, &format!("/v1/jobs/{job}"))?;
            (view["state"] != "pending").then_some(view)
        });
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let view = verdict.unwrap_or_else(|| panic!("no verdict\n{log}"));
        assert_eq!(view["state"], "accepted", "{view}\n{log}");
        let agreeing: Vec<&str> = view["agreeing"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            agreeing.contains(&worker_id.as_str()),
            "the restarted worker did not agree: {view}\n{log}"
        );
        assert!(log.contains("resumed from the store"), "{log}");
        // It revealed from its store and was paid for the job: its receipt is in the submitter's ledger.
        let paid = poll(Duration::from_secs(10), || {
            let rows = get_json(submitter, "/v1/earnings")?;
            rows.as_array()?
                .iter()
                .any(|r| r["node"] == worker_id.as_str() && r["jobs"].as_u64() == Some(1))
                .then_some(())
        });
        assert!(paid.is_some(), "the restarted worker was not paid\n{log}");
        restarted
    });
    assert!(testnet(dir.path(), p2p, api, &["stop"]).status.success());
    match result {
        Ok(mut child) => {
            child.wait().unwrap();
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Chromium's headless DOM of a page after its scripts ran for `budget_ms` of virtual time; `None` if
/// Debian's chromium is not installed.
fn rendered_dom(url: &str, budget_ms: u32) -> Option<String> {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(["--dump-dom", url])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn each_dashboard_shows_its_node_in_a_real_browser_and_metrics_parse_and_move() {
    if Command::new("chromium").arg("--version").output().is_err() {
        fleetmesh_node::testkit::skip_unless_ci("Debian's chromium is not installed (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p2p, api) = (port_base(23_000), port_base(43_000));
    assert!(testnet(dir.path(), p2p, api, &["start", "3"]).status.success());
    let result = std::panic::catch_unwind(|| {
        wait_connected(api, 3);
        for i in 0..3 {
            let status = get_json(api + i, "/v1/status").unwrap();
            let peer_id = status["peer_id"].as_str().unwrap();
            let dom = rendered_dom(&format!("http://127.0.0.1:{}/", api + i), 3_000).unwrap();
            assert!(
                dom.contains(&format!(r#"<span id="peer-id" class="mono">{peer_id}</span>"#)),
                "node {i}: the page does not show its peer id:\n{dom}"
            );
            assert!(
                dom.contains(&format!(
                    r#"<span id="peer-count">{}</span>"#,
                    status["connected_peers"]
                )),
                "node {i}: the page's peer count differs from /v1/status:\n{dom}"
            );
        }

        // /metrics is valid Prometheus text, and its counters move with work.
        let scrape = || -> prometheus_parse::Scrape {
            let agent: ureq::Agent = ureq::Agent::config_builder().proxy(None).build().into();
            let body = agent
                .get(format!("http://127.0.0.1:{api}/metrics"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
        };
        let value = |scrape: &prometheus_parse::Scrape, name: &str| -> f64 {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum()
        };
        let before = scrape();
        assert_eq!(value(&before, "fleetmesh_connected_peers"), 2.0);
        let home = tempfile::tempdir().unwrap();
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/digits/sample.csv");
        let api_addr = format!("127.0.0.1:{api}");
        let token = dir.path().join("node1/api.token");
        let out = fleetmesh(
            home.path(),
            &[
                "submit",
                "--model",
                "digits",
                "--input",
                sample,
                "--wait",
                "--api",
                &api_addr,
                "--token-file",
                token.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let after = scrape();
        assert_eq!(
            value(&after, "fleetmesh_jobs_submitted_total")
                - value(&before, "fleetmesh_jobs_submitted_total"),
            5.0
        );
        assert_eq!(value(&after, "fleetmesh_verdicts_total"), 5.0);
        assert!(value(&after, "fleetmesh_receipts") >= 5.0);

        // The dashboard lists the jobs with their verdicts; `fleetmesh status` summarises the same.
        let dom = rendered_dom(&format!("http://127.0.0.1:{api}/"), 3_000).unwrap();
        assert_eq!(
            dom.matches(r#"<td class="accepted">accepted</td>"#).count(),
            5,
            "{dom}"
        );
        let out = fleetmesh(home.path(), &["status", "--api", &api_addr]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("2 peers connected"), "{text}");
        assert!(text.contains("5 submitted: 5 accepted"), "{text}");
    });
    assert!(testnet(dir.path(), p2p, api, &["stop"]).status.success());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
