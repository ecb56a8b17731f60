// Flash attention for prefill: the n_tokens queries of this step attend to the keys of their KV head read
// through the block table (earlier turns and the tokens just appended), with an online softmax
// (running max and sum per query row) and f32 accumulation. GQA: query head h reads KV head h / group.
// Query row i of the step has logical index lengths[row] - n_tokens + i; key_visible() decides the mask.
//
// binding 0: step, uniform { n_tokens, pos0 } (the op convention's shared StepParams)
// binding 1: sequence, uniform { slot } (the KV cache's sequence selector)
// binding 2: layer_params, uniform { layer }
// binding 3: q, f32[n_tokens][q_heads * head_dim] (read), queries after RoPE
// binding 4: out, f32[n_tokens][q_heads * head_dim] (write)
// binding 5: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 6: lengths, u32[seq_slots][layers][kv_heads] (read), including the new tokens
// binding 7…: pool shards (read), see the generated block below.
// binding 16: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read), WG-KV mode only (a placeholder
//            is bound otherwise): position * 2 + admitted of the token in each ring slot of the dual cache.
//
// WG-KV mode (wgkv_window > 0): the row is a dual cache, ring slots [0, ring_tokens) then global tokens.
// The query at position pos0 + i sees a ring key at position p iff p <= q and (q - p < wgkv_window or the
// key was admitted), and every global key (all admitted, all older than the step). The mask is exact per
// query row, so chunked prefill and decode follow the training rule.
//
// Grid: (ceil(max_tokens / TILE_ROWS), q_heads); tiles past n_tokens exit at once. A workgroup of 64 threads
// takes TILE_ROWS query rows of one query head and walks the key pages one at a time: the page's K and V
// are staged in workgroup memory, the TILE_ROWS x PAGE_TOKENS scores computed (4 per thread), then each
// query row is owned by LANES threads that split its head_dim/2 value pairs between them.

override head_dim: u32 = 64u;
override q_heads: u32 = 1u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override max_pages: u32 = 1u;
override pool_pages_per_shard: u32 = 1u;
override scale: f32 = 0.125;
override wgkv_window: u32 = 0u; // 0: plain causal cache; > 0: WG-KV dual cache with this local window
override ring_tokens: u32 = 16u; // WG-KV mode: ring slots at the start of each row

const PAGE_TOKENS: u32 = 16u;
const TILE_ROWS: u32 = 16u;
const LANES: u32 = 4u;
const MAX_PAIRS_PER_LANE: u32 = 32u; // head_dim <= 256
const MASKED: f32 = -3.0e38;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }
struct Sequence { slot: u32, pad0: u32, pad1: u32, pad2: u32 }
struct LayerParams { layer: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> sequence: Sequence;
@group(0) @binding(2) var<uniform> layer_params: LayerParams;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> block_table: array<u32>;
@group(0) @binding(6) var<storage, read> lengths: array<u32>;
@group(0) @binding(16) var<storage, read> slot_info: array<u32>;

{{POOL}}

var<workgroup> q_tile: array<f32, TILE_ROWS * head_dim>; // scaled queries, row-major
var<workgroup> k_page: array<u32, PAGE_TOKENS * head_dim / 2u>; // packed f16 pairs, token-major
var<workgroup> v_page: array<u32, PAGE_TOKENS * head_dim / 2u>;
var<workgroup> scores: array<f32, TILE_ROWS * PAGE_TOKENS>; // MASKED where the key is not visible
var<workgroup> row_length: u32;

// Which keys a query row sees, by logical index in its (slot, layer, head) row `row`: causal for the full
// cache; in WG-KV mode by the query's position `q_pos` and the ring slot's position and flag.
fn key_visible(q_index: u32, k_index: u32, row: u32, q_pos: u32) -> bool {
  if (wgkv_window == 0u) { return k_index <= q_index; }
  if (k_index >= ring_tokens) { return true; }
  let info = slot_info[row * ring_tokens + k_index];
  let k_pos = info >> 1u;
  return k_pos <= q_pos && (q_pos - k_pos < wgkv_window || (info & 1u) == 1u);
}

// Whether any key of logical page j may be visible to a query of logical indices [first_q, last_q]
// (WG-KV mode: every page; the ring's pages are masked per key).
fn page_visible(j: u32, first_q: u32, last_q: u32) -> bool {
  return wgkv_window > 0u || j * PAGE_TOKENS <= last_q;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let head = wg.y;
  let kv_head = head / (q_heads / kv_heads);
  let row = (sequence.slot * layers + layer_params.layer) * kv_heads + kv_head;
  if (tid == 0u) { row_length = lengths[row]; }
  let len = workgroupUniformLoad(&row_length);
  let n_tokens = step.n_tokens;
  let row0 = wg.x * TILE_ROWS;
  if (row0 >= n_tokens || len < n_tokens) { return; }
  let base = len - n_tokens;
  let half_dim = head_dim / 2u;
  let stride = q_heads * head_dim;

  for (var i = tid; i < TILE_ROWS * head_dim; i += 64u) {
    let r = row0 + i / head_dim;
    q_tile[i] = select(0.0, q[r * stride + head * head_dim + i % head_dim] * scale, r < n_tokens);
  }

  let my_row = tid / LANES;
  let lane = tid % LANES;
  let my_valid = row0 + my_row < n_tokens;
  let first_q = base + row0;
  let last_q = base + min(row0 + TILE_ROWS, n_tokens) - 1u;
  let pages = select(last_q / PAGE_TOKENS + 1u, (len + PAGE_TOKENS - 1u) / PAGE_TOKENS, wgkv_window > 0u);
  let pairs_per_lane = half_dim / LANES;

  var m = MASKED;
  var l = 0.0;
  var acc: array<vec2f, MAX_PAIRS_PER_LANE>;
  for (var k = 0u; k < pairs_per_lane; k++) { acc[k] = vec2f(0.0); }

  for (var j = 0u; j < pages; j++) {
    if (!page_visible(j, first_q, last_q)) { continue; }
    let page = block_table[row * max_pages + j];
    workgroupBarrier(); // the previous page is no longer read
    for (var w = tid; w < PAGE_TOKENS * half_dim; w += 64u) {
      k_page[w] = pool_load(page, w);
      v_page[w] = pool_load(page, PAGE_TOKENS * half_dim + w);
    }
    workgroupBarrier();
    for (var c = 0u; c < TILE_ROWS * PAGE_TOKENS / 64u; c++) {
      let e = tid + 64u * c;
      let r = e / PAGE_TOKENS;
      let t = e % PAGE_TOKENS;
      let key = j * PAGE_TOKENS + t;
      var s = MASKED;
      if (row0 + r < n_tokens && key < len && key_visible(base + row0 + r, key, row, step.pos0 + row0 + r)) {
        var dot_sum = 0.0;
        for (var p = 0u; p < half_dim; p++) {
          let kv = unpack2x16float(k_page[t * half_dim + p]);
          dot_sum += kv.x * q_tile[r * head_dim + 2u * p] + kv.y * q_tile[r * head_dim + 2u * p + 1u];
        }
        s = dot_sum;
      }
      scores[e] = s;
    }
    workgroupBarrier();
    if (my_valid) {
      var page_max = MASKED;
      for (var t = 0u; t < PAGE_TOKENS; t++) { page_max = max(page_max, scores[my_row * PAGE_TOKENS + t]); }
      if (page_max > MASKED) {
        let m_new = max(m, page_max);
        let alpha = exp(m - m_new);
        l *= alpha;
        for (var k = 0u; k < pairs_per_lane; k++) { acc[k] *= alpha; }
        for (var t = 0u; t < PAGE_TOKENS; t++) {
          let s = scores[my_row * PAGE_TOKENS + t];
          if (s > MASKED) {
            let p = exp(s - m_new);
            l += p;
            for (var k = 0u; k < pairs_per_lane; k++) {
              acc[k] += p * unpack2x16float(v_page[t * half_dim + lane + LANES * k]);
            }
          }
        }
        m = m_new;
      }
    }
  }

  if (my_valid) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let o = (row0 + my_row) * stride + head * head_dim;
    for (var k = 0u; k < pairs_per_lane; k++) {
      let d = 2u * (lane + LANES * k);
      out[o + d] = acc[k].x * inv;
      out[o + d + 1u] = acc[k].y * inv;
    }
  }
}
