// dpcoord_gpu_launcher: starts N copies of a test program, one process per rank, and judges the
// run as a whole.
//
//   dpcoord_gpu_launcher --ranks N [--timeout S] [--grace S] [--name LABEL] [--out DIR]
//                        [--gtest-xml] [--wrap "CMD ARGS..."] -- PROGRAM [ARGS...]
//   dpcoord_gpu_launcher --count-gpus
//
// Each rank gets DPCOORD_RANK, DPCOORD_NRANKS, DPCOORD_DEVICE (round-robin over
// cudaGetDeviceCount), DPCOORD_RENDEZVOUS (a fresh temporary directory: rank 0 writes the
// ncclUniqueId there, the others poll for it) and NCCL_NVLS_ENABLE=0; when there are fewer
// GPUs than ranks also NCCL_HOSTID=rank<R> and NCCL_SOCKET_IFNAME=lo (NCCL then accepts several
// ranks on one GPU, talking over loopback sockets). --wrap prefixes every rank's command (e.g.
// "compute-sanitizer --tool memcheck --error-exitcode 1"); --gtest-xml adds
// --gtest_output=xml:DIR/rank<R>.xml. Every output line is printed as "[rank R] ..." (and kept in
// DIR/rank<R>.log with --out).
//
// Verdict: every rank must exit 0. When one fails, the others get --grace seconds (default 30)
// to finish; whatever still runs at the deadline (--timeout, default 600 s, for the whole run)
// is killed and named. The last line is a summary of GoogleTest's per-test results across
// ranks, "LABEL: P passed, F failed, S skipped" (a test passes if it passed on every rank), also
// written to DIR/summary.txt. Exit status: 0 pass; 77 when there is no CUDA GPU and every rank
// exited 0 (each test reported a skip; ctest shows SKIP_RETURN_CODE 77 as skipped); 1 otherwise;
// 2 on bad usage.
#include <cuda_runtime.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int ranks = 0;
  double timeout_s = 600;
  double grace_s = 30;
  std::string name;
  std::string out;
  bool gtest_xml = false;
  std::vector<std::string> wrap;
  std::vector<std::string> program;
};

enum class Outcome { kRunning, kExited, kSignaled, kKilled };

struct Rank {
  int index = 0;
  int device = -1;
  pid_t pid = -1;
  int fd = -1;  // read end of the rank's stdout+stderr
  std::string partial;
  std::ofstream log;
  Outcome outcome = Outcome::kRunning;
  int code = 0;                              // exit code or signal
  std::map<std::string, std::string> tests;  // test name -> OK / FAILED / SKIPPED
  std::vector<std::string> order;
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "dpcoord_gpu_launcher: %s\n"
               "usage: dpcoord_gpu_launcher --ranks N [--timeout S] [--grace S] [--name LABEL]\n"
               "         [--out DIR] [--gtest-xml] [--wrap \"CMD ARGS\"] -- PROGRAM [ARGS...]\n"
               "       dpcoord_gpu_launcher --count-gpus\n",
               why.c_str());
  std::exit(2);
}

std::vector<std::string> SplitWords(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// The number of CUDA GPUs, or 0 with the reason.
int CountGpus(std::string* reason) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
    return 0;
  }
  if (n == 0) *reason = "cudaGetDeviceCount found 0 devices";
  return n;
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Records "[  OK / FAILED / SKIPPED ] Suite.Test (N ms)" result lines of GoogleTest.
void NoteGtestLine(Rank& r, const std::string& line) {
  static const struct {
    const char* tag;
    const char* result;
  } kTags[] = {{"[       OK ] ", "OK"}, {"[  FAILED  ] ", "FAILED"}, {"[  SKIPPED ] ", "SKIPPED"}};
  for (const auto& t : kTags) {
    if (line.compare(0, std::strlen(t.tag), t.tag) != 0) continue;
    const std::string rest = line.substr(std::strlen(t.tag));
    const size_t paren = rest.find(" (");
    if (paren == std::string::npos || rest.size() < 4 ||
        rest.compare(rest.size() - 4, 4, " ms)") != 0) {
      return;  // the summary's repeat of the name, not the result line
    }
    const std::string test = rest.substr(0, paren);
    if (r.tests.find(test) == r.tests.end()) r.order.push_back(test);
    r.tests[test] = t.result;
    return;
  }
}

void EmitLine(Rank& r, const std::string& line) {
  std::printf("[rank %d] %s\n", r.index, line.c_str());
  if (r.log.is_open()) r.log << line << '\n';
  NoteGtestLine(r, line);
}

// Reads what is available; returns false at EOF.
bool Drain(Rank& r) {
  char buf[8192];
  for (;;) {
    const ssize_t n = read(r.fd, buf, sizeof buf);
    if (n > 0) {
      r.partial.append(buf, static_cast<size_t>(n));
      size_t start = 0;
      for (size_t nl; (nl = r.partial.find('\n', start)) != std::string::npos; start = nl + 1) {
        EmitLine(r, r.partial.substr(start, nl - start));
      }
      r.partial.erase(0, start);
      continue;
    }
    if (n == 0) {
      if (!r.partial.empty()) EmitLine(r, r.partial);
      r.partial.clear();
      return false;
    }
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
}

pid_t Spawn(const Options& o, Rank& r, const std::string& rendezvous, int ngpus) {
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("dpcoord_gpu_launcher: pipe");
    std::exit(1);
  }
  std::vector<std::string> argv = o.wrap;
  argv.insert(argv.end(), o.program.begin(), o.program.end());
  if (o.gtest_xml && !o.out.empty()) {
    argv.push_back("--gtest_output=xml:" + o.out + "/rank" + std::to_string(r.index) + ".xml");
  }
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("dpcoord_gpu_launcher: fork");
    std::exit(1);
  }
  if (pid == 0) {
    setpgid(0, 0);                     // its own group: a kill reaches a wrapper's children too
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the launcher
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    setenv("DPCOORD_RANK", std::to_string(r.index).c_str(), 1);
    setenv("DPCOORD_NRANKS", std::to_string(o.ranks).c_str(), 1);
    setenv("DPCOORD_DEVICE", std::to_string(r.device).c_str(), 1);
    setenv("DPCOORD_RENDEZVOUS", rendezvous.c_str(), 1);
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    if (ngpus > 0 && ngpus < o.ranks) {
      setenv("NCCL_HOSTID", ("rank" + std::to_string(r.index)).c_str(), 1);
      setenv("NCCL_SOCKET_IFNAME", "lo", 1);
    }
    std::vector<char*> cargv;
    for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execvp(cargv[0], cargv.data());
    std::fprintf(stderr, "dpcoord_gpu_launcher: cannot run %s: %s\n", cargv[0],
                 std::strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);  // also here, against the race with the child's own call
  close(fds[1]);
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  r.fd = fds[0];
  return pid;
}

void Reap(Rank& r, int status) {
  if (WIFEXITED(status)) {
    r.outcome = Outcome::kExited;
    r.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    if (r.outcome != Outcome::kKilled) r.outcome = Outcome::kSignaled;
    r.code = WTERMSIG(status);
  }
}

std::string Describe(const Rank& r) {
  switch (r.outcome) {
    case Outcome::kExited:
      return r.code == 0 ? "exit 0" : "FAILED (exit " + std::to_string(r.code) + ")";
    case Outcome::kSignaled:
      return "FAILED (killed by signal " + std::to_string(r.code) + ": " + strsignal(r.code) + ")";
    case Outcome::kKilled:
      return "FAILED (hung: killed at the deadline)";
    default:
      return "running";
  }
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Options o;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* what) -> std::string {
      if (i + 1 >= argc) Usage(std::string(what) + " needs a value");
      return argv[++i];
    };
    if (a == "--") {
      ++i;
      break;
    } else if (a == "--count-gpus") {
      std::string reason;
      const int n = CountGpus(&reason);
      std::printf("%d\n", n);
      if (n == 0) std::fprintf(stderr, "no CUDA GPU: %s\n", reason.c_str());
      return 0;
    } else if (a == "--ranks") {
      o.ranks = std::atoi(value("--ranks").c_str());
    } else if (a == "--timeout") {
      o.timeout_s = std::atof(value("--timeout").c_str());
    } else if (a == "--grace") {
      o.grace_s = std::atof(value("--grace").c_str());
    } else if (a == "--name") {
      o.name = value("--name");
    } else if (a == "--out") {
      o.out = value("--out");
    } else if (a == "--gtest-xml") {
      o.gtest_xml = true;
    } else if (a == "--wrap") {
      o.wrap = SplitWords(value("--wrap"));
    } else {
      Usage("unknown option " + a);
    }
  }
  for (; i < argc; ++i) o.program.push_back(argv[i]);
  if (o.ranks < 1) Usage("--ranks must be >= 1");
  if (o.program.empty()) Usage("no program after --");
  if (o.timeout_s <= 0) Usage("--timeout must be > 0");
  if (o.name.empty()) o.name = "ranks_" + std::to_string(o.ranks);

  std::string no_gpu_reason;
  const int ngpus = CountGpus(&no_gpu_reason);
  if (!o.out.empty()) {
    if (mkdir(o.out.c_str(), 0755) != 0 && errno != EEXIST) {
      std::fprintf(stderr, "dpcoord_gpu_launcher: cannot create %s: %s\n", o.out.c_str(),
                   std::strerror(errno));
      return 1;
    }
    for (int r = 0; r < o.ranks; ++r) {  // no stale results from an earlier run
      std::remove((o.out + "/rank" + std::to_string(r) + ".xml").c_str());
    }
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/dpcoord-rdv-XXXXXX";
  std::vector<char> dir(pattern.begin(), pattern.end());
  dir.push_back('\0');
  if (mkdtemp(dir.data()) == nullptr) {
    std::fprintf(stderr, "dpcoord_gpu_launcher: mkdtemp(%s): %s\n", pattern.c_str(),
                 std::strerror(errno));
    return 1;
  }
  const std::string rendezvous = dir.data();

  if (ngpus == 0) {
    std::printf("dpcoord_gpu_launcher: %s: no CUDA GPU (%s): every rank's tests will skip\n",
                o.name.c_str(), no_gpu_reason.c_str());
  } else {
    std::printf("dpcoord_gpu_launcher: %s: %d ranks on %d GPU(s)%s, deadline %.0f s\n",
                o.name.c_str(), o.ranks, ngpus,
                ngpus < o.ranks ? " (shared: NCCL_HOSTID per rank, sockets over lo)" : "",
                o.timeout_s);
  }
  signal(SIGPIPE, SIG_IGN);

  const Clock::time_point start = Clock::now();
  std::vector<Rank> ranks(o.ranks);
  for (int r = 0; r < o.ranks; ++r) {
    ranks[r].index = r;
    ranks[r].device = ngpus > 0 ? r % ngpus : -1;
    if (!o.out.empty()) ranks[r].log.open(o.out + "/rank" + std::to_string(r) + ".log");
    ranks[r].pid = Spawn(o, ranks[r], rendezvous, ngpus);
  }

  double deadline_s = o.timeout_s;
  bool deadline_hit = false;
  for (;;) {
    std::vector<pollfd> fds;
    for (Rank& r : ranks) {
      if (r.fd >= 0) fds.push_back({r.fd, POLLIN, 0});
    }
    if (!fds.empty()) poll(fds.data(), fds.size(), 100);
    for (Rank& r : ranks) {
      if (r.fd >= 0 && !Drain(r)) {
        close(r.fd);
        r.fd = -1;
      }
    }
    for (Rank& r : ranks) {
      if (r.outcome != Outcome::kRunning && r.outcome != Outcome::kKilled) continue;
      if (r.pid <= 0) continue;
      int status = 0;
      const pid_t got = waitpid(r.pid, &status, WNOHANG);
      if (got != r.pid) continue;
      Reap(r, status);
      r.pid = -1;
      if (r.outcome != Outcome::kKilled && !(r.outcome == Outcome::kExited && r.code == 0)) {
        const double left = o.timeout_s - Since(start);
        const double grace = std::min(o.grace_s, left);
        if (Since(start) + grace < deadline_s) deadline_s = Since(start) + grace;
        std::printf("dpcoord_gpu_launcher: rank %d %s after %.1f s; the others get %.0f s more\n",
                    r.index, Describe(r).c_str(), Since(start), grace);
      }
    }
    bool running = false, open = false;
    for (const Rank& r : ranks) {
      running = running || r.pid > 0;
      open = open || r.fd >= 0;
    }
    if (!running && !open) break;
    if (!running && open) {
      // Exited, but a descendant may hold the pipe: give it a moment, then stop reading.
      static Clock::time_point all_exited = Clock::now();
      if (Since(all_exited) > 5) break;
    }
    if (!deadline_hit && Since(start) > deadline_s) {
      deadline_hit = true;
      std::string hung;
      for (Rank& r : ranks) {
        if (r.pid <= 0) continue;
        hung += " " + std::to_string(r.index);
        std::printf(
            "dpcoord_gpu_launcher: rank %d (pid %d, GPU %d) still running after %.0f s: "
            "killing it (hung)\n",
            r.index, static_cast<int>(r.pid), r.device, Since(start));
        r.outcome = Outcome::kKilled;
        kill(-r.pid, SIGTERM);
      }
      std::printf("dpcoord_gpu_launcher: hung rank(s):%s\n", hung.c_str());
      std::this_thread::sleep_for(std::chrono::seconds(3));
      for (Rank& r : ranks) {
        if (r.pid > 0) kill(-r.pid, SIGKILL);
      }
    }
  }
  for (Rank& r : ranks) {  // a child that outlived its pipe's reader
    if (r.pid > 0) {
      kill(-r.pid, SIGKILL);
      int status = 0;
      waitpid(r.pid, &status, 0);
      r.outcome = Outcome::kKilled;
    }
    if (r.fd >= 0) close(r.fd);
  }
  std::remove((rendezvous + "/nccl-unique-id").c_str());
  rmdir(rendezvous.c_str());

  // Verdict per rank, then per test across ranks.
  bool all_ok = true;
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::string>> results;
  for (const Rank& r : ranks) {
    const bool ok = r.outcome == Outcome::kExited && r.code == 0;
    all_ok = all_ok && ok;
    std::printf("dpcoord_gpu_launcher: rank %d (GPU %d): %s\n", r.index, r.device,
                Describe(r).c_str());
    for (const std::string& t : r.order) {
      if (results.find(t) == results.end()) order.push_back(t);
      results[t].push_back(r.tests.at(t));
    }
  }
  int passed = 0, failed = 0, skipped = 0;
  std::string failed_names;
  for (const std::string& t : order) {
    const std::vector<std::string>& per_rank = results[t];
    bool any_failed = per_rank.size() != ranks.size();  // a rank never finished it
    bool all_skipped = true;
    for (const std::string& v : per_rank) {
      any_failed = any_failed || v == "FAILED";
      all_skipped = all_skipped && v == "SKIPPED";
    }
    if (any_failed) {
      ++failed;
      failed_names += " " + t;
    } else if (all_skipped) {
      ++skipped;
    } else {
      ++passed;
    }
  }
  if (!failed_names.empty())
    std::printf("dpcoord_gpu_launcher: failed tests:%s\n", failed_names.c_str());
  char summary[512];
  std::snprintf(summary, sizeof summary, "%s: %d passed, %d failed, %d skipped%s", o.name.c_str(),
                passed, failed, skipped,
                all_ok ? "" : (failed == 0 ? " (but a rank failed: see above)" : ""));
  std::printf("%s\n", summary);
  if (!o.out.empty()) {
    std::ofstream(o.out + "/summary.txt") << summary << '\n';
  }
  if (!all_ok) return 1;
  if (ngpus == 0) {
    std::printf("dpcoord_gpu_launcher: %s SKIPPED: no CUDA GPU (%s)\n", o.name.c_str(),
                no_gpu_reason.c_str());
    return 77;
  }
  return 0;
}
