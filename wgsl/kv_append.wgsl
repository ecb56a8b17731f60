// KV append: writes the K and V (f32) of the n_tokens tokens of this step, for one layer, into their f16
// pages. Token t of the batch goes to logical index lengths[row] - n_tokens + t of its (slot, layer, head) row
// (lengths already include the new tokens); the block table gives the page.
//
// binding 0: step, uniform { n_tokens, pos0 } (the op convention's shared StepParams)
// binding 1: sequence, uniform { slot } (the KV cache's sequence selector)
// binding 2: layer_params, uniform { layer }
// binding 3: k_new, f32[n_tokens][kv_heads * head_dim] (read), keys after RoPE
// binding 4: v_new, f32[n_tokens][kv_heads * head_dim] (read)
// binding 5: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 6: lengths, u32[seq_slots][layers][kv_heads] (read)
// binding 32…: pool shards (read_write), see the generated block below.
// One thread writes one f16 pair of K and of V; the grid strides over n_tokens * kv_heads * head_dim/2.

override head_dim: u32 = 64u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override max_pages: u32 = 1u;
override pool_pages_per_shard: u32 = 1u;
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
@group(0) @binding(6) var<storage, read> lengths: array<u32>;

{{POOL}}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let half_dim = head_dim / 2u;
  let total = step.n_tokens * kv_heads * half_dim;
  let stride = groups.x * 64u;
  for (var i = gid.x; i < total; i += stride) {
    let pair = i % half_dim;
    let head = (i / half_dim) % kv_heads;
    let t = i / (half_dim * kv_heads);
    let row = (sequence.slot * layers + layer_params.layer) * kv_heads + head;
    let len = lengths[row];
    if (len < step.n_tokens) { continue; }
    let index = len - step.n_tokens + t;
    let page = block_table[row * max_pages + index / PAGE_TOKENS];
    let word = (index % PAGE_TOKENS) * half_dim + pair;
    let src = t * kv_heads * head_dim + head * head_dim + 2u * pair;
    pool_store(page, word, pack2x16float(vec2f(k_new[src], k_new[src + 1u])));
    pool_store(page, PAGE_TOKENS * half_dim + word, pack2x16float(vec2f(v_new[src], v_new[src + 1u])));
  }
}
