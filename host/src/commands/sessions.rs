//! `wasmwire sessions`: lists the sessions open on a host.

use super::client::{HostArgs, ask_once, print_json};
use anyhow::{Result, bail};
use std::process::ExitCode;
use wasmwire::broker::Ask;
use wasmwire::wire::Control;

/// List the sessions open on a host.
#[derive(Debug, clap::Args)]
pub struct SessionsCommand {
    #[command(flatten)]
    to: HostArgs,
}

impl SessionsCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let to = &self.to;
        let answer = ask_once(to, Ask::ListSessions).await;
        let Control::Sessions {
            sessions, total, ..
        } = answer?
        else {
            bail!("the host answered list-sessions with something else");
        };
        if to.json {
            print_json(&sessions)?;
            return Ok(ExitCode::SUCCESS);
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
        Ok(ExitCode::SUCCESS)
    }
}
