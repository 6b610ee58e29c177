fn main() -> std::process::ExitCode {
    wasmwire::cli::main()
}
