//! Compiles proto/agent.proto (protoc from the system; scripts/dev-env installs it).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("agent.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("agent_descriptor.bin"))
        .compile_protos(&[proto], &[proto_dir])?;
    Ok(())
}
