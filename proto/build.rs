//! Generates the gRPC code from `lazyavg.proto`. Machines building lazyavg have
//! no system `protoc`, so the vendored one is used.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=lazyavg.proto");
    // `bytes` fields become `bytes::Bytes`: one encoded average is shared by
    // every worker's stream instead of being copied per worker.
    tonic_prost_build::configure().bytes(".").compile_protos(&["lazyavg.proto"], &["."])?;
    Ok(())
}
