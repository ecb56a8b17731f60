// Prefill matrix products with 8-bit integer dot products, where X comes quantised per 32-value block (wgsl/quantize_q8.wgsl: x ≈ d_x · q_x) and W is
// read as 32-value integer sub-blocks with their scales (wgsl/int8_units.wgsl: w = s · q_w − o). Per block:
//   Σ w · x = d_x · (s_lo · Σ_{e<16} q_w q_x + s_hi · Σ_{e≥16} q_w q_x) − o · (d_x · Σ q_x),
// the sums of products taken four at a time by dot4I8Packed (one instruction where the GPU has DP4A).
//   `paired` false: Y[t][first_row + r] = Σ_c X[t][c] · W_a[r][c] for t < n_tokens, one weight part;
//   `paired` true:  the FFN input, Y[t][r] = silu(Σ_c X[t][c] · W_a[r][c]) · (Σ_c X[t][c] · W_b[r][c]), gate
//                   and up of one type and shape (`paired`: tile rows 0..63 are gate rows, 64..127 the same up
//                   rows, so a thread's rows i and i + 2 pair up).
//   `stacked` true: three products of one input in one dispatch (attention Q, K and V): the row tiles of W_a,
//                   then those of W_b, then those of W_c, each weight of its own type and writing its own
//                   output. The text define STACKED brings the third weight's bindings and the functions
//                   stacked_tile, stacked_fetch and write_stacked (wgsl/matmul_int8_stacked.wgsl; stubs
//                   without bindings in the other forms, so their kernels stay as small as before).
//
// Output tiles of 128 rows × 64 tokens, 256 threads: thread (lx, ly) = (tid % 32, tid / 32) owns rows
// n0 + lx + 32i (i < 4) and tokens t0 + 8ly + j (j < 8). The K loop stages k_blocks blocks per step:
// - W tile [block][half][128 rows] of vec4u (a half is 16 values), the scale pairs and the offsets
//   [block][128 rows]:
//   k_blocks / 2 (row, block) units per thread and step, decoded once; a warp's threads read 32
//   consecutive rows' vec4s (conflict-free);
// - X tile [block][half][64 tokens] of vec4u and (d, d · Σq) [block][64 tokens]: a warp reads one token's
//   words (a broadcast).
// Each thread fetches its units of the next step into registers before the products of this one, so the
// global loads overlap them; two barriers per step guard the single tile. Blocks past the row's end (a
// last step with fewer than k_blocks) get a zero X scale, so they add nothing.
//
// binding 0: W_a, array<u32>: the raw rows of one weight part (paired: the gate weight), row r at byte
//            r · row_bytes (read)
// binding 6: W_b, array<u32>: paired: the up weight, rows as W_a's; stacked: the second weight (K);
//            otherwise W_a again (read)
// bindings 7…11: stacked only, see wgsl/matmul_int8_stacked.wgsl
// binding 1: xq, vec4u[max_tokens][cols / 16] (read), see wgsl/quantize_q8.wgsl
// binding 2: xds, vec2f[max_tokens][cols / 32] (read), (d, d · Σq) per block
// binding 3: y, f32[m][out_stride] (read_write), this part writing columns first_row .. first_row + rows
//            (paired: out_stride = rows)
// binding 4: step, uniform { n_tokens, pos0 }
// binding 5: part, uniform { rows (in this part), first_row, out_stride, cols, row_bytes }
//
// Dispatch: (ceil(rows / 128), ceil(max_tokens / 64)), paired (ceil(rows / 64), …), stacked (the three
// weights' row tiles added up, …); tiles past n_tokens return at once. Split K (neither paired nor
// stacked): with z = S > 1 the workgroups of z = s take blocks [s · c, (s + 1) · c) (c = the blocks / S in
// whole steps) and write part s of y at s · (n_tokens · out_stride + SPLIT_SKEW), as wgsl/matmul.wgsl's
// `main` does, for the consumer to add up.

struct Step { n_tokens: u32, pos0: u32 }
struct Part { rows: u32, first_row: u32, out_stride: u32, cols: u32, row_bytes: u32 }

override k_blocks: u32 = 2u; // 32-value blocks staged per step: 2 or 4
override units_per_thread: u32 = 1u; // k_blocks / 2: W units (and X vec4s) per thread and step
override paired: bool = false; // gate rows in the tile's first half, up rows in its second, SwiGLU written
override stacked: bool = false; // row tiles of W_a, then W_b, then W_c, each writing its own output
// Every weight of the dispatch has one scale per 32-value unit (scale.x = scale.y: all types but Q6_K): the
// two halves' integer sums are added before their one conversion to f32 (conversions run at a fraction of
// the rate of the integer dot products).
override single_scale: bool = false;

// One 32-value sub-block of a weight row (see wgsl/int8_units.wgsl).
struct Int8Unit {
  q: array<u32, 8>,
  scale: vec4f, // (scale of values 0..15, scale of 16..31, offset subtracted from every value, 0)
}

@group(0) @binding(0) var<storage, read> W_a: array<u32>;
@group(0) @binding(6) var<storage, read> W_b: array<u32>;
@group(0) @binding(1) var<storage, read> xq: array<vec4u>;
@group(0) @binding(2) var<storage, read> xds: array<vec2f>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<uniform> part: Part;

{{INT8_UNITS_A}}
{{INT8_UNITS_B}}
{{STACKED}}

const THREADS: u32 = 256u;
const TILE_ROWS: u32 = 128u;
const TILE_TOKENS: u32 = 64u;
const HALF_ROWS: u32 = 64u; // output rows of a paired tile
const MAX_UNITS_PER_THREAD: u32 = 2u;
// Floats between split-K parts of y (SPLIT_K_SKEW of src/gpu/ops/matmul.ts).
const SPLIT_SKEW: u32 = 64u;

var<workgroup> w_tile: array<vec4u, k_blocks * 2u * TILE_ROWS>;
var<workgroup> w_scale: array<vec2f, k_blocks * TILE_ROWS>; // (scale of values 0..15, of 16..31)
var<workgroup> w_offset: array<f32, k_blocks * TILE_ROWS>;
var<workgroup> x_tile: array<vec4u, k_blocks * 2u * TILE_TOKENS>;
var<workgroup> x_scale: array<vec2f, k_blocks * TILE_TOKENS>;

// W unit u of the step at block kb: (tile row u % 128, block u / 128), rows past the part and blocks past
// the row's end repeating the last (a repeated block gets a zero X scale, so it adds nothing). Paired: tile
// rows 0..63 are gate rows n0 + 0..63, rows 64..127 the same up rows. Stacked: rows of weight `which`.
fn fetch_w(u: u32, n0: u32, kb: u32, blocks: u32, which: u32) -> Int8Unit {
  let tr = u % TILE_ROWS;
  let blk = min(kb + u / TILE_ROWS, blocks - 1u);
  if (stacked && which > 0u) { return stacked_fetch(which, n0 + tr, blk); }
  if (paired) {
    let row = min(n0 + tr % HALF_ROWS, part.rows - 1u) * part.row_bytes;
    if (tr >= HALF_ROWS) { return int8_unit_b(row, blk); }
    return int8_unit_a(row, blk);
  }
  return int8_unit_a(min(n0 + tr, part.rows - 1u) * part.row_bytes, blk);
}

// X vec4 u of the step at block kb: (token u % 64, half (u / 64) % 2, block u / 128), tokens past the step
// repeating the last (their outputs are not written).
fn fetch_x(u: u32, t0: u32, m: u32, kb: u32, blocks: u32, x_row: u32) -> vec4u {
  let token = min(t0 + u % TILE_TOKENS, m - 1u);
  return xq[token * x_row + 2u * min(kb + u / (2u * TILE_TOKENS), blocks - 1u) + (u / TILE_TOKENS) % 2u];
}

// The (d, d · Σq) of X vec4 u's block (zero for a block past the row's end).
fn fetch_xs(u: u32, t0: u32, m: u32, kb: u32, blocks: u32) -> vec2f {
  let token = min(t0 + u % TILE_TOKENS, m - 1u);
  let blk = kb + u / (2u * TILE_TOKENS);
  return select(vec2f(0.0), xds[token * blocks + min(blk, blocks - 1u)], blk < blocks);
}

// Σ of the four byte products of a and b, four words each.
fn dot16(a: vec4u, b: vec4u) -> i32 {
  return dot4I8Packed(a.x, b.x) + dot4I8Packed(a.y, b.y) + dot4I8Packed(a.z, b.z) + dot4I8Packed(a.w, b.w);
}

// The tile's sums for tile rows n0 + … (see fetch_w) and tokens t0 + …: acc[8i + j] is tile row lx + 32i,
// token t0 + 8ly + j. Every thread of the workgroup must call it (it has barriers).
fn tile_products(n0: u32, t0: u32, m: u32, tid: u32, which: u32, kb_begin: u32, kb_end: u32) -> array<f32, 32> {
  let lx = tid % 32u;
  let ly = tid / 32u;
  let blocks = part.cols / 32u;
  let x_row = part.cols / 16u; // vec4u per token row of xq

  var acc: array<f32, 32>; // [row i][token j] at 8i + j
  // The step's units of this thread, fetched into registers one step ahead (their loads overlap the
  // products of the step before): W unit u = tid + p · THREADS is (row u % 128, block u / 128); X vec4 u is
  // (token u % 64, half (u / 64) % 2, block u / 128), with the block's (d, d · Σq) for half 0.
  var w_next: array<Int8Unit, MAX_UNITS_PER_THREAD>;
  var x_next: array<vec4u, MAX_UNITS_PER_THREAD>;
  var xs_next: array<vec2f, MAX_UNITS_PER_THREAD>;
  for (var kb = kb_begin; kb < kb_end; kb += k_blocks) {
    if (kb == kb_begin) {
      // @unroll
      for (var p = 0u; p < units_per_thread; p++) {
        w_next[p] = fetch_w(tid + p * THREADS, n0, kb, blocks, which);
        x_next[p] = fetch_x(tid + p * THREADS, t0, m, kb, blocks, x_row);
        xs_next[p] = fetch_xs(tid + p * THREADS, t0, m, kb, blocks);
      }
    }
    // @unroll
    for (var p = 0u; p < units_per_thread; p++) {
      let u = tid + p * THREADS;
      let r = u % TILE_ROWS;
      let b = u / TILE_ROWS;
      let unit = w_next[p];
      w_tile[2u * b * TILE_ROWS + r] = vec4u(unit.q[0], unit.q[1], unit.q[2], unit.q[3]);
      w_tile[(2u * b + 1u) * TILE_ROWS + r] = vec4u(unit.q[4], unit.q[5], unit.q[6], unit.q[7]);
      w_scale[b * TILE_ROWS + r] = unit.scale.xy;
      w_offset[b * TILE_ROWS + r] = unit.scale.z;
      let t = u % TILE_TOKENS;
      let h = (u / TILE_TOKENS) % 2u;
      x_tile[(2u * b + h) * TILE_TOKENS + t] = x_next[p];
      if (h == 0u) { x_scale[b * TILE_TOKENS + t] = xs_next[p]; }
    }
    workgroupBarrier();
    let kn = kb + k_blocks;
    if (kn < kb_end) {
      // @unroll
      for (var p = 0u; p < units_per_thread; p++) {
        w_next[p] = fetch_w(tid + p * THREADS, n0, kn, blocks, which);
        x_next[p] = fetch_x(tid + p * THREADS, t0, m, kn, blocks, x_row);
        xs_next[p] = fetch_xs(tid + p * THREADS, t0, m, kn, blocks);
      }
    }

    // @unroll
    for (var b = 0u; b < k_blocks; b++) {
      var wv: array<vec4u, 8>; // [row i][half h] at 2i + h
      var ws: array<vec2f, 4>;
      var wo: array<f32, 4>;
      // @unroll
      for (var i = 0u; i < 4u; i++) {
        wv[2u * i] = w_tile[2u * b * TILE_ROWS + lx + 32u * i];
        wv[2u * i + 1u] = w_tile[(2u * b + 1u) * TILE_ROWS + lx + 32u * i];
        ws[i] = w_scale[b * TILE_ROWS + lx + 32u * i];
        wo[i] = w_offset[b * TILE_ROWS + lx + 32u * i];
      }
      // @unroll
      for (var j = 0u; j < 8u; j++) {
        let t = 8u * ly + j;
        let x0 = x_tile[2u * b * TILE_TOKENS + t];
        let x1 = x_tile[(2u * b + 1u) * TILE_TOKENS + t];
        let xs = x_scale[b * TILE_TOKENS + t];
        // @unroll
        for (var i = 0u; i < 4u; i++) {
          if (single_scale) {
            let both = f32(dot16(wv[2u * i], x0) + dot16(wv[2u * i + 1u], x1));
            acc[8u * i + j] += xs.x * (ws[i].x * both) - wo[i] * xs.y;
          } else {
            let lo = f32(dot16(wv[2u * i], x0));
            let hi = f32(dot16(wv[2u * i + 1u], x1));
            acc[8u * i + j] += xs.x * (ws[i].x * lo + ws[i].y * hi) - wo[i] * xs.y;
          }
        }
      }
    }
    workgroupBarrier();
  }

  return acc;
}

// One entry for all forms (`paired` and `stacked` pick the tile rows and the writes).
@compute @workgroup_size(THREADS)
fn main(
  @builtin(workgroup_id) wg: vec3u,
  @builtin(local_invocation_index) tid: u32,
  @builtin(num_workgroups) groups: vec3u,
) {
  let m = step.n_tokens;
  let t0 = wg.y * TILE_TOKENS;
  // (weight, first row, its rows): W_a's row tiles, then (stacked) W_b's and W_c's.
  var tile = vec3u(0u, wg.x * select(TILE_ROWS, HALF_ROWS, paired), part.rows);
  if (stacked) { tile = stacked_tile(wg.x); }
  let n0 = tile.y;
  if (n0 >= tile.z || t0 >= m) { return; }
  // Split K (z > 1): this split's whole steps of blocks, and its part of y.
  let blocks = part.cols / 32u;
  let per_split = (blocks + groups.z * k_blocks - 1u) / (groups.z * k_blocks) * k_blocks;
  let kb_begin = min(wg.z * per_split, blocks);
  let y_base = wg.z * (m * part.out_stride + SPLIT_SKEW);
  let acc = tile_products(n0, t0, m, tid, select(0u, tile.x, stacked), kb_begin, min(kb_begin + per_split, blocks));
  if (stacked) {
    write_stacked(acc, tile.x, n0, t0, m, tid);
    return;
  }
  let lx = tid % 32u;
  let ly = tid / 32u;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let r = n0 + lx + 32u * i;
    // @unroll
    for (var j = 0u; j < 8u; j++) {
      let t = t0 + 8u * ly + j;
      if (paired) {
        // Rows i < 2 are gate rows, rows i + 2 the same up rows: one output per pair.
        let gate = acc[8u * i + j];
        if (i < 2u && r < part.rows && t < m) {
          y[t * part.rows + r] = gate / (1.0 + exp(-gate)) * acc[8u * ((i + 2u) % 4u) + j];
        }
      } else if (r < part.rows && t < m) {
        y[y_base + t * part.out_stride + part.first_row + r] = acc[8u * i + j];
      }
    }
  }
}
