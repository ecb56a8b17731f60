// The 16 × 16 fragments of wgsl/matmul_coop.wgsl on the GPU's matrix units (wgpu's cooperative matrices,
// `enable wgpu_cooperative_matrix;`). Every invocation of a subgroup calls each function together.
// Which of the builtins coopLoad / coopLoadT (coopStore / coopStoreT) reads (writes) row-major memory is
// found on the device once (src/gpu/coop_probe.ts) and spliced in below.
//
//   load_a(at):  tokens 0..15 × columns 0..15 from xs, row-major from xs[at], rows STRIDE apart;
//   load_b(at):  columns 0..15 × rows 0..15 from ws, row-major from ws[at] (column k, weight row r at
//                ws[at + k · W_STRIDE + r]);
//   mma(a, b, c) = a · b + c, products and sums in f32;
//   store_c(c, at): c row-major into cs[at], rows OUT_STRIDE apart.

alias frag_a = coop_mat16x16<f16, A>;
alias frag_b = coop_mat16x16<f16, B>;
alias frag_c = coop_mat16x16<f32, C>;

fn frag_zero() -> coop_mat16x16<f32, C> {
  return coop_mat16x16<f32, C>();
}

fn load_a(at: u32) -> coop_mat16x16<f16, A> {
  return {{LOAD_ROW_MAJOR}}<coop_mat16x16<f16, A>>(&xs[at], STRIDE);
}

fn load_b(at: u32) -> coop_mat16x16<f16, B> {
  return {{LOAD_ROW_MAJOR}}<coop_mat16x16<f16, B>>(&ws[at], W_STRIDE);
}

fn mma(a: coop_mat16x16<f16, A>, b: coop_mat16x16<f16, B>, c: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
  return coopMultiplyAdd(a, b, c);
}

fn store_c(c: coop_mat16x16<f32, C>, at: u32) {
  {{STORE_ROW_MAJOR}}(c, &cs[at], OUT_STRIDE);
}
