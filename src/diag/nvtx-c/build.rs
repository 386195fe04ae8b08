//! Compiles `shim.c` against the vendored NVTX v3 headers into a static library.
//!
//! NVTX v3 is header-only: nothing links against libnvToolsExt, and the only symbols the
//! object needs from the system are libc's (getenv, dlopen, dlsym, dlclose, sched_yield).

fn main() {
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-changed=include");
    cc::Build::new()
        .file("shim.c")
        .include("include")
        .warnings(true)
        .compile("dpcoord_nvtx");
    // dlopen/dlsym live in libc from glibc 2.34 on and in libdl before; libdl.so.2 exists on
    // every glibc, so naming it never makes the library fail to load.
    println!("cargo:rustc-link-lib=dylib=dl");
}
