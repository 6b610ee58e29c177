//! `wasmwire new`: makes a new service in a folder of its own.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Make a new service in a folder of its own: its sources, a Makefile (`make` builds
/// NAME.wasm) and a wasmwire.toml that runs it.
#[derive(Debug, clap::Args)]
pub struct NewCommand {
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
}

impl NewCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        new_service(&self.name, self.lang, self.dir, self.sdk)?;
        Ok(ExitCode::SUCCESS)
    }
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
