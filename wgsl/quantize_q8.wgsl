// Activations to 8-bit integers for the integer-dot-product kernels (the prefill's wgsl/matmul_int8.wgsl in
// blocks of 32 values, the decode products' shared int8 input, wgsl/matvec_x_int8_shared.wgsl, in blocks of
// 16): every block of a token row becomes signed 8-bit integers q = round(x / d) with d = max |x| / 127 (all
// zero for a zero block), so x ≈ d · q.
//
// binding 0: x, vec4f[max_tokens][cols / 4] (read), the activations, row-major
// binding 1: xq, vec4u[max_tokens][cols / 16] (write): 16 values per word, value 4k + i in byte i of word k;
//            a block of 32 values b of token t is xq[t][2b] (values 0..15) and xq[t][2b + 1] (16..31)
// binding 2: xds, vec2f[max_tokens][cols / block] (write): (d, d · Σq) per block, the scale and the block's
//            sum as the weights' offset terms need it
// binding 3: step, uniform { n_tokens, pos0 }
//
// Grid: ceil(max_tokens · cols / block / 64) workgroups of 64 threads, one block per thread; threads past the
// step's tokens return.

struct Step { n_tokens: u32, pos0: u32 }

override cols: u32 = 32u; // values per token row, a multiple of the block
override block_vec4s: u32 = 8u; // vec4s per block: 8 (32 values) or 4 (16 values)

@group(0) @binding(0) var<storage, read> x: array<vec4f>;
@group(0) @binding(1) var<storage, read_write> xq: array<vec4u>;
@group(0) @binding(2) var<storage, read_write> xds: array<vec2f>;
@group(0) @binding(3) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let blocks = cols / (4u * block_vec4s);
  let i = gid.x;
  if (i >= step.n_tokens * blocks) { return; }
  let at = i * block_vec4s; // vec4 index of the block: token rows are whole blocks
  var v: array<vec4f, 8>;
  var amax = 0.0;
  // @unroll
  for (var k = 0u; k < block_vec4s; k++) {
    v[k] = x[at + k];
    let a = abs(v[k]);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
  }
  let inv = select(0.0, 127.0 / amax, amax > 0.0);
  var packed: array<u32, 8>;
  var sum = vec4i(0);
  // @unroll
  for (var k = 0u; k < block_vec4s; k++) {
    let q = clamp(vec4i(round(v[k] * inv)), vec4i(-127), vec4i(127));
    sum += q;
    packed[k] = pack4xI8(q);
  }
  let words = block_vec4s / 4u;
  xq[words * i] = vec4u(packed[0], packed[1], packed[2], packed[3]);
  if (words == 2u) { xq[words * i + 1u] = vec4u(packed[4], packed[5], packed[6], packed[7]); }
  let d = amax / 127.0;
  xds[i] = vec2f(d, d * f32(sum.x + sum.y + sum.z + sum.w));
}
