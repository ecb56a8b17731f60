// Finds how this device's cooperative matrices read and write memory (src/gpu/coop_probe.ts): each of two
// subgroups of 32 invocations multiplies its own pair of 16 × 16 matrices, loaded with {{LOAD}} and the
// product stored with {{STORE}}. If those builtins are the row-major ones, dst holds A·B; if they are the
// column-major ones, it holds B·A (the transposes multiplied and the product transposed back).
//
// binding 0: src, array<f32>: four 16 × 16 matrices, row-major: A0, B0, A1, B1 (read)
// binding 1: dst, array<f32>: two 16 × 16 products, subgroup 0's then subgroup 1's (read_write)
//
// Dispatch: one workgroup of 64 invocations.

enable f16;
enable wgpu_cooperative_matrix;

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;

var<workgroup> tiles: array<f16, 1024>;
var<workgroup> products: array<f32, 512>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) tid: u32) {
  for (var i = tid; i < 1024u; i += 64u) { tiles[i] = f16(src[i]); }
  workgroupBarrier();
  let s = tid / 32u;
  let a = {{LOAD}}<coop_mat16x16<f16, A>>(&tiles[512u * s], 16u);
  let b = {{LOAD}}<coop_mat16x16<f16, B>>(&tiles[512u * s + 256u], 16u);
  let c = coopMultiplyAdd(a, b, coop_mat16x16<f32, C>());
  {{STORE}}(c, &products[256u * s], 16u);
  workgroupBarrier();
  for (var i = tid; i < 512u; i += 64u) { dst[i] = products[i]; }
}
