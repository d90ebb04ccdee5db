// How the runtime's float kernels walk the tokens of one panel: tiles of 16, then one each of 8, 4,
// 2 and 1 for the rest (a decode step is one token), each a compile-time width.
#pragma once

#include <cstdint>
#include <type_traits>

namespace toga::rt {

// Calls tile(std::integral_constant<int, T>{}, first_token) over the tiles of `tokens`.
template <class Tile>
inline void for_each_token_tile(int64_t tokens, Tile&& tile) {
  int64_t t = 0;
  for (; t + 16 <= tokens; t += 16) tile(std::integral_constant<int, 16>{}, t);
  if (t + 8 <= tokens) tile(std::integral_constant<int, 8>{}, t), t += 8;
  if (t + 4 <= tokens) tile(std::integral_constant<int, 4>{}, t), t += 4;
  if (t + 2 <= tokens) tile(std::integral_constant<int, 2>{}, t), t += 2;
  if (t < tokens) tile(std::integral_constant<int, 1>{}, t);
}

}  // namespace toga::rt
