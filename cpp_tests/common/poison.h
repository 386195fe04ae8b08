// Byte-pattern helpers shared by the CPU and GPU suites: fill an output with a recognisable
// pattern, then check that a failing call left it untouched ("outputs only on success").
#ifndef DPCOORD_TEST_POISON_H
#define DPCOORD_TEST_POISON_H

#include <cstring>

namespace dpcoord_test {

// An object filled with the byte 0xA5.
template <typename T>
T Poisoned() {
  T value;
  std::memset(static_cast<void*>(&value), 0xA5, sizeof value);
  return value;
}

// Whether `value` still holds the pattern of Poisoned<T>().
template <typename T>
bool IsPoisoned(const T& value) {
  const T expected = Poisoned<T>();
  return std::memcmp(&value, &expected, sizeof value) == 0;
}

}  // namespace dpcoord_test

#endif  // DPCOORD_TEST_POISON_H
