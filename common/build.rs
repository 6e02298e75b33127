fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The proto is the single source of truth for the wire; neither tool prints rerun-if-changed.
    println!("cargo:rerun-if-changed=../proto");
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_protos(&["../proto/dockfra/v1/dockfra.proto"], &["../proto"])?;
    Ok(())
}
