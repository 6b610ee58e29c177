//! `wasmwire send`: opens a session with an exposed service, sends messages, prints what comes back.

use super::client::{Client, HostArgs};
use super::parse_duration;
use anyhow::{Result, bail};
use std::process::ExitCode;
use std::time::Duration;
use wasmwire::runtime::session::ClientEvent;

/// Open a session with an exposed service, send a message, print what comes back.
/// With `-` as the payload, every line read from stdin is sent as one message (a chat
/// client: `wasmwire send ADDR lobby say - --name ann`).
#[derive(Debug, clap::Args)]
pub struct SendCommand {
    #[command(flatten)]
    to: HostArgs,
    /// The service (instance name).
    service: String,
    /// The message kind.
    kind: String,
    /// The payload (text), or `-` for one message per line of stdin.
    #[arg(default_value = "")]
    payload: String,
    /// How long to keep printing what comes back after the last message.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    wait: Duration,
    /// The name the service sees for this end of the session.
    #[arg(long, default_value = "cli")]
    name: String,
}

impl SendCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        send(
            &self.to,
            &self.service,
            &self.kind,
            self.payload,
            self.wait,
            &self.name,
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn send(
    to: &HostArgs,
    service: &str,
    kind: &str,
    payload: String,
    wait: Duration,
    name: &str,
) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let client = Client::connect(to).await?;
    let result = async {
        let opened = tokio::time::timeout(
            client.timeout,
            client
                .net
                .open_client_session(client.conn, service, name, 1 << 20),
        )
        .await;
        let mut session = match opened {
            Err(_) => bail!("no answer to the session within {:?}", client.timeout),
            Ok(r) => r.map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        // Lines from stdin (`-`), or the one payload given.
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
        if payload == "-" {
            tokio::spawn(async move {
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                while let Ok(Some(line)) = stdin.next_line().await {
                    if lines_tx.send(line).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            let _ = lines_tx.send(payload).await;
            drop(lines_tx);
        }
        let mut input_open = true;
        let mut until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                line = lines.recv(), if input_open => match line {
                    Some(line) => {
                        let mut payload = line.into_bytes();
                        // A full queue is a pause, not an error: wait for room.
                        loop {
                            match session.send(kind, std::mem::take(&mut payload)) {
                                Err(wasmwire::runtime::instance::CallError::Busy) => {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                r => break r.map_err(|e| anyhow::anyhow!("{e}"))?,
                            }
                        }
                    }
                    None => {
                        input_open = false;
                        until = tokio::time::Instant::now() + wait;
                    }
                },
                event = session.events.recv() => match event {
                    None | Some(ClientEvent::Closed) => {
                        eprintln!("(the service closed the session)");
                        break;
                    }
                    Some(ClientEvent::Message { kind, payload }) => {
                        println!("{kind} {}", String::from_utf8_lossy(&payload));
                    }
                },
                _ = tokio::time::sleep_until(until), if !input_open => break,
            }
        }
        session.close();
        // Give the writer a moment to finish the stream before the endpoint closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
    .await;
    client.close().await;
    result
}
