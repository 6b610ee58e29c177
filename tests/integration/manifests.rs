//! Snapshot tests of `wasmwire check` on bad manifests: each `manifests/bad/NAME.toml` sits
//! beside `NAME.expected`, the exact error text. `UPDATE_SNAPSHOTS=1` rewrites them.

use std::path::Path;
use std::process::Command;

fn check(manifest: &str) -> (bool, String, String) {
    let out = Command::new(wasmwire_tests::wasmwire_bin())
        .args(["check", manifest])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run wasmwire check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_manifests_match_their_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/bad");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "expected the bad manifests, found {cases:?}"
    );
    let mut mismatches = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let (ok, _, stderr) = check(&format!("manifests/bad/{name}"));
        assert!(!ok, "{name}: check passed but must fail");
        let expected_path = case.with_extension("expected");
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&expected_path, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != stderr {
            mismatches.push(format!(
                "--- {name} expected:\n{expected}\n--- got:\n{stderr}"
            ));
        }
        // Every error names the file, a line and a field.
        for line in stderr.lines().filter(|l| l.starts_with("error: ")) {
            assert!(
                line.contains(&format!("manifests/bad/{name}:")) && line.contains("field `"),
                "{line}"
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "snapshots differ (UPDATE_SNAPSHOTS=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn the_default_manifest_checks_clean() {
    let (ok, stdout, stderr) = check("../wasmwire.toml");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("all valid") && stdout.contains("ticker"),
        "{stdout}"
    );
}

/// The Kubernetes example's manifest (examples/kubernetes/, the ConfigMap's source) checks
/// clean, with its in-image paths pointed at the components built here.
#[test]
fn the_kubernetes_example_manifest_checks_clean() {
    let root = wasmwire_tests::root();
    let text = std::fs::read_to_string(root.join("examples/kubernetes/wasmwire.toml")).unwrap();
    for p in ["/opt/wasmwire/services/", "/var/lib/wasmwire/"] {
        assert!(text.contains(p), "the example no longer uses {p}");
    }
    let dir = wasmwire_tests::scratch_dir("k8s");
    let text = text
        .replace(
            "/opt/wasmwire/services/",
            &format!("{}/", root.join("target/services").display()),
        )
        .replace("/var/lib/wasmwire/", &format!("{}/", dir.display()));
    let path = dir.join("wasmwire.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, stdout, stderr) = check(path.to_str().unwrap());
    assert!(ok && stdout.contains("all valid"), "{stderr}{stdout}");
    // The ConfigMap is generated from that very file, so the two cannot drift.
    let k = std::fs::read_to_string(root.join("examples/kubernetes/kustomization.yaml")).unwrap();
    assert!(k.contains("configMapGenerator") && k.contains("- wasmwire.toml"));
}
