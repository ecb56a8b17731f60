// Fused matrix-vector products for decode: several weights that read the same activations x in one
// dispatch, with the element-wise step that follows them applied before the single write.
//
//   entry `swiglu`: out[t][i] = silu(W_a[i] · x[t]) · (W_b[i] · x[t])       (FFN gate, up and SwiGLU)
//   entry `qkv`:    y_a[t] = W_a · x[t], y_b[t] = W_b · x[t], y_c[t] = W_c · x[t]   (attention Q, K, V),
//                   with RoPE applied to y_a and y_b as they are written when rope_pairs > 0.
//
// Weights stay in their GGUF types. Each weight has its own copy of the dequantisation library
// (wgsl/dequant.wgsl) spliced in at DEQUANT_A/B/C with every name suffixed (`W_a`, `dq16_a`, …), so the
// three weights of `qkv` may have different types. `cols` (elements per row) is shared by all weights.
//
// The inner loop is that of wgsl/matvec.wgsl: a workgroup owns `rows_per_wg` consecutive rows for
// `tokens_per_wg` tokens; its threads walk the rows sixteen elements at a time with stride `wg_size`,
// keep the x values of their columns in registers across the rows (and across both weights of
// `swiglu`), accumulate in f32 and finish with a tree reduction in workgroup memory.
//
// binding 0: W_a, array<u32>: raw rows of weight a (gate, or Q); row r at byte r · row_bytes_a (read)
// binding 1: W_b, array<u32>: raw rows of weight b (up, or K); row r at byte r · row_bytes_b (read)
// binding 2: W_c, array<u32>: raw rows of weight c (V; `qkv` only); row r at byte r · row_bytes_c (read)
// binding 3: x, array<f32>: activations [m][cols], row-major (read)
// binding 4: y_a, array<f32>: [m][rows_a] row-major: the SwiGLU output, or Q (read_write)
// binding 5: y_b, array<f32>: K, [m][rows_b] row-major (`qkv` only, read_write)
// binding 6: y_c, array<f32>: V, [m][rows_c] row-major (`qkv` only, read_write)
// binding 7: step, uniform Step: n_tokens (= m), pos0 (position of token row 0, for RoPE)
// binding 8: turns, array<f32>: the RoPE turn table of src/gpu/ops/rope.ts, [rope_pairs][n_chunks]
//            (`qkv` only, read; a dummy when rope_pairs = 0)
// binding 10: k_pre, array<f32>: K before RoPE [m][rows_b] (`qkv` with keep_pre_k = 1, read_write; a dummy
//             otherwise)
//
// Dispatch: (x, y) folds the row groups over a 2-D grid (x ≤ the device limit): ceil(rows_a / rows_per_wg)
// for `swiglu`; for `qkv` the groups of a, then b, then c, so a workgroup's rows belong to one weight.
// z = ceil(max_m / tokens_per_wg). Workgroups past m or past their weight's rows do nothing.
// RoPE needs an even rows_per_wg (checked on the CPU), so the two rows of a rotated pair (2i, 2i + 1) are
// reduced by the same workgroup.

struct Step {
  n_tokens: u32,
  pos0: u32,
}

// Elements per row of every weight (and per token row of x).
override cols: u32 = 256u;
// Rows and bytes per row of each weight.
override rows_a: u32 = 1u;
override rows_b: u32 = 1u;
override rows_c: u32 = 1u;
override row_bytes_a: u32 = 1u;
override row_bytes_b: u32 = 1u;
override row_bytes_c: u32 = 1u;
// Threads per workgroup (a power of two), rows and tokens per workgroup.
override wg_size: u32 = 128u;
override rows_per_wg: u32 = 2u;
override tokens_per_wg: u32 = 1u;
// RoPE of `qkv` (GGUF adjacent-pair layout): values per head, rotated pairs per head (0 = no RoPE),
// parts per pair of the turn table.
override head_dim: u32 = 2u;
override rope_pairs: u32 = 0u;
override n_chunks: u32 = 1u;
// `qkv`: 1 to also write K before RoPE to k_pre (binding 10; the write gate reads both), else 0.
override keep_pre_k: u32 = 0u;

const MAX_ROWS = 8u;
const MAX_TOKENS = 8u;

@group(0) @binding(0) var<storage, read> W_a: array<u32>;
@group(0) @binding(1) var<storage, read> W_b: array<u32>;
@group(0) @binding(2) var<storage, read> W_c: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> y_b: array<f32>;
@group(0) @binding(6) var<storage, read_write> y_c: array<f32>;
@group(0) @binding(7) var<uniform> step: Step;
@group(0) @binding(8) var<storage, read> turns: array<f32>;
@group(0) @binding(10) var<storage, read_write> k_pre: array<f32>;

{{DEQUANT_A}}
{{DEQUANT_B}}
{{DEQUANT_C}}

// x[t][e..e+15] (e a multiple of 16, e + 16 ≤ cols).
fn load_x16(t: u32, e: u32) -> array<vec4f, 4> {
  let at = t * cols + e;
  var v: array<vec4f, 4>;
  // @unroll
  for (var c = 0u; c < 4u; c++) {
    let a = at + 4u * c;
    v[c] = vec4f(x[a], x[a + 1u], x[a + 2u], x[a + 3u]);
  }
  return v;
}

// x[t][e..e+3], zero past the row end.
fn load_x4(t: u32, e: u32) -> vec4f {
  let at = t * cols + e;
  if (e + 4u <= cols) { return vec4f(x[at], x[at + 1u], x[at + 2u], x[at + 3u]); }
  var v = vec4f(0.0);
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = x[at + i]; }
  }
  return v;
}

fn dot16(w: array<vec4f, 4>, v: array<vec4f, 4>) -> f32 {
  return dot(w[0], v[0]) + dot(w[1], v[1]) + dot(w[2], v[2]) + dot(w[3], v[3]);
}

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

// ---- swiglu ----

var<workgroup> partial_gu: array<f32, wg_size * rows_per_wg * tokens_per_wg * 2u>;

@compute @workgroup_size(wg_size)
fn swiglu(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let m = step.n_tokens;
  let row0 = (wid.x + wid.y * groups.x) * rows_per_wg;
  let t0 = wid.z * tokens_per_wg;
  if (row0 >= rows_a || t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);
  let nr = min(rows_per_wg, rows_a - row0);

  var acc_gate: array<f32, MAX_ROWS * MAX_TOKENS>;
  var acc_up: array<f32, MAX_ROWS * MAX_TOKENS>;
  let n16 = cols / 16u;
  for (var unit = tid; unit < n16; unit += wg_size) {
    let e = 16u * unit;
    var xv: array<array<vec4f, 4>, MAX_TOKENS>;
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      if (t < nt) { xv[t] = load_x16(t0 + t, e); }
    }
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      if (r < nr) {
        let wg = dq16_a((row0 + r) * row_bytes_a, e);
        let wu = dq16_b((row0 + r) * row_bytes_b, e);
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          acc_gate[r * MAX_TOKENS + t] += dot16(wg, xv[t]);
          acc_up[r * MAX_TOKENS + t] += dot16(wu, xv[t]);
        }
      }
    }
  }
  // Tail: the last cols % 16 columns, four at a time (only unquantised types have such rows).
  let units = (cols + 3u) / 4u;
  for (var unit = 4u * n16 + tid; unit < units; unit += wg_size) {
    let e = 4u * unit;
    var xv: array<vec4f, MAX_TOKENS>;
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      if (t < nt) { xv[t] = load_x4(t0 + t, e); }
    }
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      if (r < nr) {
        let wg = dq4_a((row0 + r) * row_bytes_a, e);
        let wu = dq4_b((row0 + r) * row_bytes_b, e);
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          acc_gate[r * MAX_TOKENS + t] += dot(wg, xv[t]);
          acc_up[r * MAX_TOKENS + t] += dot(wu, xv[t]);
        }
      }
    }
  }

  // Slot p = 2·(r·tokens_per_wg + t) holds the gate sum of (row r, token t), p + 1 the up sum.
  // @unroll
  for (var r = 0u; r < rows_per_wg; r++) {
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      let p = 2u * (r * tokens_per_wg + t);
      partial_gu[p * wg_size + tid] = acc_gate[r * MAX_TOKENS + t];
      partial_gu[(p + 1u) * wg_size + tid] = acc_up[r * MAX_TOKENS + t];
    }
  }
  workgroupBarrier();
  let slots = 2u * rows_per_wg * tokens_per_wg;
  for (var stride = wg_size / 2u; stride > 0u; stride /= 2u) {
    if (tid < stride) {
      for (var p = 0u; p < slots; p++) {
        partial_gu[p * wg_size + tid] += partial_gu[p * wg_size + tid + stride];
      }
    }
    workgroupBarrier();
  }
  if (tid < rows_per_wg * tokens_per_wg) {
    let r = tid / tokens_per_wg;
    let t = tid % tokens_per_wg;
    if (r < nr && t < nt) {
      let gate = partial_gu[2u * tid * wg_size];
      let up = partial_gu[(2u * tid + 1u) * wg_size];
      y_a[(t0 + t) * rows_a + row0 + r] = silu(gate) * up;
    }
  }
}

// ---- qkv ----

var<workgroup> partial: array<f32, wg_size * rows_per_wg * tokens_per_wg>;

fn dq16_of(weight: u32, row: u32, e: u32) -> array<vec4f, 4> {
  if (weight == 0u) { return dq16_a(row * row_bytes_a, e); }
  if (weight == 1u) { return dq16_b(row * row_bytes_b, e); }
  return dq16_c(row * row_bytes_c, e);
}

fn dq4_of(weight: u32, row: u32, e: u32) -> vec4f {
  if (weight == 0u) { return dq4_a(row * row_bytes_a, e); }
  if (weight == 1u) { return dq4_b(row * row_bytes_b, e); }
  return dq4_c(row * row_bytes_c, e);
}

// rope_rotation(pos, pair, chunks): (cos, sin) of the angle of `pair` at position `pos`.
// #include rope_angle

@compute @workgroup_size(wg_size)
fn qkv(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let m = step.n_tokens;
  let groups_a = (rows_a + rows_per_wg - 1u) / rows_per_wg;
  let groups_b = (rows_b + rows_per_wg - 1u) / rows_per_wg;
  let g = wid.x + wid.y * groups.x;
  // Which weight this workgroup's rows belong to, and the first of them.
  var weight = 0u;
  var row0 = g * rows_per_wg;
  var rows = rows_a;
  if (g >= groups_a + groups_b) {
    weight = 2u;
    row0 = (g - groups_a - groups_b) * rows_per_wg;
    rows = rows_c;
  } else if (g >= groups_a) {
    weight = 1u;
    row0 = (g - groups_a) * rows_per_wg;
    rows = rows_b;
  }
  let t0 = wid.z * tokens_per_wg;
  if (row0 >= rows || t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);
  let nr = min(rows_per_wg, rows - row0);

  var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
  let n16 = cols / 16u;
  for (var unit = tid; unit < n16; unit += wg_size) {
    let e = 16u * unit;
    var xv: array<array<vec4f, 4>, MAX_TOKENS>;
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      if (t < nt) { xv[t] = load_x16(t0 + t, e); }
    }
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      if (r < nr) {
        let w = dq16_of(weight, row0 + r, e);
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          acc[r * MAX_TOKENS + t] += dot16(w, xv[t]);
        }
      }
    }
  }
  let units = (cols + 3u) / 4u;
  for (var unit = 4u * n16 + tid; unit < units; unit += wg_size) {
    let e = 4u * unit;
    var xv: array<vec4f, MAX_TOKENS>;
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      if (t < nt) { xv[t] = load_x4(t0 + t, e); }
    }
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      if (r < nr) {
        let w = dq4_of(weight, row0 + r, e);
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          acc[r * MAX_TOKENS + t] += dot(w, xv[t]);
        }
      }
    }
  }

  // @unroll
  for (var r = 0u; r < rows_per_wg; r++) {
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      partial[(r * tokens_per_wg + t) * wg_size + tid] = acc[r * MAX_TOKENS + t];
    }
  }
  workgroupBarrier();
  for (var stride = wg_size / 2u; stride > 0u; stride /= 2u) {
    if (tid < stride) {
      for (var p = 0u; p < rows_per_wg * tokens_per_wg; p++) {
        partial[p * wg_size + tid] += partial[p * wg_size + tid + stride];
      }
    }
    workgroupBarrier();
  }
  if (tid < rows_per_wg * tokens_per_wg) {
    let r = tid / tokens_per_wg;
    let t = tid % tokens_per_wg;
    if (r < nr && t < nt) {
      let row = row0 + r;
      var value = partial[tid * wg_size];
      let column = row % head_dim;
      if (keep_pre_k == 1u && weight == 1u) { k_pre[(t0 + t) * rows_b + row] = value; }
      if (weight < 2u && column < 2u * rope_pairs) {
        // Rows 2i and 2i + 1 of a head are a rotated pair; row0 and rows_per_wg are even, so the
        // partner's sum sits in this workgroup's slot r ^ 1.
        let other = partial[((r ^ 1u) * tokens_per_wg + t) * wg_size];
        let cs = rope_rotation(step.pos0 + t0 + t, column / 2u, n_chunks);
        if ((row & 1u) == 0u) {
          value = value * cs.x - other * cs.y;
        } else {
          value = other * cs.y + value * cs.x;
        }
      }
      let token = t0 + t;
      if (weight == 0u) {
        y_a[token * rows_a + row] = value;
      } else if (weight == 1u) {
        y_b[token * rows_b + row] = value;
      } else {
        y_c[token * rows_c + row] = value;
      }
    }
  }
}
