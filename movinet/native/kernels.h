// What the native kernels (bn_hard_swish.cc, depthwise_filter_grad.cc) share: TF's op and kernel
// headers, the names they use from them, and the span their flat inner loops run over.

#ifndef MOVINET_NATIVE_KERNELS_H_
#define MOVINET_NATIVE_KERNELS_H_

#include <algorithm>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace movinet {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Inner loops run over spans of at least this many elements against per-channel values tiled to
// the span, so they vectorize however few channels there are.
constexpr int64_t kMinSpan = 256;

}  // namespace movinet

#endif  // MOVINET_NATIVE_KERNELS_H_
