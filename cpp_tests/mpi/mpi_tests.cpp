// The host-transport path across real processes, the way the README shows it for MPI stacks
// (TensorRT-LLM style): every rank makes its record with dp_make_record, the 20-byte records are
// exchanged with MPI_Allgather, and every rank calls dp_decide_batch. Run under mpirun
// (run_mpi.sh), one process per rank.
//
// Every rank derives every rank's request from (seed, step), so each one recomputes the whole
// step locally: the records it should have received, and the decision (the reference model of
// cpp_tests/cpu/test_util.h). The ranks then agree on the verdict (MPI_Allreduce) before any
// assertion, so they all pass or all fail the same test, and they stay in step. The options path
// of 0.2 (dp_decide_batch_with_options: dead ranks, step ids) runs the same way.
//
// Knobs: DPCOORD_MPI_SEED (default 20261201), DPCOORD_MPI_STEPS (default 2000).
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../cpu/test_util.h"

namespace {

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

const uint32_t kSeed = static_cast<uint32_t>(EnvInt("DPCOORD_MPI_SEED", 20261201));
const int kSteps = EnvInt("DPCOORD_MPI_STEPS", 2000);

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// True on every rank when `ok` holds on every rank of `comm`; `failed` lists the ranks where it
// did not.
bool AgreeAllPassed(bool ok, MPI_Comm comm, std::string* failed) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  int mine = ok ? 1 : 0;
  std::vector<int> all(static_cast<size_t>(size));
  MPI_Allgather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, comm);
  std::ostringstream names;
  bool every = true;
  for (int r = 0; r < size; ++r) {
    if (all[static_cast<size_t>(r)] == 0) {
      names << (every ? "" : ", ") << r;
      every = false;
    }
  }
  *failed = names.str();
  return every;
}

// One step of every rank: the configuration all ranks share and every rank's request.
struct Step {
  int32_t pad_policy = DP_PAD_POLICY_EXPLICIT;
  int32_t num_ubatches = 2;  // what dp_decide_batch gets: 2 when microbatching is off
  std::vector<dp_batch_request> requests;  // indexed by rank
};

// Step `step` of a run with `size` ranks: a function of (seed, step, size) alone, so every
// rank builds the same one. About one step in eight mixes the pad flags under EXPLICIT, which
// every rank must report as DP_ERR_INCONSISTENT_RANKS.
Step MakeStep(uint32_t seed, int step, int size) {
  std::mt19937 rng(seed + 1000003u * static_cast<uint32_t>(step));
  auto pick = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Step s;
  s.pad_policy = pick(0, 1);
  const bool mixed_pad_flags = s.pad_policy == DP_PAD_POLICY_EXPLICIT && pick(0, 3) == 0;
  const bool allow_dp_padding = pick(0, 1) == 1;
  dp_ubatch_config ubatch;
  ubatch.enabled = pick(0, 3) != 0;
  ubatch.num_ubatches = pick(2, 4);
  // Thresholds of at least num_ubatches: the lower ones are invalid from 0.2 on.
  ubatch.decode_token_threshold = pick(ubatch.num_ubatches, 64);
  ubatch.prefill_token_threshold = pick(ubatch.num_ubatches, 1024);
  s.num_ubatches = ubatch.enabled ? ubatch.num_ubatches : 2;
  const int scale = 1 << pick(3, 13);  // ranks schedule between scale / 2 and scale tokens
  for (int rank = 0; rank < size; ++rank) {
    dp_batch_request req;
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = pick(0, 15) == 0 ? 0 : pick(scale / 2, scale);
    req.num_tokens_padded = pick(0, 1) == 0 ? -1 : req.num_tokens_unpadded + pick(0, 32);
    req.allow_microbatching = pick(0, 3) != 0;
    req.uniform_decode = pick(0, 1);
    if (!req.allow_microbatching && pick(0, 1) == 1) req.uniform_decode = -1;
    req.cudagraph_mode = pick(DP_CUDAGRAPH_NONE, DP_CUDAGRAPH_FULL);
    req.pad_policy = s.pad_policy;
    req.ubatch = ubatch;
    req.allow_dp_padding = mixed_pad_flags ? (rank + step) % 2 == 0 : allow_dp_padding;
    s.requests.push_back(req);
  }
  return s;
}

// The record docs/ARCHITECTURE.md ("Semantics") says dp_make_record makes of a valid request.
dp_rank_record ExpectedRecord(const dp_batch_request& req) {
  const int32_t threshold = req.uniform_decode == 1 ? req.ubatch.decode_token_threshold
                                                    : req.ubatch.prefill_token_threshold;
  const bool attempt = req.allow_microbatching && req.ubatch.enabled &&
                       req.num_tokens_unpadded >= threshold;
  return dpt::Rec(req.num_tokens_unpadded,
                  req.num_tokens_padded < 0 ? req.num_tokens_unpadded : req.num_tokens_padded,
                  attempt ? 1 : 0, req.allow_dp_padding ? 1 : 0, req.cudagraph_mode);
}

bool SameRecord(const dp_rank_record& a, const dp_rank_record& b) {
  return a.num_tokens_unpadded == b.num_tokens_unpadded &&
         a.num_tokens_padded == b.num_tokens_padded &&
         a.should_attempt_ubatch == b.should_attempt_ubatch &&
         a.should_attempt_dp_pad == b.should_attempt_dp_pad &&
         a.cudagraph_mode == b.cudagraph_mode;
}

std::string Show(const dp_rank_record& r) {
  std::ostringstream out;
  out << "{" << r.num_tokens_unpadded << ", " << r.num_tokens_padded << ", "
      << r.should_attempt_ubatch << ", " << r.should_attempt_dp_pad << ", " << r.cudagraph_mode
      << "}";
  return out.str();
}

// What a rank whose request was invalid sends instead of a record, so that it still takes part
// in the allgather and every rank learns that the step failed. dp_decide_batch rejects it too.
const dp_rank_record kFailedMarker = dpt::Rec(-1, -1, -1, -1, -1);

// One rank's view of one step of the README's pattern.
struct Outcome {
  dp_status made = DP_ERR_INTERNAL;     // dp_make_record
  std::string make_error;               // its dp_last_error()
  std::vector<dp_rank_record> records;  // what the allgather delivered
  int failed_rank = -1;                 // the first rank that sent kFailedMarker
  dp_status decided = DP_ERR_INTERNAL;  // dp_decide_batch (when no rank failed)
  std::string decide_error;
  dp_batch_result result{};
  std::vector<int32_t> array;
};

// The README's host-transport step on `comm` (the DP ranks, in rank order).
Outcome RunStep(const dp_batch_request& req, int32_t pad_policy, int32_t num_ubatches,
                MPI_Comm comm) {
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  Outcome o;
  dp_rank_record mine = dpt::Poisoned<dp_rank_record>();
  o.made = dp_make_record(&req, &mine);
  if (o.made != DP_OK) {
    o.make_error = dp_last_error();
    mine = kFailedMarker;  // never skip the collective: the others are already in it
  }
  o.records.assign(static_cast<size_t>(size), dpt::Poisoned<dp_rank_record>());
  static_assert(sizeof(dp_rank_record) == 5 * sizeof(int32_t), "the 20-byte wire record");
  MPI_Allgather(&mine, 5, MPI_INT32_T, o.records.data(), 5, MPI_INT32_T, comm);
  for (int r = 0; r < size && o.failed_rank < 0; ++r) {
    if (SameRecord(o.records[static_cast<size_t>(r)], kFailedMarker)) o.failed_rank = r;
  }
  o.array.assign(static_cast<size_t>(size), dpt::kPoison32);
  o.result = dpt::PoisonedResult();
  o.decided = dp_decide_batch(o.records.data(), size, rank, pad_policy, num_ubatches,
                              o.array.data(), &o.result);
  if (o.decided != DP_OK) o.decide_error = dp_last_error();
  return o;
}

// The decision's shared part as integers (status, scalars, array): equal on every rank.
std::vector<int64_t> SharedPart(const Outcome& o) {
  std::vector<int64_t> v = {o.decided};
  if (o.decided == DP_OK) {
    v.insert(v.end(), {o.result.should_ubatch, o.result.should_dp_pad,
                       o.result.synced_cudagraph_mode, o.result.max_num_tokens_padded,
                       o.result.min_num_tokens_unpadded, o.result.dp_size,
                       o.result.has_num_tokens_after_padding});
    v.insert(v.end(), o.array.begin(), o.array.end());
  }
  return v;
}

// Whether every rank of `comm` holds the same `v` (same length on every rank by construction:
// a status mismatch makes lengths differ, so the length goes first).
bool SameOnEveryRank(std::vector<int64_t> v, MPI_Comm comm) {
  v.insert(v.begin(), static_cast<int64_t>(v.size()));
  int64_t length = static_cast<int64_t>(v.size()), max_length = 0;
  MPI_Allreduce(&length, &max_length, 1, MPI_INT64_T, MPI_MAX, comm);
  v.resize(static_cast<size_t>(max_length), -7);
  std::vector<int64_t> lo(v.size()), hi(v.size());
  MPI_Allreduce(v.data(), lo.data(), static_cast<int>(v.size()), MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(v.data(), hi.data(), static_cast<int>(v.size()), MPI_INT64_T, MPI_MAX, comm);
  return lo == hi;
}

// Checks one step of this rank against the local recomputation; "" when it holds.
std::string CheckStep(const Step& s, const Outcome& o, int rank) {
  std::ostringstream bad;
  if (o.made != DP_OK) {
    bad << "dp_make_record: " << dpt::Name(o.made) << ": " << o.make_error << "; ";
    return bad.str();
  }
  std::vector<dp_rank_record> expected;
  for (size_t r = 0; r < s.requests.size(); ++r) {
    expected.push_back(ExpectedRecord(s.requests[r]));
    if (!SameRecord(o.records[r], expected.back())) {
      bad << "record of rank " << r << " is " << Show(o.records[r]) << ", expected "
          << Show(expected.back()) << "; ";
    }
  }
  if (!bad.str().empty()) return bad.str();
  const dpt::Expected e = dpt::Reference(expected, rank, s.pad_policy, s.num_ubatches);
  const dp_status want = e.inconsistent ? DP_ERR_INCONSISTENT_RANKS : DP_OK;
  if (o.decided != want) {
    bad << "dp_decide_batch returned " << dpt::Name(o.decided) << ", expected "
        << dpt::Name(want) << " (dp_last_error: " << o.decide_error << "); ";
  } else if (want == DP_OK) {
    const ::testing::AssertionResult match =
        dpt::Matches(e, o.result, o.array.data(), rank, static_cast<int32_t>(o.array.size()));
    if (!match) bad << match.message() << "; ";
  } else if (!dpt::IsPoisoned(o.result) || o.array != std::vector<int32_t>(o.array.size(),
                                                                            dpt::kPoison32)) {
    bad << "a failing dp_decide_batch wrote its outputs; ";
  }
  return bad.str();
}

// Runs `steps` random steps on `comm`; every rank returns the same verdict.
::testing::AssertionResult RandomSteps(uint32_t seed, int steps, MPI_Comm comm) {
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int ok_steps = 0, inconsistent_steps = 0, ubatch_steps = 0;
  for (int step = 0; step < steps; ++step) {
    const Step s = MakeStep(seed, step, size);
    const Outcome o = RunStep(s.requests[static_cast<size_t>(rank)], s.pad_policy,
                              s.num_ubatches, comm);
    const std::string problem = CheckStep(s, o, rank);
    const bool agreed = SameOnEveryRank(SharedPart(o), comm);
    std::string failed;
    if (!AgreeAllPassed(problem.empty() && agreed, comm, &failed)) {
      return ::testing::AssertionFailure()
             << "seed " << seed << ", step " << step << ", " << size << " ranks: failed on rank(s) "
             << failed << ". This rank (" << rank << "): "
             << (problem.empty() ? "matches the recomputation" : problem)
             << (agreed ? "" : "; the ranks' decisions differ");
    }
    ok_steps += o.decided == DP_OK ? 1 : 0;
    inconsistent_steps += o.decided == DP_ERR_INCONSISTENT_RANKS ? 1 : 0;
    ubatch_steps += o.decided == DP_OK && o.result.should_ubatch ? 1 : 0;
  }
  // The generator must reach every branch, or the run proves less than it claims.
  if (steps >= 200 && size > 1 && (ok_steps == 0 || inconsistent_steps == 0 || ubatch_steps == 0)) {
    return ::testing::AssertionFailure()
           << "the random steps missed a branch: " << ok_steps << " decided, " << ubatch_steps
           << " microbatched, " << inconsistent_steps << " inconsistent";
  }
  if (WorldRank() == 0) {
    std::printf("[ rank 0   ] %d steps on %d ranks: %d decided (%d microbatched), "
                "%d inconsistent\n",
                steps, size, ok_steps, ubatch_steps, inconsistent_steps);
  }
  return ::testing::AssertionSuccess();
}

TEST(Mpi, RandomStepsMatchTheLocalRecomputationOnEveryRank) {
  EXPECT_TRUE(RandomSteps(kSeed, kSteps, MPI_COMM_WORLD));
}

// The DP ranks are a sub-communicator, as in a stack with DP x TP: the world split in two DP
// groups (even and odd ranks), each deciding on its own records; with 2 processes each group is
// a single rank (dp_size 1: no per-rank array).
TEST(Mpi, DpGroupsOfASplitCommunicatorDecideIndependently) {
  const int world_rank = WorldRank();
  MPI_Comm dp_comm;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &dp_comm);
  // Different seeds per group: the groups' records must not leak into each other.
  const ::testing::AssertionResult verdict =
      RandomSteps(kSeed + 17u * static_cast<uint32_t>(world_rank % 2), kSteps / 4, dp_comm);
  std::string failed;
  const bool all = AgreeAllPassed(static_cast<bool>(verdict), MPI_COMM_WORLD, &failed);
  MPI_Comm_free(&dp_comm);
  EXPECT_TRUE(all) << "failed on world rank(s) " << failed << "; this rank: "
                   << (verdict ? "passed" : verdict.message());
}

// One rank's request is invalid: that rank's dp_make_record fails, it still joins the allgather
// with kFailedMarker, and every rank learns which rank failed and leaves the step; a
// dp_decide_batch on the delivered records fails on every rank too (no rank can act on a wrong
// decision). The next step is valid and succeeds everywhere: the ranks are still in step.
TEST(Mpi, InvalidRequestOnOneRankFailsTheStepOnEveryRank) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int bad = 0; bad < size; ++bad) {
    SCOPED_TRACE("invalid request on rank " + std::to_string(bad));
    const Step s = MakeStep(kSeed + 99u, bad, size);
    dp_batch_request req = s.requests[static_cast<size_t>(rank)];
    if (rank == bad) req.num_tokens_unpadded = -3;
    const Outcome o = RunStep(req, s.pad_policy, s.num_ubatches, MPI_COMM_WORLD);

    std::ostringstream problem;
    if (rank == bad) {
      if (o.made != DP_ERR_INVALID_ARGUMENT) {
        problem << "dp_make_record returned " << dpt::Name(o.made) << "; ";
      } else if (o.make_error.find("num_tokens_unpadded") == std::string::npos ||
                 o.make_error.find("-3") == std::string::npos) {
        problem << "dp_last_error \"" << o.make_error << "\" names neither field nor value; ";
      }
    } else if (o.made != DP_OK) {
      problem << "dp_make_record failed on a valid request: " << o.make_error << "; ";
    }
    if (o.failed_rank != bad) {
      problem << "learned failed rank " << o.failed_rank << ", expected " << bad << "; ";
    }
    if (o.decided != DP_ERR_INVALID_ARGUMENT) {
      problem << "dp_decide_batch on the marker returned " << dpt::Name(o.decided) << "; ";
    } else if (!dpt::IsPoisoned(o.result)) {
      problem << "dp_decide_batch wrote its result on failure; ";
    }

    // The next step, valid on every rank.
    const Step next = MakeStep(kSeed + 99u, size + bad, size);
    const Outcome after = RunStep(next.requests[static_cast<size_t>(rank)], next.pad_policy,
                                  next.num_ubatches, MPI_COMM_WORLD);
    problem << CheckStep(next, after, rank);
    const bool agreed = SameOnEveryRank(SharedPart(after), MPI_COMM_WORLD);

    std::string failed;
    const bool all = AgreeAllPassed(problem.str().empty() && agreed, MPI_COMM_WORLD, &failed);
    ASSERT_TRUE(all) << "failed on rank(s) " << failed << "; this rank (" << rank << "): "
                     << (problem.str().empty() ? "fine" : problem.str())
                     << (agreed ? "" : "; the next step's decisions differ");
  }
}

// 0.2, dp_decide_batch_with_options: dead ranks (vLLM's neutralized DP columns) and step ids.
// A "dead" rank still runs here (it is one of the test's processes) but sends kFailedMarker
// instead of a record, as the failing rank above does; every rank builds active_ranks from the
// delivered records, so the live ranks decide without it. The step ids travel in a second
// MPI_Allgather; on about one step in ten a live rank is a step ahead, and every live rank must
// report DP_ERR_INCONSISTENT_RANKS naming both ids. A dead rank's own call is refused (dp_rank
// must be live). The expected decision is the reference model over the live ranks alone (at
// least 2 of them), a dead slot's entry max(padded) when padding, else 0. Dead ranks need at
// least 3 processes; with 2, only the step ids are exercised.
TEST(Mpi, OptionsPathWithDeadRanksAndStepIds) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int dead_decided = 0, skewed = 0;
  for (int step = 0; step < kSteps / 4; ++step) {
    const Step s = MakeStep(kSeed + 31u, step, size);
    std::mt19937 rng(kSeed + 7919u * static_cast<uint32_t>(step));
    auto pick = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    std::vector<uint8_t> live(static_cast<size_t>(size), 1);
    const int kills = size >= 3 ? pick(0, size - 2) : 0;  // at least 2 stay live
    for (int k = 0; k < kills; ++k) live[static_cast<size_t>(pick(0, size - 1))] = 0;
    std::vector<int> live_ranks;
    for (int r = 0; r < size; ++r) {
      if (live[static_cast<size_t>(r)] == 1) live_ranks.push_back(r);
    }
    const int last_live = static_cast<int>(live_ranks.size()) - 1;
    const int ahead = pick(0, 9) == 0 ? live_ranks[static_cast<size_t>(pick(0, last_live))] : -1;
    const int64_t id = 1000 + step;
    const bool me_live = live[static_cast<size_t>(rank)] == 1;

    std::ostringstream problem;
    dp_rank_record mine = kFailedMarker;
    if (me_live && dp_make_record(&s.requests[static_cast<size_t>(rank)], &mine) != DP_OK) {
      problem << "dp_make_record: " << dp_last_error() << "; ";
      mine = kFailedMarker;
    }
    const int64_t my_id = !me_live ? 0 : rank == ahead ? id + 1 : id;
    std::vector<dp_rank_record> records(static_cast<size_t>(size));
    std::vector<int64_t> ids(static_cast<size_t>(size));
    MPI_Allgather(&mine, 5, MPI_INT32_T, records.data(), 5, MPI_INT32_T, MPI_COMM_WORLD);
    MPI_Allgather(&my_id, 1, MPI_INT64_T, ids.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
    std::vector<uint8_t> active(static_cast<size_t>(size));
    for (size_t r = 0; r < active.size(); ++r) {
      active[r] = SameRecord(records[r], kFailedMarker) ? 0 : 1;
    }
    if (active != live) problem << "active_ranks built from the markers differ from the dead set; ";

    dp_decide_options opts;
    dp_decide_options_init(&opts);
    opts.pad_policy = s.pad_policy;
    opts.num_ubatches = s.num_ubatches;
    opts.active_ranks = active.data();
    opts.step_ids = ids.data();
    std::vector<int32_t> array(static_cast<size_t>(size), dpt::kPoison32);
    dp_batch_result res = dpt::PoisonedResult();
    const dp_status st =
        dp_decide_batch_with_options(records.data(), size, rank, &opts, array.data(), &res);
    const std::string error = st == DP_OK ? "" : dp_last_error();

    std::vector<dp_rank_record> live_records;
    int own_index = 0;
    for (int r : live_ranks) {
      if (r == rank) own_index = static_cast<int>(live_records.size());
      live_records.push_back(ExpectedRecord(s.requests[static_cast<size_t>(r)]));
    }
    const dpt::Expected e = dpt::Reference(live_records, own_index, s.pad_policy, s.num_ubatches);
    if (!me_live) {
      if (st != DP_ERR_INVALID_ARGUMENT) problem << "a dead dp_rank got " << dpt::Name(st) << "; ";
    } else if (ahead >= 0) {
      if (st != DP_ERR_INCONSISTENT_RANKS) {
        problem << "rank " << ahead << " a step ahead: got " << dpt::Name(st) << "; ";
      } else if (error.find(std::to_string(id + 1)) == std::string::npos ||
                 error.find(std::to_string(id)) == std::string::npos) {
        problem << "the message names not both ids " << id << ", " << id + 1 << ": " << error
                << "; ";
      }
    } else if (e.inconsistent) {
      if (st != DP_ERR_INCONSISTENT_RANKS) problem << "mixed pad flags: " << dpt::Name(st) << "; ";
    } else if (st != DP_OK) {
      problem << "dp_decide_batch_with_options: " << dpt::Name(st) << ": " << error << "; ";
    } else {
      std::vector<int32_t> want(static_cast<size_t>(size));
      for (size_t r = 0, k = 0; r < want.size(); ++r) {
        want[r] = live[r] == 1 ? e.array[k++] : e.should_dp_pad ? e.max_padded : 0;
      }
      if (res.should_ubatch != e.should_ubatch || res.should_dp_pad != e.should_dp_pad ||
          res.synced_cudagraph_mode != e.synced_mode || !res.has_num_tokens_after_padding ||
          res.num_tokens_after_padding_self != e.self ||
          res.max_num_tokens_padded != e.max_padded ||
          res.min_num_tokens_unpadded != e.min_unpadded || res.dp_rank != rank ||
          res.dp_size != size || res.step_id != id ||
          res.num_tokens_after_padding != array.data() || array != want) {
        problem << "the decision differs from the model over the live ranks (ubatch "
                << res.should_ubatch << "/" << e.should_ubatch << ", pad " << res.should_dp_pad
                << "/" << e.should_dp_pad << ", self " << res.num_tokens_after_padding_self << "/"
                << e.self << ", step_id " << res.step_id << "/" << id << ")"
                << (array == want ? "" : "; the per-rank array differs") << "; ";
      }
    }
    // Counted from what every rank knows alike, so every rank reaches the same verdict below.
    dead_decided += live_ranks.size() < live.size() && ahead < 0 && !e.inconsistent ? 1 : 0;
    skewed += ahead >= 0 ? 1 : 0;
    std::string failed;
    ASSERT_TRUE(AgreeAllPassed(problem.str().empty(), MPI_COMM_WORLD, &failed))
        << "step " << step << ": failed on rank(s) " << failed << "; this rank (" << rank
        << "): " << (problem.str().empty() ? "fine" : problem.str());
  }
  if (WorldRank() == 0) {
    std::printf("[ rank 0   ] %d steps on %d ranks: %d decided with dead ranks, %d with a rank a "
                "step ahead\n", kSteps / 4, size, dead_decided, skewed);
  }
  EXPECT_GT(skewed, 0) << "no step had a rank a step ahead";
  if (size >= 3) {
    EXPECT_GT(dead_decided, 0) << "no step decided with a dead rank";
  }
}

// On ranks other than 0, only failures are printed (prefixed with the rank), so the log shows
// one copy of the run plus what each failing rank saw.
class FailuresOnly : public ::testing::EmptyTestEventListener {
 public:
  explicit FailuresOnly(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                   result.file_name() != nullptr ? result.file_name() : "?",
                   result.line_number(), result.summary());
    }
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailuresOnly(rank));
  } else {
    std::printf("dpcoord %s, %d MPI processes, seed %u, %d steps\n", dp_version(), size, kSeed,
                kSteps);
  }
  const int rc = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf("mpi: %d ranks: %s\n", size,
                worst == 0 ? "every rank passed" : "FAILED (see the ranks' messages above)");
  }
  MPI_Finalize();
  return worst == 0 ? 0 : 1;
}
