//! `dockfra-agent`: thin entry point; see `cli` for commands and exit codes.
fn main() -> std::process::ExitCode {
    dockfra_agent::cli::main()
}
