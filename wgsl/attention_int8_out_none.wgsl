// No int8 attention output (spliced into wgsl/flash_decode.wgsl at ATT_INT8): the output projection
// quantises its input itself. See wgsl/attention_int8_out.wgsl.

fn att_int8_out(first_head: u32, batch_heads: u32, tid: u32) {}

fn att_int8_zero(at: u32) {}
