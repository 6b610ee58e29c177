//! `wasmwire data`: the durable data of a host's services (`wasi:keyvalue`), read and
//! managed on disk while the host is stopped — list buckets with their sizes, list a
//! bucket's keys, print a value, delete a key or a whole bucket (an instance's data).

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wasmwire::store::{Database, WriteSet};

/// Read and manage the services' durable data.
#[derive(Debug, clap::Args)]
pub struct DataCommand {
    /// The manifest whose `[host] data_dir` to open.
    #[arg(long, default_value = "wasmwire.toml", conflicts_with = "dir")]
    manifest: PathBuf,
    /// The data dir itself, instead of a manifest's.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    action: DataAction,
}

/// What `wasmwire data` does. A BUCKET is named as `list` prints it: `i/INSTANCE` for an
/// instance's own (`i/room/42` for a key of a keyed class), `s/NAME` for a shared one.
#[derive(Debug, clap::Subcommand)]
pub enum DataAction {
    /// Every bucket that holds data, with its keys and bytes.
    List,
    /// The keys of a bucket, in order.
    Keys {
        /// The bucket.
        bucket: String,
    },
    /// A value, as stored (bytes to stdout).
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Deletes one key, or with no key every key of the bucket (an instance's whole data).
    Delete {
        /// The bucket.
        bucket: String,
        /// The key; none deletes them all.
        key: Option<String>,
    },
}

impl DataCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let dir = match self.dir {
            Some(d) => d,
            None => {
                let m = wasmwire::manifest::load(&self.manifest)?;
                m.host.data_dir
            }
        };
        if !dir.join(wasmwire::store::FOLDER).is_dir() {
            bail!(
                "{} holds no data yet (a host makes it when a service first uses wasi:keyvalue)",
                dir.display()
            );
        }
        let db = Database::open(&dir).with_context(|| {
            "wasmwire data reads the data while the host is stopped: stop it first".to_string()
        })?;
        let mut out = std::io::stdout().lock();
        match self.action {
            DataAction::List => {
                writeln!(out, "{:<40} {:>10} {:>14}", "BUCKET", "KEYS", "BYTES")?;
                for (bucket, usage) in db.buckets()? {
                    writeln!(out, "{bucket:<40} {:>10} {:>14}", usage.keys, usage.bytes)?;
                }
            }
            DataAction::Keys { bucket } => {
                let mut after: Option<String> = None;
                loop {
                    let keys = db.keys(&bucket, after.as_deref(), 1000)?;
                    let Some(last) = keys.last().cloned() else {
                        break;
                    };
                    for k in keys {
                        writeln!(out, "{k}")?;
                    }
                    after = Some(last);
                }
            }
            DataAction::Get { bucket, key } => match db.get(&bucket, &key)? {
                Some(v) => out.write_all(&v)?,
                None => bail!("{bucket} has no key {key:?}"),
            },
            DataAction::Delete { bucket, key: None } => {
                let n = db.clear(&bucket)?;
                writeln!(out, "deleted {n} keys of {bucket}")?;
            }
            DataAction::Delete {
                bucket,
                key: Some(key),
            } => {
                if db.get(&bucket, &key)?.is_none() {
                    bail!("{bucket} has no key {key:?}");
                }
                let mut w = WriteSet::default();
                w.put(&Arc::from(bucket.as_str()), key.clone(), None);
                db.commit_blocking(w)?;
                writeln!(out, "deleted {key:?} of {bucket}")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
