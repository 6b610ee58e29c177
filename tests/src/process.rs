//! A host as a real process: `wasmwire run MANIFEST`, its stderr appended to a log file,
//! killed when dropped. The tests that need what only a process has — a signal, a
//! descriptor limit, a SIGKILL and a restart — start hosts this way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A `wasmwire run` process and its log.
pub struct HostProcess {
    manifest: PathBuf,
    /// Where its stderr goes (appended across restarts).
    pub log: PathBuf,
    /// `ulimit -n` for it, if any.
    fds: Option<u32>,
    child: Option<Child>,
}

impl HostProcess {
    /// Starts `wasmwire run manifest` with `RUST_LOG=info`, logging to `log`.
    pub fn start(manifest: &Path, log: &Path) -> HostProcess {
        HostProcess::start_with(manifest, log, None)
    }

    /// Like [`HostProcess::start`], under `ulimit -n fds` when given.
    pub fn start_with(manifest: &Path, log: &Path, fds: Option<u32>) -> HostProcess {
        let mut p = HostProcess {
            manifest: manifest.to_path_buf(),
            log: log.to_path_buf(),
            fds,
            child: None,
        };
        p.spawn();
        p
    }

    /// Starts the process again (after [`HostProcess::kill`]), same manifest, same log.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the host log");
        let mut command = match self.fds {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" run \"$1\""))
                    .arg(crate::wasmwire_bin());
                c
            }
            None => {
                let mut c = Command::new(crate::wasmwire_bin());
                c.arg("run");
                c
            }
        };
        let child = command
            .arg(&self.manifest)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wasmwire run");
        self.child = Some(child);
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it logs that it listens.
    pub async fn wait_listening(&self) {
        crate::wait_until(Duration::from_secs(60), "host listening", || {
            let up = self.log_text().contains("listening");
            async move { up.then_some(()) }
        })
        .await;
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            rustix::process::kill_process(
                rustix::process::Pid::from_child(c),
                rustix::process::Signal::TERM,
            )
            .expect("SIGTERM the host");
        }
    }

    /// Waits up to `within` for it to exit by itself; its status.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("a running host");
        let status = crate::wait_until(within, "the host to exit", || {
            let s = child.try_wait().expect("wait for the host");
            async move { s }
        })
        .await;
        self.child = None;
        status
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
