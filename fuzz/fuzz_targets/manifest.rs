//! `Manifest::parse` then `validate` on arbitrary bytes; a manifest that parses must survive
//! its own canonical bytes unchanged (the coordinator signs those, the agent reads them).
#![no_main]
use dockfra_common::bundle::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else { return };
    let _ = m.validate();
    let _ = m.blob_sizes();
    let again = Manifest::parse(&m.canonical_bytes()).expect("canonical bytes parse");
    let mut sorted = m.clone();
    sorted.files.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(again, sorted, "canonical bytes change the manifest");
    let _ = m.release_name();
});
