// Sparse embedding tables on a GPU (twins of kernels/cpu_tables.py).
//
// Rows are (rows, dim) row-major tables. segment_sum sums the occurrences of each row in the
// order they came (the ids sorted stably beforehand, `order`; `starts[s]` the first sorted
// position of segment s, starts[nseg] = m): one thread per (segment, column) walks its
// segment in order, so the sums are deterministic and there are no floating-point atomics
// (BSP over tables is reproducible run to run, as on the CPU). The row updates give each
// touched element one thread (rowwise_adagrad: one thread per row, since its accumulator is
// the mean over the row); ids in `u` are unique, so no two threads write the same element.

template <typename T>
__device__ void gather(const T* __restrict__ w, const long long* __restrict__ rows, long long m, int dim,
                       T* __restrict__ out) {
  const long long n = m * dim, stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const long long i = e / dim;
    const int d = (int)(e - i * dim);
    out[e] = w[rows[i] * dim + d];
  }
}

template <typename T>
__device__ void segment_sum(const T* __restrict__ values, const long long* __restrict__ order,
                            const long long* __restrict__ starts, long long nseg, int dim, T* __restrict__ out) {
  const long long n = nseg * dim, stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const long long s = e / dim;
    const int d = (int)(e - s * dim);
    T acc = values[order[starts[s]] * dim + d];
    for (long long t = starts[s] + 1; t < starts[s + 1]; ++t) acc += values[order[t] * dim + d];
    out[e] = acc;
  }
}

#define ELEMENTS                                                                   \
  const long long n = m * dim, stride = (long long)gridDim.x * blockDim.x;         \
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) { \
    const long long i = e / dim;                                                   \
    const long long x = u[i] * dim + (e - i * dim);                                \
    const T gi = scale != (T)1 ? g[e] * scale : g[e];

#define ROWARGS(T) const long long* __restrict__ u, const T* __restrict__ g, long long m, int dim, T scale

template <typename T>
__device__ void row_sgd(T* __restrict__ w, ROWARGS(T), T lr) {
  ELEMENTS
  w[x] -= lr * gi;
  }
}

template <typename T>
__device__ void row_adagrad(T* __restrict__ w, T* __restrict__ h, ROWARGS(T), T lr, T eps) {
  ELEMENTS
  const T hi = h[x] + gi * gi;
  h[x] = hi;
  w[x] -= lr * gi / (sqrt(hi) + eps);
  }
}

template <typename T>
__device__ void row_lazy_adam(T* __restrict__ w, T* __restrict__ mo, T* __restrict__ v, ROWARGS(T), T lr,
                              T b1, T b2, T eps, T bc1, T bc2) {
  ELEMENTS
  const T mi = b1 * mo[x] + ((T)1 - b1) * gi;
  const T vi = b2 * v[x] + ((T)1 - b2) * gi * gi;
  mo[x] = mi;
  v[x] = vi;
  w[x] -= lr * (mi * bc1) / (sqrt(vi * bc2) + eps);
  }
}

// One accumulator per row: h[r] += mean over the row of g^2, then the row steps by lr / (sqrt(h) + eps).
template <typename T>
__device__ void row_rowwise_adagrad(T* __restrict__ w, T* __restrict__ h, ROWARGS(T), T lr, T eps) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < m; i += stride) {
    const long long r = u[i];
    T s = 0;
    for (int d = 0; d < dim; ++d) {
      const T gi = scale != (T)1 ? g[i * dim + d] * scale : g[i * dim + d];
      s += gi * gi;
    }
    const T hr = h[r] + s / (T)dim;
    h[r] = hr;
    const T step = lr / (sqrt(hr) + eps);
    for (int d = 0; d < dim; ++d) {
      const T gi = scale != (T)1 ? g[i * dim + d] * scale : g[i * dim + d];
      w[r * dim + d] -= step * gi;
    }
  }
}

#define INSTANTIATE(T, S)                                                                            \
  extern "C" __global__ void gather_##S(const T* w, const long long* rows, long long m, int dim, T* out) { \
    gather<T>(w, rows, m, dim, out); }                                                               \
  extern "C" __global__ void segment_sum_##S(const T* values, const long long* order, const long long* starts, \
                                             long long nseg, int dim, T* out) {                     \
    segment_sum<T>(values, order, starts, nseg, dim, out); }                                         \
  extern "C" __global__ void sgd_##S(T* w, ROWARGS(T), T lr) { row_sgd<T>(w, u, g, m, dim, scale, lr); } \
  extern "C" __global__ void adagrad_##S(T* w, T* h, ROWARGS(T), T lr, T eps) {                      \
    row_adagrad<T>(w, h, u, g, m, dim, scale, lr, eps); }                                            \
  extern "C" __global__ void rowwise_adagrad_##S(T* w, T* h, ROWARGS(T), T lr, T eps) {              \
    row_rowwise_adagrad<T>(w, h, u, g, m, dim, scale, lr, eps); }                                    \
  extern "C" __global__ void lazy_adam_##S(T* w, T* mo, T* v, ROWARGS(T), T lr, T b1, T b2, T eps, T bc1, T bc2) { \
    row_lazy_adam<T>(w, mo, v, u, g, m, dim, scale, lr, b1, b2, eps, bc1, bc2); }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
