//! `fleetmesh`: the node binary every car runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetmesh_node::config::{ConfigError, KadMode, NodeConfig};
use fleetmesh_node::inference::executor::{Executor, ExecutorConfig};
use fleetmesh_node::inference::{self, Registry, digits, mnist};
use fleetmesh_node::{client, demo, input, keyfile, net};
use fleetmesh_protocol::NodeKey;
use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;

/// fleetmesh: idle parked cars as one peer-to-peer inference fleet.
#[derive(Debug, Parser)]
#[command(name = "fleetmesh", version, about, long_about = None)]
struct Cli {
    /// Folder for this node's key and data.
    #[arg(long, global = true, env = "FLEETMESH_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    /// Folder of fetched models and data (scripts/fetch-assets.sh).
    #[arg(long, global = true, env = "FLEETMESH_ASSETS", default_value = "assets")]
    assets: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local fleet in this process doing verified inference on the embedded digits model.
    Demo {
        /// Nodes in the fleet (the first one submits the jobs).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Jobs to submit (held-out digits images).
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        /// Agreeing workers required per job.
        #[arg(long, default_value_t = 2)]
        replicas: u8,
        /// Jobs in flight at once.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
        /// Nodes that misbehave (alternately: wrong outputs, lazy made-up outputs); demo only.
        #[arg(long, default_value_t = 0)]
        malicious: usize,
        /// Adaptive replication: replicas follow the workers' reputation instead of --replicas.
        #[arg(long)]
        adaptive: bool,
        /// Where every car's simulated clock starts, "ddd hh:mm" (cars commute on weekdays 07:15-17:45).
        #[arg(long, default_value = "tue 01:00", value_parser = parse_clock)]
        clock: String,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Workers whose driver gets in halfway through: their running jobs are preempted and reassigned.
        #[arg(long, default_value_t = 0)]
        drivers_return: usize,
        /// Print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Run this car's node: join the mesh and serve the local API until Ctrl-C.
    Run(RunArgs),
    /// Create or show this node's identity key.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Submit jobs through a running node's local API: one job per input row (or line of text).
    Submit {
        /// Model name (see `fleetmesh models`).
        #[arg(long)]
        model: String,
        /// Input file: CSV rows or a PNG for image models, one sentence per line for minilm.
        #[arg(long)]
        input: PathBuf,
        /// Agreeing workers required per job [default: the node chooses by the workers' reputation
        /// (adaptive replication)].
        #[arg(long)]
        replicas: Option<u8>,
        /// Wait for each job's verdict and print it.
        #[arg(long)]
        wait: bool,
        /// The node's local API.
        #[arg(long, default_value = "127.0.0.1:7700")]
        api: std::net::SocketAddr,
    },
    /// Show a running node's state: peers, jobs, models, its own earnings.
    Status {
        /// The node's local API.
        #[arg(long, default_value = "127.0.0.1:7700")]
        api: std::net::SocketAddr,
        /// Print the JSON the node returned.
        #[arg(long)]
        json: bool,
    },
    /// Show credit, jobs and energy per node, from the receipts a running node has seen.
    Earnings {
        /// The node's local API.
        #[arg(long, default_value = "127.0.0.1:7700")]
        api: std::net::SocketAddr,
        /// Print the JSON the node returned.
        #[arg(long)]
        json: bool,
    },
    /// List the installed models: name, id, weights size, agreement rule.
    Models,
    /// Run one local inference and print the result.
    Infer {
        /// Model name (see `fleetmesh models`).
        #[arg(long)]
        model: String,
        /// Input file: CSV rows or a PNG image for image models.
        #[arg(long)]
        input: PathBuf,
    },
    /// Train the embedded digits model from the committed data set and write its weights.
    TrainDigits {
        /// Where to write the safetensors weights.
        #[arg(long, default_value = "node/assets/digits/digits-cnn.safetensors")]
        out: PathBuf,
        /// Training epochs.
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        /// Random seed (initialisation and shuffling).
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Print the configuration file format with every default.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML) [default: HOME/fleetmesh.toml if it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Key file [default: HOME/node.key; created on first run].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Listen address (repeatable; replaces net.listen), e.g. /ip4/0.0.0.0/tcp/4001.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Bootstrap peer (repeatable; added to net.bootstrap), e.g. /ip4/192.0.2.1/tcp/4001/p2p/12D3Koo...
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// External address others can reach this node at (repeatable).
    #[arg(long = "external", value_name = "MULTIADDR")]
    external: Vec<Multiaddr>,
    /// Local API address (replaces api.listen).
    #[arg(long, value_name = "IP:PORT")]
    api: Option<std::net::SocketAddr>,
    /// Kademlia mode (replaces net.kademlia_mode).
    #[arg(long, value_enum)]
    kad_mode: Option<KadMode>,
    /// Serve as a relay for peers behind NAT (sets net.relay_server).
    #[arg(long)]
    relay_server: bool,
    /// The listen addresses are reachable as they are: advertise them (sets net.public).
    #[arg(long)]
    public: bool,
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Write a new ed25519 key file (mode 0600) and print its node id.
    Generate {
        /// Key file to write [default: HOME/node.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Replace an existing key file (its identity, credit and reputation are lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the node id of a key file.
    Show {
        /// Key file to read [default: HOME/node.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print the libp2p peer id instead of the node id.
        #[arg(long)]
        peer_id: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print a complete, commented default configuration.
    Example,
    /// Check a configuration file and print it with defaults filled in.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".fleetmesh")
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},libp2p=warn,libp2p_gossipsub=error"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(home: &Path, explicit: Option<&Path>) -> Result<NodeConfig, ConfigError> {
    match explicit {
        Some(path) => NodeConfig::load(path),
        None => {
            let default = home.join("fleetmesh.toml");
            if default.exists() {
                NodeConfig::load(&default)
            } else {
                Ok(NodeConfig::default())
            }
        }
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<NodeKey> {
    match keyfile::load(path) {
        Ok(key) => Ok(key),
        Err(keyfile::KeyFileError::Missing(_)) => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).context("the system random source failed")?;
            let key = NodeKey::from_seed(seed);
            keyfile::save(path, &key, false)?;
            tracing::info!(path = %path.display(), "created a new node key");
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

fn run_node(home: &Path, assets: &Path, args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(home, args.config.as_deref())?;
    if !args.listen.is_empty() {
        cfg.net.listen = args.listen;
    }
    cfg.net.bootstrap.extend(args.bootstrap);
    cfg.net.external_addresses.extend(args.external);
    if let Some(api) = args.api {
        cfg.api.listen = api;
    }
    if let Some(mode) = args.kad_mode {
        cfg.net.kademlia_mode = mode;
    }
    cfg.net.relay_server |= args.relay_server;
    cfg.net.public |= args.public;
    cfg.validate()?;
    let key = load_or_create_key(&args.key.unwrap_or_else(|| home.join("node.key")))?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let home = home.to_path_buf();
        let assets = assets.is_dir().then(|| assets.to_path_buf());
        let node = fleetmesh_node::node::start(key, cfg, &home, assets.as_deref(), cancel.clone()).await?;
        println!("peer_id {}", node.net.peer_id());
        println!("api http://{}", node.api_addr);
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        tracing::info!("shutting down");
        cancel.cancel();
        node.join().await;
        Ok(())
    })
}

/// `fleetmesh infer --model minilm`: one sentence per line; prints each embedding's first values and the
/// cosine similarity of consecutive sentences.
fn embed_texts(registry: &Registry, id: fleetmesh_protocol::ModelId, input: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?;
    let lines: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    anyhow::ensure!(!lines.is_empty(), "{}: no text lines", input.display());
    let executor = Executor::start(registry.clone(), ExecutorConfig::default());
    let out = executor.run_blocking(&id, lines.clone())?;
    let vectors: Vec<Vec<f32>> = out.outputs.iter().map(|o| inference::f32s(o)).collect();
    for (i, (line, v)) in lines.iter().zip(&vectors).enumerate() {
        let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:.4}")).collect();
        println!(
            "line {i}: {} dims [{}, ...]  {:?}",
            v.len(),
            head.join(", "),
            String::from_utf8_lossy(line)
        );
    }
    for (i, pair) in vectors.windows(2).enumerate() {
        let cos: f32 = pair[0].iter().zip(&pair[1]).map(|(a, b)| a * b).sum();
        println!("cosine(line {i}, line {}) = {cos:.4}", i + 1);
    }
    Ok(())
}

fn submit(
    model: &str,
    input: &Path,
    replicas: Option<u8>,
    wait: bool,
    api: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let bodies: Vec<serde_json::Value> = match model {
        "digits" | "mnist-cnn" => {
            let (pixels, side, max) = if model == "digits" {
                (digits::PIXELS, 8, digits::MAX_PIXEL)
            } else {
                (mnist::PIXELS, 28, 255)
            };
            input::read_images(input, pixels, side, max)?
                .into_iter()
                .map(|(x, _)| serde_json::json!({ "model": model, "input": x, "replicas": replicas, "wait": wait }))
                .collect()
        }
        _ => std::fs::read_to_string(input)
            .with_context(|| format!("cannot read {}", input.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::json!({ "model": model, "text": l, "replicas": replicas, "wait": wait }))
            .collect(),
    };
    anyhow::ensure!(!bodies.is_empty(), "{}: no inputs", input.display());
    for (i, body) in bodies.iter().enumerate() {
        let (_, view) = client::call(
            api,
            "POST",
            "/v1/jobs",
            Some(body),
            std::time::Duration::from_secs(120),
        )?;
        let job = view["job"].as_str().unwrap_or("?");
        let state = view["state"].as_str().unwrap_or("?");
        let detail = match view["values"].as_array() {
            Some(v) if v.len() == 10 => {
                let values: Vec<f32> = v.iter().map(|x| x.as_f64().unwrap_or(f64::MIN) as f32).collect();
                format!("class {}", inference::argmax(&values))
            }
            Some(v) => format!("{} values", v.len()),
            None => view["reason"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "row {i}: job {job} {state} {detail} receipts {}",
            view["receipts"]
        );
    }
    Ok(())
}

/// `fleetmesh status`: a compact summary of a running node.
fn status(api: std::net::SocketAddr, json: bool) -> anyhow::Result<()> {
    let timeout = std::time::Duration::from_secs(10);
    let (code, s) = client::call(api, "GET", "/v1/status", None, timeout)?;
    anyhow::ensure!(code == 200, "the node answered {code}: {s}");
    if json {
        println!("{s}");
        return Ok(());
    }
    let (_, earnings) = client::call(api, "GET", "/v1/earnings", None, timeout)?;
    let mine = earnings
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == s["node_id"]))
        .cloned()
        .unwrap_or_default();
    let j = &s["jobs"];
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let models: Vec<String> = s["models"]
        .as_array()
        .map(|m| m.iter().map(str_of).collect())
        .unwrap_or_default();
    println!(
        "node     {} (fleetmesh {})",
        str_of(&s["peer_id"]),
        str_of(&s["version"])
    );
    println!("uptime   {} s", s["uptime_s"]);
    println!(
        "mesh     {} peers connected, {} in the DHT routing table",
        s["connected_peers"], s["routing_table_peers"]
    );
    println!(
        "jobs     {} submitted: {} accepted, {} failed, {} pending; {} computed as a worker",
        j["submitted"], j["accepted"], j["failed"], j["pending"], j["work_done"]
    );
    println!(
        "earned   {} µc for {} accepted jobs, {} µWh ({} receipts held)",
        mine["credit"].as_u64().unwrap_or(0),
        mine["jobs"].as_u64().unwrap_or(0),
        mine["energy_uwh"].as_u64().unwrap_or(0),
        j["receipts"]
    );
    println!("models   {}", models.join(", "));
    println!("dashboard http://{api}/");
    Ok(())
}

/// `fleetmesh earnings`: the ledger a running node computes from the receipts it holds.
fn earnings(api: std::net::SocketAddr, json: bool) -> anyhow::Result<()> {
    let (code, body) = client::call(
        api,
        "GET",
        "/v1/earnings",
        None,
        std::time::Duration::from_secs(10),
    )?;
    anyhow::ensure!(code == 200, "the node answered {code}: {body}");
    if json {
        println!("{body}");
        return Ok(());
    }
    let rows = body.as_array().cloned().unwrap_or_default();
    println!(
        "{:<66} {:>8} {:>14} {:>12}",
        "node", "jobs", "credit (uc)", "energy µWh"
    );
    for r in &rows {
        println!(
            "{:<66} {:>8} {:>14} {:>12}",
            r["node"].as_str().unwrap_or("?"),
            r["jobs"],
            r["credit"],
            r["energy_uwh"]
        );
    }
    if rows.is_empty() {
        println!("(no receipts yet)");
    }
    if let Some(me) = rows.iter().find(|r| r["this_node"] == true) {
        let jobs = me["jobs"].as_u64().unwrap_or(0);
        let credit = me["credit"].as_u64().unwrap_or(0) as f64;
        let wh = me["energy_uwh"].as_u64().unwrap_or(0) as f64 / 1e6;
        let elec = me["electricity"].as_f64().unwrap_or(0.0);
        let per = |x: f64| x / jobs.max(1) as f64;
        println!(
            "this node: {jobs} jobs; credit {credit:.0} µc ({:.1} per job); energy {wh:.6} Wh ({:.3} mWh per job); \
             electricity at its tariff {elec:.3} µc ({:.5} per job); net {:.1} µc",
            per(credit),
            per(wh * 1e3),
            per(elec),
            credit - elec
        );
    }
    Ok(())
}

fn print_summary(s: &demo::DemoSummary) {
    println!(
        "fleetmesh demo: {} jobs, {} verified, {} failed in {:.1} s",
        s.jobs, s.verified, s.failed, s.elapsed_s
    );
    println!("  accuracy of verified outputs  {:.2}%", s.accuracy * 100.0);
    println!("  verified jobs/s               {:.1}", s.jobs_per_s);
    println!("  mean replicas per job         {:.2}", s.mean_replicas);
    println!(
        "  wrong outputs accepted        {} ({} adversarial nodes)",
        s.accepted_wrong, s.malicious
    );
    println!("  receipts                      {}", s.receipts);
    println!("  jobs preempted by drivers     {}", s.preempted);
    let header = [
        "car",
        "role",
        "state at the end",
        "admission",
        "admitted",
        "wakes",
        "jobs",
        "energy µWh",
        "credit (µc)",
        "elec (µc)",
    ];
    println!(
        "  {:<9} {:<10} {:<33} {:<19} {:>8} {:>5} {:>5} {:>10} {:>11} {:>9}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        header[8],
        header[9]
    );
    let (mut jobs, mut energy, mut credit, mut elec) = (0, 0, 0, 0.0);
    for c in &s.cars {
        println!(
            "  {:<9} {:<10} {:<33} {:<19} {:>7.1}s {:>5} {:>5} {:>10} {:>11} {:>9.2}",
            c.node,
            c.role,
            c.state,
            c.admission,
            c.admitted_s,
            c.wakes,
            c.jobs,
            c.energy_uwh,
            c.credit,
            c.electricity
        );
        jobs += c.jobs;
        energy += c.energy_uwh;
        credit += c.credit;
        elec += c.electricity;
    }
    println!(
        "  {:<9} {:<10} {:<33} {:<19} {:>8} {:>5} {:>5} {:>10} {:>11} {:>9.2}",
        "total", "", "", "", "", "", jobs, energy, credit, elec
    );
    if energy != s.total_energy_uwh || credit != s.total_credit {
        println!(
            "  (the ledger also pays nodes outside this fleet: {} µWh, {} µc in all)",
            s.total_energy_uwh, s.total_credit
        );
    }
}

/// `--clock`: a simulated week time such as "tue 01:00".
fn parse_clock(s: &str) -> Result<String, String> {
    fleetmesh_node::car::parse_week_time(s).map(|_| s.to_string())
}

fn infer(assets: &Path, name: &str, input: &Path) -> anyhow::Result<()> {
    let registry = Registry::with_defaults(Some(assets))?;
    let model = registry.by_name(name).ok_or_else(|| {
        let known: Vec<String> = registry
            .models()
            .iter()
            .map(|m| m.manifest().name.clone())
            .collect();
        anyhow::anyhow!("unknown model '{name}' (installed: {})", known.join(", "))
    })?;
    let rows = match name {
        "digits" => input::read_images(input, digits::PIXELS, 8, digits::MAX_PIXEL)?,
        "mnist-cnn" => input::read_images(input, mnist::PIXELS, 28, 255)?,
        "minilm" => return embed_texts(&registry, model.id(), input),
        other => anyhow::bail!("no input reader for model '{other}'"),
    };
    let executor = Executor::start(registry.clone(), ExecutorConfig::default());
    let inputs: Vec<Vec<u8>> = rows.iter().map(|(x, _)| x.clone()).collect();
    let out = executor.run_blocking(&model.id(), inputs)?;
    let mut correct = 0;
    for (i, (output, (_, label))) in out.outputs.iter().zip(&rows).enumerate() {
        let logits = inference::f32s(output);
        let class = inference::argmax(&logits);
        let rounded: Vec<String> = logits.iter().map(|v| format!("{v:.3}")).collect();
        match label {
            Some(l) => {
                correct += usize::from(class == usize::from(*l));
                println!(
                    "row {i}: class {class} (label {l})  logits [{}]",
                    rounded.join(", ")
                );
            }
            None => println!("row {i}: class {class}  logits [{}]", rounded.join(", ")),
        }
    }
    if rows.iter().any(|(_, l)| l.is_some()) {
        println!(
            "accuracy {}/{} in {:.1} ms",
            correct,
            rows.len(),
            out.compute.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            init_logging(cli.log_format, "info");
            run_node(&cli.home, &cli.assets, args)?;
        }
        Command::Keys {
            action: KeysAction::Generate { key, force },
        } => {
            let path = key.unwrap_or_else(|| cli.home.join("node.key"));
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).context("the system random source failed")?;
            let node_key = NodeKey::from_seed(seed);
            keyfile::save(&path, &node_key, force)?;
            println!("{}", node_key.node_id());
            eprintln!("wrote {}", path.display());
        }
        Command::Keys {
            action: KeysAction::Show { key, peer_id },
        } => {
            let path = key.unwrap_or_else(|| cli.home.join("node.key"));
            let node_key = keyfile::load(&path)?;
            if peer_id {
                println!("{}", net::peer_id_of(&node_key.node_id()));
            } else {
                println!("{}", node_key.node_id());
            }
        }
        Command::Demo {
            nodes,
            jobs,
            replicas,
            in_flight,
            malicious,
            adaptive,
            clock,
            speed,
            drivers_return,
            json,
        } => {
            init_logging(cli.log_format, "warn");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let summary = runtime.block_on(demo::run(demo::DemoConfig {
                nodes,
                jobs,
                replicas,
                in_flight,
                malicious,
                adaptive,
                clock,
                speed,
                drivers_return,
            }))?;
            print_summary(&summary);
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
        }
        Command::Submit {
            model,
            input,
            replicas,
            wait,
            api,
        } => submit(&model, &input, replicas, wait, api)?,
        Command::Earnings { api, json } => earnings(api, json)?,
        Command::Status { api, json } => status(api, json)?,
        Command::Models => {
            let registry = Registry::with_defaults(Some(&cli.assets))?;
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
            if registry.by_name("mnist-cnn").is_none() {
                eprintln!("(mnist-cnn not installed: run scripts/fetch-assets.sh mnist)");
            }
        }
        Command::Infer { model, input } => infer(&cli.assets, &model, &input)?,
        Command::TrainDigits { out, epochs, seed } => {
            let (weights, accuracy) = digits::train(epochs, seed, |epoch, loss, acc| {
                eprintln!(
                    "epoch {epoch:>3}/{epochs}  loss {loss:.4}  held-out accuracy {:.2}%",
                    acc * 100.0
                );
            })?;
            std::fs::write(&out, &weights).with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} ({} bytes), held-out accuracy {:.2}%",
                out.display(),
                weights.len(),
                accuracy * 100.0
            );
        }
        Command::Config {
            action: ConfigAction::Example,
        } => print!("{}", NodeConfig::example()),
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let cfg = NodeConfig::load(&file)?;
            cfg.validate()?;
            print!("{}", toml::to_string_pretty(&cfg)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line names the argument and the problem.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("fleetmesh: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetmesh: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
