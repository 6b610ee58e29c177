//! `wasmwire new` for each language: the folder it makes builds with the one command it
//! prints (`make`), passes `wasmwire check`, and answers an event and a message in a host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use wasmwire::runtime::session::ClientEvent;
use wasmwire_tests::{json, root, scratch_dir, start, wasmwire_bin};

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Scaffolds `name` in `lang`, builds it as `new` says, checks it, runs it and calls it.
async fn scaffold_build_and_call(name: &str, lang: &str, env: &[(&str, String)], memory: &str) {
    let dir = scratch_dir("new").join(name);
    let said = run(
        Command::new(wasmwire_bin())
            .args(["new", name, "--lang", lang, "--dir"])
            .arg(&dir),
        "wasmwire new",
    );
    let build = format!("build it:  cd {} && make", dir.display());
    assert!(
        said.contains(&build),
        "new did not print {build:?}:\n{said}"
    );
    let mut make = Command::new("make");
    make.current_dir(&dir);
    for (k, v) in env {
        make.env(k, v);
    }
    run(&mut make, &format!("make in the {lang} scaffold"));
    let component = dir.join(format!("{name}.wasm"));
    assert!(
        component.is_file(),
        "make did not leave {}",
        component.display()
    );
    let checked = run(
        Command::new(wasmwire_bin())
            .args(["check", "wasmwire.toml"])
            .current_dir(&dir)
            .env("RUST_LOG", "off"),
        "wasmwire check",
    );
    assert!(checked.contains("all valid"), "{checked}");

    // The host reads the compiled cache `check` just wrote (a Python or JavaScript
    // component takes tens of seconds to compile on a small machine).
    let node = start(&format!(
        "[host]\ncache_dir = {:?}\n\n[[service]]\nname = \"{name}\"\ncomponent = {:?}\nchannel = 1\noptions = {{ greeting = \"Hi\" }}\n{memory}",
        dir.join(".wasmwire/cache").display().to_string(),
        component.display().to_string()
    ))
    .await;
    assert!(
        node.cache_outcomes()
            .iter()
            .all(|(_, o)| *o == wasmwire::runtime::CacheOutcome::Hit),
        "{:?}",
        node.cache_outcomes()
    );
    for n in 1..=2 {
        let reply = json(
            &node
                .request(name, "hello", r#"{"name": "ann"}"#)
                .await
                .unwrap(),
        );
        assert_eq!(reply, serde_json::json!({"text": "Hi, ann!", "count": n}));
    }
    let mut s = node.open_session(name, "tester").await.unwrap();
    s.send("hello", b"ben".to_vec()).unwrap();
    match tokio::time::timeout(Duration::from_secs(10), s.events.recv()).await {
        Ok(Some(ClientEvent::Message { kind, payload })) => {
            assert_eq!(
                (kind.as_str(), payload.as_slice()),
                ("hello", &b"Hi, ben!"[..])
            );
        }
        other => panic!("expected the answer on the session, got {other:?}"),
    }
    node.shutdown().await;
}

fn toolchain(path: &str) -> String {
    let p = root().join(path);
    assert!(
        p.exists(),
        "{} is missing: `make services` installs it",
        p.display()
    );
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rust_service_builds_and_answers() {
    // The sample workspace's target folder: the guest crates are built there already.
    let target = root().join("target/guests").display().to_string();
    scaffold_build_and_call("hello-rs", "rust", &[("CARGO_TARGET_DIR", target)], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_python_service_builds_and_answers() {
    let tool = toolchain("target/toolchains/python/bin/componentize-py");
    let memory = "memory = \"64MiB\"\n";
    scaffold_build_and_call("hello-py", "python", &[("COMPONENTIZE_PY", tool)], memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_js_service_builds_and_answers() {
    let tool = toolchain("target/toolchains/js/node_modules/.bin/componentize-js");
    let memory = "memory = \"64MiB\"\n";
    scaffold_build_and_call("hello-js", "js", &[("COMPONENTIZE_JS", tool)], memory).await;
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_folder() {
    let dir = scratch_dir("new-bad");
    let out = Command::new(wasmwire_bin())
        .args(["new", "Bad Name", "--dir"])
        .arg(dir.join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid service name"));
    let out = Command::new(wasmwire_bin())
        .args(["new", "ok", "--lang", "python", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    assert!(!Path::new(&dir).join("app.py").exists());
}
