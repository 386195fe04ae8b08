//! Sets the SONAME and regenerates `include/dpcoord.h` from the Rust sources.

use std::path::PathBuf;

fn main() {
    // A 0.x minor is a breaking release, so it is part of the SONAME (cargo-c's convention):
    // 0.2.x is libdpcoord.so.0.2, and a binary linked against 0.1 never loads it. From 1.0 on
    // the major alone. CMakeLists.txt computes the same name.
    let version = |part: &str| std::env::var(part).expect("cargo sets the version");
    let major = version("CARGO_PKG_VERSION_MAJOR");
    let soname = if major == "0" {
        format!("libdpcoord.so.0.{}", version("CARGO_PKG_VERSION_MINOR"))
    } else {
        format!("libdpcoord.so.{major}")
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script=exports.map");
    println!("cargo:rerun-if-changed=exports.map");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src");

    // NVTX ranges (src/diag/nvtx.rs): dpcoord's three-function shim over NVIDIA's header-only
    // NVTX v3, vendored unchanged in third_party/nvtx. It links against nothing: the only
    // symbols it needs are libc's (getenv, dlopen, dlsym, dlclose, sched_yield).
    println!("cargo:rerun-if-changed=third_party/nvtx");
    cc::Build::new()
        .file("src/diag/nvtx_shim.c")
        .include("third_party/nvtx/include")
        .warnings(true)
        .compile("dpcoord_nvtx");
    // dlopen/dlsym live in libc from glibc 2.34 on and in libdl before; libdl.so.2 exists on
    // every glibc, so naming it never makes the library fail to load.
    println!("cargo:rustc-link-lib=dylib=dl");

    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write_to_file(crate_dir.join("include/dpcoord.h"));
}
