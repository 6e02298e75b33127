//! `config::parse` of `deploy-targets.yaml` text, and `parse_duration` (its duration syntax)
//! on the same text: a duration that parses must format and parse back to itself.
#![no_main]
use dockfra_common::config::{format_duration, parse, parse_duration};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = parse(text, Path::new("/srv/shop/deploy-targets.yaml")) {
        let _ = e.to_string();
    }
    if let Ok(d) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text:?}");
    }
});
