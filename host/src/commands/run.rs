//! `wasmwire run`: runs the host on a manifest until Ctrl-C or SIGTERM.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmwire::manifest;
use wasmwire::node::Node;

/// Run the host on a manifest until Ctrl-C or SIGTERM.
#[derive(Debug, clap::Args)]
pub struct RunCommand {
    /// The manifest.
    #[arg(default_value = "wasmwire.toml")]
    manifest: PathBuf,
    /// The address peers are told to dial, overriding `[host] advertise`: `IP:PORT`, or
    /// an IP alone for `listen`'s port (`--advertise $POD_IP` in a pod of a StatefulSet,
    /// whose pods share one manifest).
    #[arg(long)]
    advertise: Option<String>,
}

impl RunCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        run(&self.manifest, self.advertise.as_deref()).await?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn run(path: &Path, advertise: Option<&str>) -> Result<()> {
    let mut manifest = manifest::load(path)?;
    if let Some(a) = advertise {
        let Some(listen) = manifest.host.listen else {
            bail!("--advertise needs `listen` in [host]: it names where peers reach that address");
        };
        manifest.host.advertise = Some(advertised(a, listen.port())?);
    }
    let node = Node::start(&manifest).await?;
    tracing::info!(manifest = %path.display(), services = manifest.services.len(), "wasmwire is running; Ctrl-C to stop");
    shutdown_signal().await;
    tracing::info!(
        shutdown_timeout = ?manifest.host.shutdown_timeout,
        "shutting down: services refuse new work, finish what they accepted, then sleep"
    );
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP that takes `port`.
fn advertised(text: &str, port: u16) -> Result<std::net::SocketAddr> {
    if let Ok(a) = text.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    match text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(std::net::SocketAddr::new(ip, port)),
        Err(_) => bail!("--advertise {text:?} is not an IP address or IP:PORT"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn advertise_takes_an_address_or_an_ip_for_the_listen_port() {
        let a = |s: &str| advertised(s, 7400).map(|a| a.to_string());
        assert_eq!(a("10.1.2.3:7401").unwrap(), "10.1.2.3:7401");
        assert_eq!(a("10.1.2.3").unwrap(), "10.1.2.3:7400");
        assert_eq!(a("fd00::5").unwrap(), "[fd00::5]:7400");
        assert_eq!(a("[fd00::5]").unwrap(), "[fd00::5]:7400");
        assert!(a("pod-0.wasmwire").is_err());
    }
}
