// Embedding gather: out[t][c] = dequant(W[ids[t]])[c] for t < n, W kept in its GGUF type (decoded by the
// dequantisation library, wgsl/dequant.wgsl, spliced in at DEQUANT). Ids past the vocabulary are clamped to
// its last row (the CPU side rejects them before they get here; ids produced on the GPU are in range).
//
// binding 0: W, array<u32>: the raw rows of one weight part; row r starts at byte r · row_bytes (read)
// binding 1: ids, array<u32>: token ids [n] (read)
// binding 2: out, array<f32>: embeddings [n][cols], row-major; this part writes the tokens whose id falls in
//            first_row .. first_row + rows (read_write)
// binding 3: step, uniform: n_tokens (ids to gather this step), pos0 (unused here)
// binding 4: part, uniform: rows (in this part), first_row, vocab (rows of the whole tensor), cols
//            (elements per row), row_bytes
// binding 5: norm_weight, array<f32>: the first RMSNorm's weight [cols] (read; fold = 1, a dummy otherwise)
// binding 6: norm_x, array<f32>: out · norm_weight [n][cols] (fold = 1, a dummy otherwise)
// binding 7: norm_sums, array<f32>: Σ out² of each workgroup's columns [n][norm_partials] (fold = 1, a dummy
//            otherwise)
//
// Folded norm (fold = 1, a table in one part): the gather is the producer of the first RMSNorm, as the
// decode products are of the others (wgsl/matvec_fast.wgsl, norm_mode 1): it also writes out · γ and its
// workgroups' sums of squares, and the first layer's fused QKV scales by the RMS they add up to.
//
// Dispatch: x = ceil(cols / (4 · wg_size)) (= norm_partials), y = max_n (≤ 65535). Each thread writes four
// elements.

struct Step {
  n_tokens: u32,
  pos0: u32,
}

struct Part {
  rows: u32,
  first_row: u32,
  vocab: u32,
  cols: u32,
  row_bytes: u32,
}

override wg_size: u32 = 64u; // a power of two
override fold: u32 = 0u;
override norm_partials: u32 = 1u;

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<uniform> part: Part;
@group(0) @binding(5) var<storage, read> norm_weight: array<f32>;
@group(0) @binding(6) var<storage, read_write> norm_x: array<f32>;
@group(0) @binding(7) var<storage, read_write> norm_sums: array<f32>;

var<workgroup> squares: array<f32, wg_size>;

// Copies of part.cols and part.row_bytes (the dequantisation library reads `cols`).
var<private> cols: u32;
var<private> row_bytes: u32;

{{DEQUANT}}

@compute @workgroup_size(wg_size)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {
  cols = part.cols;
  row_bytes = part.row_bytes;
  let t = wid.y;
  if (t >= step.n_tokens) { return; }
  let id = min(ids[t], part.vocab - 1u);
  let e = 4u * (wid.x * wg_size + tid);
  var square = 0.0;
  if (id >= part.first_row && id < part.first_row + part.rows && e < cols) {
    let v = dq4((id - part.first_row) * row_bytes, e);
    let at = t * cols + e;
    for (var i = 0u; i < 4u; i++) {
      if (e + i < cols) {
        out[at + i] = v[i];
        if (fold == 1u) {
          norm_x[at + i] = v[i] * norm_weight[e + i];
          square += v[i] * v[i];
        }
      }
    }
  }
  if (fold == 1u) {
    squares[tid] = square;
    for (var stride = wg_size / 2u; stride > 0u; stride /= 2u) {
      workgroupBarrier();
      if (tid < stride) { squares[tid] += squares[tid + stride]; }
    }
    if (tid == 0u) { norm_sums[t * norm_partials + wid.x] = squares[0]; }
  }
}
