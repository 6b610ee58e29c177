//! How a client command reaches a host: a QUIC connection with role `client`, one ask
//! at a time, like any peer.

use super::parse_duration;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Duration;
use wasmwire::broker::{Ask, ConnId};
use wasmwire::manifest::PeerSpec;
use wasmwire::net::identity::Identity;
use wasmwire::net::{Net, NetConfig};
use wasmwire::wire::{self, Control, Role};

/// Where a client command connects, and as whom.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// The host: `ADDR:PORT`, or `ADDR:PORT#PEERID` to refuse any other key.
    pub addr: String,
    /// Key to connect with (so an operator can list it in `allow`); default: a new one.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the host.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A client connection to a host.
pub struct Client {
    /// The client's network.
    pub net: Net,
    /// Its connection to the host.
    pub conn: ConnId,
    /// How long to wait for the host.
    pub timeout: Duration,
}

impl Client {
    pub async fn connect(to: &HostArgs) -> Result<Client> {
        let spec: PeerSpec = to
            .addr
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{e}"))?;
        let identity = match &to.identity {
            Some(p) => Identity::load(p)?,
            None => Identity::generate()?,
        };
        let net = Net::start(
            NetConfig {
                role: Role::Client,
                listen: None,
                advertise: None,
                identity,
                allow: Vec::new(),
                peers: Vec::new(),
                transport: Default::default(),
                limits: Default::default(),
                alpn: wire::ALPN.to_vec(),
                resolver: None,
            },
            None,
        )?;
        let dialled = tokio::time::timeout(to.timeout, net.dial(&spec)).await;
        let (conn, _peer) = match dialled {
            Err(_) => bail!(
                "cannot connect to {}: no answer within {:?}",
                to.addr,
                to.timeout
            ),
            Ok(Err(e)) => bail!("cannot connect to {}: {e}", to.addr),
            Ok(Ok(c)) => c,
        };
        Ok(Client {
            net,
            conn,
            timeout: to.timeout,
        })
    }

    pub async fn ask(&self, ask: Ask) -> Result<Control> {
        let r = self.net.ask(self.conn, ask, self.timeout).await;
        match r {
            Ok(c) => Ok(c),
            Err(f) => {
                let code = serde_json::to_value(f.code).unwrap_or_default();
                bail!("{}: {}", code.as_str().unwrap_or("error"), f.reason)
            }
        }
    }

    pub async fn close(self) {
        self.net.shutdown(Duration::from_millis(500)).await;
    }
}

/// Connects, asks one thing, closes.
pub async fn ask_once(to: &HostArgs, ask: Ask) -> Result<Control> {
    let client = Client::connect(to).await?;
    let answer = client.ask(ask).await;
    client.close().await;
    answer
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
