//! A fake NCCL and a fake CUDA driver as small C libraries (`fake_nccl.c`, `fake_cuda.c`
//! beside this file), built with the system C compiler, and the child processes that load
//! them: the driver is resolved once per process, so each scenario runs the `child` test of
//! the including binary in a fresh process, with the fake `libcuda.so.1` first on the
//! loader's path and `DPCOORD_NCCL_LIBRARY` naming the fake `libnccl.so.2`.
//!
//! The fake driver's `dp_postprocess` is the kernel's own logic: the part of
//! `src/kernels/postprocess.cu` between its `HOST-RUNNABLE` marker lines, extracted here into
//! `postprocess_logic.h` and compiled as C.

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The variable naming the scenario a child runs.
pub const CASE: &str = "DPCOORD_FAKE_CASE";

/// Builds both fakes once per test process into a directory of their own.
pub fn libraries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("", &kernel_logic()))
}

/// Builds both fakes with the kernel's logic changed: `from` (which must occur exactly once
/// in the host-runnable part) replaced by `to`, into a directory of their own (`name`).
pub fn mutant_libraries(name: &str, from: &str, to: &str) -> PathBuf {
    let logic = kernel_logic();
    assert_eq!(
        logic.matches(from).count(),
        1,
        "the mutation's text {from:?} must occur once in the kernel's logic"
    );
    build(name, &logic.replacen(from, to, 1))
}

/// Compiles `fake_cuda.c` (with `logic` as the kernel's logic) and `fake_nccl.c` into a fresh
/// directory (`tag` tells it apart).
fn build(tag: &str, logic: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_gpu");
    let dir = std::env::temp_dir().join(format!("dpcoord-fake-gpu-{}{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("postprocess_logic.h"), logic).unwrap();
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    for (source, soname) in [
        ("fake_cuda.c", "libcuda.so.1"),
        ("fake_nccl.c", "libnccl.so.2"),
    ] {
        let status = Command::new(&compiler)
            .args([
                "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread",
            ])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-I")
            .arg(&dir)
            .arg("-o")
            .arg(dir.join(soname))
            .arg(root.join(source))
            .status()
            .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
        assert!(status.success(), "{compiler} failed to build {source}");
    }
    dir
}

/// The host-runnable part of the post-processing kernel: the lines of `postprocess.cu`
/// between its `// ==== BEGIN HOST-RUNNABLE` and `// ==== END HOST-RUNNABLE` lines.
pub fn kernel_logic() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/postprocess.cu");
    let cu = std::fs::read_to_string(&path).unwrap();
    let begin = cu
        .find("// ==== BEGIN HOST-RUNNABLE")
        .expect("postprocess.cu marks where its host-runnable part begins");
    let end = cu[begin..]
        .find("// ==== END HOST-RUNNABLE")
        .expect("postprocess.cu marks where its host-runnable part ends");
    // Diagnostics name the .cu's own lines.
    format!(
        "#line {} \"{}\"\n{}",
        cu[..begin].lines().count() + 1,
        path.display(),
        &cu[begin..begin + end]
    )
}

/// What `src/kernels/layout.h` `#define`s `name` to.
fn define(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/layout.h");
    let header = std::fs::read_to_string(path).unwrap();
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("layout.h does not define {name}"))
}

/// The value `src/kernels/layout.h` gives `name` (a word index, a count or a status).
pub fn layout(name: &str) -> usize {
    define(name).trim_end_matches('u').parse().unwrap()
}

/// Sets a slot's checksum word so that the slot is intact, by layout.h's weights and target
/// (the kernel's constants; `src/kernels` tests that they are `src/slot.rs`'s).
pub fn seal(w: &mut [u32]) {
    let weights: Vec<u32> = define("CHECK_WEIGHTS")
        .split(", ")
        .map(|k| u32::from_str_radix(k.trim_start_matches("0x").trim_end_matches('u'), 16).unwrap())
        .collect();
    let target = layout("CHECK_TARGET") as u32;
    let check = layout("SLOT_CHECK");
    w[check] = 0;
    let sum = w
        .iter()
        .zip(&weights)
        .fold(0u32, |acc, (&x, &k)| acc.wrapping_add(x.wrapping_mul(k)));
    w[check] = target.wrapping_sub(sum);
}

/// What a child printed: its stdout, and `KEY=value` lookups in it.
pub struct Run {
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The value the child printed as `KEY=value`.
    pub fn printed(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, v)| v.to_owned()))
            .unwrap_or_else(|| {
                panic!(
                    "the child printed no {key}:\n{}\n{}",
                    self.stdout, self.stderr
                )
            })
    }
}

/// Runs the ignored test `child` of this binary for `case` with the fakes and `env`; fails
/// unless the child passed.
pub fn run(case: &str, env: &[(&str, String)]) -> Run {
    let (passed, run) = run_with(libraries(), case, env);
    assert!(
        passed,
        "case {case} failed in its own process:\n{}\n{}",
        run.stdout, run.stderr
    );
    run
}

/// Runs the ignored test `child` of this binary for `case` with the fakes of `dir` and `env`:
/// whether it passed, and what it printed.
pub fn run_with(dir: &Path, case: &str, env: &[(&str, String)]) -> (bool, Run) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CASE, case)
    .env("LD_LIBRARY_PATH", dir)
    .env("DPCOORD_NCCL_LIBRARY", dir.join("libnccl.so.2"))
    .env_remove("DPCOORD_DEBUG")
    .env_remove("NVTX_INJECTION64_PATH");
    for var in [
        "FAKE_CUDA_FAIL_ALLOC",
        "FAKE_CUDA_BLOCK",
        "FAKE_CUDA_NO_PUBLISH",
        "FAKE_CUDA_PUBLISH_DELAY_MS",
        "FAKE_NCCL_BLOCK",
    ] {
        cmd.env_remove(var);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    let run = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (out.status.success(), run)
}

/// The fakes' control functions, in a child (the libraries are loaded by name, as dpcoord
/// loads them: the same copies).
pub struct Fakes {
    nccl: *mut c_void,
    cuda: *mut c_void,
}

// SAFETY: the handles are dlopen handles, usable from any thread.
unsafe impl Send for Fakes {}
// SAFETY: as above.
unsafe impl Sync for Fakes {}

fn open(name: &CStr) -> *mut c_void {
    // SAFETY: name is NUL-terminated; the fakes have no initialisers.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
    assert!(!h.is_null(), "{name:?} is not on the loader's path");
    h
}

impl Fakes {
    /// Loads both fakes (in a child run by [`run`]).
    pub fn load() -> Fakes {
        Fakes {
            nccl: open(c"libnccl.so.2"),
            cuda: open(c"libcuda.so.1"),
        }
    }

    fn sym(handle: *mut c_void, name: &str) -> *mut c_void {
        let c = CString::new(name).unwrap();
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        assert!(!p.is_null(), "the fake lacks {name}");
        p
    }

    /// A new fake communicator of `nranks` ranks in which this process is `rank`.
    pub fn comm(&self, nranks: i32, rank: i32) -> *mut c_void {
        // SAFETY: fake_nccl_comm(int, int) -> void*.
        let f: unsafe extern "C" fn(c_int, c_int) -> *mut c_void =
            unsafe { std::mem::transmute(Self::sym(self.nccl, "fake_nccl_comm")) };
        // SAFETY: plain values in, a new communicator out.
        unsafe { f(nranks, rank) }
    }

    /// From now on every gather changes the other ranks' slots: words `[first, first +
    /// count)` set to `value` (`mode` 0) or increased by it (2), then resealed; `mode` 1 sets
    /// them and leaves the checksum (a damaged slot). `first` -1: no change.
    pub fn peer(&self, first: i32, count: i32, value: u32, mode: i32) {
        // SAFETY: fake_nccl_peer(int, int, unsigned, int).
        let f: unsafe extern "C" fn(c_int, c_int, u32, c_int) =
            unsafe { std::mem::transmute(Self::sym(self.nccl, "fake_nccl_peer")) };
        // SAFETY: plain values.
        unsafe { f(first, count, value, mode) }
    }

    /// The words of every rank's slot as the last gather delivered them (`nranks` slots).
    pub fn last_recv(&self, nranks: usize) -> Vec<u32> {
        self.words("fake_nccl_last_recv", nranks * layout("SLOT_WORDS"))
    }

    /// The words of the slot the last gather sent.
    pub fn last_send(&self) -> Vec<u32> {
        self.words("fake_nccl_last_send", layout("SLOT_WORDS"))
    }

    fn words(&self, name: &str, n: usize) -> Vec<u32> {
        // SAFETY: fake_nccl_last_*(void) -> const unsigned*.
        let f: unsafe extern "C" fn() -> *const u32 =
            unsafe { std::mem::transmute(Self::sym(self.nccl, name)) };
        // SAFETY: the fake's static buffer holds at least `n` words.
        unsafe { std::slice::from_raw_parts(f(), n) }.to_vec()
    }

    /// What the fake's `dp_postprocess` (the kernel's own logic) writes for `slots` (`n`
    /// slots, as words) as rank `rank` of exchange `seq` with the device graph table `table`
    /// (`GraphTable::device_words`; `None`: no table): the device array and the host block.
    pub fn postprocess(
        &self,
        slots: &[u32],
        n: usize,
        rank: i32,
        seq: u32,
        table: Option<&[u32]>,
    ) -> (Vec<i32>, Vec<i32>) {
        let header = layout("HOST_HEADER_WORDS");
        let mut out = vec![-7; n];
        let mut host = vec![-7; header + n * (1 + layout("SLOT_WORDS"))];
        // SAFETY: fake_cuda_postprocess(const unsigned*, int, int, unsigned, int*, int*,
        // const unsigned*).
        let f: unsafe extern "C" fn(*const u32, c_int, c_int, u32, *mut i32, *mut i32, *const u32) =
            unsafe { std::mem::transmute(Self::sym(self.cuda, "fake_cuda_postprocess")) };
        assert_eq!(slots.len(), n * layout("SLOT_WORDS"));
        // SAFETY: `slots` holds n slots; `out` n ints; `host` the whole host block; `table`
        // NULL or a whole device table.
        unsafe {
            f(
                slots.as_ptr(),
                n as c_int,
                rank,
                seq,
                out.as_mut_ptr(),
                host.as_mut_ptr(),
                table.map_or(std::ptr::null(), <[u32]>::as_ptr),
            )
        };
        (out, host)
    }

    /// The first `words` words of the device table the last launch was given (`None`: none).
    pub fn last_table(&self, words: usize) -> Option<Vec<u32>> {
        // SAFETY: fake_cuda_last_table(void) -> const unsigned*.
        let f: unsafe extern "C" fn() -> *const u32 =
            unsafe { std::mem::transmute(Self::sym(self.cuda, "fake_cuda_last_table")) };
        // SAFETY: no arguments; returns NULL or the last launch's table.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        // SAFETY: the device table of the last launch, still allocated, holds at least `words`
        // words (the caller knows the table it set).
        Some(unsafe { std::slice::from_raw_parts(p, words) }.to_vec())
    }

    /// Marks `comm` aborted (what `ncclCommAbort` does to a real one).
    pub fn abort(&self, comm: *mut c_void) {
        // SAFETY: fake_nccl_abort(void*).
        let f: unsafe extern "C" fn(*mut c_void) =
            unsafe { std::mem::transmute(Self::sym(self.nccl, "fake_nccl_abort")) };
        // SAFETY: a communicator from `comm`.
        unsafe { f(comm) }
    }

    fn text(&self, handle: *mut c_void, name: &str, arg: *mut c_void) -> String {
        // SAFETY: every text function of the fakes is `const char* f(void*)` (an argument
        // the function does not take is ignored under the C calling convention).
        let f: unsafe extern "C" fn(*mut c_void) -> *const c_char =
            unsafe { std::mem::transmute(Self::sym(handle, name)) };
        // SAFETY: returns a NUL-terminated string the fake owns.
        unsafe { CStr::from_ptr(f(arg)) }
            .to_string_lossy()
            .into_owned()
    }

    /// The calls made on `comm` after [`Fakes::abort`], `name;` each.
    pub fn after_abort(&self, comm: *mut c_void) -> String {
        self.text(self.nccl, "fake_nccl_after_abort", comm)
    }

    /// Every `ncclAllGather`, `ncclAllGather stream tid;` each.
    pub fn nccl_log(&self) -> String {
        self.text(self.nccl, "fake_nccl_log", std::ptr::null_mut())
    }

    /// Every driver call on a stream, `name stream tid;` each.
    pub fn cuda_log(&self) -> String {
        self.text(self.cuda, "fake_cuda_log", std::ptr::null_mut())
    }

    fn count(&self, handle: *mut c_void, name: &str, arg: Option<&str>) -> i64 {
        let arg = arg.map(|a| CString::new(a).unwrap());
        let p = arg.as_ref().map_or(std::ptr::null(), |a| a.as_ptr());
        // SAFETY: every counter of the fakes is `long f(const char*)` or `long f(void)`.
        let f: unsafe extern "C" fn(*const c_char) -> c_long =
            unsafe { std::mem::transmute(Self::sym(handle, name)) };
        // SAFETY: NULL or a NUL-terminated name.
        unsafe { f(p) as i64 }
    }

    /// Calls of NCCL function `name` so far.
    pub fn nccl_calls(&self, name: &str) -> i64 {
        self.count(self.nccl, "fake_nccl_calls", Some(name))
    }

    /// `ncclAllGather` calls not returned yet.
    pub fn gathers_inside(&self) -> i64 {
        self.count(self.nccl, "fake_nccl_inside", None)
    }

    /// Calls of driver function `name` so far.
    pub fn cuda_calls(&self, name: &str) -> i64 {
        self.count(self.cuda, "fake_cuda_calls", Some(name))
    }

    /// Driver allocations not freed yet.
    pub fn live(&self) -> i64 {
        self.count(self.cuda, "fake_cuda_live", None)
    }

    /// Driver allocations made so far.
    pub fn allocations(&self) -> i64 {
        self.count(self.cuda, "fake_cuda_allocations", None)
    }
}

/// The calling thread's id, as the fakes log it.
pub fn tid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}
