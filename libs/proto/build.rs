//! Compiles every contract under `proto/` with protox (no system protoc), writes the descriptor set for
//! server reflection, generates tonic clients and servers, and derives the per-rpc scope table from the
//! `rapport.common.v1.required_scope` method option so that the table cannot drift from the contracts.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use prost_reflect::{DescriptorPool, Value};

fn collect(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, root, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root).expect("path under root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let root = root.canonicalize()?;
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }

    // The compiler's own descriptor pool keeps the custom method options (prost's FileDescriptorSet would
    // drop them as unknown fields).
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    let pool: DescriptorPool = compiler.descriptor_pool();
    let fds = compiler.file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("rapport_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    let scope_ext = pool
        .get_extension_by_name("rapport.common.v1.required_scope")
        .ok_or("the extension rapport.common.v1.required_scope is not defined in proto/")?;
    let mut table = String::from(
        "/// Every rpc of the rapport contracts with the scope a caller's token must hold, read from the\n\
         /// `rapport.common.v1.required_scope` option of each method.\n\
         pub const METHOD_SCOPES: &[(&str, &str)] = &[\n",
    );
    let mut missing = Vec::new();
    for service in pool.services() {
        if !service.full_name().starts_with("rapport.") {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            let scope = match options.get_extension(&scope_ext).as_ref() {
                Value::String(s) if !s.is_empty() => s.clone(),
                _ => {
                    missing.push(format!("{}.{}", service.full_name(), method.name()));
                    continue;
                }
            };
            table.push_str(&format!("    (\"/{}/{}\", \"{}\"),\n", service.full_name(), method.name(), scope));
        }
    }
    if !missing.is_empty() {
        return Err(format!("these rpcs declare no (rapport.common.v1.required_scope): {}", missing.join(", ")).into());
    }
    table.push_str("];\n");
    fs::write(out.join("method_scopes.rs"), table)?;

    // Type names (prost::Name) let services name outbox payloads and pack them as google.protobuf.Any.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .include_file("rapport.rs")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
