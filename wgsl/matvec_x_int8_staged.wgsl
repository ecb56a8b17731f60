// Int8 input of wgsl/matvec_fast.wgsl quantised by each workgroup into its own workgroup memory (spliced
// in there at X_INT8): x_blocks and x_scales hold the workgroup's tokens' rows, block i of local token t at
// t · cols / 16 + i (a single element each without int8 input).

var<workgroup> x_blocks: array<vec4u, max(1u, x_int8 * tokens_per_wg * (cols / 16u))>;
var<workgroup> x_scales: array<vec2f, max(1u, x_int8 * tokens_per_wg * (cols / 16u))>;

// First int8 block of local token t (of the workgroup's tokens from t0).
fn x_block_row(t0: u32, t: u32) -> u32 {
  return t * (cols / 16u);
}

// Int8 input: quantises x of tokens t0 .. t0 + nt − 1 into x_blocks / x_scales, block i of local token t at
// t · cols / 16 + i (int8_block of wgsl/int8_block.wgsl).
// A thread takes blocks tid, tid + wg_size, … one at a time (on an H100, loading four blocks per round
// before quantising them ran slower). Every thread of the workgroup must call it (it ends with a barrier).
fn stage_int8(t0: u32, nt: u32, tid: u32) {
  let blocks = cols / 16u;
  for (var i = tid; i < nt * blocks; i += wg_size) {
    let at = t0 * (cols / 4u) + 4u * i; // token rows are whole blocks
    let block = int8_block(array<vec4f, 4>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]));
    x_blocks[i] = block.words;
    x_scales[i] = block.scale;
  }
  workgroupBarrier();
}

