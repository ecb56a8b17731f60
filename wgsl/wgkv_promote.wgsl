// WG-KV promotion: copies the K and V of ring tokens that are about to be overwritten and were admitted
// into their head's global pages, as planned on the CPU (DualCache.beginStep). Runs once per step, for all
// layers and heads, before the step's appends.
//
// binding 0: plan, u32[1 + 2 * max_promotions] (read): count, then (source, destination) pairs of token
//            addresses page * 16 + token
// binding 32…: pool shards (read_write), see the generated block below.
// One thread copies one u32 word (an f16 pair) of K and of V; the grid strides over count * head_dim/2.

override head_dim: u32 = 64u;
override pool_pages_per_shard: u32 = 1u;
const PAGE_TOKENS: u32 = 16u;

@group(0) @binding(0) var<storage, read> plan: array<u32>;

{{POOL}}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let half_dim = head_dim / 2u;
  let total = plan[0] * half_dim;
  let stride = groups.x * 64u;
  for (var i = gid.x; i < total; i += stride) {
    let c = i / half_dim;
    let w = i % half_dim;
    let src = plan[1u + 2u * c];
    let dst = plan[2u + 2u * c];
    let src_word = (src % PAGE_TOKENS) * half_dim + w;
    let dst_word = (dst % PAGE_TOKENS) * half_dim + w;
    let src_page = src / PAGE_TOKENS;
    let dst_page = dst / PAGE_TOKENS;
    pool_store(dst_page, dst_word, pool_load(src_page, src_word));
    pool_store(dst_page, PAGE_TOKENS * half_dim + dst_word, pool_load(src_page, PAGE_TOKENS * half_dim + src_word));
  }
}
