//! Starting a manifest's instances: one [`Instance`] per `[[service]]`, the directory over
//! them, and an actor per plain instance on the worker thread `workers::place` gives it. A
//! keyed class runs no actor itself: the directory starts one per key on first demand,
//! with the code `key_starter` was given here.

use crate::actor::{InstanceActor, key_starter};
use crate::directory::{Directory, Spawner};
use crate::engine::Compiled;
use crate::instance::{Instance, InstanceSpec, Keyed, Kind, SharedBucket};
use crate::workers::{Workers, place};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
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
    let directory = Arc::new(Directory::new(instances, database));
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
    Started { directory, tasks }
}
