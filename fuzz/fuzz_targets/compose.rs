//! Compose loading: `load_with_warnings` on a compose file and `.env` from the fuzz input
//! (sections: compose text, then `.env` text), written into a scratch project dir that also
//! holds a file to `include:`; then `parse_with` on the same text, and the normalized YAML.
#![no_main]
use dockfra_common::compose::{load_with_warnings, parse_with, LoadOptions};
use dockfra_fuzz::sections;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

fn project_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dockfra-fuzz-compose-{}", std::process::id())).join("shop");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("inc.yaml"), "services:\n  cache:\n    image: redis:${TAG:-7}\n").unwrap();
    std::fs::write(dir.join("sub/compose.yaml"), "services:\n  db:\n    image: postgres\n    env_file: [../.env]\n")
        .unwrap();
    dir
}

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(project_dir);
    let parts = sections(data);
    let Ok(text) = std::str::from_utf8(parts[0]) else { return };
    let file = dir.join("compose.yaml");
    std::fs::write(&file, text).unwrap();
    std::fs::write(dir.join(".env"), parts.get(1).copied().unwrap_or_default()).unwrap();
    let overrides = BTreeMap::from([("TAG".to_string(), "1.4".to_string()), ("EMPTY".to_string(), String::new())]);
    let opts = LoadOptions { project_name: None, overrides: &overrides, use_process_env: false };
    if let Ok((p, _warnings)) = load_with_warnings(&file, &opts) {
        let _ = (p.to_yaml(), p.services());
    }
    let lookup = |k: &str| overrides.get(k).cloned();
    let _ = parse_with(text, &file, dir, Some("fuzz"), &lookup);
});
