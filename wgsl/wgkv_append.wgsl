// WG-KV append: writes the K and V (f32) of the step's n_tokens tokens, for one layer, into the local ring
// of the dual cache (f16 pages), and records each ring slot's position and admission flag for the
// attention mask. Token t (absolute position pos0 + t) of KV head h goes to ring slot (pos0 + t) % ring_tokens,
// i.e. logical index slot of the (slot, layer, head) block-table row, whose first ring_tokens / 16 pages
// are the ring. Any admitted token that slot held was promoted by wgkv_promote earlier in the step.
//
// binding 0: step, uniform { n_tokens, pos0 } (the op convention's shared StepParams)
// binding 1: sequence, uniform { slot } (the cache's sequence selector)
// binding 2: layer_params, uniform { layer }
// binding 3: k_new, f32[n_tokens][kv_heads * head_dim] (read), keys after RoPE
// binding 4: v_new, f32[n_tokens][kv_heads * head_dim] (read)
// binding 5: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 6: gate_flags, u32[max_tokens][layers][kv_heads] (read), the write gate's flags (policy 0 only;
//            another policy binds a placeholder)
// binding 7: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read_write): position * 2 + admitted
// binding 32…: pool shards (read_write), see the generated block below.
// One thread writes one f16 pair of K and of V; the grid strides over n_tokens * kv_heads * head_dim/2.

override head_dim: u32 = 64u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override max_pages: u32 = 1u;
override pool_pages_per_shard: u32 = 1u;
override ring_tokens: u32 = 16u;
const PAGE_TOKENS: u32 = 16u;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }
struct Sequence { slot: u32, pad0: u32, pad1: u32, pad2: u32 }
struct LayerParams { layer: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> sequence: Sequence;
@group(0) @binding(2) var<uniform> layer_params: LayerParams;
@group(0) @binding(3) var<storage, read> k_new: array<f32>;
@group(0) @binding(4) var<storage, read> v_new: array<f32>;
@group(0) @binding(5) var<storage, read> block_table: array<u32>;
@group(0) @binding(6) var<storage, read> gate_flags: array<u32>;
@group(0) @binding(7) var<storage, read_write> slot_info: array<u32>;

{{POOL}}

// #include admission_rule

// Whether token t of the step (position pos) of (layer, head) is admitted: the gate's flag, or the rule.
fn admitted(t: u32, layer: u32, head: u32, pos: u32) -> bool {
  if (policy == 0u) { return gate_flags[(t * layers + layer) * kv_heads + head] != 0u; }
  return rule_admits(layer, head, pos);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let half_dim = head_dim / 2u;
  let total = step.n_tokens * kv_heads * half_dim;
  let stride = groups.x * 64u;
  let layer = layer_params.layer;
  for (var i = gid.x; i < total; i += stride) {
    let pair = i % half_dim;
    let head = (i / half_dim) % kv_heads;
    let t = i / (half_dim * kv_heads);
    let row = (sequence.slot * layers + layer) * kv_heads + head;
    let pos = step.pos0 + t;
    let index = pos % ring_tokens;
    let page = block_table[row * max_pages + index / PAGE_TOKENS];
    let word = (index % PAGE_TOKENS) * half_dim + pair;
    let src = t * kv_heads * head_dim + head * head_dim + 2u * pair;
    pool_store(page, word, pack2x16float(vec2f(k_new[src], k_new[src + 1u])));
    pool_store(page, PAGE_TOKENS * half_dim + word, pack2x16float(vec2f(v_new[src], v_new[src + 1u])));
    if (pair == 0u) {
      slot_info[row * ring_tokens + index] = pos * 2u + select(0u, 1u, admitted(t, layer, head, pos));
    }
  }
}
