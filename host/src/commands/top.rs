//! `wasmwire top`: watches a running host live.

use super::client::{Client, HostArgs, print_json};
use super::parse_duration;
use anyhow::{Result, bail};
use std::process::ExitCode;
use std::time::Duration;
use wasmwire::broker::Ask;
use wasmwire::wire::Control;

/// Watch a running host live: each instance's state, calls per second, errors, traps,
/// restarts, mailbox and memory; each connection's round-trip time and traffic.
#[derive(Debug, clap::Args)]
pub struct TopCommand {
    #[command(flatten)]
    to: HostArgs,
    /// Time between two samples.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    every: Duration,
    /// Print one frame as text (two samples `--every` apart) and exit; with `--json`,
    /// the host's figures as JSON.
    #[arg(long)]
    once: bool,
}

impl TopCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        top(&self.to, self.every, self.once).await?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn top(to: &HostArgs, every: Duration, once: bool) -> Result<()> {
    let client = Client::connect(to).await?;
    let ask = || async {
        match client.ask(Ask::Stats).await? {
            Control::Stats { stats, .. } => Ok(stats),
            _ => bail!("the host answered get-stats with something else"),
        }
    };
    let result = if once {
        let first = ask().await?;
        tokio::time::sleep(every).await;
        let second = ask().await?;
        if to.json {
            print_json(&second)
        } else {
            let (instances, peers) = (second.instances.len(), second.peers.len());
            let mut view = crate::top_view::View::new(&to.addr);
            view.update(first);
            view.update(second);
            let height = 1 + (3 + instances) + (peers.clamp(1, 8) + 3) + 1;
            for line in crate::top_view::render_text(&view, 100, height as u16) {
                println!("{line}");
            }
            Ok(())
        }
    } else {
        crate::top_view::run(&to.addr, every, ask).await
    };
    client.close().await;
    result
}
