//! The `wasmwire` command line: `run`, `check` and `inspect`; `keygen` and `id` for host
//! keys; and the client commands `services`, `sessions`, `peers`, `top`, `call` and `send`, which
//! reach a running host over QUIC like any peer (with role `client`). Errors go to stderr
//! with a non-zero exit; logs go through `tracing` (`RUST_LOG`, `--log-format json`).

use crate::broker::{Ask, ConnId};
use crate::manifest::{self, PeerSpec};
use crate::net::identity::Identity;
use crate::net::{Net, NetConfig};
use crate::node::{Node, load_classes};
use crate::runtime::session::ClientEvent;
use crate::runtime::{Compiled, Runtime, RuntimeConfig};
use crate::wire::{self, Control, Role};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Runs sandboxed WebAssembly services and wires them together.
#[derive(Debug, Parser)]
#[command(name = "wasmwire", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host on a manifest until Ctrl-C or SIGTERM.
    Run {
        /// The manifest.
        #[arg(default_value = "wasmwire.toml")]
        manifest: PathBuf,
        /// The address peers are told to dial, overriding `[host] advertise`: `IP:PORT`, or
        /// an IP alone for `listen`'s port (`--advertise $POD_IP` in a pod of a StatefulSet,
        /// whose pods share one manifest).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Validate a manifest and type-check every component it names.
    Check {
        /// The manifest.
        manifest: PathBuf,
    },
    /// Show what a component declares, and its imports and exports.
    Inspect {
        /// The component file.
        component: PathBuf,
    },
    /// Drive a service's exports with random well-formed sequences through the host
    /// runtime; stop at the first trap, limit hit or broken rule, shrink it, write a replay.
    Fuzz {
        /// The component file.
        component: PathBuf,
        /// Options handed to `wakeup` (JSON).
        #[arg(long, default_value = "{}")]
        options: String,
        /// Seed (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// Stop after this many runs.
        #[arg(long, conflicts_with = "duration")]
        runs: Option<u64>,
        /// Stop after this long (default 30s when --runs is not given).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Steps per run at most.
        #[arg(long, default_value_t = 128)]
        max_steps: usize,
        /// Worker threads (default: one per core). With 1, the seed alone fixes every run.
        #[arg(long)]
        jobs: Option<usize>,
        /// Re-run a replay file exactly instead of fuzzing.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// Where to write the replay of a failure (default: fuzz-NAME-SEED.replay).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a new service in a folder of its own: its sources, a Makefile (`make` builds
    /// NAME.wasm) and a wasmwire.toml that runs it.
    New {
        /// The service name (the folder, package and manifest entry).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value_t = crate::scaffold::Lang::Rust)]
        lang: crate::scaffold::Lang,
        /// The folder to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The wasmwire-guest SDK a Rust service depends on (default: guest-sdk/ of the
        /// checkout this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Make a new host key (never overwrites one) and print its peer id.
    Keygen {
        /// Where to write it.
        #[arg(default_value = ".wasmwire/host.key")]
        path: PathBuf,
    },
    /// Print the peer id of a host key.
    Id {
        /// The key file.
        #[arg(default_value = ".wasmwire/host.key")]
        path: PathBuf,
    },
    /// List the services a host exposes.
    Services {
        #[command(flatten)]
        to: HostArgs,
    },
    /// List the sessions open on a host.
    Sessions {
        #[command(flatten)]
        to: HostArgs,
    },
    /// Watch a running host live: each instance's state, calls per second, errors, traps,
    /// restarts, mailbox and memory; each connection's round-trip time and traffic.
    Top {
        #[command(flatten)]
        to: HostArgs,
        /// Time between two samples.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        every: Duration,
        /// Print one frame as text (two samples `--every` apart) and exit; with `--json`,
        /// the host's figures as JSON.
        #[arg(long)]
        once: bool,
    },
    /// List a host's connected and learned peers.
    Peers {
        #[command(flatten)]
        to: HostArgs,
    },
    /// Call an event of an exposed service and print its JSON reply.
    Call {
        #[command(flatten)]
        to: HostArgs,
        /// The service (instance name).
        service: String,
        /// The event.
        event: String,
        /// JSON parameters.
        #[arg(default_value = "null")]
        params: String,
    },
    /// Open a session with an exposed service, send a message, print what comes back.
    /// With `-` as the payload, every line read from stdin is sent as one message (a chat
    /// client: `wasmwire send ADDR lobby say - --name ann`).
    Send {
        #[command(flatten)]
        to: HostArgs,
        /// The service (instance name).
        service: String,
        /// The message kind.
        kind: String,
        /// The payload (text), or `-` for one message per line of stdin.
        #[arg(default_value = "")]
        payload: String,
        /// How long to keep printing what comes back after the last message.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        wait: Duration,
        /// The name the service sees for this end of the session.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Where a client command connects, and as whom.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// The host: `ADDR:PORT`, or `ADDR:PORT#PEERID` to refuse any other key.
    pub addr: String,
    /// Key to connect with (so an operator can list it in `allow`); default: a new one.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the host.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    manifest::units::HumanDuration::try_from(s.to_string()).map(|d| d.0)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The host logs its life at `info`; a client command says only what goes wrong.
    let default = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, default);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run {
                manifest,
                advertise,
            } => run(&manifest, advertise.as_deref())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Check { manifest } => check(&manifest).await.map(|()| ExitCode::SUCCESS),
            Command::Inspect { component } => inspect(&component).await.map(|()| ExitCode::SUCCESS),
            Command::Fuzz {
                component,
                options,
                seed,
                runs,
                duration,
                max_steps,
                jobs,
                replay,
                out,
                json,
            } => {
                let seed = seed.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64)
                });
                let settings = crate::fuzz::Settings {
                    options,
                    seed,
                    runs,
                    duration: if runs.is_none() {
                        Some(duration.unwrap_or(Duration::from_secs(30)))
                    } else {
                        None
                    },
                    max_steps,
                    limits: Default::default(),
                    jobs: jobs.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    }),
                };
                // Exit 1 when a problem was found (or reproduced), like a failing test.
                fuzz(&component, settings, replay.as_deref(), out, json)
                    .await
                    .map(|found| {
                        if found {
                            ExitCode::from(1)
                        } else {
                            ExitCode::SUCCESS
                        }
                    })
            }
            Command::New {
                name,
                lang,
                dir,
                sdk,
            } => new_service(&name, lang, dir, sdk).map(|()| ExitCode::SUCCESS),
            Command::Keygen { path } => keygen(&path).map(|()| ExitCode::SUCCESS),
            Command::Id { path } => id(&path).map(|()| ExitCode::SUCCESS),
            Command::Services { to } => services(&to).await.map(|()| ExitCode::SUCCESS),
            Command::Sessions { to } => sessions(&to).await.map(|()| ExitCode::SUCCESS),
            Command::Peers { to } => peers(&to).await.map(|()| ExitCode::SUCCESS),
            Command::Top { to, every, once } => {
                top(&to, every, once).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Call {
                to,
                service,
                event,
                params,
            } => call(&to, &service, &event, &params)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Send {
                to,
                service,
                kind,
                payload,
                wait,
                name,
            } => send(&to, &service, &kind, payload, wait, &name)
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log redirected to a file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(path: &Path, advertise: Option<&str>) -> Result<()> {
    let mut manifest = manifest::load(path)?;
    if let Some(a) = advertise {
        let Some(listen) = manifest.host.listen else {
            bail!("--advertise needs `listen` in [host]: it names where peers reach that address");
        };
        manifest.host.advertise = Some(advertised(a, listen.port())?);
    }
    let node = Node::start(&manifest).await?;
    tracing::info!(manifest = %path.display(), services = manifest.services.len(), "wasmwire is running; Ctrl-C to stop");
    shutdown_signal().await;
    tracing::info!(
        shutdown_timeout = ?manifest.host.shutdown_timeout,
        "shutting down: services refuse new work, finish what they accepted, then sleep"
    );
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn new_service(
    name: &str,
    lang: crate::scaffold::Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let sdk = sdk.unwrap_or_else(crate::scaffold::default_sdk);
    let files = crate::scaffold::scaffold(name, lang, &dir, &sdk)?;
    let shown = dir.display();
    println!("created {shown}/: {}", files.join(", "));
    println!("build it:  cd {shown} && make");
    println!("run it:    cd {shown} && wasmwire run");
    println!("call it:   wasmwire call 127.0.0.1:7400 {name} hello '{{\"name\": \"ann\"}}'");
    Ok(())
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP that takes `port`.
fn advertised(text: &str, port: u16) -> Result<std::net::SocketAddr> {
    if let Ok(a) = text.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    match text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(std::net::SocketAddr::new(ip, port)),
        Err(_) => bail!("--advertise {text:?} is not an IP address or IP:PORT"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check(path: &Path) -> Result<()> {
    let manifest = manifest::load(path)?;
    let max_memory = manifest
        .services
        .iter()
        .map(|s| s.limits.memory)
        .max()
        .unwrap_or(64 << 20);
    // A small pool: checking instantiates one throwaway instance per component.
    let mut config = RuntimeConfig::from_host(&manifest.host, max_memory);
    config.max_awake = 4;
    let runtime = Runtime::new(&config)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("starting the wasm engine")?;
    let classes = load_classes(&runtime, &manifest).await?;
    for s in &manifest.services {
        let c = &classes[&s.component].class;
        println!(
            "ok  {:<16} channel {:<5} {}  messages {:?}  events {:?}",
            s.name,
            s.channel,
            s.component.display(),
            c.messages,
            c.events
        );
    }
    println!(
        "{}: {} services, {} components: all valid",
        path.display(),
        manifest.services.len(),
        classes.len()
    );
    Ok(())
}

async fn inspect(path: &Path) -> Result<()> {
    let config = RuntimeConfig {
        keep_resident: 0,
        max_awake: 4,
        max_memory: 64 << 20,
        cache_dir: None,
    };
    let runtime = Runtime::new(&config)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("starting the wasm engine")?;
    let (component, _) = runtime.component(path)?;
    let ty = component.component_type();
    println!("{}", path.display());
    println!("imports:");
    for (name, _) in ty.imports(runtime.engine()) {
        println!("  {name}");
    }
    println!("exports:");
    for (name, _) in ty.exports(runtime.engine()) {
        println!("  {name}");
    }
    match runtime.load(path).await {
        Ok(Compiled { class, .. }) => {
            println!("describe:");
            println!("  messages: {:?}", class.messages);
            println!("  events:   {:?}", class.events);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn keygen(path: &Path) -> Result<()> {
    let identity = Identity::create(path)?;
    println!("{}", identity.id);
    eprintln!("wrote a new host key to {} (mode 0600)", path.display());
    Ok(())
}

fn id(path: &Path) -> Result<()> {
    println!("{}", Identity::load(path)?.id);
    Ok(())
}

/// A client connection to a host.
struct Client {
    net: Net,
    conn: ConnId,
    timeout: Duration,
}

impl Client {
    async fn connect(to: &HostArgs) -> Result<Client> {
        let spec: PeerSpec = to
            .addr
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{e}"))?;
        let identity = match &to.identity {
            Some(p) => Identity::load(p)?,
            None => Identity::generate()?,
        };
        let net = Net::start(
            NetConfig {
                role: Role::Client,
                listen: None,
                advertise: None,
                identity,
                allow: Vec::new(),
                peers: Vec::new(),
                transport: Default::default(),
                limits: Default::default(),
                alpn: wire::ALPN.to_vec(),
                resolver: None,
            },
            None,
        )?;
        let dialled = tokio::time::timeout(to.timeout, net.dial(&spec)).await;
        let (conn, _peer) = match dialled {
            Err(_) => bail!(
                "cannot connect to {}: no answer within {:?}",
                to.addr,
                to.timeout
            ),
            Ok(Err(e)) => bail!("cannot connect to {}: {e}", to.addr),
            Ok(Ok(c)) => c,
        };
        Ok(Client {
            net,
            conn,
            timeout: to.timeout,
        })
    }

    async fn ask(&self, ask: Ask) -> Result<Control> {
        let r = self.net.ask(self.conn, ask, self.timeout).await;
        match r {
            Ok(c) => Ok(c),
            Err(f) => {
                let code = serde_json::to_value(f.code).unwrap_or_default();
                bail!("{}: {}", code.as_str().unwrap_or("error"), f.reason)
            }
        }
    }

    async fn close(self) {
        self.net.shutdown(Duration::from_millis(500)).await;
    }
}

/// Connects, asks one thing, closes.
async fn ask_once(to: &HostArgs, ask: Ask) -> Result<Control> {
    let client = Client::connect(to).await?;
    let answer = client.ask(ask).await;
    client.close().await;
    answer
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn services(to: &HostArgs) -> Result<()> {
    let answer = ask_once(to, Ask::ListServices).await;
    let Control::Services { services, .. } = answer? else {
        bail!("the host answered list-services with something else");
    };
    if to.json {
        return print_json(&services);
    }
    println!(
        "{:<16} {:>7}  {:<7} {:>8}  {:<24} EVENTS",
        "SERVICE", "CHANNEL", "STATE", "SESSIONS", "MESSAGES"
    );
    for s in &services {
        println!(
            "{:<16} {:>7}  {:<7} {:>8}  {:<24} {}",
            s.name,
            s.channel,
            s.state,
            s.sessions,
            dash_list(&s.messages),
            dash_list(&s.events)
        );
        if let Some(k) = &s.keyed {
            let more = k.awake as usize - k.awake_keys.len().min(k.awake as usize);
            println!(
                "  keys: {} live, {} awake (max_instances {}){}{}{}",
                k.live,
                k.awake,
                k.max_instances,
                if k.awake_keys.is_empty() { "" } else { ": " },
                k.awake_keys
                    .iter()
                    .map(|key| format!("{}/{key}", s.name))
                    .collect::<Vec<_>>()
                    .join(" "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

fn dash_list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

async fn top(to: &HostArgs, every: Duration, once: bool) -> Result<()> {
    let client = Client::connect(to).await?;
    let ask = || async {
        match client.ask(Ask::Stats).await? {
            Control::Stats { stats, .. } => Ok(stats),
            _ => bail!("the host answered get-stats with something else"),
        }
    };
    let result = if once {
        let first = ask().await?;
        tokio::time::sleep(every).await;
        let second = ask().await?;
        if to.json {
            print_json(&second)
        } else {
            let (instances, peers) = (second.instances.len(), second.peers.len());
            let mut view = crate::top::View::new(&to.addr);
            view.update(first);
            view.update(second);
            let height = 1 + (3 + instances) + (peers.clamp(1, 8) + 3) + 1;
            for line in crate::top::render_text(&view, 100, height as u16) {
                println!("{line}");
            }
            Ok(())
        }
    } else {
        crate::top::run(&to.addr, every, ask).await
    };
    client.close().await;
    result
}

async fn sessions(to: &HostArgs) -> Result<()> {
    let answer = ask_once(to, Ask::ListSessions).await;
    let Control::Sessions {
        sessions, total, ..
    } = answer?
    else {
        bail!("the host answered list-sessions with something else");
    };
    if to.json {
        return print_json(&sessions);
    }
    println!(
        "{:>8}  {:<16} {:>7}  {:<16} {:>8}  PEER",
        "ID", "SERVICE", "CHANNEL", "OTHER END", "ITS ID"
    );
    for s in &sessions {
        println!(
            "{:>8}  {:<16} {:>7}  {:<16} {:>8}  {}",
            s.id,
            s.service,
            s.channel,
            s.other,
            s.other_id.map_or("-".to_string(), |i| i.to_string()),
            s.peer.as_deref().unwrap_or("(this host)")
        );
    }
    if total as usize > sessions.len() {
        println!("... {} sessions in all", total);
    }
    Ok(())
}

async fn peers(to: &HostArgs) -> Result<()> {
    let answer = ask_once(to, Ask::GetPeers).await;
    let Control::Peers { peers, .. } = answer? else {
        bail!("the host answered get-peers with something else");
    };
    if to.json {
        return print_json(&peers);
    }
    println!("{:<52}  {:<22} STATE", "PEER", "ADDRESS");
    for p in &peers {
        println!(
            "{:<52}  {:<22} {}",
            p.peer,
            p.addr.as_deref().unwrap_or("-"),
            if p.connected { "connected" } else { "learned" }
        );
    }
    Ok(())
}

async fn call(to: &HostArgs, service: &str, event: &str, params: &str) -> Result<()> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(params) {
        bail!("the parameters are not JSON: {e}");
    }
    let answer = ask_once(
        to,
        Ask::Request {
            service: service.to_string(),
            event: event.to_string(),
            params: params.to_string(),
            chain: Vec::new(),
            caller: Some("cli".into()),
            session: None,
        },
    )
    .await;
    match answer? {
        Control::Response { result, .. } => {
            println!("{result}");
            Ok(())
        }
        _ => bail!("the host answered the request with something else"),
    }
}

async fn send(
    to: &HostArgs,
    service: &str,
    kind: &str,
    payload: String,
    wait: Duration,
    name: &str,
) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let client = Client::connect(to).await?;
    let result = async {
        let opened = tokio::time::timeout(
            client.timeout,
            client
                .net
                .open_client_session(client.conn, service, name, 1 << 20),
        )
        .await;
        let mut session = match opened {
            Err(_) => bail!("no answer to the session within {:?}", client.timeout),
            Ok(r) => r.map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        // Lines from stdin (`-`), or the one payload given.
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
        if payload == "-" {
            tokio::spawn(async move {
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                while let Ok(Some(line)) = stdin.next_line().await {
                    if lines_tx.send(line).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            let _ = lines_tx.send(payload).await;
            drop(lines_tx);
        }
        let mut input_open = true;
        let mut until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                line = lines.recv(), if input_open => match line {
                    Some(line) => {
                        let mut payload = line.into_bytes();
                        // A full queue is a pause, not an error: wait for room.
                        loop {
                            match session.send(kind, std::mem::take(&mut payload)) {
                                Err(crate::runtime::instance::CallError::Busy) => {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                r => break r.map_err(|e| anyhow::anyhow!("{e}"))?,
                            }
                        }
                    }
                    None => {
                        input_open = false;
                        until = tokio::time::Instant::now() + wait;
                    }
                },
                event = session.events.recv() => match event {
                    None | Some(ClientEvent::Closed) => {
                        eprintln!("(the service closed the session)");
                        break;
                    }
                    Some(ClientEvent::Message { kind, payload }) => {
                        println!("{kind} {}", String::from_utf8_lossy(&payload));
                    }
                },
                _ = tokio::time::sleep_until(until), if !input_open => break,
            }
        }
        session.close();
        // Give the writer a moment to finish the stream before the endpoint closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
    .await;
    client.close().await;
    result
}

async fn fuzz(
    component: &Path,
    settings: crate::fuzz::Settings,
    replay: Option<&Path>,
    out: Option<PathBuf>,
    json: bool,
) -> Result<bool> {
    use crate::fuzz::{Replay, Target};
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&settings.options) {
        bail!("--options is not JSON: {e}");
    }
    let target = Target::load(component, &settings.limits).await?;
    if let Some(file) = replay {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let r = Replay::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let settings = crate::fuzz::Settings {
            options: r.options.clone(),
            ..settings
        };
        let (finding, calls) = crate::fuzz::replay(&target, &settings, &r.steps).await;
        match &finding {
            Some(f) => println!(
                "reproduced: {} in {} at step {} of {}: {}",
                f.kind.name(),
                f.export,
                f.step + 1,
                r.steps.len(),
                f.cause
            ),
            None => println!("no problem: {} steps, {calls} calls", r.steps.len()),
        }
        return Ok(finding.is_some());
    }
    // A live line on a terminal (indicatif hides itself when stderr is not one).
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let (bar, template) = match settings.runs {
            Some(runs) => (
                indicatif::ProgressBar::new(runs),
                "{bar:24} {pos}/{len} runs  {msg}",
            ),
            None => (
                indicatif::ProgressBar::new(settings.duration.map_or(0, |d| d.as_secs())),
                "{bar:24} {pos}/{len} s  {msg}",
            ),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    let target_name = component.display().to_string();
    let report = tokio::task::block_in_place(|| {
        crate::fuzz::fuzz(&target, &settings, |p| {
            bar.set_position(match settings.runs {
                Some(_) => p.runs,
                None => p.elapsed.as_secs(),
            });
            bar.set_message(format!(
                "{target_name}: {} runs, {:.0} calls/s, kinds {}/{} and events {}/{} reached",
                p.runs,
                p.calls as f64 / p.elapsed.as_secs_f64().max(1e-9),
                p.kinds.0,
                p.kinds.1,
                p.events.0,
                p.events.1,
            ));
        })
    });
    bar.finish_and_clear();
    let name = component
        .file_stem()
        .map_or("service".into(), |s| s.to_string_lossy().into_owned());
    let mut replay_path = None;
    if let Some(f) = &report.failure {
        let path =
            out.unwrap_or_else(|| PathBuf::from(format!("fuzz-{name}-{}.replay", report.seed)));
        let comment = vec![
            format!("wasmwire fuzz replay of {}", component.display()),
            format!(
                "{} in {}: {}",
                f.finding.kind.name(),
                f.finding.export,
                f.finding.cause
            ),
            format!(
                "seed {}, run seed {}; found after {} steps, shrunk to {}",
                report.seed,
                f.run_seed,
                f.found_steps,
                f.replay.steps.len()
            ),
            format!(
                "re-run: wasmwire fuzz {} --replay {}",
                component.display(),
                path.display()
            ),
        ];
        std::fs::write(&path, f.replay.to_text(&comment))
            .with_context(|| format!("writing {}", path.display()))?;
        replay_path = Some(path);
    }
    if json {
        let failure = report.failure.as_ref().map(|f| {
            serde_json::json!({
                "kind": f.finding.kind.name(),
                "export": f.finding.export,
                "cause": f.finding.cause,
                "run_seed": f.run_seed,
                "found_steps": f.found_steps,
                "steps": f.replay.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "replay": replay_path.as_ref().map(|p| p.display().to_string()),
            })
        });
        let summary = serde_json::json!({
            "component": component.display().to_string(),
            "seed": report.seed,
            "runs": report.runs,
            "calls": report.calls,
            "seconds": report.elapsed.as_secs_f64(),
            "calls_per_second": report.calls_per_second(),
            "refused": report.refused,
            "messages": report.messages.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "events": report.events.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "failure": failure,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(report.failure.is_some());
    }
    let list = |v: &[(String, u64)]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "fuzzed {} for {:.1}s (seed {}): {} runs, {} calls, {:.0} calls/s",
        component.display(),
        report.elapsed.as_secs_f64(),
        report.seed,
        report.runs,
        report.calls,
        report.calls_per_second()
    );
    println!("messages: {}", list(&report.messages));
    println!("events:   {}", list(&report.events));
    println!(
        "refused by the host (undeclared or too large): {}",
        report.refused
    );
    match &report.failure {
        None => println!("no problem found"),
        Some(f) => {
            println!(
                "FOUND {} in {}: {}",
                f.finding.kind.name(),
                f.finding.export,
                f.finding.cause
            );
            println!(
                "after {} steps (run seed {}), shrunk to {}:",
                f.found_steps,
                f.run_seed,
                f.replay.steps.len()
            );
            for s in &f.replay.steps {
                println!("  {s}");
            }
            if let Some(p) = &replay_path {
                println!(
                    "replay: wasmwire fuzz {} --replay {}",
                    component.display(),
                    p.display()
                );
            }
        }
    }
    Ok(report.failure.is_some())
}

#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn advertise_takes_an_address_or_an_ip_for_the_listen_port() {
        let a = |s: &str| advertised(s, 7400).map(|a| a.to_string());
        assert_eq!(a("10.1.2.3:7401").unwrap(), "10.1.2.3:7401");
        assert_eq!(a("10.1.2.3").unwrap(), "10.1.2.3:7400");
        assert_eq!(a("fd00::5").unwrap(), "[fd00::5]:7400");
        assert_eq!(a("[fd00::5]").unwrap(), "[fd00::5]:7400");
        assert!(a("pod-0.wasmwire").is_err());
    }
}
