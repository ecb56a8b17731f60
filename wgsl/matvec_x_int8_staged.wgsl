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
// t · cols / 16 + i: q = round(x / d) with d = max |x| / 127 over the block (all zero for a zero block).
// A thread takes blocks tid, tid + wg_size, … one at a time (on an H100, loading four blocks per round
// before quantising them ran slower). Every thread of the workgroup must call it (it ends with a barrier).
fn stage_int8(t0: u32, nt: u32, tid: u32) {
  let blocks = cols / 16u;
  for (var i = tid; i < nt * blocks; i += wg_size) {
    let at = t0 * (cols / 4u) + 4u * i; // token rows are whole blocks
    let v = array<vec4f, 4>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);
    let a = max(max(abs(v[0]), abs(v[1])), max(abs(v[2]), abs(v[3])));
    let amax = max(max(a.x, a.y), max(a.z, a.w));
    let inv = select(0.0, 127.0 / amax, amax > 0.0);
    var words: vec4u;
    var sum = vec4i(0);
    // @unroll
    for (var k = 0u; k < 4u; k++) {
      let q = clamp(vec4i(round(v[k] * inv)), vec4i(-127), vec4i(127));
      sum += q;
      words[k] = pack4xI8(q);
    }
    x_blocks[i] = words;
    let d = amax / 127.0;
    x_scales[i] = vec2f(d, d * f32(sum.x + sum.y + sum.z + sum.w));
  }
  workgroupBarrier();
}

