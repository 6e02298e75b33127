//! `dockfra-coord`: thin entry point; see `cli` for commands and exit codes.
fn main() -> std::process::ExitCode {
    dockfra_coord::cli::main()
}
