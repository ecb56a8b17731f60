// The RoPE angle with exact range reduction, shared by the kernels that rotate (wgsl/rope.wgsl and the fused
// QKV matvecs), which include it with a line `// #include rope_angle`. The including shader declares
// `turns: array<f32>`, the split turns-per-position table of src/gpu/ops/rope.ts ([pairs][chunks]): per pair,
// invFreq / 2π split into `chunks` parts of few enough significant bits that pos · part is exact in f32.

const ROPE_TWO_PI: f32 = 6.283185307179586;

// (cos, sin) of the angle of `pair` at position `pos`: 2π · frac(pos · turns-per-position), summing the
// fractional parts of the exact products with the table's parts, so the angle is within a few f32 ulps of
// the true one however large pos is (sin and cos are only accurate on [-π, π]).
fn rope_rotation(pos: u32, pair: u32, chunks: u32) -> vec2f {
  let p = f32(pos);
  var frac_turns = 0.0;
  for (var c = 0u; c < chunks; c++) {
    frac_turns = fract(frac_turns + fract(p * turns[pair * chunks + c]));
  }
  let angle = (frac_turns - round(frac_turns)) * ROPE_TWO_PI; // in [-π, π]
  return vec2f(cos(angle), sin(angle));
}
