//! `wasmwire call`: calls an event of an exposed service and prints its JSON reply.

use super::client::{HostArgs, ask_once};
use anyhow::{Result, bail};
use std::process::ExitCode;
use wasmwire::broker::Ask;
use wasmwire::wire::Control;

/// Call an event of an exposed service and print its JSON reply.
#[derive(Debug, clap::Args)]
pub struct CallCommand {
    #[command(flatten)]
    to: HostArgs,
    /// The service (instance name).
    service: String,
    /// The event.
    event: String,
    /// JSON parameters.
    #[arg(default_value = "null")]
    params: String,
}

impl CallCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        call(&self.to, &self.service, &self.event, &self.params).await?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn call(to: &HostArgs, service: &str, event: &str, params: &str) -> Result<()> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(params) {
        bail!("the parameters are not JSON: {e}");
    }
    let answer = ask_once(
        to,
        Ask::Request {
            service: service.to_string(),
            event: event.to_string(),
            params: params.to_string(),
            chain: Vec::new(),
            caller: Some("cli".into()),
            session: None,
        },
    )
    .await;
    match answer? {
        Control::Response { result, .. } => {
            println!("{result}");
            Ok(())
        }
        _ => bail!("the host answered the request with something else"),
    }
}
