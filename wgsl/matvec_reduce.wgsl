// The workgroup reduction of the decode matrix-vector kernels (wgsl/matvec_fast.wgsl,
// wgsl/matvec_chain.wgsl) and the consumer side of a folded RMSNorm. A library, included: the including
// kernel declares
//   `partial: array<f32, …>`     workgroup memory of the per-thread sums,
//   `norm_sums: array<f32>`      a folded norm's producer's partial sums Σ y² [m][norm_partials],
//   `wg_size`, `reduce_lanes`, `tokens_per_wg`, `norm_partials`, `norm_width`, `norm_eps` (override or
//   const) and the const MAX_TOKENS.

// Consumer of a folded RMSNorm: this thread's share of the producer's partial sums Σ y² for each token of
// the workgroup (every thread takes partials tid, tid + wg_size, …; the workgroup reduction adds them up).
// Four independent sums, four loads per iteration: a producer may leave thousands of partials, and one
// chain of dependent adds would make every consumer workgroup wait for them one load after another.
fn norm_share(t0: u32, nt: u32, tid: u32) -> array<f32, MAX_TOKENS> {
  var share: array<f32, MAX_TOKENS>;
  // @unroll
  for (var t = 0u; t < tokens_per_wg; t++) {
    if (t < nt) {
      let base = (t0 + t) * norm_partials;
      var s = vec4f(0.0);
      var i = tid;
      for (; i + 3u * wg_size < norm_partials; i += 4u * wg_size) {
        s += vec4f(
          norm_sums[base + i],
          norm_sums[base + i + wg_size],
          norm_sums[base + i + 2u * wg_size],
          norm_sums[base + i + 3u * wg_size],
        );
      }
      for (; i < norm_partials; i += wg_size) { s.x += norm_sums[base + i]; }
      share[t] = (s.x + s.y) + (s.z + s.w);
    }
  }
  return share;
}

// Consumer of a folded RMSNorm: 1 / RMS from the total Σ y² of a token.
fn norm_scale(total: f32) -> f32 {
  return inverseSqrt(total / f32(norm_width) + norm_eps);
}

// Sums the n values per thread of `partial` over the workgroup: afterwards partial[p] holds total p.
// Step 1: lane l of sum p adds the values of threads l, l + reduce_lanes, …; step 2: thread p (and p +
// wg_size, … when n > wg_size) adds the lanes.
fn reduce(tid: u32, n: u32) {
  workgroupBarrier();
  let lanes = n * reduce_lanes;
  // Lane i = l · n + p reads partial[i + k · lanes] (threads l + k · reduce_lanes) and writes partial[i],
  // which no other lane reads.
  for (var i = tid; i < lanes; i += wg_size) {
    var s = 0.0;
    for (var k = i; k < wg_size * n; k += lanes) { s += partial[k]; }
    partial[i] = s;
  }
  workgroupBarrier();
  // Totals p < n go to partial[p]; lane 0's slot of sum p is partial[p] itself, read first by its thread
  // only, and the lanes l ≥ 1 sit at l · n + p ≥ n, so no total overwrites a value another thread reads.
  for (var p = tid; p < n; p += wg_size) {
    var total = 0.0;
    for (var l = 0u; l < reduce_lanes; l++) { total += partial[l * n + p]; }
    partial[p] = total;
  }
  workgroupBarrier();
}

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}
