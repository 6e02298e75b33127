//! Converters: pure functions from a resolved Compose model to another platform's files.
//! No I/O, no engine: golden- and corpus-tested.
pub mod quadlet;
