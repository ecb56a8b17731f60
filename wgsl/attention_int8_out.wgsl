// The attention output as the next product's shared int8 input (spliced into wgsl/flash_decode.wgsl at
// ATT_INT8): the workgroup that writes a batch of heads' outputs (the direct mode's, or the merge's) then
// quantises them per 16 values (int8_block of wgsl/int8_block.wgsl) into the buffers the output projection
// reads (wgsl/matvec_x_int8_shared.wgsl), so that product needs no quantisation pass of its own.
//
// binding 24: att_blocks, vec4u[q_heads * head_dim / 16] (write): 16 signed bytes per block
// binding 25: att_scales, vec2f[q_heads * head_dim / 16] (write): (d, d · Σq) of each block

@group(0) @binding(24) var<storage, read_write> att_blocks: array<vec4u>;
@group(0) @binding(25) var<storage, read_write> att_scales: array<vec2f>;

// After the workgroup has written the outputs of heads first_head .. first_head + batch_heads − 1. Every
// thread of the workgroup must call it.
fn att_int8_out(first_head: u32, batch_heads: u32, tid: u32) {
  storageBarrier(); // the workgroup's outputs before its threads read them back
  let first = first_head * head_dim / 16u;
  for (var b = tid; b < batch_heads * head_dim / 16u; b += ATTEND_THREADS) {
    let at = (first + b) * 16u;
    var v: array<vec4f, 4>;
    // @unroll
    for (var k = 0u; k < 4u; k++) {
      v[k] = vec4f(out[at + 4u * k], out[at + 4u * k + 1u], out[at + 4u * k + 2u], out[at + 4u * k + 3u]);
    }
    let block = int8_block(v);
    att_blocks[first + b] = block.words;
    att_scales[first + b] = block.scale;
  }
}

// The block of outputs from flat index `at` (a multiple of 16) is all zero.
fn att_int8_zero(at: u32) {
  att_blocks[at / 16u] = vec4u(0u);
  att_scales[at / 16u] = vec2f(0.0);
}
