//! `wasmwire inspect`: shows what a component declares, and its imports and exports.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmwire::runtime::{Compiled, Runtime, RuntimeConfig};

/// Show what a component declares, and its imports and exports.
#[derive(Debug, clap::Args)]
pub struct InspectCommand {
    /// The component file.
    component: PathBuf,
}

impl InspectCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        inspect(&self.component).await?;
        Ok(ExitCode::SUCCESS)
    }
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
