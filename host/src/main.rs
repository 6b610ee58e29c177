//! The `wasmwire` command line: `run`, `check` and `inspect`; `fuzz` and `new` for service
//! authors; `keygen` and `id` for host keys; `data` for the services' durable data; and the client commands `services`,
//! `sessions`, `peers`, `top`, `call` and `send`, which reach a running host over QUIC like
//! any peer (with role `client`). Each command is a clap struct with `execute()` in a file
//! of its own under `commands/`. Errors go to stderr with a non-zero exit; logs go through
//! `tracing` (`RUST_LOG`, `--log-format json`). This binary is the only place that uses
//! `anyhow`: the crates below it return errors their callers can match on.

mod commands;
mod scaffold;
mod top_view;

use clap::{Parser, Subcommand, ValueEnum};
use commands::*;
use std::process::ExitCode;

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
    Run(RunCommand),
    /// Validate a manifest and type-check every component it names.
    Check(CheckCommand),
    /// Show what a component declares, and its imports and exports.
    Inspect(InspectCommand),
    /// Drive a service's exports with random well-formed sequences through the host
    /// runtime; stop at the first trap, limit hit or broken rule, shrink it, write a replay.
    Fuzz(FuzzCommand),
    /// Make a new service in a folder of its own: its sources, a Makefile (`make` builds
    /// NAME.wasm) and a wasmwire.toml that runs it.
    New(NewCommand),
    /// Make a new host key (never overwrites one) and print its peer id.
    Keygen(KeygenCommand),
    /// Print the peer id of a host key.
    Id(IdCommand),
    /// Make a bearer token for the HTTP gateway and print the digest for `http_tokens`.
    Token(TokenCommand),
    /// Read and manage the services' durable data while the host is stopped: list buckets
    /// with their sizes, a bucket's keys, a value; delete a key or a bucket.
    Data(DataCommand),
    /// List the services a host exposes.
    Services(ServicesCommand),
    /// List the sessions open on a host.
    Sessions(SessionsCommand),
    /// Watch a running host live: each instance's state, calls per second, errors, traps,
    /// restarts, mailbox and memory; each connection's round-trip time and traffic.
    Top(TopCommand),
    /// List a host's connected and learned peers.
    Peers(PeersCommand),
    /// Call an event of an exposed service and print its JSON reply.
    Call(CallCommand),
    /// Open a session with an exposed service, send a message, print what comes back.
    /// With `-` as the payload, every line read from stdin is sent as one message (a chat
    /// client: `wasmwire send ADDR lobby say - --name ann`).
    Send(SendCommand),
}

impl Command {
    /// Runs the command on the async runtime.
    async fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run(c) => c.execute().await,
            Command::Check(c) => c.execute().await,
            Command::Inspect(c) => c.execute().await,
            Command::Fuzz(c) => c.execute().await,
            Command::New(c) => c.execute().await,
            Command::Keygen(c) => c.execute().await,
            Command::Id(c) => c.execute().await,
            Command::Token(c) => c.execute().await,
            Command::Data(c) => c.execute().await,
            Command::Services(c) => c.execute().await,
            Command::Sessions(c) => c.execute().await,
            Command::Top(c) => c.execute().await,
            Command::Peers(c) => c.execute().await,
            Command::Call(c) => c.execute().await,
            Command::Send(c) => c.execute().await,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The host logs its life at `info`; a client command says only what goes wrong.
    let default = match cli.command {
        Command::Run(_) => "info",
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
    match rt.block_on(cli.command.execute()) {
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
