// The fragments of wgsl/matmul_coop.wgsl in plain WGSL, for GPUs without cooperative matrices (the same
// contract as wgsl/coop_fragments.wgsl, so the kernel around them runs and is tested anywhere; slow).
// A "subgroup" is the 32 invocations 32s .. 32s + 31; invocation `lane` of it holds, of each 16 × 16
// accumulator, row lane / 2 and columns 8 (lane % 2) .. + 7. A and B fragments are where they start in
// workgroup memory: the multiply-add reads them there.
//
//   load_a(at):  tokens 0..15 × columns 0..15 of xs, row-major from xs[at], rows STRIDE apart;
//   load_b(at):  columns 0..15 × rows 0..15 of ws, column k, weight row r at ws[at + k · W_STRIDE + r];
//   mma(a, b, c) = a · b + c, products and sums in f32;
//   store_c(c, at): c row-major into cs[at], rows OUT_STRIDE apart.

alias frag_a = u32;
alias frag_b = u32;
alias frag_c = array<f32, 8>;

fn frag_zero() -> frag_c {
  return frag_c();
}

fn load_a(at: u32) -> frag_a {
  return at;
}

fn load_b(at: u32) -> frag_b {
  return at;
}

fn mma(a: frag_a, b: frag_b, c: frag_c) -> frag_c {
  var sums = c;
  // Sixteen, in a form the shader compiler cannot fold: it would unroll the loops below into a long
  // compile on a software adapter, for no gain.
  let depth = 16u + (a >> 31u);
  let row = a + (lane / 2u) * STRIDE;
  let j0 = 8u * (lane % 2u);
  for (var j = 0u; j < 8u; j++) {
    let col = b + j0 + j;
    for (var k = 0u; k < depth; k++) {
      sums[j] += f32(xs[row + k]) * f32(ws[col + k * W_STRIDE]);
    }
  }
  return sums;
}

fn store_c(c: frag_c, at: u32) {
  let to = at + (lane / 2u) * OUT_STRIDE + 8u * (lane % 2u);
  for (var j = 0u; j < 8u; j++) { cs[to + j] = c[j]; }
}
