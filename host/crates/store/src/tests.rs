use super::*;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wasmwire-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_commit_is_read_back_and_a_rollback_leaves_nothing() {
    let d = dir("commit");
    let db = Database::open(&d).unwrap();
    let bucket: Arc<str> = Arc::from("counter");
    let mut t = Transaction::new(Some(db.clone()));
    t.put(&bucket, "n".into(), Some(b"1".to_vec())).unwrap();
    // Read-your-writes, while nobody else sees it yet.
    assert_eq!(t.get("counter", "n").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get("counter", "n").unwrap(), None);
    block_on(t.commit()).unwrap();
    assert!(!t.is_dirty());
    assert_eq!(db.get("counter", "n").unwrap().as_deref(), Some(&b"1"[..]));

    t.put(&bucket, "n".into(), Some(b"2".to_vec())).unwrap();
    t.put(&bucket, "m".into(), None).unwrap();
    t.rollback();
    assert_eq!(t.get("counter", "n").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.figures().write_sets.load(Ordering::Relaxed), 1);
    // Another bucket never sees it.
    assert_eq!(db.get("counter/2", "n").unwrap(), None);
}

#[test]
fn data_outlives_the_handle_and_a_second_host_is_refused() {
    let d = dir("reopen");
    let db = Database::open(&d).unwrap();
    let err = Database::open(&d).err().expect("a second open is refused");
    assert!(
        err.to_string().contains("another host has it open"),
        "{err}"
    );
    let mut w = WriteSet::default();
    w.put(&Arc::from("b"), "k".into(), Some(vec![7; 100]));
    block_on(db.commit(w)).unwrap();
    drop(db);
    let db = Database::open(&d).unwrap();
    assert_eq!(db.get("b", "k").unwrap(), Some(vec![7; 100]));
    assert_eq!(
        db.buckets().unwrap(),
        vec![(
            "b".to_string(),
            Usage {
                keys: 1,
                bytes: 101
            }
        )]
    );
}

#[test]
fn a_damaged_database_is_refused_and_left_as_it_is() {
    let d = dir("corrupt");
    let db = Database::open(&d).unwrap();
    let mut w = WriteSet::default();
    w.put(&Arc::from("b"), "k".into(), Some(vec![1; 10]));
    block_on(db.commit(w)).unwrap();
    drop(db);
    // Its format marker replaced by something else: not a database this host can read.
    let marker = d.join(FOLDER).join("version");
    std::fs::write(&marker, b"GARBAGE!").unwrap();
    let err = Database::open(&d)
        .err()
        .expect("a damaged database is refused");
    let text = err.to_string();
    assert!(
        text.contains(FOLDER) && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(std::fs::read(&marker).unwrap(), b"GARBAGE!");
}

#[test]
fn keys_page_through_a_bucket_with_this_calls_writes_merged() {
    let d = dir("keys");
    let db = Database::open(&d).unwrap();
    let b: Arc<str> = Arc::from("room/1");
    let mut w = WriteSet::default();
    for i in 0..10 {
        w.put(&b, format!("k{i}"), Some(vec![i]));
    }
    // A neighbouring bucket whose name extends this one's stays apart.
    w.put(&Arc::from("room/10"), "k0".into(), Some(vec![0]));
    block_on(db.commit(w)).unwrap();

    let mut t = Transaction::new(Some(db));
    t.put(&b, "k1".into(), None).unwrap();
    t.put(&b, "k2".into(), None).unwrap();
    t.put(&b, "k45".into(), Some(vec![1])).unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = t.keys("room/1", after.as_deref(), 3).unwrap();
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys.iter().cloned());
        if !page.more {
            break;
        }
        after = page.keys.last().cloned();
    }
    assert_eq!(
        seen,
        ["k0", "k3", "k4", "k45", "k5", "k6", "k7", "k8", "k9"]
    );
}

#[test]
fn many_callers_share_commits_and_every_write_lands() {
    let d = dir("group");
    let db = Database::open(&d).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..10u32 {
                    let mut w = WriteSet::default();
                    w.put(
                        &Arc::from(format!("i{i}")),
                        format!("k{j}"),
                        Some(j.to_le_bytes().to_vec()),
                    );
                    db.commit(w).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let f = db.figures();
    assert_eq!(f.write_sets.load(Ordering::Relaxed), 640);
    assert!(f.commits.load(Ordering::Relaxed) <= 640);
    for i in 0..64u32 {
        assert_eq!(db.keys(&format!("i{i}"), None, 100).unwrap().len(), 10);
    }
}

#[test]
fn usage_follows_every_write_and_the_calls_view_adds_its_own() {
    let d = dir("usage");
    let db = Database::open(&d).unwrap();
    let b: Arc<str> = Arc::from("q");
    let mut t = Transaction::new(Some(db.clone()));
    t.put(&b, "ab".into(), Some(vec![0; 10])).unwrap();
    t.put(&b, "cd".into(), Some(vec![0; 5])).unwrap();
    // Rewriting a key within the call counts it once, at its last size.
    t.put(&b, "ab".into(), Some(vec![0; 3])).unwrap();
    assert_eq!(
        t.usage("q").unwrap(),
        Usage {
            keys: 2,
            bytes: 5 + 7
        }
    );
    assert_eq!(db.usage("q").unwrap(), Usage::default());
    block_on(t.commit()).unwrap();
    assert_eq!(db.usage("q").unwrap(), Usage { keys: 2, bytes: 12 });
    assert_eq!(
        t.change("q", "cd", None).unwrap(),
        Change {
            keys: -1,
            bytes: -7
        }
    );
    t.put(&b, "cd".into(), None).unwrap();
    t.put(&b, "zz".into(), None).unwrap();
    block_on(t.commit()).unwrap();
    assert_eq!(db.usage("q").unwrap(), Usage { keys: 1, bytes: 5 });
    // Two write sets in one group touching the same key are counted once each, in order.
    let mut w1 = WriteSet::default();
    w1.put(&b, "ab".into(), Some(vec![0; 8]));
    let mut w2 = WriteSet::default();
    w2.put(&b, "ab".into(), None);
    w2.put(&b, "new".into(), Some(vec![0; 1]));
    let (r1, r2) = block_on(async { tokio::join!(db.commit(w1), db.commit(w2)) });
    r1.unwrap();
    r2.unwrap();
    assert_eq!(db.usage("q").unwrap(), Usage { keys: 1, bytes: 4 });
    assert_eq!(db.clear("q").unwrap(), 1);
    assert_eq!(db.usage("q").unwrap(), Usage::default());
    assert!(db.buckets().unwrap().is_empty());
}
