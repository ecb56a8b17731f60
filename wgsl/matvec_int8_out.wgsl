// The next product's shared int8 input, written by the product before it (spliced into
// wgsl/matvec_fast.wgsl at INT8_OUT for `main` and `swiglu`): after a workgroup has written its rows of
// the output the next product reads (`main`: y · γ with a folded norm, else y; `swiglu`: its output), it
// counts itself into the arrivals of the block of 16 outputs those rows belong to, per token, and the last of
// the block's 16 / rows_per_wg workgroups quantises the block (int8_block of wgsl/int8_block.wgsl) into
// the buffers the next product reads as its shared int8 input (wgsl/matvec_x_int8_shared.wgsl). So
// that product needs no quantisation pass of its own. storageBarrier() orders the outputs' writes before
// the count (release) and the count before the last one's reads (acquire), the pattern of the decode
// attention's fused reduce (wgsl/flash_decode.wgsl, which says why it holds across workgroups).
//
// binding 20: out_blocks, vec4u[max_tokens][row_len / 16] (write): block b of token t, 16 signed bytes
// binding 21: out_scales, vec2f[max_tokens][row_len / 16] (write): (d, d · Σq) of each block
// binding 22: out_arrivals, atomic<u32>[max_tokens][row_len / 16]: workgroups of each block arrived so far,
//             zero between dispatches (the last arrival resets it)

@group(0) @binding(20) var<storage, read_write> out_blocks: array<vec4u>;
@group(0) @binding(21) var<storage, read_write> out_scales: array<vec2f>;
@group(0) @binding(22) var<storage, read_write> out_arrivals: array<atomic<u32>>;

// Per token of the workgroup: 1 where it was the last to arrive at its block.
var<workgroup> out_last: array<u32, MAX_TOKENS>;

// After the workgroup's outputs of rows first_row .. first_row + rows_per_wg − 1 (of rows of `row_len`
// outputs per token) are written for tokens t0 .. t0 + nt − 1. Every thread of the workgroup must call it.
fn int8_out(first_row: u32, row_len: u32, t0: u32, nt: u32, tid: u32) {
  storageBarrier(); // release: this workgroup's outputs before its arrival
  let block = first_row / 16u;
  let blocks = row_len / 16u;
  if (tid < nt) {
    let arrived = atomicAdd(&out_arrivals[(t0 + tid) * blocks + block], 1u) + 1u;
    out_last[tid] = select(0u, 1u, arrived == 16u / rows_per_wg);
  }
  workgroupBarrier();
  storageBarrier(); // acquire: the other workgroups' outputs after their arrivals
  if (tid < nt && out_last[tid] == 1u) {
    let at = (t0 + tid) * blocks + block;
    atomicStore(&out_arrivals[at], 0u);
    var v: array<vec4f, 4>;
    // @unroll
    for (var k = 0u; k < 4u; k++) {
      let i = at * 16u + 4u * k;
      v[k] = vec4f(next_input(i), next_input(i + 1u), next_input(i + 2u), next_input(i + 3u));
    }
    let q = int8_block(v);
    out_blocks[at] = q.words;
    out_scales[at] = q.scale;
  }
}
