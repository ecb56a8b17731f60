// A decode layer's FFN block in one dispatch: three (with the next QKV four) matrix-vector phases that each
// need all of the one before, chained inside the dispatch instead of by dispatch boundaries (each boundary
// costs a wait for the GPU to drain and a fresh launch, several microseconds at one token per step).
//
//   phase o (groups_o workgroups): x += W_o · att, then xn = x · γ_ffn and each workgroup's Σ x² of its rows
//   phase f (groups_f workgroups): h = silu(W_g · xn · s) · (W_u · xn · s), s = 1 / RMS from phase o's sums
//   phase d (groups_d workgroups): x += W_d · h, then xn = x · γ_next and each workgroup's Σ x² (the folded
//                                  norm the next fused QKV, or the output tail, reads)
//   phase q (groups_q workgroups, optional): the next layer's fused QKV from xn and phase d's sums, with RoPE
//                                  and the KV store (QKV_PHASE: wgsl/matvec_chain_qkv.wgsl, or a stub
//                                  without workgroups)
//
// That is attn_output with the FFN RMSNorm folded, gate/up with SwiGLU, and ffn_down with the next RMSNorm
// folded (wgsl/matvec_fast.wgsl's `main` with norm_mode 1, `swiglu` with norm_mode 2, `main` with norm_mode
// 1), for one token (decode), each weight's units spliced in from wgsl/matvec_units.wgsl (UNITS_O, _G, _U,
// _D; the free names x, cols, … renamed per phase, see src/gpu/ops/matvec_chain.ts).
//
// Ordering: each workgroup first takes a ticket (an atomic counter); tickets, not workgroup ids, assign the
// phases in order, so every workgroup of a phase has started before any of the next phase's. A phase's
// workgroups count themselves done (after a storage barrier) in their phase's counter; the next phase's
// workgroups issue their first weight loads, then wait until that counter is full (every thread polls it,
// then a storage barrier) before they read x. Waiting only on workgroups that have started
// needs no more than that a started workgroup keeps making progress. The last workgroup to finish resets
// the counters, so one counter buffer serves every layer. As in wgsl/flash_decode.wgsl, this relies on
// storageBarrier() ordering storage memory at device scope, which wgpu's backends give (SPIR-V memory
// scope Device, Metal mem_device, HLSL DeviceMemoryBarrierWithGroupSync).
//
// binding 0: W_o, array<WORD_O>: raw rows of attn_output [rows E][cols_o] (WORD_*: the unit section's word)
// binding 1: W_g, array<WORD_G>: raw rows of ffn_gate [FF][E]
// binding 2: W_u, array<WORD_U>: raw rows of ffn_up [FF][E]
// binding 3: W_d, array<WORD_D>: raw rows of ffn_down [E][FF]
// binding 4: att, array<vec4f>: the attention output [cols_o] (read)
// binding 5: resid, array<f32>: the residual stream x [E], updated in place by phases o and d
// binding 6: xn, array<vec4f>: x · γ [E], written by phases o and d (per element), read by phase f
// binding 7: norm_sums, array<f32>: Σ x² per producer workgroup [max(groups_o, groups_d)]
// binding 8: h, array<vec4f>: silu(gate) · up [FF], written by phase f (per element), read by phase d
// binding 9: gamma_ffn, array<f32>: the FFN RMSNorm's weight [E]
// binding 10: gamma_next, array<f32>: the next RMSNorm's weight [E] (next layer's attn_norm, or output_norm)
// binding 11: counters, array<atomic<u32>, 8>: ticket, phases o, f and d done, workgroups done (zero
//             between dispatches)
// bindings 12, 13, 18 to 24, 14 to 17 and 32…: phase q's (QKV_PHASE, see wgsl/matvec_chain_qkv.wgsl).

// Rows of the outputs (E for phases o and d, FF for f) and values per row of each phase's input.
override rows_e: u32 = 1u;
override rows_ff: u32 = 1u;
override cols_o: u32 = 256u;
override cols_f: u32 = 256u;
override cols_d: u32 = 256u;
override row_bytes_o: u32 = 144u;
override row_bytes_g: u32 = 144u;
override row_bytes_u: u32 = 144u;
override row_bytes_d: u32 = 144u;
// Threads per workgroup (all phases), rows per workgroup and units per step of each phase (rows_per_wg:
// phase q's).
override wg_size: u32 = 64u;
override rows_per_wg: u32 = 1u;
override rows_o: u32 = 4u;
override rows_f: u32 = 4u;
override rows_d: u32 = 4u;
override ups_o: u32 = 1u;
override ups_f: u32 = 1u;
override ups_d: u32 = 1u;
// Lanes of the first reduction step (a power of two dividing wg_size).
override reduce_lanes: u32 = 8u;
// 1: the phase quantises its input to int8 in workgroup memory and takes integer dot products.
override int8_o: u32 = 0u;
override int8_f: u32 = 0u;
override int8_d: u32 = 0u;
// How the threads wait for the phase before (see wait_for): 1 with read-modify-writes (software adapters),
// 0 with atomic loads.
override each_thread_waits: u32 = 0u;
// The folded norms: phase o's and phase d's partial sums (groups_o = groups_d, read by phases f and q),
// width E and epsilon.
override norm_partials: u32 = 1u;
override norm_width: u32 = 1u;
override norm_eps: f32 = 1e-5;

// One token per workgroup (decode).
const tokens_per_wg = 1u;
const MAX_ROWS = 8u;
const MAX_TOKENS = 1u;
const MAX_UNITS_PER_STEP = 4u;

@group(0) @binding(0) var<storage, read> W_o: array<{{WORD_O}}>;
@group(0) @binding(1) var<storage, read> W_g: array<{{WORD_G}}>;
@group(0) @binding(2) var<storage, read> W_u: array<{{WORD_U}}>;
@group(0) @binding(3) var<storage, read> W_d: array<{{WORD_D}}>;
@group(0) @binding(4) var<storage, read> att: array<vec4f>;
@group(0) @binding(5) var<storage, read_write> resid: array<f32>;
@group(0) @binding(6) var<storage, read_write> xn: array<vec4f>;
@group(0) @binding(7) var<storage, read_write> norm_sums: array<f32>;
@group(0) @binding(8) var<storage, read_write> h: array<vec4f>;
@group(0) @binding(9) var<storage, read> gamma_ffn: array<f32>;
@group(0) @binding(10) var<storage, read> gamma_next: array<f32>;
@group(0) @binding(11) var<storage, read_write> counters: array<atomic<u32>, 8>;

// Each phase's int8 copy of its input (a single element where the phase reads f32).
var<workgroup> xb_o: array<vec4u, max(1u, int8_o * (cols_o / 16u))>;
var<workgroup> xs_o: array<vec2f, max(1u, int8_o * (cols_o / 16u))>;
var<workgroup> xb_f: array<vec4u, max(1u, int8_f * (cols_f / 16u))>;
var<workgroup> xs_f: array<vec2f, max(1u, int8_f * (cols_f / 16u))>;
var<workgroup> xb_d: array<vec4u, max(1u, int8_d * (cols_d / 16u))>;
var<workgroup> xs_d: array<vec2f, max(1u, int8_d * (cols_d / 16u))>;

// The per-thread sums before the reduction: up to 2 · rows_f (gate and up) or rows_per_wg (phase q) plus a
// folded norm's sum.
var<workgroup> partial: array<f32, wg_size * (max(max(max(rows_o, rows_d), 2u * rows_f), rows_per_wg) + 1u)>;
// This workgroup's ticket.
var<workgroup> ticket: u32;
// Bumped per poll: a side effect, so that no compiler takes the wait for an empty loop.
var<workgroup> spins: u32;

{{UNITS_O}}
{{UNITS_G}}
{{UNITS_U}}
{{UNITS_D}}

// norm_share, norm_scale, reduce, silu.
// #include matvec_reduce

{{QKV_PHASE}}

// Waits until `count` workgroups have counted themselves in counters[slot]; every thread must call it.
// Every thread polls the counter itself (on a GPU one load per warp and poll, the address being the same),
// so that each one's later loads follow its own observation of the count: a storage barrier passing one
// thread's observation on to the others was not enough on a software adapter (lavapipe, where a chained
// dispatch then read stale inputs about once in twenty). There (each_thread_waits = 1) the polls are
// read-modify-writes, as atomic loads in a loop did not wait reliably either; on a GPU
// (each_thread_waits = 0) they are atomic loads, which do not contend with the counting.
fn wait_for(slot: u32, count: u32, tid: u32) {
  if (each_thread_waits == 1u) {
    loop {
      if (atomicOr(&counters[slot], 0u) >= count) { break; }
    }
  } else {
    loop {
      if (atomicLoad(&counters[slot]) >= count) { break; }
      if (tid == 0u) { spins += 1u; }
    }
  }
  storageBarrier();
}

// The phases' x_ready hooks (see accumulate in wgsl/matvec_units.wgsl): phase o's input comes from the
// dispatch before; f waits for all of o, d for all of f.
fn ready_o(tid: u32) {}
fn ready_f(tid: u32) {
  wait_for(1u, groups_o(), tid);
}
fn ready_d(tid: u32) {
  wait_for(2u, groups_f(), tid);
}

fn groups_o() -> u32 {
  return (rows_e + rows_o - 1u) / rows_o;
}
fn groups_f() -> u32 {
  return (rows_ff + rows_f - 1u) / rows_f;
}
fn groups_d() -> u32 {
  return (rows_e + rows_d - 1u) / rows_d;
}

// Phases o and d after their products (`acc`, rows row0 .. of this workgroup w, n of them): onto the
// residual stream, x · γ (γ_ffn for o, γ_next for d) into xn, and the workgroup's Σ x² into norm_sums[w].
fn produce(acc: array<f32, MAX_ROWS>, row0: u32, n: u32, w: u32, next: bool, lane: u32) {
  // @unroll
  for (var r = 0u; r < MAX_ROWS; r++) {
    if (r < n) { partial[lane * n + r] = acc[r]; }
  }
  reduce(lane, n);
  var square = 0.0;
  if (lane < n) {
    let row = row0 + lane;
    if (row < rows_e) {
      let value = partial[lane] + resid[row];
      let gamma = select(gamma_ffn[row], gamma_next[row], next);
      xn[row / 4u][row % 4u] = value * gamma;
      resid[row] = value;
      square = value * value;
    }
    partial[n + lane] = square;
  }
  workgroupBarrier();
  if (lane == 0u) {
    var sum = 0.0;
    for (var r = 0u; r < n; r++) { sum += partial[n + r]; }
    norm_sums[w] = sum;
  }
}

// Phase f, workgroup w: rows w · rows_f .. of gate and up, SwiGLU, into h.
fn gate_up(w: u32, lane: u32) {
  let row0 = w * rows_f;
  let last = rows_ff - 1u;
  var acc_gate: array<f32, MAX_ROWS>;
  var acc_up: array<f32, MAX_ROWS>;
  let units = (cols_f + UNIT_ELEMS_g - 1u) / UNIT_ELEMS_g;
  // As accumulate: the first step's weight loads, then the wait for phase o, then (int8) the quantisation.
  var raw_gate = load_step_g(row_bytes_g, row0, last, lane, units);
  var raw_up = load_step_u(row_bytes_u, row0, last, lane, units);
  ready_f(lane);
  if (int8_f == 1u) { stage_int8_g(0u, 1u, lane); }
  for (var u0 = lane; u0 < units; u0 += wg_size * ups_f) {
    if (u0 != lane) {
      raw_gate = load_step_g(row_bytes_g, row0, last, u0, units);
      raw_up = load_step_u(row_bytes_u, row0, last, u0, units);
    }
    // @unroll
    for (var k = 0u; k < ups_f; k++) {
      let u = u0 + k * wg_size;
      if (u < units) {
        if (int8_f == 1u) {
          // @unroll
          for (var r = 0u; r < rows_f; r++) {
            acc_gate[r] += unit_dot_int8_g(raw_gate[k * MAX_ROWS + r], u, 0u);
            acc_up[r] += unit_dot_int8_u(raw_up[k * MAX_ROWS + r], u, 0u);
          }
        } else {
          let xs = unit_x_g(0u, u);
          // @unroll
          for (var r = 0u; r < rows_f; r++) {
            acc_gate[r] += unit_dot_g(raw_gate[k * MAX_ROWS + r], xs, u);
            acc_up[r] += unit_dot_u(raw_up[k * MAX_ROWS + r], xs, u);
          }
        }
      }
    }
  }
  // Sums 2r and 2r + 1 are row r's gate and up, sum 2 · rows_f phase o's Σ x² (this thread's share).
  let n = 2u * rows_f + 1u;
  // @unroll
  for (var r = 0u; r < rows_f; r++) {
    partial[lane * n + 2u * r] = acc_gate[r];
    partial[lane * n + 2u * r + 1u] = acc_up[r];
  }
  partial[lane * n + 2u * rows_f] = norm_share(0u, 1u, lane)[0];
  reduce(lane, n);
  if (lane < rows_f) {
    let row = row0 + lane;
    if (row < rows_ff) {
      let scale = norm_scale(partial[2u * rows_f]);
      h[row / 4u][row % 4u] = silu(partial[2u * lane] * scale) * (partial[2u * lane + 1u] * scale);
    }
  }
}

@compute @workgroup_size(wg_size)
fn ffn(@builtin(local_invocation_index) tid: u32) {
  if (tid == 0u) { ticket = atomicAdd(&counters[0], 1u); }
  let g = workgroupUniformLoad(&ticket);
  let n_o = groups_o();
  let n_f = groups_f();
  let n_d = groups_d();
  let total = n_o + n_f + n_d + groups_q();
  // The phase of this workgroup: 0 (o), 1 (f), 2 (d) or 3 (q); its counter is counters[phase + 1].
  var phase = 3u;
  if (g < n_o) {
    phase = 0u;
    let row0 = g * rows_o;
    produce(accumulate_o(row_bytes_o, row0, rows_e - 1u, 0u, 1u, tid), row0, rows_o, g, false, tid);
  } else if (g < n_o + n_f) {
    phase = 1u;
    gate_up(g - n_o, tid);
  } else if (g < n_o + n_f + n_d) {
    phase = 2u;
    let w = g - n_o - n_f;
    let row0 = w * rows_d;
    produce(accumulate_d(row_bytes_d, row0, rows_e - 1u, 0u, 1u, tid), row0, rows_d, w, true, tid);
  } else {
    qkv_phase(g - n_o - n_f - n_d, tid);
  }
  // Count this workgroup done in its phase (after all its writes); the last of all resets the counters.
  storageBarrier();
  if (tid == 0u) {
    atomicAdd(&counters[phase + 1u], 1u);
    if (atomicAdd(&counters[5], 1u) == total - 1u) {
      for (var i = 0u; i < 6u; i++) { atomicStore(&counters[i], 0u); }
    }
  }
}
