// attn/detail/check.hpp: shape validation for the public entry points. Every error names the
// function and the shapes involved, and is thrown before any output is written.
#pragma once

#include <Eigen/Core>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace attn::detail {

inline std::string shape(Eigen::Index rows, Eigen::Index cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

template <class Derived>
std::string shape(const Eigen::EigenBase<Derived>& m) {
  return shape(m.rows(), m.cols());
}

[[noreturn]] inline void fail(const char* function, const std::string& message) {
  throw std::invalid_argument(std::string("attn::") + function + ": " + message);
}

template <class T>
inline constexpr bool is_supported_scalar = std::is_floating_point_v<T>;

}  // namespace attn::detail
