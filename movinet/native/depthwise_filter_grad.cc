// The filter gradient of a depthwise 2D convolution (channel multiplier 1, NHWC), as a CPU op.
//
//   dk[i, j, c] = sum over n, oh, ow of x[n, oh * sh + i - top, ow * sw + j - left, c] * dy[n, oh, ow, c]
//
// (x read as zero outside [0, H) x [0, W)), for any kernel, strides and explicit padding, so one
// op serves the spatial (kh, kw) convolutions ('SAME' as explicit) and the temporal (kt, 1) ones
// over [B, T, H*W, C]. TF's own kernel for this ran at ~1-2 G multiply-adds/s on A0's shapes.
//
// For tap (i, j), an output row's products with its input row are one contiguous stream over
// (ow, c) once the input row is split into its stride phases (columns r, r + sw, r + 2 sw, ...),
// so the inner loop runs over spans of L >= kMinSpan elements (L a multiple of C) accumulated
// into a per-tap tile of L floats: it vectorizes however few channels there are. Tiles gather one
// image in float, then fold into double per channel; images are split across the CPU workers.

#include "kernels.h"

namespace movinet {

inline int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t CeilDiv(int64_t a, int64_t b) { return -FloorDiv(-a, b); }

// acc[(start + p) % span] += a[p] * b[p] for p < count, in loops without the modulo.
inline void AccumulateProducts(float* __restrict acc, int64_t span, int64_t start, const float* __restrict a,
                               const float* __restrict b, int64_t count) {
  int64_t q = start;
  while (count > 0) {
    const int64_t run = std::min(count, span - q);
    float* __restrict out = acc + q;
    for (int64_t p = 0; p < run; ++p) out[p] += a[p] * b[p];
    a += run;
    b += run;
    count -= run;
    q = 0;
  }
}

class DepthwiseFilterGradOp : public OpKernel {
 public:
  explicit DepthwiseFilterGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel_h", &kernel_h_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel_w", &kernel_w_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stride_h", &stride_h_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stride_w", &stride_w_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pad_top", &pad_top_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pad_left", &pad_left_));
    OP_REQUIRES(ctx, kernel_h_ > 0 && kernel_w_ > 0 && stride_h_ > 0 && stride_w_ > 0,
                tensorflow::errors::InvalidArgument("kernel sizes and strides must be positive"));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() == 4 && dy.dims() == 4,
                tensorflow::errors::InvalidArgument("x and dy must be [N, H, W, C]"));
    const int64_t n = x.dim_size(0), height = x.dim_size(1), width = x.dim_size(2), channels = x.dim_size(3);
    const int64_t out_h = dy.dim_size(1), out_w = dy.dim_size(2);
    OP_REQUIRES(ctx, dy.dim_size(0) == n && dy.dim_size(3) == channels,
                tensorflow::errors::InvalidArgument("dy ", dy.shape().DebugString(), " does not match x ",
                                                    x.shape().DebugString()));
    Tensor* dk = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({kernel_h_, kernel_w_, channels, 1}), &dk));
    float* out = dk->flat<float>().data();
    const int64_t taps = kernel_h_ * kernel_w_;
    if (n == 0 || channels == 0 || out_h == 0 || out_w == 0) {
      std::fill(out, out + taps * channels, 0.0f);
      return;
    }
    const float* xs = x.flat<float>().data();
    const float* dys = dy.flat<float>().data();
    const int64_t span = channels * std::max<int64_t>(1, CeilDiv(kMinSpan, channels));
    const int64_t phase_w = CeilDiv(width, stride_w_);   // columns of phase 0, the widest

    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t shards = std::max<int64_t>(1, std::min<int64_t>(n, 4 * workers->NumThreads()));
    std::vector<double> totals(shards * taps * channels, 0.0);
    const int64_t per_shard = (n + shards - 1) / shards;
    const int64_t image_cost = taps * out_h * out_w * channels * 2;
    workers->ParallelFor(shards, per_shard * image_cost, [&](int64_t begin, int64_t end) {
      std::vector<float> tiles(taps * span);
      // Input rows split into their stride phases, kernel_h of them (those of one output row) at
      // a time: row h in slot h % kernel_h, phase r at columns [r * phase_w, (r + 1) * phase_w).
      std::vector<float> phases(stride_w_ > 1 ? kernel_h_ * stride_w_ * phase_w * channels : 0);
      std::vector<int64_t> held(kernel_h_);
      auto phase_row = [&](const float* x_image, int64_t h, int64_t r) -> const float* {
        float* slot = phases.data() + (h % kernel_h_) * stride_w_ * phase_w * channels;
        if (held[h % kernel_h_] != h) {   // phase q's column w' = x[h][w' * sw + q]
          held[h % kernel_h_] = h;
          const float* from = x_image + h * width * channels;
          for (int64_t q = 0; q < stride_w_; ++q) {
            float* to = slot + q * phase_w * channels;
            for (int64_t w = q; w < width; w += stride_w_, to += channels) {
              std::copy(from + w * channels, from + (w + 1) * channels, to);
            }
          }
        }
        return slot + r * phase_w * channels;
      };
      for (int64_t shard = begin; shard < end; ++shard) {
        double* total = totals.data() + shard * taps * channels;
        for (int64_t image = shard * per_shard; image < std::min(n, (shard + 1) * per_shard); ++image) {
          const float* x_image = xs + image * height * width * channels;
          const float* dy_image = dys + image * out_h * out_w * channels;
          std::fill(held.begin(), held.end(), -1);
          std::fill(tiles.begin(), tiles.end(), 0.0f);
          for (int64_t oh = 0; oh < out_h; ++oh) {
            const float* dy_row = dy_image + oh * out_w * channels;
            for (int64_t i = 0; i < kernel_h_; ++i) {
              const int64_t ih = oh * stride_h_ + i - pad_top_;
              if (ih < 0 || ih >= height) continue;
              for (int64_t j = 0; j < kernel_w_; ++j) {
                // Input column ow * sw + t for output column ow: phase r, column ow + offset there.
                const int64_t t = j - pad_left_;
                const int64_t offset = FloorDiv(t, stride_w_), r = t - offset * stride_w_;
                const int64_t first = std::max<int64_t>(0, CeilDiv(-t, stride_w_));
                const int64_t last = std::min(out_w - 1, FloorDiv(width - 1 - t, stride_w_));
                if (last < first) continue;
                const float* x_row = stride_w_ > 1 ? phase_row(x_image, ih, r) : x_image + ih * width * channels;
                AccumulateProducts(tiles.data() + (i * kernel_w_ + j) * span, span, (first * channels) % span,
                                   x_row + (first + offset) * channels, dy_row + first * channels,
                                   (last - first + 1) * channels);
              }
            }
          }
          for (int64_t tap = 0; tap < taps; ++tap) {
            const float* tile = tiles.data() + tap * span;
            double* sums = total + tap * channels;
            for (int64_t k = 0; k < span; k += channels) {
              for (int64_t c = 0; c < channels; ++c) sums[c] += tile[k + c];
            }
          }
        }
      }
    });
    for (int64_t e = 0; e < taps * channels; ++e) {
      double sum = 0.0;
      for (int64_t shard = 0; shard < shards; ++shard) sum += totals[shard * taps * channels + e];
      out[e] = static_cast<float>(sum);
    }
  }

 private:
  int64_t kernel_h_, kernel_w_, stride_h_, stride_w_, pad_top_, pad_left_;
};

REGISTER_OP("MovinetDepthwiseFilterGrad")
    .Input("x: float")
    .Input("dy: float")
    .Output("dk: float")
    .Attr("kernel_h: int")
    .Attr("kernel_w: int")
    .Attr("stride_h: int")
    .Attr("stride_w: int")
    .Attr("pad_top: int")
    .Attr("pad_left: int")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      int64_t kernel_h, kernel_w;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_h", &kernel_h));
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_w", &kernel_w));
      c->set_output(0, c->MakeShape({kernel_h, kernel_w, c->Dim(x, 3), 1}));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("MovinetDepthwiseFilterGrad").Device(DEVICE_CPU), DepthwiseFilterGradOp);

}  // namespace movinet
