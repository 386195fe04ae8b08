// The byte-level promises of the C ABI (docs/ARCHITECTURE.md, "C API"), from C++ as a caller
// lays the structs out in memory:
// - structs grow: a caller built with the 0.1 request (48 bytes) and one whose structs are
//   larger than the library's both work; the library reads and writes only
//   min(struct_size, sizeof) bytes (guard pages: the struct flush against a PROT_NONE page,
//   so one byte too many is a SIGSEGV, which fails this test: ctest runs each test alone);
// - C bools are bytes: only 0 and 1 are accepted, anything else names the field and the byte;
// - every pointer is checked for its type's alignment: an error naming it, never an abort.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

using dpt::LastErrorMentions;
using dpt::Rec;

namespace {

constexpr unsigned char kFill = 0xA5;

// The request of a caller built with the 0.1 header: 48 bytes, 4-aligned. 0.2 only appended
// step_id, so its fields sit at the 0.2 offsets (header_c.c pins each one to its number).
struct alignas(4) RequestV01 {
  unsigned char bytes[48];
};
static_assert(offsetof(dp_batch_request, step_id) == sizeof(RequestV01),
              "0.2 appends step_id after the 0.1 fields");

// Structs of a caller built with a newer header: this version's, then unknown fields.
struct NewerRequest {
  dp_batch_request known;
  uint64_t newer[2];
};
struct NewerResult {
  dp_batch_result known;
  uint64_t newer[2];
};

// Two pages mapped read-write, the second made PROT_NONE: Tail(n) is memory whose end is flush
// against a page that faults on any access. The first page starts filled with kFill.
class GuardPage {
 public:
  GuardPage() : page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
    void* map = mmap(nullptr, 2 * page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED) throw std::runtime_error("mmap failed");
    map_ = static_cast<unsigned char*>(map);
    if (mprotect(map_ + page_, page_, PROT_NONE) != 0) throw std::runtime_error("mprotect");
    std::memset(map_, kFill, page_);
  }
  ~GuardPage() { munmap(map_, 2 * page_); }
  GuardPage(const GuardPage&) = delete;
  GuardPage& operator=(const GuardPage&) = delete;

  // The last n bytes before the guard page (8-aligned when n is a multiple of 8).
  unsigned char* Tail(size_t n) const { return map_ + page_ - n; }
  template <typename T>
  T* Tail() const {
    return reinterpret_cast<T*>(Tail(sizeof(T)));
  }
  // Whether the last n bytes before the guard page still hold kFill.
  bool TailIsFill(size_t n) const {
    for (size_t i = 0; i < n; ++i) {
      if (Tail(n)[i] != kFill) return false;
    }
    return true;
  }

 private:
  size_t page_;
  unsigned char* map_ = nullptr;
};

// 8-aligned scratch memory filled with kFill, for structs placed at chosen offsets.
struct alignas(16) Scratch {
  unsigned char bytes[512];
  Scratch() { std::memset(bytes, kFill, sizeof bytes); }
};

template <typename T>
void Put(void* base, size_t offset, T value) {
  std::memcpy(static_cast<unsigned char*>(base) + offset, &value, sizeof value);
}
template <typename T>
T Get(const void* base, size_t offset) {
  T value;
  std::memcpy(&value, static_cast<const unsigned char*>(base) + offset, sizeof value);
  return value;
}

const size_t kUbatchEnabled = offsetof(dp_batch_request, ubatch) + offsetof(dp_ubatch_config, enabled);

// Makes the initialised request at p (0.1 or 0.2 layout: the same offsets) one that attempts
// microbatching and DP padding, every bool field 1 and each decisive.
void SetUbatchRequest(void* p) {
  Put<int32_t>(p, offsetof(dp_batch_request, num_tokens_unpadded), 600);
  Put<int32_t>(p, offsetof(dp_batch_request, num_tokens_padded), 640);
  Put<unsigned char>(p, offsetof(dp_batch_request, allow_microbatching), 1);
  Put<unsigned char>(p, offsetof(dp_batch_request, allow_dp_padding), 1);
  Put<int32_t>(p, offsetof(dp_batch_request, uniform_decode), 0);
  Put<int32_t>(p, offsetof(dp_batch_request, cudagraph_mode), DP_CUDAGRAPH_FULL);
  Put<unsigned char>(p, kUbatchEnabled, 1);
}

// dp_make_record on the request at p; the record equals (600, 640, 1, 1, FULL) on success.
::testing::AssertionResult MakesTheUbatchRecord(const void* p) {
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  const dp_status s = dp_make_record(static_cast<const dp_batch_request*>(p), &rec);
  if (s != DP_OK) {
    return ::testing::AssertionFailure() << dp_status_string(s) << ": " << dp_last_error();
  }
  if (rec.num_tokens_unpadded != 600 || rec.num_tokens_padded != 640 ||
      rec.should_attempt_ubatch != 1 || rec.should_attempt_dp_pad != 1 ||
      rec.cudagraph_mode != DP_CUDAGRAPH_FULL) {
    return ::testing::AssertionFailure() << "unexpected record";
  }
  return ::testing::AssertionSuccess();
}

ncclComm* FakeComm() {  // never dereferenced: the request is validated first
  static char storage[64];
  return reinterpret_cast<ncclComm*>(storage);
}

// --- struct growth, at guard pages -----------------------------------------------------------

TEST(Growth, OldRequestFlushAgainstAGuardPage) {
  GuardPage guard;
  RequestV01* old = guard.Tail<RequestV01>();
  // What a 0.1-sized caller's dp_batch_request_init passes: its own sizeof, 48.
  dp_batch_request_init_sized(reinterpret_cast<dp_batch_request*>(old), sizeof *old);
  EXPECT_EQ(Get<uint32_t>(old, offsetof(dp_batch_request, struct_size)), 48u);
  EXPECT_EQ(Get<int32_t>(old, offsetof(dp_batch_request, num_tokens_padded)), -1);
  EXPECT_EQ(Get<int32_t>(old, offsetof(dp_batch_request, uniform_decode)), -1);
  const size_t num_ubatches =
      offsetof(dp_batch_request, ubatch) + offsetof(dp_ubatch_config, num_ubatches);
  EXPECT_EQ(Get<int32_t>(old, num_ubatches), 2);
  EXPECT_EQ(Get<int32_t>(old, offsetof(dp_batch_request, timeout_ms)), 0);
  SetUbatchRequest(old);
  EXPECT_TRUE(MakesTheUbatchRecord(old));
  // The GPU path reads it the same way (no NCCL here: no marker is sent, the field is named).
  Put<int32_t>(old, offsetof(dp_batch_request, cudagraph_mode), 7);
  dp_batch_result res = dpt::PoisonedResult();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_coordinate_batch(FakeComm(), nullptr,
                                    reinterpret_cast<const dp_batch_request*>(old), &res));
  EXPECT_TRUE(LastErrorMentions({"req->cudagraph_mode = 7"}));
  EXPECT_TRUE(dpt::IsPoisoned(res));
}

TEST(Growth, OldRequestGetsStepIdZero) {
  // The 8 bytes after a 48-byte request hold a step id that would be refused if read.
  Scratch s;
  dp_batch_request* req = reinterpret_cast<dp_batch_request*>(s.bytes);
  dp_batch_request_init_sized(req, sizeof(RequestV01));
  EXPECT_EQ(Get<uint64_t>(s.bytes, offsetof(dp_batch_request, step_id)), 0xA5A5A5A5A5A5A5A5u)
      << "init wrote past the 0.1 struct";
  Put<int64_t>(s.bytes, offsetof(dp_batch_request, step_id), -1);
  SetUbatchRequest(req);
  EXPECT_TRUE(MakesTheUbatchRecord(req));
  // The same bytes as a 0.2 request (56 bytes): step_id is read, and refused.
  Put<uint32_t>(s.bytes, 0, offsetof(dp_batch_request, rules));
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(req, &rec));
  EXPECT_TRUE(LastErrorMentions({"req->step_id = -1"}));
  EXPECT_TRUE(dpt::IsPoisoned(rec));
}

TEST(Growth, RequestFlushAgainstAGuardPage) {
  GuardPage guard;
  dp_batch_request* req = guard.Tail<dp_batch_request>();
  dp_batch_request_init(req);
  EXPECT_EQ(req->struct_size, sizeof(dp_batch_request));
  EXPECT_EQ(req->step_id, 0);
  SetUbatchRequest(req);
  req->step_id = 41;
  EXPECT_TRUE(MakesTheUbatchRecord(req));
}

TEST(Growth, NewerCallersLargerRequestWorksAndKeepsItsTrailingBytes) {
  GuardPage guard;
  NewerRequest* newer = guard.Tail<NewerRequest>();
  // A newer header's dp_batch_request_init(&req) passes its (larger) sizeof.
  dp_batch_request_init_sized(&newer->known, sizeof *newer);
  EXPECT_EQ(newer->known.struct_size, sizeof *newer);
  EXPECT_EQ(newer->known.num_tokens_padded, -1);
  EXPECT_TRUE(guard.TailIsFill(sizeof newer->newer)) << "init wrote past its own sizeof";
  SetUbatchRequest(&newer->known);
  EXPECT_TRUE(MakesTheUbatchRecord(&newer->known));
  std::memset(newer->newer, 0xFF, sizeof newer->newer);  // whatever they hold: not read
  EXPECT_TRUE(MakesTheUbatchRecord(&newer->known));
}

// dp_decide_batch over two ranks' records flush against one guard page and the array against
// another; `res` is the caller's result (any size). Every rank runs 640 tokens.
void DecideAtGuardPages(dp_batch_result* res) {
  GuardPage records_page, array_page;
  dp_rank_record* recs = reinterpret_cast<dp_rank_record*>(records_page.Tail(2 * sizeof(dp_rank_record)));
  recs[0] = Rec(600, 640, 1, 1, DP_CUDAGRAPH_FULL);
  recs[1] = Rec(500, 512, 1, 1, DP_CUDAGRAPH_FULL);
  int32_t* array = reinterpret_cast<int32_t*>(array_page.Tail(2 * sizeof(int32_t)));
  ASSERT_STATUS(DP_OK, dp_decide_batch(recs, 2, 1, DP_PAD_POLICY_EXPLICIT, 2, array, res));
  EXPECT_TRUE(res->should_ubatch);
  EXPECT_TRUE(res->should_dp_pad);
  EXPECT_EQ(res->dp_rank, 1);
  EXPECT_EQ(res->dp_size, 2);
  EXPECT_EQ(res->num_tokens_after_padding_self, 640);
  EXPECT_EQ(res->min_num_tokens_unpadded, 500);
  EXPECT_EQ(res->num_tokens_after_padding, array);
  EXPECT_EQ(res->step_id, 0);
  EXPECT_EQ(array[0], 640);
  EXPECT_EQ(array[1], 640);
}

TEST(Growth, ResultFlushAgainstAGuardPage) {
  GuardPage guard;
  dp_batch_result* res = guard.Tail<dp_batch_result>();
  dp_batch_result_init(res);
  EXPECT_EQ(res->struct_size, sizeof(dp_batch_result));
  EXPECT_FALSE(res->should_ubatch);
  EXPECT_EQ(res->num_tokens_after_padding, nullptr);
  EXPECT_EQ(res->num_tokens_after_padding_device, nullptr);
  EXPECT_EQ(res->step_id, 0);
  DecideAtGuardPages(res);
  EXPECT_EQ(res->struct_size, sizeof(dp_batch_result)) << "struct_size is the caller's";
}

TEST(Growth, NewerCallersLargerResultKeepsItsTrailingBytes) {
  GuardPage guard;
  NewerResult* newer = guard.Tail<NewerResult>();
  dp_batch_result_init_sized(&newer->known, sizeof *newer);
  EXPECT_EQ(newer->known.struct_size, sizeof *newer);
  EXPECT_TRUE(guard.TailIsFill(sizeof newer->newer)) << "init wrote past its own sizeof";
  DecideAtGuardPages(&newer->known);
  EXPECT_EQ(newer->known.struct_size, sizeof *newer);
  EXPECT_TRUE(guard.TailIsFill(sizeof newer->newer)) << "decide wrote past its own sizeof";
}

TEST(Growth, StructSizeIsReadAloneFirst) {
  // Structs that end right after struct_size: only those 4 bytes are read before the refusal.
  GuardPage guard;
  Put<uint32_t>(guard.Tail(4), 0, 4);
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_record(reinterpret_cast<const dp_batch_request*>(guard.Tail(4)), &rec));
  EXPECT_TRUE(LastErrorMentions({"req->struct_size = 4", "48"}));
  EXPECT_TRUE(dpt::IsPoisoned(rec));
  Put<uint32_t>(guard.Tail(8), 0, 8);
  const dp_rank_record one = Rec(1, 1, 0, 0, 0);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_decide_batch(&one, 1, 0, 0, 2, nullptr,
                                reinterpret_cast<dp_batch_result*>(guard.Tail(8))));
  EXPECT_TRUE(LastErrorMentions({"res->struct_size = 8", "56"}));
  // Init with a size below the first version writes nothing.
  GuardPage fresh;
  dp_batch_request_init_sized(reinterpret_cast<dp_batch_request*>(fresh.Tail(44)), 44);
  EXPECT_TRUE(LastErrorMentions({"size = 44"}));
  dp_batch_result_init_sized(reinterpret_cast<dp_batch_result*>(fresh.Tail(48)), 48);
  EXPECT_TRUE(LastErrorMentions({"size = 48"}));
  EXPECT_TRUE(fresh.TailIsFill(sizeof(dp_batch_result)));
}

// --- bool bytes ------------------------------------------------------------------------------

struct BoolField {
  const char* name;
  size_t offset;
  int32_t dp_rank_record::*decides;  // the record word a 0 or 1 in it sets
};

TEST(BoolBytes, OnlyZeroAndOneAreAcceptedInEveryBoolField) {
  const BoolField fields[] = {
      {"req->allow_microbatching", offsetof(dp_batch_request, allow_microbatching),
       &dp_rank_record::should_attempt_ubatch},
      {"req->allow_dp_padding", offsetof(dp_batch_request, allow_dp_padding),
       &dp_rank_record::should_attempt_dp_pad},
      {"req->ubatch.enabled", kUbatchEnabled, &dp_rank_record::should_attempt_ubatch},
  };
  for (const BoolField& f : fields) {
    for (int byte = 0; byte <= 255; ++byte) {
      SCOPED_TRACE(std::string(f.name) + " = " + std::to_string(byte));
      dp_batch_request req;
      dp_batch_request_init(&req);
      SetUbatchRequest(&req);
      Put<unsigned char>(&req, f.offset, static_cast<unsigned char>(byte));
      dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
      const dp_status s = dp_make_record(&req, &rec);
      if (byte <= 1) {
        ASSERT_STATUS(DP_OK, s);
        EXPECT_EQ(rec.*f.decides, byte);
        continue;
      }
      const std::string named = std::string(f.name) + " holds the byte " + std::to_string(byte);
      ASSERT_STATUS(DP_ERR_INVALID_ARGUMENT, s);
      EXPECT_TRUE(LastErrorMentions({named}));
      EXPECT_TRUE(dpt::IsPoisoned(rec));
      dp_batch_result res = dpt::PoisonedResult();
      EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(FakeComm(), nullptr, &req, &res));
      EXPECT_TRUE(LastErrorMentions({named}));
      EXPECT_TRUE(dpt::IsPoisoned(res));
    }
  }
}

// --- alignment -------------------------------------------------------------------------------

TEST(Alignment, EveryPointerOfTheHostPathAtOffsetsOneToThree) {
  // Inside one scratch buffer (16-aligned parts): request at 0 (96 bytes), result at 128 (128
  // bytes), records at 256, array at 320, record out at 384. Each call moves one pointer by +k.
  for (size_t k = 1; k <= 3; ++k) {
    Scratch s;
    unsigned char* b = s.bytes;
    dp_batch_request_init(reinterpret_cast<dp_batch_request*>(b));
    SetUbatchRequest(b);
    dp_batch_result_init(reinterpret_cast<dp_batch_result*>(b + 128));
    dp_rank_record two[2] = {Rec(600, 640, 1, 1, 2), Rec(500, 512, 1, 1, 2)};
    std::memcpy(b + 256, two, sizeof two);
    const std::vector<unsigned char> before(b, b + sizeof s.bytes);
    auto req = [&](size_t m) { return reinterpret_cast<dp_batch_request*>(b + m); };
    auto res = [&](size_t m) { return reinterpret_cast<dp_batch_result*>(b + 128 + m); };
    auto recs = [&](size_t m) { return reinterpret_cast<dp_rank_record*>(b + 256 + m); };
    auto array = [&](size_t m) { return reinterpret_cast<int32_t*>(b + 320 + m); };
    auto out = [&](size_t m) { return reinterpret_cast<dp_rank_record*>(b + 384 + m); };
    const struct {
      const char* name;
      std::function<dp_status()> call;
    } calls[] = {
        {"req", [&] { return dp_make_record(req(k), out(0)); }},
        {"out", [&] { return dp_make_record(req(0), out(k)); }},
        {"records", [&] { return dp_decide_batch(recs(k), 2, 0, 0, 2, array(0), res(0)); }},
        {"num_tokens_after_padding",
         [&] { return dp_decide_batch(recs(0), 2, 0, 0, 2, array(k), res(0)); }},
        {"res", [&] { return dp_decide_batch(recs(0), 2, 0, 0, 2, array(0), res(k)); }},
        {"req", [&] { return dp_coordinate_batch(FakeComm(), nullptr, req(k), res(0)); }},
        {"res", [&] { return dp_coordinate_batch(FakeComm(), nullptr, req(0), res(k)); }},
        {"req",
         [&] {
           dp_batch_request_init_sized(req(k), sizeof(dp_batch_request));
           return DP_ERR_INVALID_ARGUMENT;  // void: the message and the bytes tell
         }},
        {"res",
         [&] {
           dp_batch_result_init_sized(res(k), sizeof(dp_batch_result));
           return DP_ERR_INVALID_ARGUMENT;
         }},
    };
    for (const auto& c : calls) {
      SCOPED_TRACE(std::string(c.name) + " + " + std::to_string(k));
      EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, c.call());
      EXPECT_TRUE(LastErrorMentions({std::string(c.name) + " = 0x", "is not aligned to"}));
      EXPECT_EQ(std::vector<unsigned char>(b, b + sizeof s.bytes), before) << "memory written";
    }
  }
}

TEST(Alignment, OldRequestNeedsFourBytesNewOneAndResultsEight) {
  Scratch s;
  unsigned char* p = s.bytes + 4;  // 4-aligned, not 8-aligned
  dp_batch_request_init_sized(reinterpret_cast<dp_batch_request*>(p), sizeof(RequestV01));
  SetUbatchRequest(p);
  EXPECT_TRUE(MakesTheUbatchRecord(p));
  // The same bytes claiming the 0.2 size (which holds an int64_t): 8 bytes required.
  Put<uint32_t>(p, 0, sizeof(dp_batch_request));
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_record(reinterpret_cast<const dp_batch_request*>(p), &rec));
  EXPECT_TRUE(LastErrorMentions({"req = 0x", "not aligned to 8 bytes"}));
  EXPECT_TRUE(dpt::IsPoisoned(rec));
  const std::vector<unsigned char> before(s.bytes, s.bytes + sizeof s.bytes);
  dp_batch_request_init_sized(reinterpret_cast<dp_batch_request*>(p), sizeof(dp_batch_request));
  EXPECT_TRUE(LastErrorMentions({"req = 0x", "not aligned to 8 bytes"}));
  dp_batch_result_init_sized(reinterpret_cast<dp_batch_result*>(p), sizeof(dp_batch_result));
  EXPECT_TRUE(LastErrorMentions({"res = 0x", "not aligned to 8 bytes"}));
  const dp_rank_record one = Rec(1, 1, 0, 0, 0);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_decide_batch(&one, 1, 0, 0, 2, nullptr, reinterpret_cast<dp_batch_result*>(p)));
  EXPECT_TRUE(LastErrorMentions({"res = 0x", "not aligned to 8 bytes"}));
  EXPECT_EQ(std::vector<unsigned char>(s.bytes, s.bytes + sizeof s.bytes), before);
}

TEST(Alignment, NullInEveryInit) {
  dp_batch_request_init_sized(nullptr, sizeof(dp_batch_request));
  EXPECT_TRUE(LastErrorMentions({"req is NULL"}));
  dp_batch_result_init_sized(nullptr, sizeof(dp_batch_result));
  EXPECT_TRUE(LastErrorMentions({"res is NULL"}));
  dp_batch_result_init(nullptr);
  EXPECT_TRUE(LastErrorMentions({"res is NULL"}));
}

}  // namespace
