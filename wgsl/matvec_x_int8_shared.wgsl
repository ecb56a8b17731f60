// Int8 input of wgsl/matvec_fast.wgsl quantised once per step, before the product (spliced in at X_INT8):
// by a pass of its own (wgsl/quantize_q8.wgsl with blocks of 16 values), or by the op that wrote x, as it
// wrote it (wgsl/matvec_int8_out.wgsl, wgsl/attention_int8_out.wgsl). Every workgroup reads the blocks of
// its tokens from these buffers instead of quantising x itself.
//
// binding 28: x_blocks, vec4u[max_tokens][cols / 16] (read): block i of token t, 16 signed bytes, value 4k + j
//             in byte j of word k
// binding 29: x_scales, vec2f[max_tokens][cols / 16] (read): (d, d · Σq) of each block, x ≈ d · q

@group(0) @binding(28) var<storage, read> x_blocks: array<vec4u>;
@group(0) @binding(29) var<storage, read> x_scales: array<vec2f>;

// First int8 block of token t0 + t.
fn x_block_row(t0: u32, t: u32) -> u32 {
  return (t0 + t) * (cols / 16u);
}

// Nothing to stage: the pass before the product has quantised x.
fn stage_int8(t0: u32, nt: u32, tid: u32) {}
