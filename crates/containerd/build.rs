//! Compiles the cgroup metrics messages containerd returns from Tasks.Metrics.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    prost_build::Config::new().compile_protos(
        &["proto/cgroups_v1.proto", "proto/cgroups_v2.proto"],
        &["proto"],
    )?;
    Ok(())
}
