// Greedy sampling: the index of the largest value of each logits row, ties going to the lowest index
// (like a sequential scan with `>`). One dispatch, grid (N_BLOCKS, rows): workgroup (b, row) finds the best
// of block b (BLOCK = WG · PER_THREAD values) of the row and writes it to `partials`; the last workgroup of
// the row to finish (counted in `arrivals`) folds the row's N_BLOCKS partial results and writes the token
// id. storageBarrier() orders the partial's write before the count (device-scope release) and the count
// before the last one's reads (acquire), as wgpu lowers it (device scope; see wgsl/flash_decode.wgsl).
// Rows >= params.nRows are skipped. NaN logits are not supported (WGSL may assume there are none).
//
//   binding 0: params, uniform Params { nRows }
//   binding 1: partials, Best[maxRows][N_BLOCKS] (read-write)
//   binding 2: logits, f32 rows of ROW_STRIDE values, the first VOCAB of each are compared (read)
//   binding 3: tokens, u32[maxRows] (write): the winning index per row
//   binding 4: arrivals, atomic<u32>[maxRows] (read-write): blocks of the row done in this dispatch; zero
//              between dispatches (the last one resets it)

override VOCAB: u32 = 1u;
override ROW_STRIDE: u32 = 1u;
override N_BLOCKS: u32 = 1u;
override PER_THREAD: u32 = 16u;
override WG: u32 = 256u;

struct Params { nRows: u32, _pad0: u32, _pad1: u32, _pad2: u32 }
struct Best { value: f32, index: u32 }

const NO_INDEX: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;

// Whether (v, i) beats (w, j): larger value, or equal value and lower index.
fn beats(v: f32, i: u32, w: f32, j: u32) -> bool {
  return v > w || (v == w && i < j);
}

// Folds the per-invocation candidates in workgroup memory; the winner ends in slot 0.
fn reduce_best(lane: u32) -> Best {
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lane < stride) {
      let v = best_value[lane + stride];
      let i = best_index[lane + stride];
      if (beats(v, i, best_value[lane], best_index[lane])) {
        best_value[lane] = v;
        best_index[lane] = i;
      }
    }
  }
  workgroupBarrier();
  return Best(best_value[0], best_index[0]);
}

fn minus_infinity() -> f32 {
  return bitcast<f32>(0xff800000u);
}

@group(0) @binding(1) var<storage, read_write> partials: array<Best>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(4) var<storage, read_write> arrivals: array<atomic<u32>>;

var<workgroup> last_arrival: u32; // 1 in the last workgroup of its row

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let row = wg.y;
  if (row >= params.nRows) { return; }
  let start = wg.x * WG * PER_THREAD;
  let end = min(start + WG * PER_THREAD, VOCAB);
  var v = minus_infinity();
  var i = NO_INDEX;
  // Indices grow along each invocation's walk, so a strict `>` keeps the lowest index of a tie.
  for (var k = start + lane; k < end; k += WG) {
    let x = logits[row * ROW_STRIDE + k];
    if (x > v || i == NO_INDEX) {
      v = x;
      i = k;
    }
  }
  best_value[lane] = v;
  best_index[lane] = i;
  let best = reduce_best(lane);
  if (lane == 0u) { partials[row * N_BLOCKS + wg.x] = best; }
  storageBarrier(); // release: the partial before the arrival
  if (lane == 0u) { last_arrival = select(0u, 1u, atomicAdd(&arrivals[row], 1u) + 1u == N_BLOCKS); }
  if (workgroupUniformLoad(&last_arrival) == 0u) { return; }
  storageBarrier(); // acquire: the other blocks' partials after their arrivals
  if (lane == 0u) { atomicStore(&arrivals[row], 0u); }
  v = minus_infinity();
  i = NO_INDEX;
  for (var b = lane; b < N_BLOCKS; b += WG) {
    let p = partials[row * N_BLOCKS + b];
    if (beats(p.value, p.index, v, i)) {
      v = p.value;
      i = p.index;
    }
  }
  best_value[lane] = v;
  best_index[lane] = i;
  let winner = reduce_best(lane);
  if (lane == 0u) { tokens[row] = winner.index; }
}
