//! `wasmwire id`: prints the peer id of a host key.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use wasmwire::net::identity::Identity;

/// Print the peer id of a host key.
#[derive(Debug, clap::Args)]
pub struct IdCommand {
    /// The key file.
    #[arg(default_value = ".wasmwire/host.key")]
    path: PathBuf,
}

impl IdCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        println!("{}", Identity::load(&self.path)?.id);
        Ok(ExitCode::SUCCESS)
    }
}
