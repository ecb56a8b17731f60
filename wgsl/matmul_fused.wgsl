// Fused FFN input for prefill: out[t][r] = silu(Σ_c X[t][c] · W_a[r][c]) · (Σ_c X[t][c] · W_b[r][c]) for
// t < m (W_a = gate, W_b = up), both weights in their GGUF types, decoded by per-weight copies of the
// dequantisation library (wgsl/dequant.wgsl, names suffixed _a and _b) while they are staged.
//
// Tiling follows wgsl/matmul.wgsl: a workgroup of 16 × 16 threads computes a 64-token × 64-column product
// tile with 4 × 4 f32 micro-tiles, taking 32 columns of K per step (half the threads decode W, half copy
// X, both k-major in workgroup memory). Here the 64 tile columns are 32 gate rows followed by the same 32
// up rows, so the tile yields 32 output rows. At the end the threads holding up sums (lid.x ≥ 8) pass them
// through workgroup memory to the threads holding the matching gate sums, which write silu(gate) · up.
//
// binding 0: W_a, array<u32>: raw rows of the gate weight; row r at byte r · row_bytes_a (read)
// binding 1: W_b, array<u32>: raw rows of the up weight; row r at byte r · row_bytes_b (read)
// binding 2: x, array<f32>: activations [m][cols], row-major (read)
// binding 3: out, array<f32>: [m][rows], row-major (read_write)
// binding 4: step, uniform: n_tokens (= m), pos0 (unused here)
//
// Dispatch: x = ceil(rows / 32), y = ceil(max_m / 64). Tiles past `m` return at once.

struct Step {
  n_tokens: u32,
  pos0: u32,
}

// Elements per row of both weights (and per token row of x), rows of each, bytes per row.
override cols: u32 = 256u;
override rows: u32 = 1u;
override row_bytes_a: u32 = 1u;
override row_bytes_b: u32 = 1u;

const TILE = 64u;
const HALF = 32u;
const BK = 32u;
const THREADS = 256u;

@group(0) @binding(0) var<storage, read> W_a: array<u32>;
@group(0) @binding(1) var<storage, read> W_b: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;

// [k][i / 4] for k < BK and i < TILE: vec4 of tokens (xs) or tile columns (ws) 4i'..4i'+3 at column k.
// After the K loop, ws holds the up sums as [token][row / 4] (64 × 8 vec4).
var<workgroup> xs: array<vec4f, BK * TILE / 4u>;
var<workgroup> ws: array<vec4f, BK * TILE / 4u>;

{{DEQUANT_A}}
{{DEQUANT_B}}

fn load_x(t: u32, e: u32) -> vec4f {
  let at = t * cols + e;
  if (e + 4u <= cols) { return vec4f(x[at], x[at + 1u], x[at + 2u], x[at + 3u]); }
  var v = vec4f(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = x[at + i]; }
  }
  return v;
}

// Sixteen elements e..e+15 of row `row` of the gate (up = false) or up weight, zero past the row end.
fn weight16(up: bool, row: u32, e: u32) -> array<vec4f, 4> {
  var w: array<vec4f, 4>;
  if (e + 16u <= cols) {
    if (up) { return dq16_b(row * row_bytes_b, e); }
    return dq16_a(row * row_bytes_a, e);
  }
  for (var c = 0u; c < 4u; c++) {
    if (e + 4u * c < cols) {
      if (up) {
        w[c] = dq4_b(row * row_bytes_b, e + 4u * c);
      } else {
        w[c] = dq4_a(row * row_bytes_a, e + 4u * c);
      }
    }
  }
  return w;
}

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

@compute @workgroup_size(16, 16)
fn swiglu(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let m = step.n_tokens;
  let n0 = wid.x * HALF;
  let t0 = wid.y * TILE;
  if (t0 >= m) { return; }

  var acc: array<vec4f, 4>; // acc[i][j]: token t0 + 4·lid.y + i, tile column 4·lid.x + j
  for (var k0 = 0u; k0 < cols; k0 += BK) {
    if (tid < THREADS / 2u) {
      let i = tid / (BK / 16u);               // tile column: gate rows, then up rows
      let kq = tid % (BK / 16u);              // which 16 columns
      let row = n0 + i % HALF;
      var w: array<vec4f, 4>;
      if (row < rows) { w = weight16(i >= HALF, row, k0 + 16u * kq); }
      for (var c = 0u; c < 16u; c++) {
        ws[(16u * kq + c) * (TILE / 4u) + i / 4u][i % 4u] = w[c / 4u][c % 4u];
      }
    } else {
      for (var s = 0u; s < 4u; s++) {
        let unit = (tid - THREADS / 2u) + s * (THREADS / 2u);
        let i = unit / (BK / 4u);             // token within the tile
        let kq = unit % (BK / 4u);            // which 4 columns
        let e = k0 + 4u * kq;
        var a = vec4f(0.0);
        if (t0 + i < m && e < cols) { a = load_x(t0 + i, e); }
        for (var c = 0u; c < 4u; c++) {
          xs[(4u * kq + c) * (TILE / 4u) + i / 4u][i % 4u] = a[c];
        }
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      let a = xs[k * (TILE / 4u) + lid.y];
      let b = ws[k * (TILE / 4u) + lid.x];
      acc[0] += a.x * b;
      acc[1] += a.y * b;
      acc[2] += a.z * b;
      acc[3] += a.w * b;
    }
    workgroupBarrier();
  }

  // Up sums to workgroup memory, [token][row / 4], for the threads holding the gate sums of those rows.
  let quads = HALF / 4u;
  if (lid.x >= quads) {
    for (var i = 0u; i < 4u; i++) { ws[(4u * lid.y + i) * quads + lid.x - quads] = acc[i]; }
  }
  workgroupBarrier();
  if (lid.x < quads) {
    for (var i = 0u; i < 4u; i++) {
      let t = t0 + 4u * lid.y + i;
      let up = ws[(4u * lid.y + i) * quads + lid.x];
      if (t < m) {
        for (var j = 0u; j < 4u; j++) {
          let r = n0 + 4u * lid.x + j;
          if (r < rows) { out[t * rows + r] = silu(acc[i][j]) * up[j]; }
        }
      }
    }
  }
}
