// attn/projection.hpp: the learned linear map that turns embeddings into queries, keys or values.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "attn/common.hpp"
#include "attn/detail/check.hpp"

namespace attn {

// The row-major result type of X W: as many columns as W, fixed when W's are.
template <class T, int Cols>
using ProjectionResult =
    Eigen::Matrix<T, Eigen::Dynamic, Cols, Cols == 1 ? Eigen::ColMajor : Eigen::RowMajor>;

// Y = X W + 1 b:  X: n x d_in, W: d_in x d_out, b: 1 x d_out  ->  Y: n x d_out.
template <class DX, class DW, class DB>
ProjectionResult<typename DX::Scalar, DW::ColsAtCompileTime> project(
    const Eigen::MatrixBase<DX>& x, const Eigen::MatrixBase<DW>& w,
    const Eigen::MatrixBase<DB>& b) {
  using T = typename DX::Scalar;
  static_assert(std::is_same_v<T, typename DW::Scalar> && std::is_same_v<T, typename DB::Scalar>,
                "attn::project: X, W and b must have the same scalar type");
  using detail::shape;
  if (x.cols() != w.rows())
    detail::fail("project", "X is " + shape(x) + " and W is " + shape(w) +
                                "; X needs as many columns as W has rows");
  if (b.rows() != 1 || b.cols() != w.cols())
    detail::fail("project", "b is " + shape(b) + " and W is " + shape(w) + "; b must be 1x" +
                                std::to_string(w.cols()));
  ProjectionResult<T, DW::ColsAtCompileTime> y(x.rows(), w.cols());
  y.noalias() = x * w;
  y.rowwise() += b.row(0);
  return y;
}

}  // namespace attn
