//! The `wasmwire` command line: `run`, `check` and `inspect`. Errors go to stderr with a
//! non-zero exit; logs go through `tracing` (`RUST_LOG`, `--log-format json`).

use crate::manifest;
use crate::node::{Node, load_classes};
use crate::runtime::{Runtime, RuntimeConfig};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
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
    Run {
        /// The manifest.
        #[arg(default_value = "wasmwire.toml")]
        manifest: PathBuf,
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
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
            Command::Run { manifest } => run(&manifest).await,
            Command::Check { manifest } => check(&manifest).await,
            Command::Inspect { component } => inspect(&component).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(path: &Path) -> Result<()> {
    let manifest = manifest::load(path)?;
    let node = Node::start(&manifest).await?;
    tracing::info!(manifest = %path.display(), services = manifest.services.len(), "wasmwire is running; Ctrl-C to stop");
    shutdown_signal().await;
    tracing::info!("shutting down: putting every awake service to sleep");
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
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
        let c = &classes[&s.component];
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
        Ok(class) => {
            println!("describe:");
            println!("  messages: {:?}", class.messages);
            println!("  events:   {:?}", class.events);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
