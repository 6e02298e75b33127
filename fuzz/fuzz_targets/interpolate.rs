//! Compose interpolation (`interpolate`) and `.env` parsing (`parse_env_file`,
//! `parse_env_file_with`) on arbitrary text; `$` escaped as `$$` must come back as written
//! (the coordinator re-escapes resolved files that way).
#![no_main]
use dockfra_common::compose::{interpolate, parse_env_file, parse_env_file_with};
use libfuzzer_sys::fuzz_target;

fn lookup(k: &str) -> Option<String> {
    match k {
        "SET" => Some("val".into()),
        "EMPTY" => Some(String::new()),
        "NESTED" => Some("${SET}".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = interpolate(text, &lookup);
    assert_eq!(interpolate(&text.replace('$', "$$"), &lookup).as_deref(), Ok(text), "escaped text changed");
    let _ = parse_env_file(text);
    let _ = parse_env_file_with(text, &lookup);
});
