//! `sha256 FILE...`: each file's sha256, the way dockfra hashes files (the same function
//! and build as the coordinator and the agent), printed like `sha256sum`. For `scripts/bench`,
//! which times it against `openssl dgst -sha256`.
fn main() -> std::process::ExitCode {
    let mut failed = false;
    for path in std::env::args_os().skip(1) {
        match dockfra_common::sha256_file(path.as_ref()) {
            Ok((hex, _)) => println!("{hex}  {}", path.to_string_lossy()),
            Err(e) => {
                eprintln!("sha256: {}: {e}", path.to_string_lossy());
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
