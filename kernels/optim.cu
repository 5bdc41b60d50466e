// Fused aggregate + optimizer update over flat parameter buffers (twins of kernels/cpu.py).
//
// Every update kernel: G (rows of the k push buffers, row stride ldg), rows[nrows] the buffers
// to aggregate, bad[k] non-zero for a worker whose push held NaN/Inf (skipped; the mean is over
// the others), scale applied to the sum, then parameters w[n] and state, read once and written
// once. Grid-stride loops; the good rows are compacted into shared memory by thread 0. With
// pull != nullptr the new parameters are also written there (ASP's update and the pushing
// worker's pull in one pass: w is not read a second time).
#define MAXK 1024

template <typename T>
struct Good {
  long long row[MAXK];
  int count;
};

#define PROLOGUE                                                              \
  __shared__ Good<T> sg;                                                      \
  if (threadIdx.x == 0) {                                                     \
    int g = 0;                                                                \
    for (int t = 0; t < nrows; ++t) {                                         \
      long long r = rows[t];                                                  \
      if (bad[r] == 0) sg.row[g++] = r;                                       \
    }                                                                         \
    sg.count = g;                                                             \
  }                                                                           \
  __syncthreads();                                                            \
  const int good = sg.count;                                                  \
  const long long stride = (long long)gridDim.x * blockDim.x;                 \
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;   \
  if (good == 0) {                                                            \
    if (pull != nullptr)                                                      \
      for (long long i = first; i < n; i += stride) pull[i] = w[i];           \
    return;                                                                   \
  }                                                                           \
  const T sc = scale * (T)nrows / (T)good;                                    \
  for (long long i = first; i < n; i += stride) {                             \
    T g = 0;                                                                  \
    for (int t = 0; t < good; ++t) g += G[sg.row[t] * ldg + i];               \
    g *= sc;

#define EPILOGUE                   \
  if (pull != nullptr) pull[i] = w[i]; \
  }

#define ARGS(T) const T* __restrict__ G, long long ldg, const long long* __restrict__ rows, \
             int nrows, const long long* __restrict__ bad, T scale, T* __restrict__ pull

template <typename T>
__device__ void sgd(ARGS(T), T* __restrict__ w, long long n, T lr) {
  PROLOGUE
  w[i] -= lr * g;
  EPILOGUE
}

template <typename T>
__device__ void momentum(ARGS(T), T* __restrict__ w, T* __restrict__ v, long long n, T lr, T mu) {
  PROLOGUE
  T vi = mu * v[i] + g;
  v[i] = vi;
  w[i] -= lr * vi;
  EPILOGUE
}

template <typename T>
__device__ void nesterov(ARGS(T), T* __restrict__ w, T* __restrict__ v, long long n, T lr, T mu) {
  PROLOGUE
  T vi = mu * v[i] + g;
  v[i] = vi;
  w[i] -= lr * (g + mu * vi);
  EPILOGUE
}

template <typename T>
__device__ void adagrad(ARGS(T), T* __restrict__ w, T* __restrict__ h, long long n, T lr, T eps) {
  PROLOGUE
  T hi = h[i] + g * g;
  h[i] = hi;
  w[i] -= lr * g / (sqrt(hi) + eps);
  EPILOGUE
}

template <typename T>
__device__ void adam(ARGS(T), T* __restrict__ w, T* __restrict__ m, T* __restrict__ v, long long n,
                     T lr, T b1, T b2, T eps, T bc1, T bc2) {
  PROLOGUE
  T mi = b1 * m[i] + ((T)1 - b1) * g;
  T vi = b2 * v[i] + ((T)1 - b2) * g * g;
  m[i] = mi;
  v[i] = vi;
  w[i] -= lr * (mi * bc1) / (sqrt(vi * bc2) + eps);
  EPILOGUE
}

template <typename T>
__device__ void aggregate(ARGS(T), T* __restrict__ out, long long n) {  // (pull unused: nullptr)
  T* w = out;
  __shared__ int none;
  if (threadIdx.x == 0) {
    int g = 0;
    for (int t = 0; t < nrows; ++t) g += bad[rows[t]] == 0;
    none = g == 0;
  }
  __syncthreads();
  if (none) {  // nothing good to aggregate: a zero gradient
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = 0;
    return;
  }
  PROLOGUE
  out[i] = g;
  EPILOGUE
}

// If x holds NaN/Inf: bad[0][j] = stamp (compare-and-swap from 0: once per push), then
// bad[1][j] += 1 and bad[2][j] = stamp if unset. bad is (3, k) row-major.
template <typename T>
__device__ void flag_nonfinite(const T* __restrict__ x, long long n, unsigned long long* bad, int k, int j,
                               const long long* __restrict__ stamp) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (!isfinite(x[i])) {
      unsigned long long s = (unsigned long long)stamp[0];
      if (atomicCAS(&bad[j], 0ULL, s) == 0ULL) {
        bad[k + j] += 1ULL;
        atomicCAS(&bad[2 * k + j], 0ULL, s);
      }
      return;
    }
  }
}

// If x holds NaN/Inf and bad[2][j] is unset: bad[2][j] = stamp. Names the first bad batch of a
// multi-step interval (the push itself is flagged by flag_nonfinite at the interval's end).
template <typename T>
__device__ void stamp_nonfinite(const T* __restrict__ x, long long n, unsigned long long* bad, int k, int j,
                                const long long* __restrict__ stamp) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (!isfinite(x[i])) {
      atomicCAS(&bad[2 * k + j], 0ULL, (unsigned long long)stamp[0]);
      return;
    }
  }
}

// dst[i] = src[i] if worker j's push was flagged (bad[0][j] != 0): a skipped push's interval
// leaves the worker's local optimizer state as it was before the interval.
template <typename T>
__device__ void restore_if_flagged(T* __restrict__ dst, const T* __restrict__ src, long long n,
                                   const long long* __restrict__ bad, int j) {
  if (bad[j] == 0) return;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = src[i];
}

#define INSTANTIATE(T, S)                                                                           \
  extern "C" __global__ void sgd_##S(ARGS(T), T* w, long long n, T lr) { sgd<T>(G, ldg, rows, nrows, bad, scale, pull, w, n, lr); } \
  extern "C" __global__ void momentum_##S(ARGS(T), T* w, T* v, long long n, T lr, T mu) {             \
    momentum<T>(G, ldg, rows, nrows, bad, scale, pull, w, v, n, lr, mu); }                                \
  extern "C" __global__ void nesterov_##S(ARGS(T), T* w, T* v, long long n, T lr, T mu) {             \
    nesterov<T>(G, ldg, rows, nrows, bad, scale, pull, w, v, n, lr, mu); }                                \
  extern "C" __global__ void adagrad_##S(ARGS(T), T* w, T* h, long long n, T lr, T eps) {             \
    adagrad<T>(G, ldg, rows, nrows, bad, scale, pull, w, h, n, lr, eps); }                                \
  extern "C" __global__ void adam_##S(ARGS(T), T* w, T* m, T* v, long long n, T lr, T b1, T b2, T eps, \
                                      T bc1, T bc2) {                                              \
    adam<T>(G, ldg, rows, nrows, bad, scale, pull, w, m, v, n, lr, b1, b2, eps, bc1, bc2); }              \
  extern "C" __global__ void aggregate_##S(ARGS(T), T* out, long long n) {                            \
    aggregate<T>(G, ldg, rows, nrows, bad, scale, pull, out, n); }                                        \
  extern "C" __global__ void flag_nonfinite_##S(const T* x, long long n, unsigned long long* bad,   \
                                                int k, int j, const long long* stamp) {            \
    flag_nonfinite<T>(x, n, bad, k, j, stamp); }                                                   \
  extern "C" __global__ void stamp_nonfinite_##S(const T* x, long long n, unsigned long long* bad,  \
                                                 int k, int j, const long long* stamp) {           \
    stamp_nonfinite<T>(x, n, bad, k, j, stamp); }                                                  \
  extern "C" __global__ void restore_if_flagged_##S(T* dst, const T* src, long long n,              \
                                                    const long long* bad, int j) {                 \
    restore_if_flagged<T>(dst, src, n, bad, j); }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
