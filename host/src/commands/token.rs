//! `wasmwire token`: makes a bearer token for the HTTP gateway and prints it with the
//! digest that `[host] http_tokens` keeps (the manifest never holds the token itself).

use anyhow::{Context, Result};
use std::process::ExitCode;

/// Make a bearer token for the HTTP gateway and print the line for the manifest.
#[derive(Debug, clap::Args)]
pub struct TokenCommand {
    /// Print the digest of this token instead of making a new one.
    #[arg(long)]
    digest_of: Option<String>,
}

impl TokenCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let token = match self.digest_of {
            Some(t) => t,
            None => {
                use ring::rand::SecureRandom;
                let mut bytes = [0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut bytes)
                    .ok()
                    .context("the system's random source failed")?;
                data_encoding::BASE64URL_NOPAD.encode(&bytes)
            }
        };
        let digest = wasmwire::gateway::digest_text(&token);
        println!("token:  {token}");
        println!("digest: {digest}");
        println!();
        println!("In the manifest's [host] section:");
        println!("  http_tokens = [\"{digest}\"]");
        println!("Clients send:  Authorization: Bearer {token}");
        Ok(ExitCode::SUCCESS)
    }
}
