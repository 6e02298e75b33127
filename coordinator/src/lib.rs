//! dockfra-coord as a library: everything the binary does, testable without spawning it.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod builder;
pub mod ca;
pub mod cli;
pub mod convert;
pub mod demo;
pub mod envs;
pub mod error;
pub mod generate;
pub mod notify;
pub mod progress;
pub mod server;
pub mod setup;
pub mod state;
pub mod store;
pub mod validate;
