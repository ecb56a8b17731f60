// Sampling on the GPU: turns one logits row into a token id with the rules and order of the CPU sampler
// (src/engine/sampling.ts): repetition penalty → top-k → top-p → min-p → temperature → draw. Five passes:
//
//   `scan_block`  (N_BLOCKS workgroups) applies the repetition penalty (a bitmap of the block's recent
//                 tokens) and writes the penalised logits to `work`, each block's max and Σ exp(x − max)
//                 to `partials`, and counts the top 11 bits of every value's order key into level 1 of
//                 `hist` (a radix histogram).
//   `select_mid`  (N_BLOCKS) finds the level-1 digit of the k-th largest key and counts the next 11 bits of
//                 the keys that share it (level 2).
//   `select_low`  (N_BLOCKS) the same for the last 10 bits (level 3), also per block into `block_low`.
//                 Now the k-th largest key T is known exactly: a radix select, no approximation.
//   `gather`      (N_BLOCKS) writes the ids of the k best values to `candidates`: every key > T, and of the
//                 keys == T the lowest ids (ties go to the lowest id, as on the CPU).
//   `draw`        (1 workgroup) sorts the k candidates by (value desc, id asc), cuts them by top-p (mass
//                 measured against the k candidates, or against the whole vocabulary when `full_mass`) and
//                 min-p, weights the rest by exp((x − x0) / temperature) and draws with a counter-based
//                 random number: hash(seed, draw index). It writes the token, appends it to the history ring,
//                 counts the draw and zeroes `hist` for the next step. When the candidates are capped
//                 (`truncated`) and neither cut falls among them, the rules keep tokens beyond the cap: the
//                 draw then writes NONE (0xffffffff) instead of a token, appends nothing, and the host
//                 draws that step from the logits on the CPU (src/gpu/ops/sample_reference.ts). With no
//                 cut at all (top-k, top-p and min-p off) it draws over the whole vocabulary instead, in
//                 id order (draw_whole_vocabulary).
//
// The host sets k = top-k when 1 ≤ top-k ≤ CAP, otherwise k = CAP (top-k off: the CAP most likely tokens
// are the candidates); k ≤ VOCAB. Logits must be finite (no NaN, no infinities).
//
// Order key of a float: its bits with the sign bit flipped for positives and all bits flipped for
// negatives, so unsigned key order is float order (−0 is turned into +0 first).
//
// Bindings (every entry point uses a subset):
//   binding 0: params, uniform Params (below)
//   binding 1: state, u32[4 + hist_cap]: draw index, history count, history head, history capacity, then
//              the history ring (the recent tokens the penalty looks at); `scan_block` reads, `draw` updates
//   binding 2: logits, f32[VOCAB] (read by `scan_block`)
//   binding 3: work, f32[VOCAB], the penalised logits (`scan_block` writes, the others read)
//   binding 4: partials, Partial[N_BLOCKS] (`scan_block` writes, `draw` reads)
//   binding 5: hist, atomic u32[HIST_WORDS]: levels 1, 2, 3 of the radix histogram, then the count of
//              candidates above T (all zero between steps: `draw` clears it)
//   binding 6: block_low, u32[N_BLOCKS][LOW_BINS], each block's level-3 histogram (`select_low` writes,
//              `gather` reads to rank ties across blocks)
//   binding 7: candidates, u32[CAP] token ids (`gather` writes, `draw` reads)
//   binding 8: tokens, u32[1], the sampled token, or NONE when the rules keep tokens beyond the candidates
//              (`draw` writes)

override VOCAB: u32 = 1u;
override N_BLOCKS: u32 = 1u;

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;
const BLOCK: u32 = 4096u; // WG · PER_THREAD values per block
const BITMAP_WORDS: u32 = 128u; // BLOCK / 32
const HI_BINS: u32 = 2048u; // key bits 31…21
const MID_BINS: u32 = 2048u; // key bits 20…10
const LOW_BINS: u32 = 1024u; // key bits 9…0
const HIST_MID: u32 = 2048u;
const HIST_LOW: u32 = 4096u;
const COUNTER: u32 = 5120u;
const HIST_WORDS: u32 = 5121u;
const CAP: u32 = 1024u;
const PER_LANE: u32 = 4u; // CAP / WG sorted candidates per invocation in `draw`
const STATE_HEADER: u32 = 4u;
const NONE: u32 = 0xffffffffu;
const LOWEST: f32 = -3.4028234e38;

struct Params {
  k: u32, // candidates: the k largest penalised logits
  sort_size: u32, // power of two ≥ k, at most CAP
  full_mass: u32, // 1: top-p mass is relative to the whole vocabulary, 0: to the k candidates
  seed: u32,
  top_p: f32, // ≥ 1: off
  min_p_on: u32,
  log_min_p: f32, // log(min-p), used when min_p_on
  inv_temp: f32, // 1 / temperature (0 when k = 1)
  penalty_on: u32,
  penalty: f32, // negative logits of recent tokens are multiplied by this
  inv_penalty: f32, // positive ones by this (1 / penalty)
  // 1: k = CAP < VOCAB with top-k off or above CAP (the candidates may miss kept tokens); 2: top-k, top-p and
  // min-p all off with VOCAB > CAP: `draw` weighs the whole vocabulary in id order instead of the candidates
  truncated: u32,
}

struct Partial { max: f32, sum: f32 }
struct Digit { digit: u32, rest: u32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(5) var<storage, read_write> hist: array<atomic<u32>>;

var<workgroup> wg_hist: array<atomic<u32>, HI_BINS>;
var<workgroup> wg_scan_u: array<u32, WG>;
var<workgroup> wg_scan_f: array<f32, WG>;
var<workgroup> wg_max: array<f32, WG>;
var<workgroup> wg_sum: array<f32, WG>;
var<workgroup> wg_digit: Digit;

fn order_key(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Inclusive prefix sum of `v` over the invocations of the workgroup.
fn scan_u32(lane: u32, v: u32) -> u32 {
  wg_scan_u[lane] = v;
  for (var off = 1u; off < WG; off = off * 2u) {
    workgroupBarrier();
    var add = 0u;
    if (lane >= off) { add = wg_scan_u[lane - off]; }
    workgroupBarrier();
    wg_scan_u[lane] = wg_scan_u[lane] + add;
  }
  workgroupBarrier();
  let out = wg_scan_u[lane];
  workgroupBarrier();
  return out;
}

// The digit of the rank-th largest key at one level of `hist` (bins from `base`), and its rank among the keys
// with that digit. Counting from the top bin, each invocation covers bins / WG bins.
fn find_digit(lane: u32, base: u32, bins: u32, rank: u32) -> Digit {
  let per = bins / WG;
  var mine = 0u;
  for (var r = 0u; r < per; r++) {
    mine += atomicLoad(&hist[base + bins - 1u - (lane * per + r)]);
  }
  let inclusive = scan_u32(lane, mine);
  var above = inclusive - mine;
  if (above < rank && rank <= inclusive) {
    for (var r = 0u; r < per; r++) {
      let bin = bins - 1u - (lane * per + r);
      let c = atomicLoad(&hist[base + bin]);
      if (rank <= above + c) {
        wg_digit = Digit(bin, rank - above);
        break;
      }
      above += c;
    }
  }
  workgroupBarrier();
  return wg_digit;
}

// Folds (max, Σ exp(x − max)) pairs in wg_max/wg_sum; the result ends in slot 0.
fn reduce_partials(lane: u32) {
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lane < stride) {
      let m1 = wg_max[lane];
      let m2 = wg_max[lane + stride];
      let m = max(m1, m2);
      wg_sum[lane] = wg_sum[lane] * exp(m1 - m) + wg_sum[lane + stride] * exp(m2 - m);
      wg_max[lane] = m;
    }
  }
  workgroupBarrier();
}

// ---- pass 1: penalty, block statistics, level-1 histogram ----

@group(0) @binding(1) var<storage, read> state_in: array<u32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> work_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials_out: array<Partial>;

var<workgroup> wg_bits: array<atomic<u32>, BITMAP_WORDS>;

@compute @workgroup_size(WG)
fn scan_block(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let start = wg.x * BLOCK;
  for (var i = lane; i < BITMAP_WORDS; i += WG) { atomicStore(&wg_bits[i], 0u); }
  for (var i = lane; i < HI_BINS; i += WG) { atomicStore(&wg_hist[i], 0u); }
  workgroupBarrier();
  if (params.penalty_on != 0u) {
    let count = state_in[1];
    for (var h = lane; h < count; h += WG) {
      let t = state_in[STATE_HEADER + h];
      if (t >= start && t - start < BLOCK) {
        let o = t - start;
        atomicOr(&wg_bits[o / 32u], 1u << (o % 32u));
      }
    }
  }
  workgroupBarrier();
  var m = LOWEST;
  var s = 0.0;
  for (var j = 0u; j < PER_THREAD; j++) {
    let o = j * WG + lane;
    let i = start + o;
    if (i < VOCAB) {
      var x = logits[i];
      if (((atomicLoad(&wg_bits[o / 32u]) >> (o % 32u)) & 1u) != 0u) {
        x = select(x * params.penalty, x * params.inv_penalty, x > 0.0);
      }
      if (bitcast<u32>(x) == 0x80000000u) { x = 0.0; }
      work_out[i] = x;
      atomicAdd(&wg_hist[order_key(x) >> 21u], 1u);
      if (x > m) {
        s = s * exp(m - x) + 1.0;
        m = x;
      } else {
        s += exp(x - m);
      }
    }
  }
  wg_max[lane] = m;
  wg_sum[lane] = s;
  reduce_partials(lane);
  if (lane == 0u) { partials_out[wg.x] = Partial(wg_max[0], wg_sum[0]); }
  for (var b = lane; b < HI_BINS; b += WG) {
    let c = atomicLoad(&wg_hist[b]);
    if (c != 0u) { atomicAdd(&hist[b], c); }
  }
}

// ---- passes 2–4: the rest of the radix select, and the gather ----

@group(0) @binding(3) var<storage, read> work_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> block_low_out: array<u32>;
@group(0) @binding(6) var<storage, read> block_low_in: array<u32>;
@group(0) @binding(7) var<storage, read_write> candidates_out: array<u32>;

@compute @workgroup_size(WG)
fn select_mid(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let start = wg.x * BLOCK;
  for (var i = lane; i < MID_BINS; i += WG) { atomicStore(&wg_hist[i], 0u); }
  let d1 = find_digit(lane, 0u, HI_BINS, params.k);
  for (var j = 0u; j < PER_THREAD; j++) {
    let i = start + j * WG + lane;
    if (i < VOCAB) {
      let key = order_key(work_in[i]);
      if ((key >> 21u) == d1.digit) { atomicAdd(&wg_hist[(key >> 10u) & 0x7ffu], 1u); }
    }
  }
  workgroupBarrier();
  for (var b = lane; b < MID_BINS; b += WG) {
    let c = atomicLoad(&wg_hist[b]);
    if (c != 0u) { atomicAdd(&hist[HIST_MID + b], c); }
  }
}

@compute @workgroup_size(WG)
fn select_low(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let start = wg.x * BLOCK;
  for (var i = lane; i < LOW_BINS; i += WG) { atomicStore(&wg_hist[i], 0u); }
  let d1 = find_digit(lane, 0u, HI_BINS, params.k);
  let d2 = find_digit(lane, HIST_MID, MID_BINS, d1.rest);
  let prefix = (d1.digit << 11u) | d2.digit;
  for (var j = 0u; j < PER_THREAD; j++) {
    let i = start + j * WG + lane;
    if (i < VOCAB) {
      let key = order_key(work_in[i]);
      if ((key >> 10u) == prefix) { atomicAdd(&wg_hist[key & 0x3ffu], 1u); }
    }
  }
  workgroupBarrier();
  for (var b = lane; b < LOW_BINS; b += WG) {
    let c = atomicLoad(&wg_hist[b]);
    block_low_out[wg.x * LOW_BINS + b] = c;
    if (c != 0u) { atomicAdd(&hist[HIST_LOW + b], c); }
  }
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let d1 = find_digit(lane, 0u, HI_BINS, params.k);
  let d2 = find_digit(lane, HIST_MID, MID_BINS, d1.rest);
  let d3 = find_digit(lane, HIST_LOW, LOW_BINS, d2.rest);
  let threshold = (((d1.digit << 11u) | d2.digit) << 10u) | d3.digit;
  let ties = d3.rest; // how many keys equal to the threshold are kept (the lowest ids)
  let above = params.k - ties; // keys greater than the threshold, all kept
  // Ties in earlier blocks come first.
  var rank = 0u;
  for (var b = 0u; b < wg.x; b++) { rank += block_low_in[b * LOW_BINS + d3.digit]; }
  // Each invocation walks PER_THREAD consecutive ids so that ties are ranked in id order.
  let first = wg.x * BLOCK + lane * PER_THREAD;
  var mine = 0u;
  for (var r = 0u; r < PER_THREAD; r++) {
    let i = first + r;
    if (i < VOCAB) {
      let key = order_key(work_in[i]);
      if (key > threshold) {
        let slot = atomicAdd(&hist[COUNTER], 1u);
        if (slot < above) { candidates_out[slot] = i; }
      } else if (key == threshold) {
        mine++;
      }
    }
  }
  rank += scan_u32(lane, mine) - mine;
  if (mine != 0u) {
    for (var r = 0u; r < PER_THREAD; r++) {
      let i = first + r;
      if (i < VOCAB && order_key(work_in[i]) == threshold) {
        if (rank < ties) { candidates_out[above + rank] = i; }
        rank++;
      }
    }
  }
}

// ---- pass 5: sort, top-p, min-p, temperature, draw ----

@group(0) @binding(1) var<storage, read_write> state_rw: array<u32>;
@group(0) @binding(4) var<storage, read> partials_in: array<Partial>;
@group(0) @binding(7) var<storage, read> candidates_in: array<u32>;
@group(0) @binding(8) var<storage, read_write> tokens: array<u32>;

var<workgroup> s_key: array<u32, CAP>;
var<workgroup> s_idx: array<u32, CAP>;
var<workgroup> wg_total: f32;
var<workgroup> wg_keep: atomic<u32>;
var<workgroup> wg_pick: atomic<u32>;
var<workgroup> wg_cut: atomic<u32>; // `draw`: 1 once top-p or min-p cuts among the candidates

// Inclusive prefix sum of CAP values, PER_LANE consecutive ones per invocation.
fn scan_f32(lane: u32, v: array<f32, PER_LANE>) -> array<f32, PER_LANE> {
  var out: array<f32, PER_LANE>;
  var run = 0.0;
  for (var r = 0u; r < PER_LANE; r++) {
    run += v[r];
    out[r] = run;
  }
  wg_scan_f[lane] = run;
  for (var off = 1u; off < WG; off = off * 2u) {
    workgroupBarrier();
    var add = 0.0;
    if (lane >= off) { add = wg_scan_f[lane - off]; }
    workgroupBarrier();
    wg_scan_f[lane] = wg_scan_f[lane] + add;
  }
  workgroupBarrier();
  var before = 0.0;
  if (lane > 0u) { before = wg_scan_f[lane - 1u]; }
  workgroupBarrier();
  for (var r = 0u; r < PER_LANE; r++) { out[r] += before; }
  return out;
}

fn mix32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u;
  x *= 0x21f0aaadu;
  x ^= x >> 15u;
  x *= 0x735a2d97u;
  x ^= x >> 15u;
  return x;
}

// Uniform in [0, 1) with 24 random bits, a pure function of (seed, draw index).
fn uniform01(seed: u32, draw_index: u32) -> f32 {
  let h = mix32(mix32(seed ^ 0x6a09e667u) + draw_index * 0x9e3779b9u);
  return f32(h >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(WG)
fn draw(@builtin(local_invocation_index) lane: u32) {
  let u = uniform01(params.seed, state_rw[0]);
  let n = params.k;
  // Mass of the whole vocabulary relative to its max.
  var m = LOWEST;
  var s = 0.0;
  for (var b = lane; b < N_BLOCKS; b += WG) {
    let p = partials_in[b];
    let mm = max(m, p.max);
    s = s * exp(m - mm) + p.sum * exp(p.max - mm);
    m = mm;
  }
  wg_max[lane] = m;
  wg_sum[lane] = s;
  reduce_partials(lane);
  let full_sum = wg_sum[0];
  if (params.truncated == 2u) {
    draw_whole_vocabulary(lane, u, wg_max[0]);
    return;
  }
  // Bitonic sort of the candidates: value descending, id ascending; padding (key 0) goes last.
  let size = params.sort_size;
  for (var p = lane; p < size; p += WG) {
    if (p < n) {
      let id = candidates_in[p];
      s_key[p] = order_key(work_in[id]);
      s_idx[p] = id;
    } else {
      s_key[p] = 0u;
      s_idx[p] = NONE;
    }
  }
  for (var span = 2u; span <= size; span = span * 2u) {
    for (var stride = span / 2u; stride > 0u; stride = stride / 2u) {
      workgroupBarrier();
      for (var t = lane; t < size / 2u; t += WG) {
        let i = 2u * t - (t & (stride - 1u));
        let j = i + stride;
        let ki = s_key[i];
        let kj = s_key[j];
        let ii = s_idx[i];
        let ij = s_idx[j];
        let j_first = kj > ki || (kj == ki && ij < ii);
        let ascending = (i & span) == 0u;
        if (j_first == ascending) {
          s_key[i] = kj;
          s_key[j] = ki;
          s_idx[i] = ij;
          s_idx[j] = ii;
        }
      }
    }
  }
  workgroupBarrier();
  let x0 = work_in[s_idx[0]];
  var x: array<f32, PER_LANE>;
  var e: array<f32, PER_LANE>;
  for (var r = 0u; r < PER_LANE; r++) {
    let p = lane * PER_LANE + r;
    x[r] = LOWEST;
    e[r] = 0.0;
    if (p < n) {
      x[r] = work_in[s_idx[p]];
      e[r] = exp(x[r] - x0);
    }
  }
  let cum = scan_f32(lane, e);
  if (lane == (n - 1u) / PER_LANE) { wg_total = cum[(n - 1u) % PER_LANE]; }
  if (lane == 0u) {
    atomicStore(&wg_keep, n);
    atomicStore(&wg_cut, 0u);
  }
  workgroupBarrier();
  // Top-p keeps the shortest prefix whose mass reaches top_p; min-p cuts before the first x < x0 + log(min_p).
  let mass = select(wg_total, full_sum, params.full_mass != 0u);
  let need = params.top_p * mass;
  let cutoff = x0 + params.log_min_p;
  for (var r = 0u; r < PER_LANE; r++) {
    let p = lane * PER_LANE + r;
    if (p < n) {
      if (params.top_p < 1.0 && cum[r] >= need) {
        atomicMin(&wg_keep, p + 1u);
        atomicStore(&wg_cut, 1u);
      }
      if (params.min_p_on != 0u && p > 0u && x[r] < cutoff) {
        atomicMin(&wg_keep, p);
        atomicStore(&wg_cut, 1u);
      }
    }
  }
  workgroupBarrier();
  let keep = atomicLoad(&wg_keep);
  // Capped candidates and no cut among them: the rules keep tokens the candidates lack.
  let beyond = params.truncated != 0u && atomicLoad(&wg_cut) == 0u;
  // Temperature, then the draw: the first candidate whose cumulative weight exceeds u · total.
  var w: array<f32, PER_LANE>;
  for (var r = 0u; r < PER_LANE; r++) {
    let p = lane * PER_LANE + r;
    w[r] = 0.0;
    if (p < keep) { w[r] = exp((x[r] - x0) * params.inv_temp); }
  }
  let wcum = scan_f32(lane, w);
  if (lane == (keep - 1u) / PER_LANE) { wg_total = wcum[(keep - 1u) % PER_LANE]; }
  if (lane == 0u) { atomicStore(&wg_pick, keep - 1u); }
  workgroupBarrier();
  let target_weight = u * wg_total;
  for (var r = 0u; r < PER_LANE; r++) {
    let p = lane * PER_LANE + r;
    if (p < keep && wcum[r] > target_weight) { atomicMin(&wg_pick, p); }
  }
  workgroupBarrier();
  if (lane == 0u) { finish_draw(select(s_idx[atomicLoad(&wg_pick)], NONE, beyond)); }
  for (var i = lane; i < HIST_WORDS; i += WG) { atomicStore(&hist[i], 0u); }
}

// `draw`'s bookkeeping (one invocation): writes the token (or NONE), counts the draw and appends a token to
// the history ring.
fn finish_draw(token: u32) {
  tokens[0] = token;
  state_rw[0] = state_rw[0] + 1u;
  let cap = state_rw[3];
  if (cap > 0u && token != NONE) {
    let head = state_rw[2];
    state_rw[STATE_HEADER + head] = token;
    state_rw[2] = (head + 1u) % cap;
    state_rw[1] = min(state_rw[1] + 1u, cap);
  }
}

// `draw` with no cut at all (truncated = 2): every token weighs exp((x - x0) / temperature), x0 the largest
// penalised logit, and the draw is the first token in id order whose running weight exceeds u * total, or
// the last token when rounding leaves none. Each invocation sums a contiguous chunk of ids; a scan over the
// invocations finds the chunk where the point falls, and its invocation walks it.
fn draw_whole_vocabulary(lane: u32, u: f32, x0: f32) {
  let chunk = (VOCAB + WG - 1u) / WG;
  let lo = min(lane * chunk, VOCAB);
  let hi = min(lo + chunk, VOCAB);
  var mine = 0.0;
  for (var i = lo; i < hi; i++) { mine += exp((work_in[i] - x0) * params.inv_temp); }
  var v: array<f32, PER_LANE>;
  v[0] = mine;
  let cum = scan_f32(lane, v);
  if (lane == WG - 1u) { wg_total = cum[0]; }
  if (lane == 0u) { atomicStore(&wg_pick, VOCAB - 1u); }
  workgroupBarrier();
  let target_weight = u * wg_total;
  let before = cum[0] - mine;
  if (hi > lo && before <= target_weight && cum[0] > target_weight) {
    var run = before;
    var pick = hi - 1u;
    for (var i = lo; i < hi; i++) {
      run += exp((work_in[i] - x0) * params.inv_temp);
      if (run > target_weight) {
        pick = i;
        break;
      }
    }
    atomicMin(&wg_pick, pick);
  }
  workgroupBarrier();
  if (lane == 0u) { finish_draw(atomicLoad(&wg_pick)); }
  for (var i = lane; i < HIST_WORDS; i += WG) { atomicStore(&hist[i], 0u); }
}
