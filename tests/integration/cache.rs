//! The compiled-component cache: a second start loads instead of compiling.

use wasmwire::node::Node;
use wasmwire::runtime::CacheOutcome;
use wasmwire_tests::{load_manifest, scratch_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_is_served_from_the_compiled_cache() {
    let cache = scratch_dir("cache");
    let manifest = load_manifest(&format!(
        r#"
[host]
max_awake = 8
cache_dir = {:?}

[[service]]
name = "echo"
component = "{{service:echo}}"
channel = 1
"#,
        cache.display().to_string()
    ));
    let first = Node::start(&manifest).await.unwrap();
    assert_eq!(first.cache_outcomes()[0].1, CacheOutcome::Compiled);
    assert_eq!(
        first.request("echo", "echo", r#"{"a":1}"#).await.unwrap(),
        r#"{"a":1}"#
    );
    first.shutdown().await;
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one compiled file"
    );

    let second = Node::start(&manifest).await.unwrap();
    assert_eq!(second.cache_outcomes()[0].1, CacheOutcome::Hit);
    assert_eq!(second.request("echo", "echo", "[2]").await.unwrap(), "[2]");
    second.shutdown().await;

    // A corrupt entry is not trusted: it is recompiled and replaced.
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"garbage").unwrap();
    let third = Node::start(&manifest).await.unwrap();
    assert_eq!(third.cache_outcomes()[0].1, CacheOutcome::Compiled);
    assert_eq!(third.request("echo", "echo", "3").await.unwrap(), "3");
    third.shutdown().await;
}
