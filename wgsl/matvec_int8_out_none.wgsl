// No int8 output (spliced into wgsl/matvec_fast.wgsl at INT8_OUT): the next product quantises its input
// itself. See wgsl/matvec_int8_out.wgsl.

fn int8_out(first_row: u32, row_len: u32, t0: u32, nt: u32, tid: u32) {}
