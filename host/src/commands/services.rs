//! `wasmwire services`: lists the services a host exposes.

use super::client::{HostArgs, ask_once, print_json};
use anyhow::{Result, bail};
use std::process::ExitCode;
use wasmwire::broker::Ask;
use wasmwire::wire::Control;

/// List the services a host exposes.
#[derive(Debug, clap::Args)]
pub struct ServicesCommand {
    #[command(flatten)]
    to: HostArgs,
}

impl ServicesCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let to = &self.to;
        let answer = ask_once(to, Ask::ListServices).await;
        let Control::Services { services, .. } = answer? else {
            bail!("the host answered list-services with something else");
        };
        if to.json {
            print_json(&services)?;
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<16} {:>7}  {:<7} {:>8}  {:<24} EVENTS",
            "SERVICE", "CHANNEL", "STATE", "SESSIONS", "MESSAGES"
        );
        for s in &services {
            println!(
                "{:<16} {:>7}  {:<7} {:>8}  {:<24} {}",
                s.name,
                s.channel,
                s.state,
                s.sessions,
                dash_list(&s.messages),
                dash_list(&s.events)
            );
            if let Some(k) = &s.keyed {
                let more = k.awake as usize - k.awake_keys.len().min(k.awake as usize);
                println!(
                    "  keys: {} live, {} awake (max_instances {}){}{}{}",
                    k.live,
                    k.awake,
                    k.max_instances,
                    if k.awake_keys.is_empty() { "" } else { ": " },
                    k.awake_keys
                        .iter()
                        .map(|key| format!("{}/{key}", s.name))
                        .collect::<Vec<_>>()
                        .join(" "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn dash_list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}
