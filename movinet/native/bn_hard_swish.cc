// Training-mode batch norm followed by hard_swish, forward and backward, as two CPU ops.
//
// Each op makes two passes over its [rows, C] input: one for per-channel sums, one element-wise.
// Sums are float over about kChunkRows rows, then double per block of rows and across blocks,
// so their error stays near float's epsilon at any row count (a plain float32 reduction over
// hundreds of thousands of rows can be off by over 10% in a gradient). The forward sums
// are shifted by the first row, so a channel with a large mean keeps its variance.
//
// hard_swish(z) = z * relu6(z + 3) / 6 and its slope (0 at z <= -3, 1 at z >= 3, z/3 + 1/2
// between) follow TF's Relu6 and Relu6Grad, as movinet/ops.py computes them.

#include <cmath>

#include "kernels.h"

namespace movinet {

constexpr int64_t kChunkRows = 256;
constexpr int64_t kMinBlockRows = 2048;

inline float HardSwish(float z) { return z * std::min(std::max(z + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f); }

inline float HardSwishSlope(float z) {
  return z <= -3.0f ? 0.0f : (z >= 3.0f ? 1.0f : z * (1.0f / 3.0f) + 0.5f);
}

// How rows [rows, C] are walked: blocks of rows, about four per CPU worker thread and none under
// kMinBlockRows rows, run in parallel; within a block, spans of `span_rows` rows (at least
// kMinSpan elements) are one flat loop against per-channel values tiled to the span's length, so
// the loops vectorize however few channels there are.
struct Layout {
  Layout(OpKernelContext* ctx, int64_t rows, int64_t channels)
      : workers(ctx->device()->tensorflow_cpu_worker_threads()->workers), rows(rows), channels(channels) {
    const int64_t wanted = std::max<int64_t>(1, 4 * workers->NumThreads());
    blocks = std::max<int64_t>(1, std::min(wanted, rows / kMinBlockRows));
    rows_per_block = (rows + blocks - 1) / blocks;
    span_rows = std::max<int64_t>(1, kMinSpan / channels);
    span = span_rows * channels;
  }

  // Per-channel values repeated across a span.
  std::vector<float> Tile(const std::vector<float>& values) const {
    std::vector<float> tiled(span);
    for (int64_t i = 0; i < span; ++i) tiled[i] = values[i % channels];
    return tiled;
  }

  // Runs fn(block, offset, length) over every span (flat element offset and count) on the workers.
  template <typename Fn>
  void ForEachSpan(Fn fn) const {
    workers->ParallelFor(blocks, rows_per_block * channels * 8, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t stop = std::min(rows, (block + 1) * rows_per_block);
        for (int64_t row = block * rows_per_block; row < stop; row += span_rows) {
          fn(block, row * channels, std::min(span_rows, stop - row) * channels);
        }
      }
    });
  }

  // Per-channel totals of two element-wise terms: terms(offset, length, a, b) adds span-long
  // partial sums into a and b, which gather in float over about kChunkRows rows, then in double.
  template <typename Terms>
  void ChannelSums(Terms terms, std::vector<double>* total_a, std::vector<double>* total_b) const {
    std::vector<double> block_a(blocks * span, 0.0), block_b(blocks * span, 0.0);
    std::vector<float> chunk_a(blocks * span, 0.0f), chunk_b(blocks * span, 0.0f);
    std::vector<int64_t> chunk_rows(blocks, 0);
    const int64_t flush_rows = std::max(kChunkRows, span_rows);
    auto flush = [&](int64_t block) {
      for (int64_t i = block * span; i < (block + 1) * span; ++i) {
        block_a[i] += chunk_a[i];
        block_b[i] += chunk_b[i];
        chunk_a[i] = chunk_b[i] = 0.0f;
      }
      chunk_rows[block] = 0;
    };
    ForEachSpan([&](int64_t block, int64_t offset, int64_t length) {
      terms(offset, length, &chunk_a[block * span], &chunk_b[block * span]);
      chunk_rows[block] += length / channels;
      const bool last = offset + length == std::min(rows, (block + 1) * rows_per_block) * channels;
      if (chunk_rows[block] >= flush_rows || last) flush(block);
    });
    total_a->assign(channels, 0.0);
    total_b->assign(channels, 0.0);
    for (int64_t i = 0; i < blocks * span; ++i) {
      (*total_a)[i % channels] += block_a[i];
      (*total_b)[i % channels] += block_b[i];
    }
  }

  tensorflow::thread::ThreadPool* workers;
  int64_t rows, channels, blocks, rows_per_block, span_rows, span;
};

class BnHardSwishOp : public OpKernel {
 public:
  explicit BnHardSwishOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& gamma = ctx->input(1);
    const Tensor& beta = ctx->input(2);
    OP_REQUIRES(ctx, x.dims() == 2, tensorflow::errors::InvalidArgument("x must be [rows, channels]"));
    const int64_t rows = x.dim_size(0), channels = x.dim_size(1);
    OP_REQUIRES(ctx, gamma.NumElements() == channels && beta.NumElements() == channels,
                tensorflow::errors::InvalidArgument("gamma and beta must have one entry per channel"));
    OP_REQUIRES(ctx, rows > 0 && channels > 0,
                tensorflow::errors::InvalidArgument("batch norm needs at least one row and one channel"));
    Tensor *y, *mean_out, *variance_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &mean_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({channels}), &variance_out));
    const Layout layout(ctx, rows, channels);
    const float* in = x.flat<float>().data();
    const std::vector<float> shift = layout.Tile(std::vector<float>(in, in + channels));  // the first row
    std::vector<double> sum, square;
    layout.ChannelSums(
        [&](int64_t offset, int64_t length, float* __restrict sums, float* __restrict squares) {
          const float* __restrict r = in + offset;
          const float* __restrict s = shift.data();
          for (int64_t i = 0; i < length; ++i) {
            const float d = r[i] - s[i];
            sums[i] += d;
            squares[i] += d * d;
          }
        },
        &sum, &square);
    const float* g = gamma.flat<float>().data();
    const float* b = beta.flat<float>().data();
    std::vector<float> scale(channels), offset(channels);
    float* mean = mean_out->flat<float>().data();
    float* variance = variance_out->flat<float>().data();
    for (int64_t c = 0; c < channels; ++c) {
      const double shifted_mean = sum[c] / rows;
      const double var = std::max(square[c] / rows - shifted_mean * shifted_mean, 0.0);
      mean[c] = static_cast<float>(shift[c] + shifted_mean);
      variance[c] = static_cast<float>(var);
      scale[c] = static_cast<float>(g[c] / std::sqrt(var + epsilon_));
      offset[c] = b[c] - mean[c] * scale[c];
    }
    const std::vector<float> scales = layout.Tile(scale), offsets = layout.Tile(offset);
    float* out = y->flat<float>().data();
    layout.ForEachSpan([&](int64_t, int64_t start, int64_t length) {
      const float* __restrict r = in + start;
      float* __restrict o = out + start;
      const float* __restrict s = scales.data();
      const float* __restrict t = offsets.data();
      for (int64_t i = 0; i < length; ++i) o[i] = HardSwish(r[i] * s[i] + t[i]);
    });
  }

 private:
  float epsilon_;
};

class BnHardSwishGradOp : public OpKernel {
 public:
  explicit BnHardSwishGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& upstream = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() == 2 && upstream.shape() == x.shape(),
                tensorflow::errors::InvalidArgument("x and upstream must be [rows, channels] alike"));
    const int64_t rows = x.dim_size(0), channels = x.dim_size(1);
    OP_REQUIRES(ctx, rows > 0 && channels > 0,
                tensorflow::errors::InvalidArgument("batch norm needs at least one row and one channel"));
    for (int i = 2; i < 6; ++i) {
      OP_REQUIRES(ctx, ctx->input(i).NumElements() == channels,
                  tensorflow::errors::InvalidArgument("gamma, beta, mean and variance need one entry per channel"));
    }
    const float* g = ctx->input(2).flat<float>().data();
    const float* b = ctx->input(3).flat<float>().data();
    const float* mean = ctx->input(4).flat<float>().data();
    const float* variance = ctx->input(5).flat<float>().data();
    Tensor *dx_out, *dgamma_out, *dbeta_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &dgamma_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({channels}), &dbeta_out));
    const Layout layout(ctx, rows, channels);
    std::vector<float> inverse(channels), scale(channels), offset(channels);
    for (int64_t c = 0; c < channels; ++c) {
      inverse[c] = 1.0f / std::sqrt(variance[c] + epsilon_);
      scale[c] = g[c] * inverse[c];
      offset[c] = b[c] - mean[c] * scale[c];
    }
    const std::vector<float> scales = layout.Tile(scale), offsets = layout.Tile(offset);
    const std::vector<float> means = layout.Tile(std::vector<float>(mean, mean + channels));
    const float* in = x.flat<float>().data();
    const float* up = upstream.flat<float>().data();
    std::vector<double> sum, centered;
    layout.ChannelSums(
        [&](int64_t start, int64_t length, float* __restrict sums, float* __restrict centereds) {
          const float* __restrict r = in + start;
          const float* __restrict u = up + start;
          const float* __restrict s = scales.data();
          const float* __restrict t = offsets.data();
          const float* __restrict m = means.data();
          for (int64_t i = 0; i < length; ++i) {
            const float grad = u[i] * HardSwishSlope(r[i] * s[i] + t[i]);
            sums[i] += grad;
            centereds[i] += grad * (r[i] - m[i]);
          }
        },
        &sum, &centered);
    float* dgamma = dgamma_out->flat<float>().data();
    float* dbeta = dbeta_out->flat<float>().data();
    std::vector<float> mean_grad(channels), centered_coefficient(channels);
    for (int64_t c = 0; c < channels; ++c) {
      dbeta[c] = static_cast<float>(sum[c]);
      dgamma[c] = static_cast<float>(centered[c] * inverse[c]);
      mean_grad[c] = static_cast<float>(sum[c] / rows);
      centered_coefficient[c] = static_cast<float>(centered[c] / rows * inverse[c] * inverse[c]);
    }
    const std::vector<float> mean_grads = layout.Tile(mean_grad);
    const std::vector<float> coefficients = layout.Tile(centered_coefficient);
    float* dx = dx_out->flat<float>().data();
    layout.ForEachSpan([&](int64_t, int64_t start, int64_t length) {
      const float* __restrict r = in + start;
      const float* __restrict u = up + start;
      float* __restrict o = dx + start;
      const float* __restrict s = scales.data();
      const float* __restrict t = offsets.data();
      const float* __restrict m = means.data();
      const float* __restrict mg = mean_grads.data();
      const float* __restrict k = coefficients.data();
      for (int64_t i = 0; i < length; ++i) {
        const float grad = u[i] * HardSwishSlope(r[i] * s[i] + t[i]);
        o[i] = s[i] * (grad - mg[i] - (r[i] - m[i]) * k[i]);
      }
    });
  }

 private:
  float epsilon_;
};

// Both ops: output 0 shaped as x [rows, C], outputs 1 and 2 as [C].
absl::Status RowsLikeXAndTwoChannelVectors(InferenceContext* c) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  c->set_output(0, x);
  c->set_output(1, c->Vector(c->Dim(x, 1)));
  c->set_output(2, c->Vector(c->Dim(x, 1)));
  return absl::OkStatus();
}

REGISTER_OP("MovinetBnHardSwish")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("variance: float")
    .Attr("epsilon: float")
    .SetShapeFn(RowsLikeXAndTwoChannelVectors);

REGISTER_OP("MovinetBnHardSwishGrad")
    .Input("x: float")
    .Input("upstream: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("variance: float")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("epsilon: float")
    .SetShapeFn(RowsLikeXAndTwoChannelVectors);

REGISTER_KERNEL_BUILDER(Name("MovinetBnHardSwish").Device(DEVICE_CPU), BnHardSwishOp);
REGISTER_KERNEL_BUILDER(Name("MovinetBnHardSwishGrad").Device(DEVICE_CPU), BnHardSwishGradOp);

}  // namespace movinet
