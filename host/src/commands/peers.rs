//! `wasmwire peers`: lists a host's connected and learned peers.

use super::client::{HostArgs, ask_once, print_json};
use anyhow::{Result, bail};
use std::process::ExitCode;
use wasmwire::broker::Ask;
use wasmwire::wire::Control;

/// List a host's connected and learned peers.
#[derive(Debug, clap::Args)]
pub struct PeersCommand {
    #[command(flatten)]
    to: HostArgs,
}

impl PeersCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let to = &self.to;
        let answer = ask_once(to, Ask::GetPeers).await;
        let Control::Peers { peers, .. } = answer? else {
            bail!("the host answered get-peers with something else");
        };
        if to.json {
            print_json(&peers)?;
            return Ok(ExitCode::SUCCESS);
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
        Ok(ExitCode::SUCCESS)
    }
}
