//! The worker threads that run instance actors: a fixed set of threads, each driving its
//! own single-threaded tokio runtime, and the rule that places instances on them.
//!
//! Why not one multi-threaded runtime: a hand-off between two actors (a request and its
//! reply, a wake) is cheapest when both run on the same thread, and a work-stealing
//! scheduler keeps moving ping-ponging tasks across threads. Here an instance stays on its
//! thread for the life of the host: instances linked by `uses` share a thread (their
//! requests are same-thread hand-offs), unrelated ones are spread over the threads (they
//! run in parallel). A long guest call still gives its thread back every few milliseconds
//! (see `runtime::clock::SLICE`), so instances sharing a thread all make progress.

use std::collections::HashMap;
use std::future::Future;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmwire_manifest::Manifest;

/// A fixed set of worker threads.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("wasmwire-worker-{i}"))
                .spawn(move || {
                    // Runs spawned actors until the node stops (or is dropped).
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers { handles, stops })
    }

    /// The threads' runtimes, to spawn on later (keyed instances made on demand).
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never: `start` makes at least one).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs a task on worker `index`.
    pub fn spawn<F>(&self, index: usize, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[index % self.handles.len()].spawn(task)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// The worker index of each service: services linked by `uses` (in either direction) form
/// a group that shares a worker; groups are dealt round-robin, in manifest order.
pub fn place(manifest: &Manifest, workers: usize) -> Vec<usize> {
    let n = manifest.services.len();
    let index: HashMap<&str, usize> = manifest
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, s) in manifest.services.iter().enumerate() {
        for u in &s.uses {
            if let Some(&j) = index.get(u.as_str()) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut group_worker: HashMap<usize, usize> = HashMap::new();
    (0..n)
        .map(|i| {
            let g = root(&mut parent, i);
            let next = group_worker.len() % workers.max(1);
            *group_worker.entry(g).or_insert(next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_services_share_a_worker_and_groups_spread() {
        let src = r#"
[[service]]
name = "a"
component = "Cargo.toml"
channel = 1
uses = ["c"]
[[service]]
name = "b"
component = "Cargo.toml"
channel = 2
[[service]]
name = "c"
component = "Cargo.toml"
channel = 3
[[service]]
name = "d"
component = "Cargo.toml"
channel = 4
uses = ["b"]
[[service]]
name = "e"
component = "Cargo.toml"
channel = 5
"#;
        let m = wasmwire_manifest::parse(src, std::path::Path::new("Cargo.toml")).unwrap();
        assert_eq!(place(&m, 2), vec![0, 1, 0, 1, 0]);
        assert_eq!(place(&m, 8), vec![0, 1, 0, 1, 2]);
        assert_eq!(place(&m, 1), vec![0, 0, 0, 0, 0]);
    }
}
