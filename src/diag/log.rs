//! The `DPCOORD_DEBUG` log: levels, the one-time read of the environment, the line format
//! and where lines go (see the module above for the user's view).

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use std::fmt::Display;

/// How much the log says; each level includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Level {
    /// Nothing (the default).
    Off = 0,
    /// Every failure, with the message `dp_last_error` returns.
    Warn = 1,
    /// Once per coordinator: the NCCL and CUDA versions and the library files resolved; a
    /// rank that arrived last in most of the recent exchanges, once per change of that rank.
    Info = 2,
    /// Every call with its decision.
    Trace = 3,
}

impl Level {
    /// `DPCOORD_DEBUG`'s value as a level: `WARN`, `INFO`, `TRACE` in any case; anything
    /// else (unset, empty, `VERSION`, a typo) is off, as an unknown `NCCL_DEBUG` is.
    pub(crate) fn parse(value: Option<&str>) -> Level {
        let Some(value) = value else {
            return Level::Off;
        };
        [Level::Warn, Level::Info, Level::Trace]
            .into_iter()
            .find(|level| value.eq_ignore_ascii_case(level.name()))
            .unwrap_or(Level::Off)
    }

    /// The name in the line's prefix (and in `DPCOORD_DEBUG`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Off => "OFF",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Trace => "TRACE",
        }
    }
}

/// What a call site knows about where the event happened; unknown fields stay out of the line.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ctx<'a> {
    rank: Option<(i32, i32)>,
    comm: usize,
    group: Option<&'a str>,
    step: i64,
}

impl<'a> Ctx<'a> {
    /// Nothing known (a failure at the C boundary).
    pub(crate) const fn new() -> Self {
        Ctx {
            rank: None,
            comm: 0,
            group: None,
            step: 0,
        }
    }

    /// This rank and the number of ranks (`dp_rank`, `dp_size`).
    pub(crate) const fn rank(mut self, rank: i32, size: i32) -> Self {
        self.rank = Some((rank, size));
        self
    }

    /// The caller's NCCL communicator (shown as its address, as NCCL's own lines do).
    pub(crate) fn comm<T>(mut self, comm: *const T) -> Self {
        self.comm = comm as usize;
        self
    }

    /// The host group's name.
    pub(crate) const fn group(mut self, name: &'a str) -> Self {
        self.group = Some(name);
        self
    }

    /// The caller's step id (0 means unchecked and is not shown).
    pub(crate) const fn step(mut self, step_id: i64) -> Self {
        self.step = step_id;
        self
    }

    /// `[rank 1/4 comm 0x55d0 step 42] ` with the known fields, or nothing when none is.
    fn write_to(&self, line: &mut String) {
        let start = line.len();
        if let Some((rank, size)) = self.rank {
            let _ = write!(line, " rank {rank}/{size}");
        }
        if self.comm != 0 {
            let _ = write!(line, " comm {:#x}", self.comm);
        }
        if let Some(group) = self.group {
            let _ = write!(line, " group {group}");
        }
        if self.step != 0 {
            let _ = write!(line, " step {}", self.step);
        }
        if line.len() > start {
            line.replace_range(start..start + 1, "[");
            line.push_str("] ");
        }
    }
}

/// `Level as u8` once the environment was read; before that `UNREAD`, which is above every
/// level, so the first call site to run takes the slow path that reads it.
static LEVEL: AtomicU8 = AtomicU8::new(UNREAD);
const UNREAD: u8 = u8::MAX;

/// What the environment said, read once.
struct Config {
    level: Level,
    file: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get_or_init(|| {
        let config = Config {
            level: Level::parse(std::env::var("DPCOORD_DEBUG").ok().as_deref()),
            file: std::env::var("DPCOORD_DEBUG_FILE")
                .ok()
                .filter(|f| !f.is_empty()),
        };
        LEVEL.store(config.level as u8, Ordering::Relaxed);
        config
    })
}

/// The fast check of the [`log!`](super::log) macro: one relaxed load and a compare. True
/// also before the environment was read; [`emit`] then decides.
#[inline(always)]
pub(crate) fn may_log(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Whether lines at `level` are written (reads the environment on the first call).
#[inline]
pub(crate) fn enabled(level: Level) -> bool {
    level != Level::Off && may_log(level) && level <= config().level
}

/// Where one process's lines go and the prefix's fixed parts, set up at its first line.
struct Sink {
    host: String,
    pid: u32,
    file: Option<File>,
}

impl Sink {
    fn open(config: &Config, pid: u32) -> Sink {
        let host = host_name();
        let file = config.file.as_deref().and_then(|pattern| {
            let path = expand_file_name(pattern, &host, pid);
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => Some(file),
                Err(e) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{host}:{pid}:{} dpcoord WARN DPCOORD_DEBUG_FILE {path}: {e}; logging \
                         to stderr",
                        thread_id()
                    );
                    None
                }
            }
        });
        Sink { host, pid, file }
    }
}

/// The sink of the process that wrote the first line.
static SINK: OnceLock<Sink> = OnceLock::new();
/// The sink of a child forked after that (its pid differs), made at the child's first line.
/// Its lock is only ever taken in such a child, never in the process that owns `SINK`.
static FORKED_SINK: Mutex<Option<&'static Sink>> = Mutex::new(None);

/// This process's sink: after `fork`, the child gets its own (its pid in the prefix, its own
/// `%p` file), leaked once per process that logs.
fn sink(config: &Config) -> &'static Sink {
    let pid = std::process::id();
    let first = SINK.get_or_init(|| Sink::open(config, pid));
    if first.pid == pid {
        return first;
    }
    let mut forked = FORKED_SINK.lock().unwrap_or_else(|p| p.into_inner());
    match *forked {
        Some(sink) if sink.pid == pid => sink,
        _ => {
            let sink: &'static Sink = Box::leak(Box::new(Sink::open(config, pid)));
            *forked = Some(sink);
            sink
        }
    }
}

/// `DPCOORD_DEBUG_FILE` with `%h` (host name), `%p` (pid) and `%%` substituted; any other
/// `%x` is kept as written, as NCCL does for `NCCL_DEBUG_FILE`.
pub(crate) fn expand_file_name(pattern: &str, host: &str, pid: u32) -> String {
    let mut path = String::with_capacity(pattern.len() + host.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            path.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => path.push('%'),
            Some('h') => path.push_str(host),
            Some('p') => {
                let _ = write!(path, "{pid}");
            }
            Some(other) => {
                path.push('%');
                path.push(other);
            }
            None => path.push('%'),
        }
    }
    path
}

/// The host name up to its first dot (NCCL's `getHostName(.., '.')`), read without libc.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .and_then(|name| name.trim().split('.').next().map(str::to_owned))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The kernel's id of the calling thread (what NCCL prints), read once per thread and process
/// from `/proc/thread-self` (a link to `<pid>/task/<tid>`; a thread that forked is another
/// thread in the child); 0 where that is unavailable.
fn thread_id() -> u32 {
    thread_local! {
        /// `(pid, tid)` as last read by this thread.
        static TID: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
    }
    let pid = std::process::id();
    TID.try_with(|cached| {
        let (read_in, tid) = cached.get();
        if read_in == pid {
            return tid;
        }
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| link.file_name()?.to_str()?.parse().ok())
            .unwrap_or(0);
        cached.set((pid, tid));
        tid
    })
    .unwrap_or(0)
}

/// Formats and writes one line; the slow half of [`log!`](super::log), out of line so that
/// call sites stay small.
#[cold]
#[inline(never)]
pub(crate) fn emit(level: Level, ctx: &Ctx<'_>, message: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let sink = sink(config());
    let mut line = String::with_capacity(192);
    let _ = write!(
        line,
        "{}:{}:{} dpcoord {} ",
        sink.host,
        sink.pid,
        thread_id(),
        level.name()
    );
    ctx.write_to(&mut line);
    let start = line.len();
    let _ = line.write_fmt(message);
    if line[start..].contains('\n') {
        // One event, one line: a message's own line breaks are shown as `\n`.
        let escaped = line[start..].replace('\n', "\\n");
        line.truncate(start);
        line.push_str(&escaped);
    }
    line.push('\n');
    // A failing write (a full disk, a closed stderr) must never fail the call it describes.
    let _ = match &sink.file {
        Some(file) => (&*file).write_all(line.as_bytes()),
        None => std::io::stderr().lock().write_all(line.as_bytes()),
    };
}

/// The GPU path's INFO line, once per coordinator: what it resolved and the versions.
/// `nccl_version` is NCCL's `ncclGetVersion` code (22803 = 2.28.3), `cuda_driver_version`
/// `cuDriverGetVersion`'s (13000 = 13.0).
pub(crate) fn coordinator_info(
    ctx: &Ctx<'_>,
    nccl_version: i32,
    nccl_library: &str,
    cuda_driver_version: i32,
    cuda_library: &str,
) {
    super::log!(
        Level::Info,
        ctx,
        "coordinator created: NCCL {} from {nccl_library}, CUDA driver {} from {cuda_library}, \
         dpcoord {}",
        NcclVersion(nccl_version),
        CudaVersion(cuda_driver_version),
        env!("CARGO_PKG_VERSION")
    );
}

/// The TRACE line of a call that decided: `dp_decide_batch: ubatch 1 dp_pad 1 cudagraph 2
/// tokens self 96 max 96 min 64` (the decision formats itself). Costs the relaxed load and
/// branch while TRACE is off.
#[inline]
pub(crate) fn decision(ctx: &Ctx<'_>, call: &str, d: &dyn Display) {
    super::log!(Level::Trace, ctx, "{call}: {d}");
}

/// NCCL's version code as `major.minor.patch` (codes below 10000 are pre-2.9's 1000*major +
/// 100*minor + patch).
struct NcclVersion(i32);

impl fmt::Display for NcclVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.0;
        if code <= 0 {
            write!(f, "(version unknown)")
        } else if code >= 10000 {
            write!(f, "{}.{}.{}", code / 10000, code % 10000 / 100, code % 100)
        } else {
            write!(f, "{}.{}.{}", code / 1000, code % 1000 / 100, code % 100)
        }
    }
}

/// The CUDA driver's version code as `major.minor`.
struct CudaVersion(i32);

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 <= 0 {
            return write!(f, "(version unknown)");
        }
        write!(f, "{}.{}", self.0 / 1000, self.0 % 1000 / 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_like_nccl_debug() {
        assert_eq!(Level::parse(None), Level::Off);
        assert_eq!(Level::parse(Some("")), Level::Off);
        assert_eq!(Level::parse(Some("WARN")), Level::Warn);
        assert_eq!(Level::parse(Some("warn")), Level::Warn);
        assert_eq!(Level::parse(Some("Info")), Level::Info);
        assert_eq!(Level::parse(Some("TRACE")), Level::Trace);
        assert_eq!(Level::parse(Some("VERSION")), Level::Off);
        assert_eq!(Level::parse(Some("TRACE ")), Level::Off);
        assert_eq!(Level::parse(Some("1")), Level::Off);
        assert!(Level::Warn < Level::Info && Level::Info < Level::Trace);
    }

    #[test]
    fn the_file_name_substitutes_host_pid_and_percent() {
        assert_eq!(
            expand_file_name("/tmp/dp.%h.%p.log", "gpu7", 4021),
            "/tmp/dp.gpu7.4021.log"
        );
        assert_eq!(expand_file_name("a%%h%x%", "h", 1), "a%h%x%");
        assert_eq!(expand_file_name("%p%p", "h", 12), "1212");
        assert_eq!(expand_file_name("plain", "h", 1), "plain");
    }

    #[test]
    fn the_context_shows_only_known_fields() {
        let mut line = String::new();
        Ctx::new().write_to(&mut line);
        assert_eq!(line, "");
        Ctx::new()
            .rank(1, 4)
            .comm(0x55d0 as *const u8)
            .step(42)
            .write_to(&mut line);
        assert_eq!(line, "[rank 1/4 comm 0x55d0 step 42] ");
        line.clear();
        Ctx::new()
            .group("g0")
            .rank(0, 2)
            .step(0)
            .write_to(&mut line);
        assert_eq!(line, "[rank 0/2 group g0] ");
    }

    #[test]
    fn versions_print_as_their_libraries_do() {
        assert_eq!(NcclVersion(22803).to_string(), "2.28.3");
        assert_eq!(NcclVersion(2708).to_string(), "2.7.8");
        assert_eq!(CudaVersion(13000).to_string(), "13.0");
        assert_eq!(CudaVersion(12040).to_string(), "12.4");
        assert_eq!(CudaVersion(0).to_string(), "(version unknown)");
        assert_eq!(NcclVersion(0).to_string(), "(version unknown)");
    }

    #[test]
    fn the_host_name_has_no_dot_or_newline() {
        let host = host_name();
        assert!(!host.is_empty() && !host.contains('.') && !host.contains('\n'));
    }
}
