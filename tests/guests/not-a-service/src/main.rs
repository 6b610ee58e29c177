//! A plain WASI command (the `wasi:cli/command` world), not a wasmwire service: the host
//! must refuse it with a clear "wrong world" error.

fn main() {
    println!("hello from a command");
}
