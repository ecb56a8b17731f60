// Decode matrix-vector products with sub-block units: threads own whole 32-element pieces of the weight's
// blocks (wgsl/matvec_units.wgsl, spliced in per weight at UNITS_A/B/C with names suffixed _a/_b/_c and the
// weight bindings typed `array<WORD_A>` …), so block scales are decoded once per 32 weights and the raw words
// are read with as few, as wide loads as each type's layout allows. Every weight type the GPU reads has
// units (unquantised rows of any multiple of 4 values), so these kernels serve all decode products.
//
//   entry `main`:   y[t][first_row + r] = W_a[r] · x[t] for the rows of one weight part
//   entry `swiglu`: y_a[t][i] = silu(W_a[i] · x[t]) · (W_b[i] · x[t])      (FFN gate, up and SwiGLU)
//   entry `qkv`:    y_a/b/c[t] = W_a/b/c · x[t], RoPE on y_a and y_b as they are written when rope_pairs > 0;
//                   with kv_append = 1 the K and V rows also go, as f16, into the paged KV cache
//
// A workgroup owns `rows_per_wg` consecutive rows (of one weight) for `tokens_per_wg` tokens. Each thread
// walks the units u = tid, tid + wg_size, … of those rows: it loads the unit of every row first, then, per
// token, the unit's x values once (vec4 loads, shared by all rows) and accumulates in f32. The per-thread
// sums are reduced in workgroup memory in two steps (`reduce_lanes` lanes per sum, then one thread per sum),
// three barriers whatever the workgroup size.
//
// binding 0: W_a, array<WORD_A>: raw rows of weight a (the part, gate, or Q); row r at byte r · row_bytes_a
//            (WORD_A: vec4u, vec2u or u32, the word type of a's unit section; likewise WORD_B and WORD_C)
// binding 1: W_b, array<WORD_B>: raw rows of weight b (up, or K) (`swiglu`, `qkv`)
// binding 2: W_c, array<WORD_C>: raw rows of weight c (V) (`qkv`)
// binding 3: x, array<vec4f>: activations [m][cols], row-major (read)
// binding 4: y_a, array<f32>: `main`: outputs [m][out_stride], this part writes columns first_row ..
//            first_row + rows; `swiglu`: [m][rows_a]; `qkv`: Q [m][rows_a] (read_write)
// binding 5: y_b, array<f32>: K [m][rows_b] (`qkv`, read_write)
// binding 6: y_c, array<f32>: V [m][rows_c] (`qkv`, read_write)
// binding 7: step, uniform Step: n_tokens (= m), pos0 (position of token row 0, for RoPE)
// binding 8: turns, array<f32>: the RoPE turn table of src/gpu/ops/rope.ts, [rope_pairs][n_chunks] (`qkv`)
// binding 9: part, uniform Part: rows in this part, first_row (`main`)
// binding 10: k_pre, array<f32>: K before RoPE [m][rows_b] (`qkv` with keep_pre_k = 1, read_write; a dummy
//             otherwise)
// binding 11: norm_weight, array<f32>: the next RMSNorm's weight [out_stride] (`main` with norm_mode 1)
// binding 12: norm_x, array<f32>: y · norm_weight [m][out_stride] (`main` with norm_mode 1, read_write)
// binding 13: norm_sums, array<f32>: Σ y² of each workgroup's rows [m][norm_partials] (`main` with
//             norm_mode 1 writes, `swiglu` and `qkv` with norm_mode 2 read)
// (bindings 11 to 13 are dummies when unused)
// bindings 14…: the paged KV cache (`qkv` with kv_append = 1): the text define KV_STORE, spliced in below
//            the units, is then wgsl/qkv_kv_store.wgsl (see src/gpu/ops/qkv_kv_store.ts), which declares
//            them and defines kv_locate and kv_store; otherwise it is a stub of the two without bindings.
//
// Int8 input (x_int8 = 1, for weight types with INT8 unit sections): x quantised per 16 values, by every
// workgroup into its workgroup memory for its tokens (stage_int8 of wgsl/matvec_x_int8_staged.wgsl, after
// its first step's weight loads are issued), or once per step by a pass before the product into two
// buffers (wgsl/matvec_x_int8_shared.wgsl); the units then take their products four at a time with
// dot4I8Packed (wgsl/matvec_units.wgsl). On an H100 a workgroup's own quantisation paid for rows of 2048
// values and cost more than the integer products save for rows of 4096 and more, where the shared pass
// pays (INT8_STAGED_MAX_COLS in src/model/gpu_model_options.ts).
//
// RMSNorm folded into the neighbouring products (norm_mode): a producer (`main`, 1) adds its products to
// the residual stream y in place and writes both y · γ and each workgroup's Σ y² of its rows; the next
// consumer (`swiglu` or `qkv`, 2) takes x = y · γ and scales its sums by 1 / sqrt(Σ y² / norm_width + eps),
// the RMS added up from those partial sums. That is rmsnorm(y) · γ without a dispatch of its own.
//
// Dispatch: (x, y) folds the workgroups over a 2-D grid: up to ceil(rows / rows_per_wg) row groups for `main`
// (per part) and `swiglu`; for `qkv` the groups of a, then b, then c. z = ceil(max_m / tokens_per_wg).
// Workgroup w takes row groups w, w + W, w + 2W, … for the W workgroups of the x·y grid: one group each
// when the grid holds them all (the default), several when the op launches fewer (MatvecTuning
// .maxWorkgroups), which then quantise x once for all their groups and leave no partial last wave.
// Workgroups past m or past the row groups do nothing. RoPE and the KV store need an even rows_per_wg
// (checked on the CPU).

struct Step {
  n_tokens: u32,
  pos0: u32,
}

struct Part {
  rows: u32,
  first_row: u32,
}

// Elements per row of every weight: a multiple of the blocks of quantised types, of 4 for F32, F16 and BF16
// (rows of a multiple of 256 use their interleaved units, others the plain ones, whose last unit may be
// ragged).
override cols: u32 = 256u;
// `main`: rows of the whole weight (the row stride of y).
override out_stride: u32 = 1u;
// Rows and bytes per row of each weight (`swiglu`, `qkv`; `main` reads row_bytes_a).
override rows_a: u32 = 1u;
override rows_b: u32 = 1u;
override rows_c: u32 = 1u;
override row_bytes_a: u32 = 144u;
override row_bytes_b: u32 = 144u;
override row_bytes_c: u32 = 144u;
// Threads per workgroup (a power of two ≥ 32), rows and tokens per workgroup.
override wg_size: u32 = 64u;
override rows_per_wg: u32 = 4u;
override tokens_per_wg: u32 = 1u;
// Units each thread loads before computing on them (1, 2 or 4): more loads in flight per thread.
override units_per_step: u32 = 1u;
// Lanes of the first reduction step (a power of two dividing wg_size).
override reduce_lanes: u32 = 8u;
// 1: each value is first summed over its subgroup of subgroup_size invocations (add_partial, from the text
// define PARTIALS: wgsl/matvec_partials.wgsl, or its emulation for GPUs without subgroups), so reduce()
// only adds the subgroups' sums; 0: the values go to workgroup memory as they are.
override subgroup_reduce: u32 = 0u;
override subgroup_size: u32 = 32u;
// Sums per (row, token): 2 for `swiglu` (gate and up), else 1.
override slots: u32 = 1u;
// RoPE of `qkv` (GGUF adjacent-pair layout): values per head, rotated pairs per head (0 = no RoPE),
// parts per pair of the turn table.
override head_dim: u32 = 2u;
override rope_pairs: u32 = 0u;
override n_chunks: u32 = 1u;
// `qkv`: 1 to also write K before RoPE to k_pre (binding 10; the write gate reads both), else 0.
override keep_pre_k: u32 = 0u;
// `qkv`: 1 to also store K and V into the paged KV cache (the spliced KV_STORE block), else 0. head_dim is
// then the cache's, also without RoPE.
override kv_append: u32 = 0u;
// Folded RMSNorm: 0 none, 1 producer (`main`), 2 consumer (`swiglu`, `qkv`); partial sums per token (the
// producer's workgroups), values per normed row and epsilon.
override norm_mode: u32 = 0u;
override norm_partials: u32 = 1u;
override norm_width: u32 = 1u;
override norm_eps: f32 = 1e-5;
// 1 (`main` and `swiglu`): each step's weight loads are issued before the products of the step before,
// across the row groups a workgroup takes in turn (accumulate_ahead of wgsl/matvec_units.wgsl), so its
// next group's first loads are in flight while it reduces the current one; 0: a group's loads start after
// the group before is written.
override prefetch_groups: u32 = 0u;
// 1: quantise x to int8 per 16 values in workgroup memory first and take the products with integer dot
// products (the weights' INT8 unit sections, see wgsl/matvec_units.wgsl; cols a multiple of 16), else 0.
override x_int8: u32 = 0u;

const MAX_ROWS = 8u;
const MAX_TOKENS = 8u;
const MAX_UNITS_PER_STEP = 4u;

@group(0) @binding(0) var<storage, read> W_a: array<{{WORD_A}}>;
@group(0) @binding(1) var<storage, read> W_b: array<{{WORD_B}}>;
@group(0) @binding(2) var<storage, read> W_c: array<{{WORD_C}}>;
@group(0) @binding(3) var<storage, read> x: array<vec4f>;
@group(0) @binding(4) var<storage, read_write> y_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> y_b: array<f32>;
@group(0) @binding(6) var<storage, read_write> y_c: array<f32>;
@group(0) @binding(7) var<uniform> step: Step;
@group(0) @binding(8) var<storage, read> turns: array<f32>;
@group(0) @binding(10) var<storage, read_write> k_pre: array<f32>;
@group(0) @binding(9) var<uniform> part: Part;
@group(0) @binding(11) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(12) var<storage, read_write> norm_x: array<f32>;
@group(0) @binding(13) var<storage, read_write> norm_sums: array<f32>;

// Int8 input (x_int8 = 1): x_blocks and x_scales, x's rows as int8 blocks of 16 values and their
// (d, d · Σq), stage_int8 and x_block_row, from the text define X_INT8: the workgroup's own copy of its
// tokens' rows in workgroup memory (wgsl/matvec_x_int8_staged.wgsl), or the step's rows quantised once by a
// pass before the product (wgsl/matvec_x_int8_shared.wgsl, bindings 28 and 29).
// #include int8_block
{{X_INT8}}

// The next product's input as this one writes it (`main`: y · γ with a folded norm, else y; `swiglu`: its
// output), at flat index i of its [m][row length] rows.
fn next_input(i: u32) -> f32 {
  if (norm_mode == 1u) { return norm_x[i]; }
  return y_a[i];
}

// int8_out (`main` and `swiglu`): the next product's shared int8 input written as the outputs are (text
// define INT8_OUT: wgsl/matvec_int8_out.wgsl, bindings 20 to 22), or a stub (wgsl/matvec_int8_out_none.wgsl).
{{INT8_OUT}}

{{UNITS_A}}
{{UNITS_B}}
{{UNITS_C}}

{{KV_STORE}}

// Thread tid's sum number p (of n per thread) sits at partial[tid · n + p] before `reduce`; a consumer of a
// folded RMSNorm adds one sum per token.
var<workgroup> partial: array<f32, wg_size * (rows_per_wg * slots + 1u) * tokens_per_wg>;

{{PARTIALS}}

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

// Sums the n values per thread that add_partial took over the workgroup: afterwards partial[p] holds
// total p. Without subgroup_reduce: step 1: lane l of sum p adds the values of threads l, l + reduce_lanes,
// …; step 2: thread p (and p + wg_size, … when n > wg_size) adds the lanes. With subgroup_reduce, the
// subgroups have summed their values already (add_partial): thread p adds the wg_size / subgroup_size
// subgroup sums, two barriers instead of three.
fn reduce(tid: u32, n: u32) {
  if (subgroup_reduce != 0u) {
    gather_subgroup_sums(tid, n);
    workgroupBarrier();
    // Thread p reads partial[g · n + p] and writes partial[p]: no other thread reads that.
    for (var p = tid; p < n; p += wg_size) {
      var total = 0.0;
      for (var g = 0u; g < wg_size / subgroup_size; g++) { total += partial[g * n + p]; }
      partial[p] = total;
    }
    workgroupBarrier();
    return;
  }
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

@compute @workgroup_size(wg_size)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let m = step.n_tokens;
  let rows = part.rows;
  let t0 = wid.z * tokens_per_wg;
  if (t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);
  let launched = groups.x * groups.y;
  let row_groups = (rows + rows_per_wg - 1u) / rows_per_wg;
  let first_group = wid.x + wid.y * groups.x;
  // prefetch_groups: the first group's first step, loaded before x is staged (as accumulate does).
  var ahead: array<Raw_a, MAX_ROWS * MAX_UNITS_PER_STEP>;
  if (prefetch_groups == 1u && first_group < row_groups) {
    let units = (cols + UNIT_ELEMS_a - 1u) / UNIT_ELEMS_a;
    ahead = load_step_a(row_bytes_a, first_group * rows_per_wg, rows - 1u, tid, units);
    if (x_int8 == 1u) { stage_int8(t0, nt, tid); }
  }
  for (var g = first_group; g < row_groups; g += launched) {
    let row0 = g * rows_per_wg;
    var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
    if (prefetch_groups == 1u) {
      let next = g + launched;
      acc = accumulate_ahead_a(row_bytes_a, row0, rows - 1u, t0, nt, tid, &ahead, next * rows_per_wg, next < row_groups);
    } else {
      acc = accumulate_a(row_bytes_a, row0, rows - 1u, t0, nt, tid, g < launched);
    }
    let n = rows_per_wg * tokens_per_wg;
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) {
        add_partial(tid, n, r * tokens_per_wg + t, acc[r * MAX_TOKENS + t]);
      }
    }
    reduce(tid, n);
    if (tid < n) {
      let r = tid / tokens_per_wg;
      let t = tid % tokens_per_wg;
      var square = 0.0;
      if (row0 + r < rows && t < nt) {
        let at = (t0 + t) * out_stride + part.first_row + row0 + r;
        var value = partial[tid];
        if (norm_mode == 1u) {
          // Producer: onto the residual stream, then y · γ and y² for the next norm.
          value += y_a[at];
          norm_x[at] = value * norm_weight[part.first_row + row0 + r];
          square = value * value;
        }
        y_a[at] = value;
      }
      if (norm_mode == 1u) { partial[n + tid] = square; }
    }
    if (norm_mode == 1u) {
      workgroupBarrier();
      if (tid < nt) {
        var sum = 0.0;
        // @unroll
        for (var r = 0u; r < rows_per_wg; r++) { sum += partial[n + r * tokens_per_wg + tid]; }
        norm_sums[(t0 + tid) * norm_partials + g] = sum;
      }
    }
    int8_out(part.first_row + row0, out_stride, t0, nt, tid);
    if (g + launched < row_groups) { workgroupBarrier(); } // the next group's sums overwrite `partial`
  }
}

// `swiglu`: the gate and up products of one loaded step (units u0, u0 + wg_size, …), each x load shared by
// both.
fn swiglu_step(
  acc_gate: ptr<function, array<f32, MAX_ROWS * MAX_TOKENS>>,
  acc_up: ptr<function, array<f32, MAX_ROWS * MAX_TOKENS>>,
  raw_gate: array<Raw_a, MAX_ROWS * MAX_UNITS_PER_STEP>,
  raw_up: array<Raw_b, MAX_ROWS * MAX_UNITS_PER_STEP>,
  u0: u32,
  t0: u32,
  nt: u32,
  units: u32,
) {
  // @unroll
  for (var k = 0u; k < units_per_step; k++) {
    let u = u0 + k * wg_size;
    if (u < units) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) {
        if (t < nt && x_int8 == 1u) {
          // @unroll
          for (var r = 0u; r < rows_per_wg; r++) {
            (*acc_gate)[r * MAX_TOKENS + t] += unit_dot_int8_a(raw_gate[k * MAX_ROWS + r], u, x_block_row(t0, t));
            (*acc_up)[r * MAX_TOKENS + t] += unit_dot_int8_b(raw_up[k * MAX_ROWS + r], u, x_block_row(t0, t));
          }
        } else if (t < nt) {
          let xs = unit_x_a((t0 + t) * (cols / 4u), u);
          // @unroll
          for (var r = 0u; r < rows_per_wg; r++) {
            (*acc_gate)[r * MAX_TOKENS + t] += unit_dot_a(raw_gate[k * MAX_ROWS + r], xs, u);
            (*acc_up)[r * MAX_TOKENS + t] += unit_dot_b(raw_up[k * MAX_ROWS + r], xs, u);
          }
        }
      }
    }
  }
}

@compute @workgroup_size(wg_size)
fn swiglu(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let m = step.n_tokens;
  let t0 = wid.z * tokens_per_wg;
  if (t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);
  let launched = groups.x * groups.y;
  let row_groups = (rows_a + rows_per_wg - 1u) / rows_per_wg;
  let units = (cols + UNIT_ELEMS_a - 1u) / UNIT_ELEMS_a;
  // A folded norm's Σ y² per token, read once (in the first row group, after its weight loads were issued).
  var norm_part: array<f32, MAX_TOKENS>;
  let first_group = wid.x + wid.y * groups.x;
  // prefetch_groups: the next step's gate and up units, loaded a step ahead (see `main`).
  var ahead_gate: array<Raw_a, MAX_ROWS * MAX_UNITS_PER_STEP>;
  var ahead_up: array<Raw_b, MAX_ROWS * MAX_UNITS_PER_STEP>;
  if (prefetch_groups == 1u && first_group < row_groups) {
    ahead_gate = load_step_a(row_bytes_a, first_group * rows_per_wg, rows_a - 1u, tid, units);
    ahead_up = load_step_b(row_bytes_b, first_group * rows_per_wg, rows_a - 1u, tid, units);
    if (x_int8 == 1u) { stage_int8(t0, nt, tid); }
  }
  for (var g = first_group; g < row_groups; g += launched) {
    let row0 = g * rows_per_wg;
    let first = g < launched;
    // Gate and up have the same type: one x load per unit and token serves both. As in accumulate, the
    // first step's weight loads are issued before the int8 quantisation of x (first row group only).
    var acc_gate: array<f32, MAX_ROWS * MAX_TOKENS>;
    var acc_up: array<f32, MAX_ROWS * MAX_TOKENS>;
    // Zeroed by assignment: declared without a value inside the loop, they were not zeroed again per
    // iteration on lavapipe (the second row group started from the first one's sums).
    acc_gate = array<f32, MAX_ROWS * MAX_TOKENS>();
    acc_up = array<f32, MAX_ROWS * MAX_TOKENS>();
    var raw_gate: array<Raw_a, MAX_ROWS * MAX_UNITS_PER_STEP>; // [step unit k][row r]
    var raw_up: array<Raw_b, MAX_ROWS * MAX_UNITS_PER_STEP>;
    if (prefetch_groups == 1u) {
      let stride = wg_size * units_per_step;
      let next_row0 = (g + launched) * rows_per_wg;
      for (var u0 = tid; u0 < units; u0 += stride) {
        raw_gate = ahead_gate;
        raw_up = ahead_up;
        if (u0 + stride < units) {
          ahead_gate = load_step_a(row_bytes_a, row0, rows_a - 1u, u0 + stride, units);
          ahead_up = load_step_b(row_bytes_b, row0, rows_a - 1u, u0 + stride, units);
        } else if (g + launched < row_groups) {
          ahead_gate = load_step_a(row_bytes_a, next_row0, rows_a - 1u, tid, units);
          ahead_up = load_step_b(row_bytes_b, next_row0, rows_a - 1u, tid, units);
        }
        swiglu_step(&acc_gate, &acc_up, raw_gate, raw_up, u0, t0, nt, units);
      }
    } else {
      if (x_int8 == 1u) {
        raw_gate = load_step_a(row_bytes_a, row0, rows_a - 1u, tid, units);
        raw_up = load_step_b(row_bytes_b, row0, rows_a - 1u, tid, units);
        if (first) { stage_int8(t0, nt, tid); }
      }
      for (var u0 = tid; u0 < units; u0 += wg_size * units_per_step) {
        if (x_int8 == 0u || u0 != tid) {
          raw_gate = load_step_a(row_bytes_a, row0, rows_a - 1u, u0, units);
          raw_up = load_step_b(row_bytes_b, row0, rows_a - 1u, u0, units);
        }
        swiglu_step(&acc_gate, &acc_up, raw_gate, raw_up, u0, t0, nt, units);
      }
    }
    if (norm_mode == 2u && first) { norm_part = norm_share(t0, nt, tid); }
    // Sum 2q is the gate of (row r, token t) with q = r · tokens_per_wg + t, 2q + 1 its up; with a folded
    // norm, sum 2 · rows_per_wg · tokens_per_wg + t is token t's Σ y².
    let sums = 2u * rows_per_wg * tokens_per_wg;
    let n = sums + select(0u, tokens_per_wg, norm_mode == 2u);
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) {
        let q = r * tokens_per_wg + t;
        add_partial(tid, n, 2u * q, acc_gate[r * MAX_TOKENS + t]);
        add_partial(tid, n, 2u * q + 1u, acc_up[r * MAX_TOKENS + t]);
      }
    }
    if (norm_mode == 2u) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) { add_partial(tid, n, sums + t, norm_part[t]); }
    }
    reduce(tid, n);
    if (tid < rows_per_wg * tokens_per_wg) {
      let r = tid / tokens_per_wg;
      let t = tid % tokens_per_wg;
      if (row0 + r < rows_a && t < nt) {
        let scale = select(1.0, norm_scale(partial[sums + t]), norm_mode == 2u);
        y_a[(t0 + t) * rows_a + row0 + r] = silu(partial[2u * tid] * scale) * (partial[2u * tid + 1u] * scale);
      }
    }
    int8_out(row0, rows_a, t0, nt, tid);
    if (g + launched < row_groups) { workgroupBarrier(); } // the next group's sums overwrite `partial`
  }
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
  let t0 = wid.z * tokens_per_wg;
  if (t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);
  let groups_a = (rows_a + rows_per_wg - 1u) / rows_per_wg;
  let groups_b = (rows_b + rows_per_wg - 1u) / rows_per_wg;
  let groups_c = (rows_c + rows_per_wg - 1u) / rows_per_wg;
  let row_groups = groups_a + groups_b + groups_c;
  let launched = groups.x * groups.y;
  var norm_part: array<f32, MAX_TOKENS>; // a folded norm's Σ y² per token
  for (var g = wid.x + wid.y * groups.x; g < row_groups; g += launched) {
    let first = g < launched;
    // Which weight this row group belongs to, and its first row (declared without a value and assigned on
    // every path, see `swiglu`).
    var weight: u32;
    var row0: u32;
    var rows: u32;
    if (g >= groups_a + groups_b) {
      weight = 2u;
      row0 = (g - groups_a - groups_b) * rows_per_wg;
      rows = rows_c;
    } else if (g >= groups_a) {
      weight = 1u;
      row0 = (g - groups_a) * rows_per_wg;
      rows = rows_b;
    } else {
      weight = 0u;
      row0 = g * rows_per_wg;
      rows = rows_a;
    }

    // KV store (kv_append = 1): in a K or V workgroup, thread tid < rows_per_wg / 2 · tokens_per_wg owns the
    // f16 pair of rows (row0 + 2 · kv_pair, + 1) of token t0 + kv_token. Its page and word are looked up
    // before the products, so that the two dependent loads overlap them.
    let kv_pair = tid / tokens_per_wg;
    let kv_token = tid % tokens_per_wg;
    let kv_owner = kv_append == 1u && weight > 0u && tid < (rows_per_wg / 2u) * tokens_per_wg &&
      row0 + 2u * kv_pair < rows && kv_token < nt;
    var kv_at = vec2u(0u);
    if (kv_owner) { kv_at = kv_locate(weight, t0 + kv_token, row0 + 2u * kv_pair); }

    var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
    if (weight == 0u) {
      acc = accumulate_a(row_bytes_a, row0, rows - 1u, t0, nt, tid, first);
    } else if (weight == 1u) {
      acc = accumulate_b(row_bytes_b, row0, rows - 1u, t0, nt, tid, first);
    } else {
      acc = accumulate_c(row_bytes_c, row0, rows - 1u, t0, nt, tid, first);
    }
    // With a folded norm, the partial sums are read once, after the first row group's weight loads were
    // issued.
    if (norm_mode == 2u && first) { norm_part = norm_share(t0, nt, tid); }
    // Sum r · tokens_per_wg + t is (row r, token t); with a folded norm, sum rows_per_wg · tokens_per_wg + t
    // is token t's Σ y².
    let sums = rows_per_wg * tokens_per_wg;
    let n = sums + select(0u, tokens_per_wg, norm_mode == 2u);
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) {
        add_partial(tid, n, r * tokens_per_wg + t, acc[r * MAX_TOKENS + t]);
      }
    }
    if (norm_mode == 2u) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) { add_partial(tid, n, sums + t, norm_part[t]); }
    }
    reduce(tid, n);
    if (tid < sums) {
      let r = tid / tokens_per_wg;
      let t = tid % tokens_per_wg;
      if (row0 + r < rows && t < nt) {
        let row = row0 + r;
        let scale = select(1.0, norm_scale(partial[sums + t]), norm_mode == 2u);
        var value = partial[tid] * scale;
        let column = row % head_dim;
        if (keep_pre_k == 1u && weight == 1u) { k_pre[(t0 + t) * rows_b + row] = value; }
        if (weight < 2u && column < 2u * rope_pairs) {
          // Rows 2i and 2i + 1 of a head are a rotated pair; row0 and rows_per_wg are even, so the
          // partner's total is this workgroup's sum (r ^ 1, t).
          let other = partial[(r ^ 1u) * tokens_per_wg + t] * scale;
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
        // The KV store's pairs: (row r, token t) final at partial[n + r · tokens_per_wg + t], past the sums
        // still read above.
        if (kv_append == 1u && weight > 0u) { partial[n + tid] = value; }
      }
    }
    if (kv_append == 1u && weight > 0u) {
      workgroupBarrier();
      if (kv_owner) {
        let lo = partial[n + 2u * kv_pair * tokens_per_wg + kv_token];
        let hi = partial[n + (2u * kv_pair + 1u) * tokens_per_wg + kv_token];
        kv_store(kv_at, lo, hi);
      }
    }
    if (g + launched < row_groups) { workgroupBarrier(); } // the next group's sums overwrite `partial`
  }
}
