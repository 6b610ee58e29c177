//! `make soak`: the soak of `wasmwire_tests::soak` for `SOAK_MINUTES` (default 30) against
//! the release binary, printed as a table; exits 1 on any failure.

use wasmwire_tests::env_or;
use wasmwire_tests::soak::{SoakConfig, run, table};

fn main() {
    let minutes: f64 = env_or("SOAK_MINUTES", 30.0_f64).max(1.0);
    let config = SoakConfig::minutes(minutes);
    let report = wasmwire_tests::block_on(run(config.clone()));
    print!("{}", table(&config, &report));
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
}
