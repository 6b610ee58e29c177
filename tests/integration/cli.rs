//! The real `wasmwire` binary as users run it: a host process reached by the client
//! commands, a host killed with SIGKILL and started again, a refused stranger in the log.

use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use wasmwire::net::identity::Identity;
use wasmwire_tests::{
    free_port, json, peer_manifest_with_key, scratch_dir, start_peer, wait_connected, wait_until,
    wasmwire_bin,
};

const SERVICES: &str = r#"
[[service]]
name = "counter"
component = "{service:counter}"
channel = 3
expose = true
options = { start = 100 }

[[service]]
name = "echo"
component = "{service:echo}"
channel = 2
expose = true

[[service]]
name = "tally"
component = "{service:counter}"
channel = 4
expose = true
keyed = true
max_instances = 2
options = { start = 100 }
"#;

/// A host process; killed when dropped.
struct HostProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl HostProcess {
    fn start(manifest: &Path, log: &Path) -> HostProcess {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(wasmwire_bin())
            .args(["run", manifest.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start wasmwire run");
        HostProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the "listening" line.
    async fn ready(&self) {
        wait_until(Duration::from_secs(20), "host listening", || {
            let up = self.log().contains("listening");
            async move { up.then_some(()) }
        })
        .await;
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wasmwire run` on a free port with `SERVICES` and `extra` `[host]` lines; returns
/// its address, key file, process (ready) and manifest path.
async fn host_process(
    tag: &str,
    extra: &str,
) -> (String, std::path::PathBuf, HostProcess, std::path::PathBuf) {
    let addr = format!("127.0.0.1:{}", free_port());
    let (manifest, key) = peer_manifest_with_key(&addr, &[], extra, SERVICES);
    let dir = scratch_dir(tag);
    let path = dir.join("wasmwire.toml");
    std::fs::write(&path, manifest).unwrap();
    let host = HostProcess::start(&path, &dir.join("host.log"));
    host.ready().await;
    (addr, key, host, path)
}

fn cli(args: &[&str]) -> Output {
    Command::new(wasmwire_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run wasmwire")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_running_host() {
    let (addr, key, mut host, _) = host_process("cli", "").await;

    let out = cli(&["services", &addr]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(
        table.contains("counter") && table.contains("incr,get"),
        "{table}"
    );
    assert!(table.contains("echo"), "{table}");

    // Calls count up.
    for want in [101, 102] {
        let out = cli(&["call", &addr, "counter", "incr"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), want.to_string());
    }
    let out = cli(&["call", &addr, "counter", "incr", r#"{"by": 10}"#]);
    assert_eq!(text(&out.stdout).trim(), "112");
    // Keyed: each key its own counter, made by the call; the listing counts keys.
    for (key, want) in [("tally/a", 101), ("tally/a", 102), ("tally/b", 101)] {
        let out = cli(&["call", &addr, key, "incr"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), want.to_string());
    }
    let out = cli(&["call", &addr, "tally/c", "incr"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max_instances"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&["call", &addr, "tally/no way", "incr"]);
    assert!(
        text(&out.stderr).contains("bad key"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&["services", &addr]);
    assert!(
        text(&out.stdout).contains("keys: 2 live, 2 awake (max_instances 2): tally/a tally/b"),
        "{}",
        text(&out.stdout)
    );
    // An unknown service: non-zero, the reason on stderr.
    let out = cli(&["call", &addr, "nothing", "incr"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-service"),
        "{}",
        text(&out.stderr)
    );
    // `send` opens a session and prints what comes back.
    let out = cli(&["send", &addr, "echo", "echo", "ping", "--wait", "500ms"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "echo ping");
    // The host's id, pinned: the right one works, another is refused.
    let id = Identity::load(&key).unwrap().id;
    let out = cli(&["call", &format!("{addr}#{id}"), "counter", "get"]);
    assert_eq!(text(&out.stdout).trim(), "112", "{}", text(&out.stderr));
    let stranger = Identity::generate().unwrap().id;
    let out = cli(&["call", &format!("{addr}#{stranger}"), "counter", "get"]);
    assert!(!out.status.success());
    let peers = cli(&["peers", &addr, "--json"]);
    assert!(peers.status.success());
    assert_eq!(json(&text(&peers.stdout)), json!([]));
    let sessions = cli(&["sessions", &addr]);
    assert!(sessions.status.success());

    // SIGINT: the host puts its services to sleep and exits 0.
    let pid = host.child.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let status = wait_until(Duration::from_secs(10), "host exits", || {
        let s = host.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "{status:?}");
    assert!(host.log().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_refused_at_the_handshake_and_named_in_the_log() {
    let dir = scratch_dir("allow");
    let friend_key = dir.join("friend.key");
    let friend = Identity::create(&friend_key).unwrap().id;
    let stranger_key = dir.join("stranger.key");
    let stranger = Identity::create(&stranger_key).unwrap().id;
    let (addr, _, host, _) = host_process("allow-host", &format!("allow = [\"{friend}\"]")).await;
    let out = cli(&[
        "call",
        &addr,
        "counter",
        "get",
        "--identity",
        friend_key.to_str().unwrap(),
    ]);
    assert_eq!(text(&out.stdout).trim(), "100", "{}", text(&out.stderr));
    let out = cli(&[
        "call",
        &addr,
        "counter",
        "get",
        "--identity",
        stranger_key.to_str().unwrap(),
        "--timeout",
        "3s",
    ]);
    assert!(!out.status.success());
    let log = host.log();
    assert!(
        log.contains(&format!("peer {stranger} is not in `allow`")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_is_noticed_within_the_idle_timeout_and_redialled_when_back() {
    let (b_addr, key, mut b, path) = host_process("kill", "").await;
    let dir = path.parent().unwrap().to_path_buf();
    let b_id = Identity::load(&key).unwrap().id;

    let a = start_peer(
        std::slice::from_ref(&b_addr),
        "",
        "[[service]]\nname = \"alice\"\ncomponent = \"{service:spec}\"\nchannel = 1\nuses = [\"*/echo\", \"*/counter\"]\n",
    )
    .await;
    wait_connected(&a, b_id, Duration::from_secs(10)).await;
    let end = json(
        &a.request(
            "alice",
            "connect",
            &json!({"service": "echo", "peer": b_id.to_string()}).to_string(),
        )
        .await
        .unwrap(),
    )
    .as_u64()
    .unwrap();

    // SIGKILL: no close frame; A must notice by its idle timeout (1.5 s).
    b.child.kill().unwrap();
    let killed = Instant::now();
    let gone = format!("disconnect {end}");
    wait_until(Duration::from_secs(5), "on-disconnect on A", || {
        let a = &a;
        let gone = gone.clone();
        async move {
            let record = a.request("alice", "record", "null").await.ok()?;
            record.contains(&gone).then_some(())
        }
    })
    .await;
    let noticed = killed.elapsed();
    eprintln!("on-disconnect on A {noticed:?} after B was killed (peer_timeout 1.5 s)");
    assert!(noticed < Duration::from_millis(3000), "{noticed:?}");

    // B comes back on the same address with the same key: A dials it again by itself.
    let _b2 = HostProcess::start(&path, &dir.join("b2.log"));
    let back = Instant::now();
    wait_connected(&a, b_id, Duration::from_secs(20)).await;
    eprintln!(
        "A reconnected {:?} after B was started again",
        back.elapsed()
    );
    let r = a
        .request(
            "alice",
            "request",
            &json!({"service": format!("{b_id}/counter"), "event": "incr", "params": null})
                .to_string(),
        )
        .await;
    assert_eq!(r.map(|r| json(&r)), Ok(json!(101)));
    a.shutdown().await;
}
