//! `wasmwire keygen`: makes a new host key (never overwrites one) and prints its peer id.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmwire::net::identity::Identity;

/// Make a new host key (never overwrites one) and print its peer id.
#[derive(Debug, clap::Args)]
pub struct KeygenCommand {
    /// Where to write it.
    #[arg(default_value = ".wasmwire/host.key")]
    path: PathBuf,
}

impl KeygenCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let path = &self.path;
        let identity = Identity::create(path)?;
        println!("{}", identity.id);
        eprintln!("wrote a new host key to {} (mode 0600)", path.display());
        Ok(ExitCode::SUCCESS)
    }
}
