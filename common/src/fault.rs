//! Fault injection for the fault suite (`tests/e2e/faults.rs`). Debug builds only: in a
//! release build [`hit`] compiles to nothing, so no environment variable can make a shipped
//! binary misbehave.
//!
//! `DOCKFRA_FAULT=ACTION@POINT[,ACTION@POINT…]`, ACTION one of:
//! - `pause`: write POINT to the file `DOCKFRA_FAULT_MARKER` names, then sleep forever (the
//!   test kills the process there with SIGKILL);
//! - `panic`: panic at POINT;
//! - `abort`: abort the process at POINT.
//!
//! Points are named by their callers, e.g. `agent:Materialized` (after that journal phase was
//! written), `coord:push-blob` (after the first blob chunk of a push went out).

/// Act on `point` if the environment asks for a fault there.
#[inline]
pub fn hit(point: &str) {
    #[cfg(debug_assertions)]
    {
        let Ok(spec) = std::env::var("DOCKFRA_FAULT") else { return };
        for item in spec.split(',') {
            let Some((action, at)) = item.trim().split_once('@') else { continue };
            if at != point {
                continue;
            }
            match action {
                "pause" => {
                    if let Some(marker) = std::env::var_os("DOCKFRA_FAULT_MARKER") {
                        let _ = std::fs::write(marker, point);
                    }
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                "panic" => panic!("fault injected at {point}"),
                "abort" => std::process::abort(),
                _ => {}
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
