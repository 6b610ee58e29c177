//! Starting a manifest's instances: one [`Instance`] per `[[service]]`, the directory over
//! them, and an actor per plain instance on the worker thread `workers::place` gives it. A
//! keyed class runs no actor itself: the directory starts one per key on first demand,
//! with the code `key_starter` was given here.

use crate::actor::{InstanceActor, key_starter};
use crate::alarms::{self, Alarms, Due};
use crate::call::CallError;
use crate::directory::{Directory, Spawner};
use crate::engine::Compiled;
use crate::instance::{Envelope, Instance, InstanceSpec, Keyed, Kind, SharedBucket};
use crate::workers::{Workers, place};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::task::JoinHandle;
use wasmwire_manifest::{Access, DEFAULT_BUCKET_MAX_DATA, DEFAULT_BUCKET_MAX_KEYS, Manifest};
use wasmwire_store::Database;

/// A manifest's instances, started.
pub struct Started {
    /// The directory over them.
    pub directory: Arc<Directory>,
    /// One actor task per plain instance.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Builds the instances of `manifest` from its loaded components (`classes`, by component
/// path; every component the manifest names must be there) and starts their actors on
/// `workers`; `ticks` is the engine's epoch counter, `database` the host's data file (if a
/// component imports `wasi:keyvalue`).
pub fn start_instances(
    manifest: &Manifest,
    classes: &HashMap<PathBuf, Compiled>,
    workers: &Workers,
    ticks: Arc<AtomicU64>,
    database: Option<Database>,
) -> Started {
    let index_of: HashMap<&str, u32> = manifest
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i as u32))
        .collect();
    let mut instances = Vec::new();
    let mut inboxes = Vec::new();
    for (i, s) in manifest.services.iter().enumerate() {
        let uses = s
            .uses
            .iter()
            .filter_map(|u| Some((Box::from(u.as_str()), *index_of.get(u.as_str())?)))
            .collect();
        let remote_uses = s
            .remote_uses
            .iter()
            .map(|(p, n)| (*p, Box::from(n.as_str())))
            .collect();
        let (instance, inbox) = Instance::new(InstanceSpec {
            name: &s.name,
            index: i as u32,
            channel: s.channel,
            class: classes[&s.component].class.clone(),
            limits: s.limits.clone(),
            options_json: &s.options_json,
            autostart: s.autostart,
            uses,
            remote_uses,
            expose: s.expose,
            kind: match s.keyed {
                Some(max) => Kind::Class(Keyed::new(max)),
                None => Kind::Plain,
            },
            buckets: s
                .buckets
                .iter()
                .map(|(name, access)| {
                    let quota = manifest.buckets.iter().find(|b| b.name == *name);
                    SharedBucket {
                        name: Box::from(name.as_str()),
                        id: Arc::from(format!("s/{name}")),
                        writable: *access == Access::ReadWrite,
                        max_data: quota.map_or(DEFAULT_BUCKET_MAX_DATA, |b| b.max_data),
                        max_keys: quota.map_or(DEFAULT_BUCKET_MAX_KEYS, |b| b.max_keys),
                    }
                })
                .collect(),
            stats: Arc::default(),
        });
        instances.push(instance);
        inboxes.push(inbox);
    }
    let alarms = match &database {
        Some(db) if directory_has_alarms(&instances) => match Alarms::load(db) {
            Ok(a) => {
                tracing::info!(alarms = a.len(), "alarms loaded");
                Some(Arc::new(a))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored alarms: none will fire");
                None
            }
        },
        _ => None,
    };
    let directory = Arc::new(Directory::new(instances, database, alarms.clone()));
    let placement = place(manifest, workers.len());
    let key_code = manifest
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.keyed.is_some())
        .map(|(i, s)| (i as u32, classes[&s.component].pre.clone()))
        .collect();
    directory.set_spawner(Spawner {
        workers: workers.handles(),
        start: key_starter(key_code, ticks.clone()),
    });
    let mut tasks = Vec::new();
    for ((instance, inbox), worker) in directory.instances().iter().zip(inboxes).zip(placement) {
        if let Some(keyed) = instance.keyed() {
            // A class never runs itself: its keys get actors when they are first used.
            tracing::info!(
                class = %instance.name,
                channel = instance.channel,
                component = %instance.class.path.display(),
                max_instances = keyed.max_instances,
                "keyed service"
            );
            continue;
        }
        tracing::info!(
            instance = %instance.name,
            channel = instance.channel,
            component = %instance.class.path.display(),
            autostart = instance.autostart,
            worker,
            "service"
        );
        let actor = InstanceActor::new(
            instance.clone(),
            classes[&manifest.services[instance.index as usize].component]
                .pre
                .clone(),
            directory.clone(),
            ticks.clone(),
            inbox,
        );
        tasks.push(workers.spawn(worker, actor.run()));
    }
    if let Some(alarms) = alarms {
        tasks.push(tokio::spawn(fire_alarms(directory.clone(), alarms)));
    }
    Started { directory, tasks }
}

/// Whether any service of the manifest takes alarms.
fn directory_has_alarms(instances: &[Arc<Instance>]) -> bool {
    instances.iter().any(|i| i.class.alarms())
}

/// How long the alarm driver puts off an alarm whose instance cannot take it yet (its
/// mailbox is full, or its class has `max_instances` keys live).
const ALARM_BUSY_RETRY_MS: u64 = 200;

/// Fires due alarms until the host closes: each is delivered to its instance (a key is
/// made if it is not live) as an `Alarm` envelope, through the mailbox like any other work.
pub async fn fire_alarms(directory: Arc<Directory>, alarms: Arc<Alarms>) {
    while !directory.is_closing() {
        let (due, next) = alarms.take_due(alarms::now_ms());
        for d in due {
            deliver_alarm(&directory, &alarms, d);
        }
        match next {
            Some(t) => {
                let wait = Duration::from_millis(t.saturating_sub(alarms::now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = alarms.changed_signal() => {}
                }
            }
            None => alarms.changed_signal().await,
        }
    }
}

/// Queues one due alarm in its instance's mailbox.
fn deliver_alarm(directory: &Arc<Directory>, alarms: &Alarms, due: Due) {
    let later = || alarms::now_ms() + ALARM_BUSY_RETRY_MS;
    let target = match directory.resolve(&due.name) {
        Ok(t) => t,
        // Its class has `max_instances` keys live: try again a little later.
        Err(CallError::Busy | CallError::Full(_)) => return alarms.later(due, later()),
        Err(CallError::Closed) => return,
        Err(e) => {
            // The manifest no longer runs it (or it is no longer keyed): left in the data.
            tracing::warn!(instance = %due.name, error = %e, "alarm for an instance this manifest does not run: skipped");
            return;
        }
    };
    if !target.class.alarms() {
        tracing::warn!(instance = %due.name, "alarm for a component that exports no on-alarm: skipped");
        return;
    }
    match directory.reserve_on(&target) {
        Ok(t) => t.deliver(Envelope::Alarm {
            at: due.at,
            attempt: due.attempt,
        }),
        Err(CallError::Busy | CallError::Full(_)) => alarms.later(due, later()),
        Err(CallError::Closed) => {}
        // Down: it counts as a failed try (a restart of the host tries again).
        Err(e) => alarms.failed(due, &e.to_string()),
    }
}
