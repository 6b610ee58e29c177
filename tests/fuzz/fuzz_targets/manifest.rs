//! The manifest parser and validator on arbitrary text: never a panic, and every error
//! names the file and the line it is about.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use wasmwire::manifest::{self, ManifestError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match manifest::parse(text, path) {
        Ok(m) => {
            // What validation let through must hold together.
            let mut names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(
                before,
                names.len(),
                "two services with one name got through"
            );
        }
        Err(e) => {
            let said = e.to_string();
            assert!(!said.is_empty());
            if let ManifestError::Invalid(diagnostics) = &e {
                assert!(
                    !diagnostics.is_empty(),
                    "an invalid manifest without a diagnostic"
                );
                assert!(
                    said.contains("fuzz.toml"),
                    "the error does not name the file: {said}"
                );
                for d in diagnostics {
                    assert!(d.at.line >= 1, "a diagnostic without a line: {d}");
                }
            }
        }
    }
});
