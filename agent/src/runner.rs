//! The agent runs external programs through the one runner in `dockfra_common::runner`
//! (argv, timeouts, captured output, the whole process group killed on a timeout or a cancel).
pub use dockfra_common::runner::*;
