//! `wasmwire check`: validates a manifest and type-checks every component it names.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use wasmwire::manifest;
use wasmwire::node::load_classes;
use wasmwire::runtime::{Runtime, RuntimeConfig};

/// Validate a manifest and type-check every component it names.
#[derive(Debug, clap::Args)]
pub struct CheckCommand {
    /// The manifest.
    manifest: PathBuf,
}

impl CheckCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let path = &self.manifest;
        let manifest = manifest::load(path)?;
        // A small pool: checking instantiates one throwaway instance per component.
        let mut config = RuntimeConfig::for_manifest(&manifest);
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
        Ok(ExitCode::SUCCESS)
    }
}
