// Layer kernels for the built-in models (twins of kernels/cpu_nn.py), plus the small kernels a
// captured worker step needs (batch gather by a device-side counter, counter increment).
// Activation codes: 0 relu, 1 tanh, 2 sigmoid, 3 identity. Channels-last (NHWC) images.
// Every reduction is deterministic (no atomics): graph replay equals eager execution bitwise.

#define GRID_STRIDE(i, total)                                                      \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
       i += (long long)gridDim.x * blockDim.x)

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return -__longlong_as_double(0x7ff0000000000000LL); }

template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

// A label outside [0, c) never indexes memory: that row's gradient and loss become NaN, so the
// push is flagged non-finite (skipped and named) instead of corrupting a neighbour's row.
#define BAD_LABEL_ROW(yi, c, di, lrow_i)                       \
  if ((yi) < 0 || (yi) >= (c)) {                               \
    for (int j = 0; j < (c); ++j) (di)[j] = quiet_nan<T>();    \
    lrow_i = quiet_nan<T>();                                   \
    continue;                                                  \
  }

template <typename T>
__device__ __forceinline__ T activate(T v, int act) {
  if (act == 0) return v > (T)0 ? v : (T)0;
  if (act == 1) return tanh(v);
  if (act == 2) return (T)1 / ((T)1 + exp(-v));
  return v;
}

template <typename T>
__device__ __forceinline__ T act_grad(T h, int act) {  // from the activation's output h
  if (act == 0) return h > (T)0 ? (T)1 : (T)0;
  if (act == 1) return (T)1 - h * h;
  if (act == 2) return h * ((T)1 - h);
  return (T)1;
}

template <typename T>
__device__ void bias_act(T* z, const T* b, long long rows, int m, int act) {
  GRID_STRIDE(i, rows * m) { z[i] = activate(z[i] + b[i % m], act); }
}

// Column sums of a (rows, m) matrix, pass 1: block (32 columns x 8 lanes), grid (col tiles,
// chunks); partial[chunk * m + col] = scale * sum. With act < 4 the activation's derivative is
// applied first (d *= act'(h), written back): activation backward and bias gradient in one pass.
// With one chunk, partial is the result and pass 2 is skipped.
template <typename T>
__device__ void colsum_partial(T* d, const T* h, T* partial, long long rows, int m, long long chunk,
                               int act, T scale) {
  __shared__ T sh[8][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  const long long r0 = (long long)blockIdx.y * chunk;
  const long long r1 = min(rows, r0 + chunk);
  T s = 0;
  if (col < m) {
    if (act < 4) {
      for (long long r = r0 + threadIdx.y; r < r1; r += 8) {
        const long long q = r * m + col;
        const T v = d[q] * act_grad(h[q], act);
        d[q] = v;
        s += v;
      }
    } else {
      for (long long r = r0 + threadIdx.y; r < r1; r += 8) s += d[r * m + col];
    }
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < m) {
    T t = 0;
    for (int k = 0; k < 8; ++k) t += sh[k][threadIdx.x];
    partial[(long long)blockIdx.y * m + col] = t * scale;
  }
}

// pass 2: out[col] = scale * sum over chunks of partial[chunk * m + col]
template <typename T>
__device__ void colsum_final(const T* partial, T* out, int chunks, int m, T scale) {
  GRID_STRIDE(col, m) {
    T t = 0;
    for (int c = 0; c < chunks; ++c) t += partial[(long long)c * m + col];
    out[col] = t * scale;
  }
}

// One thread per row: dz = (softmax(z + b) - onehot(y)) / n; lrow[i] = loss_i / n.
template <typename T>
__device__ void softmax_xent(const T* z, const T* b, const long long* y, T* dz, T* lrow, long long n, int c) {
  GRID_STRIDE(i, n) {
    const T* zi = z + i * c;
    T* di = dz + i * c;
    T mx = neg_inf<T>();
    for (int j = 0; j < c; ++j) { T v = zi[j] + b[j]; di[j] = v; mx = v > mx ? v : mx; }
    T s = 0;
    for (int j = 0; j < c; ++j) { T e = exp(di[j] - mx); di[j] = e; s += e; }
    const long long yi = y[i];
    BAD_LABEL_ROW(yi, c, di, lrow[i])
    lrow[i] = (log(s) + mx - (zi[yi] + b[yi])) / (T)n;
    const T inv = (T)1 / (s * (T)n);
    for (int j = 0; j < c; ++j) di[j] *= inv;
    di[yi] -= (T)1 / (T)n;
  }
}

// For a batch of at most 1024 rows, all of softmax_xent in one block: dz, then db = column sums of
// dz and loss[0] = mean loss, one warp per column (fixed order: deterministic).
template <typename T>
__device__ void softmax_xent_block(const T* z, const T* b, const long long* y, T* dz, T* db, T* loss,
                                   int n, int c) {
  __shared__ T lrow[1024];
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const T* zi = z + (long long)i * c;
    T* di = dz + (long long)i * c;
    T mx = neg_inf<T>();
    for (int j = 0; j < c; ++j) { T v = zi[j] + b[j]; di[j] = v; mx = v > mx ? v : mx; }
    T s = 0;
    for (int j = 0; j < c; ++j) { T e = exp(di[j] - mx); di[j] = e; s += e; }
    const long long yi = y[i];
    BAD_LABEL_ROW(yi, c, di, lrow[i])
    lrow[i] = (log(s) + mx - (zi[yi] + b[yi])) / (T)n;
    const T inv = (T)1 / (s * (T)n);
    for (int j = 0; j < c; ++j) di[j] *= inv;
    di[yi] -= (T)1 / (T)n;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  for (int j = warp; j <= c; j += nwarps) {  // column j of dz; j == c: the loss
    T s = 0;
    if (j < c)
      for (int i = lane; i < n; i += 32) s += dz[(long long)i * c + j];
    else
      for (int i = lane; i < n; i += 32) s += lrow[i];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) {
      if (j < c) db[j] = s;
      else loss[0] = s;
    }
  }
}

// lrow[i] = loss_i, hit[i] = 1 if argmax(z_i + b) == y_i
template <typename T>
__device__ void softmax_eval(const T* z, const T* b, const long long* y, T* lrow, T* hit, long long n, int c) {
  GRID_STRIDE(i, n) {
    const T* zi = z + i * c;
    T mx = neg_inf<T>();
    int arg = 0;
    for (int j = 0; j < c; ++j) { T v = zi[j] + b[j]; if (v > mx) { mx = v; arg = j; } }
    T s = 0;
    for (int j = 0; j < c; ++j) s += exp(zi[j] + b[j] - mx);
    const long long yi = y[i];
    if (yi < 0 || yi >= c) { lrow[i] = quiet_nan<T>(); hit[i] = (T)0; continue; }
    lrow[i] = log(s) + mx - (zi[yi] + b[yi]);
    hit[i] = arg == yi ? (T)1 : (T)0;
  }
}

// x (n, H, W, C) -> cols (n*Ho*Wo, kh*kw*C), stride 1, zero padding
template <typename T>
__device__ void im2col(const T* x, T* cols, int n, int H, int W, int C, int kh, int kw, int pad) {
  const int Ho = H + 2 * pad - kh + 1, Wo = W + 2 * pad - kw + 1, K = kh * kw * C;
  GRID_STRIDE(idx, (long long)n * Ho * Wo * K) {
    const int k = idx % K;
    const long long r = idx / K;
    const int c = k % C, kx = (k / C) % kw, ky = k / (C * kw);
    const int ox = r % Wo, oy = (r / Wo) % Ho;
    const long long i = r / ((long long)Wo * Ho);
    const int yy = oy + ky - pad, xx = ox + kx - pad;
    cols[idx] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x[((i * H + yy) * W + xx) * C + c] : (T)0;
  }
}

// adjoint of im2col, gathered per input pixel (no atomics)
template <typename T>
__device__ void col2im(const T* cols, T* dx, int n, int H, int W, int C, int kh, int kw, int pad) {
  const int Ho = H + 2 * pad - kh + 1, Wo = W + 2 * pad - kw + 1, K = kh * kw * C;
  GRID_STRIDE(idx, (long long)n * H * W * C) {
    const int c = idx % C, xx = (idx / C) % W, yy = (idx / ((long long)C * W)) % H;
    const long long i = idx / ((long long)C * W * H);
    T s = 0;
    for (int ky = 0; ky < kh; ++ky) {
      const int oy = yy - ky + pad;
      if (oy < 0 || oy >= Ho) continue;
      for (int kx = 0; kx < kw; ++kx) {
        const int ox = xx - kx + pad;
        if (ox < 0 || ox >= Wo) continue;
        s += cols[((i * Ho + oy) * Wo + ox) * K + (ky * kw + kx) * C + c];
      }
    }
    dx[idx] = s;
  }
}

// 2x2 max-pool, stride 2; arg = flat index (within the sample) of the max, first max on ties
template <typename T>
__device__ void maxpool2(const T* x, T* y, long long* arg, int n, int H, int W, int C) {
  const int Ho = H / 2, Wo = W / 2;
  GRID_STRIDE(idx, (long long)n * Ho * Wo * C) {
    const int c = idx % C, ox = (idx / C) % Wo, oy = (idx / ((long long)C * Wo)) % Ho;
    const long long i = idx / ((long long)C * Wo * Ho);
    T best = neg_inf<T>();
    long long where = 0;
    for (int dy = 0; dy < 2; ++dy)
      for (int dx = 0; dx < 2; ++dx) {
        const long long f = ((long long)(2 * oy + dy) * W + (2 * ox + dx)) * C + c;
        const T v = x[i * H * W * C + f];
        if (v > best) { best = v; where = f; }
      }
    y[idx] = best;
    arg[idx] = where;
  }
}

template <typename T>
__device__ void maxpool2_back(const T* dy, const long long* arg, T* dx, int n, int H, int W, int C) {
  const int Ho = H / 2, Wo = W / 2;
  GRID_STRIDE(idx, (long long)n * H * W * C) {
    const long long f = idx % ((long long)H * W * C);
    const long long i = idx / ((long long)H * W * C);
    const int c = f % C, xx = (f / C) % W, yy = f / ((long long)C * W);
    const int oy = yy / 2, ox = xx / 2;
    T v = 0;
    if (oy < Ho && ox < Wo) {
      const long long o = ((i * Ho + oy) * Wo + ox) * C + c;
      if (arg[o] == f) v = dy[o];
    }
    dx[idx] = v;
  }
}

#define INSTANTIATE(T, S)                                                                          \
  extern "C" __global__ void bias_act_##S(T* z, const T* b, long long rows, int m, int act) {      \
    bias_act<T>(z, b, rows, m, act); }                                                             \
  extern "C" __global__ void colsum_partial_##S(T* d, const T* h, T* partial, long long rows, int m, \
                                                long long chunk, int act, T scale) {               \
    colsum_partial<T>(d, h, partial, rows, m, chunk, act, scale); }                                \
  extern "C" __global__ void colsum_final_##S(const T* partial, T* out, int chunks, int m, T scale) { \
    colsum_final<T>(partial, out, chunks, m, scale); }                                             \
  extern "C" __global__ void softmax_xent_##S(const T* z, const T* b, const long long* y, T* dz,   \
                                              T* lrow, long long n, int c) {                       \
    softmax_xent<T>(z, b, y, dz, lrow, n, c); }                                                    \
  extern "C" __global__ void softmax_xent_block_##S(const T* z, const T* b, const long long* y, T* dz, \
                                                    T* db, T* loss, int n, int c) {                \
    softmax_xent_block<T>(z, b, y, dz, db, loss, n, c); }                                          \
  extern "C" __global__ void softmax_eval_##S(const T* z, const T* b, const long long* y, T* lrow, \
                                              T* hit, long long n, int c) {                        \
    softmax_eval<T>(z, b, y, lrow, hit, n, c); }                                                   \
  extern "C" __global__ void im2col_##S(const T* x, T* cols, int n, int H, int W, int C, int kh,   \
                                        int kw, int pad) {                                         \
    im2col<T>(x, cols, n, H, W, C, kh, kw, pad); }                                                 \
  extern "C" __global__ void col2im_##S(const T* cols, T* dx, int n, int H, int W, int C, int kh,  \
                                        int kw, int pad) {                                         \
    col2im<T>(cols, dx, n, H, W, C, kh, kw, pad); }                                                \
  extern "C" __global__ void maxpool2_##S(const T* x, T* y, long long* arg, int n, int H, int W,   \
                                          int C) {                                                 \
    maxpool2<T>(x, y, arg, n, H, W, C); }                                                          \
  extern "C" __global__ void maxpool2_back_##S(const T* dy, const long long* arg, T* dx, int n,    \
                                               int H, int W, int C) {                              \
    maxpool2_back<T>(dy, arg, dx, n, H, W, C); }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)

// Features and labels of the batch at the device-side counter, in one launch.
// (The first thread also clears the worker's non-finite flag for the interval, when given one.)
// xb, yb = batch counter[0] of x and y, copied in words of type W (4 bytes where both batches are
// a multiple of 4 bytes; single bytes otherwise, e.g. 2-byte labels in an odd batch size).
template <typename W>
__device__ void gather_batch(const W* x, W* xb, long long xwords, const W* y, W* yb, long long ywords,
                             const long long* counter, long long* flag) {
  const long long c = counter[0];
  if (flag != 0 && blockIdx.x == 0 && threadIdx.x == 0) *flag = 0;
  GRID_STRIDE(t, xwords + ywords) {
    if (t < xwords) xb[t] = x[c * xwords + t];
    else yb[t - xwords] = y[c * ywords + (t - xwords)];
  }
}

extern "C" __global__ void gather_batch_u32(const unsigned int* x, unsigned int* xb, long long xwords,
                                            const unsigned int* y, unsigned int* yb, long long ywords,
                                            const long long* counter, long long* flag) {
  gather_batch<unsigned int>(x, xb, xwords, y, yb, ywords, counter, flag);
}

extern "C" __global__ void gather_batch_u8(const unsigned char* x, unsigned char* xb, long long xwords,
                                           const unsigned char* y, unsigned char* yb, long long ywords,
                                           const long long* counter, long long* flag) {
  gather_batch<unsigned char>(x, xb, xwords, y, yb, ywords, counter, flag);
}

extern "C" __global__ void counter_inc(long long* counter) {
  if (blockIdx.x == 0 && threadIdx.x == 0) counter[0] += 1;
}
