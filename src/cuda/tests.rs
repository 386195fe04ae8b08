//! Loading the driver: none, a stub, one missing a function (fake libcuda.so.1 in a child).

use super::*;

#[test]
fn without_a_driver_the_error_is_library_unavailable_naming_what_was_tried() {
    match driver() {
        Ok(d) => assert!(!d.origin.is_empty()),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::LibraryUnavailable, "{e}");
            assert!(e.message.contains("libcuda.so.1"), "{e}");
            // Not cached: a second call tries again and says the same.
            assert_eq!(
                driver().err().map(|e| e.kind),
                Some(ErrorKind::LibraryUnavailable)
            );
        }
    }
}

#[test]
fn the_unversioned_stub_name_is_never_loaded() {
    assert_eq!(LIBRARY, c"libcuda.so.1");
}

/// Every driver function dpcoord resolves, as a C stub returning `rc` (34 is
/// CUDA_ERROR_STUB_LIBRARY, what a toolkit's `stubs/libcuda.so` answers).
fn stub_source(functions: &[&str], rc: i32) -> String {
    functions
        .iter()
        .map(|f| format!("int {f}(void) {{ return {rc}; }}\n"))
        .collect()
}

/// Builds `source` as a `libcuda.so.1` in a fresh directory and runs the child test below
/// in a new process with that directory first on the loader's path; returns the child's
/// verdict line.
fn driver_error_with(tag: &str, source: &str) -> String {
    let dir = std::env::temp_dir().join(format!("dpcoord-fake-cuda-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c_file = dir.join("fake_cuda.c");
    std::fs::write(&c_file, source).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(&c_file)
        .status()
        .expect("cc (a C compiler) runs");
    assert!(built.success(), "cc failed to build the fake driver");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "cuda::tests::child_reports_the_driver_error",
            "--nocapture",
        ])
        .env("LD_LIBRARY_PATH", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("DRIVER-ERROR: "))
        .unwrap_or_else(|| panic!("no verdict line in {stdout}"))
        .to_owned()
}

/// The body the tests above run in a child process: loads the driver and prints the error.
#[test]
#[ignore = "the body of the fake-driver tests, run by them in a child process"]
fn child_reports_the_driver_error() {
    match driver() {
        Ok(_) => println!("DRIVER-ERROR: none"),
        Err(e) => {
            // Twice: a failure is not cached, and stays the same.
            let again = driver().err().map(|e| e.kind);
            println!("DRIVER-ERROR: {:?} again={again:?} {}", e.kind, e.message);
        }
    }
}

#[test]
fn a_stub_driver_is_library_unavailable_not_a_panic() {
    let functions: Vec<String> = [
        "cuInit",
        "cuDriverGetVersion",
        "cuGetErrorName",
        "cuGetErrorString",
        "cuCtxGetCurrent",
        "cuCtxGetDevice",
        "cuCtxGetId",
        "cuCtxPopCurrent_v2",
        "cuCtxPushCurrent_v2",
        "cuCtxSetCurrent",
        "cuDeviceGet",
        "cuDeviceGetCount",
        "cuDeviceGetName",
        "cuDevicePrimaryCtxRetain",
        "cuEventCreate",
        "cuEventDestroy_v2",
        "cuEventQuery",
        "cuEventRecord",
        "cuLaunchKernel",
        "cuMemAlloc_v2",
        "cuMemFreeHost",
        "cuMemFree_v2",
        "cuMemHostAlloc",
        "cuMemHostGetDevicePointer_v2",
        "cuMemcpyDtoH_v2",
        "cuMemcpyHtoDAsync_v2",
        "cuMemcpyHtoD_v2",
        "cuMemsetD32_v2",
        "cuModuleGetFunction",
        "cuModuleLoadData",
        "cuModuleUnload",
        "cuStreamCreate",
        "cuStreamDestroy_v2",
        "cuStreamGetCtx",
        "cuStreamIsCapturing",
        "cuStreamQuery",
        "cuStreamSynchronize",
        "cuStreamWaitEvent",
    ]
    .map(String::from)
    .to_vec();
    let names: Vec<&str> = functions.iter().map(String::as_str).collect();
    let verdict = driver_error_with("stub", &stub_source(&names, CUDA_ERROR_STUB_LIBRARY));
    assert!(
        verdict.starts_with("LibraryUnavailable again=Some(LibraryUnavailable)"),
        "{verdict}"
    );
    assert!(verdict.contains("cuInit"), "{verdict}");
    assert!(verdict.contains("stub"), "{verdict}");
    assert!(verdict.contains("dlopen(libcuda.so.1)"), "{verdict}");
}

#[test]
fn a_driver_missing_a_function_is_library_unavailable_naming_it() {
    let verdict = driver_error_with("partial", &stub_source(&["cuInit"], 0));
    assert!(
        verdict.starts_with("LibraryUnavailable again=Some(LibraryUnavailable)"),
        "{verdict}"
    );
    assert!(
        verdict.contains("lacks the driver function cu"),
        "{verdict}"
    );
}
