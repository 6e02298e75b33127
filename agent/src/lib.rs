//! dockfra-agent as a library. The agent must stay small and cross-buildable: no SQLite, no
//! web framework, no converters, no OpenSSL.
#![forbid(unsafe_code)]

pub mod blobs;
pub mod cli;
pub mod drivers;
pub mod engine;
pub mod executor;
pub mod facts;
pub mod health;
pub mod http;
pub mod log;
pub mod net;
pub mod releases;
pub mod runner;
pub mod state;
pub mod upgrade;
