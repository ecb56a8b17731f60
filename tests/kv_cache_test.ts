import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import { BadFlagError, OutOfMemoryError, UnsupportedError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { BlockTables, NO_PAGE } from "../src/kv/block_table.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { fullCachePages, PAGE_TOKENS, PagePool, pagesForTokens } from "../src/kv/page_pool.ts";
import { planPoolShards } from "../src/kv/pool_storage.ts";

Deno.test("kv page pool: allocate is all-or-nothing, release returns pages, double release throws", () => {
  const pool = new PagePool(10);
  const a = pool.allocate(4);
  deepEqual([...a], [0, 1, 2, 3]);
  throws(
    () => pool.allocate(7),
    (e: Error) => e instanceof OutOfMemoryError && /needs 7 more pages.*only 6 of 10/.test(e.message),
  );
  equal(pool.freePages, 6);
  pool.release([a[1]]);
  equal(pool.usedPages, 3);
  throws(() => pool.release([a[1]]), /not in use/);
  equal(pool.allocate(1)[0], a[1]);
  throws(() => new PagePool(0), BadFlagError);
});

Deno.test("kv pool shards: planned from the limits, and a pool that cannot be bound says so with numbers", () => {
  const limits = {
    maxStorageBufferBindingSize: 1 << 20,
    maxBufferSize: 1 << 30,
    maxStorageBuffersPerShaderStage: 16,
  };
  const plan = planPoolShards(1000, 64, limits); // 4 KiB pages, 256 per shard
  equal(plan.pageBytes, 4096);
  equal(plan.pagesPerShard, 256);
  equal(plan.shards, 4);
  equal(planPoolShards(1000, 64, limits, 200 * 4096).shards, 5);
  throws(
    () => planPoolShards(fullCachePages(131072, 32, 8), 128, limits),
    (e: Error) =>
      e instanceof OutOfMemoryError &&
      /16\.00 GiB asked \(2097152 pages × 8192 B\).*at most 8 shards/.test(e.message),
  );
  throws(() => planPoolShards(10, 12, limits), UnsupportedError);
});

interface Shadow {
  open: boolean;
  lengths: number[]; // per (layer, head)
}

Deno.test("kv cache: random append / truncate / close keep every page owned once and no token lost", () => {
  const layers = 2, kvHeads = 3, seqSlots = 3, maxTokensPerHead = 70;
  const kv = KvCache.cpuOnly({ layers, kvHeads, headDim: 8, maxTokensPerHead, seqSlots, pages: 45 });
  const shadow: Shadow[] = Array.from(
    { length: seqSlots },
    () => ({ open: false, lengths: new Array(layers * kvHeads).fill(0) }),
  );
  let ooms = 0;
  const check = () => {
    const owner = new Map<number, string>();
    let used = 0;
    for (let s = 0; s < seqSlots; s++) {
      for (let l = 0; l < layers; l++) {
        for (let h = 0; h < kvHeads; h++) {
          const len = kv.length(s, l, h);
          equal(len, shadow[s].open ? shadow[s].lengths[l * kvHeads + h] : 0, `length of ${s}/${l}/${h}`);
          const pages = kv.pagesOf(s, l, h);
          equal(pages.length, pagesForTokens(len));
          for (const p of pages) {
            ok(!owner.has(p), `page ${p} owned by ${owner.get(p)} and ${s}/${l}/${h}`);
            ok(kv.pool.isUsed(p));
            owner.set(p, `${s}/${l}/${h}`);
          }
          used += pages.length;
        }
      }
    }
    equal(kv.pool.usedPages, used);
    equal(kv.pool.freePages + used, kv.pool.capacity);
  };
  for (let step = 0; step < 2000; step++) {
    const s = Math.floor(Math.random() * seqSlots);
    const sh = shadow[s];
    const r = Math.random();
    if (!sh.open) {
      if (r < 0.5) continue;
      const slot = kv.openSequence();
      shadow[slot].open = true;
      shadow[slot].lengths.fill(0);
    } else if (r < 0.45) {
      const n = Math.floor(Math.random() * 20);
      try {
        kv.append(s, n);
        for (let i = 0; i < sh.lengths.length; i++) sh.lengths[i] += n;
      } catch (e) {
        ok(e instanceof OutOfMemoryError, String(e));
        ooms++;
      }
    } else if (r < 0.7) {
      const l = Math.floor(Math.random() * layers), h = Math.floor(Math.random() * kvHeads);
      const n = Math.floor(Math.random() * 2 * PAGE_TOKENS);
      try {
        kv.appendHead(s, l, h, n);
        sh.lengths[l * kvHeads + h] += n;
      } catch (e) {
        ok(e instanceof OutOfMemoryError, String(e));
        ooms++;
      }
    } else if (r < 0.9) {
      const t = Math.floor(Math.random() * 50);
      kv.truncate(s, t);
      for (let i = 0; i < sh.lengths.length; i++) sh.lengths[i] = Math.min(sh.lengths[i], t);
    } else {
      kv.closeSequence(s);
      sh.open = false;
      sh.lengths.fill(0);
    }
    check();
  }
  ok(ooms > 0, "the random walk should hit a full pool at least once");
  equal(kv.stats().sequences, shadow.filter((x) => x.open).length);
});

Deno.test("kv cache: per-head limit and closed slots give clear errors", () => {
  const kv = KvCache.cpuOnly({ layers: 1, kvHeads: 1, headDim: 8, maxTokensPerHead: 20 });
  const s = kv.openSequence();
  throws(
    () => kv.openSequence(),
    (e: Error) => e instanceof OutOfMemoryError && /all 1 sequence slots/.test(e.message),
  );
  kv.append(s, 20);
  throws(
    () => kv.append(s, 1),
    (e: Error) => e instanceof OutOfMemoryError && /21 tokens per head but the limit is 20/.test(e.message),
  );
  kv.closeSequence(s);
  throws(() => kv.append(s, 1), (e: Error) => e instanceof BadFlagError);
  match(kv.pool.describe(8), /KV pages: 0\/2 used/);
});

Deno.test("block tables: a lengths-only change uploads the lengths and leaves the page lists alone", async () => {
  const gpu = await getGpu();
  const tables = new BlockTables({ seqSlots: 2, layers: 2, kvHeads: 3, maxPagesPerHead: 5 }, gpu);
  try {
    const row = tables.rowOf(1, 1, 2);
    const at = row * 5 + 4;
    tables.table[at] = 17;
    tables.lengths[row] = 65;
    tables.markDirty(1);
    tables.flush(gpu);
    equal((await gpu.readU32(tables.tableBuffer!))[at], 17);
    equal((await gpu.readU32(tables.lengthsBuffer!))[row], 65);
    // A change the caller says moved lengths only: the GPU page list keeps its old entry.
    tables.table[at] = 99;
    tables.lengths[row] = 66;
    tables.markDirty(1, false);
    tables.flush(gpu);
    equal((await gpu.readU32(tables.tableBuffer!))[at], 17);
    equal((await gpu.readU32(tables.lengthsBuffer!))[row], 66);
    // A page change after a lengths-only one, before a flush: both go up.
    tables.markDirty(1, false);
    tables.markDirty(1);
    tables.markDirty(1, false);
    tables.flush(gpu);
    equal((await gpu.readU32(tables.tableBuffer!))[at], 99);
  } finally {
    tables.destroy();
  }
});

Deno.test("block tables: page entries marked changed go up alone, in one range or a range per row", async () => {
  const gpu = await getGpu();
  // 3 slots of 2 × 2 rows of 20000 entries (80 KB a row).
  const P = 20000;
  const tables = new BlockTables({ seqSlots: 3, layers: 2, kvHeads: 2, maxPagesPerHead: P }, gpu);
  try {
    const a = tables.rowOf(1, 0, 0), b = tables.rowOf(1, 0, 1), c = tables.rowOf(1, 1, 1);
    // Entries of one row marked twice: one range over both marks.
    tables.table[b * P + 7] = 70;
    tables.table[b * P + 3] = 30;
    tables.table[b * P + 4] = 40;
    tables.lengths[b] = 65;
    tables.markPages(b, 7, 7);
    tables.markPages(b, 3, 4);
    tables.flush(gpu);
    let gpuTable = await gpu.readU32(tables.tableBuffer!);
    deepEqual([gpuTable[b * P + 7], gpuTable[b * P + 3], gpuTable[b * P + 4]], [70, 30, 40]);
    equal((await gpu.readU32(tables.lengthsBuffer!))[b], 65);
    // Entries of rows far apart (a range over both would be 200 KB): a range per row, so an entry between
    // them that changed without being marked stays as it was on the GPU.
    tables.table[a * P + 9000] = 90;
    tables.table[c * P + 5] = 50;
    tables.table[b * P + 100] = 11; // not marked
    tables.markPages(a, 9000, 9000);
    tables.markPages(c, 5, 5);
    tables.flush(gpu);
    gpuTable = await gpu.readU32(tables.tableBuffer!);
    deepEqual([gpuTable[a * P + 9000], gpuTable[c * P + 5], gpuTable[b * P + 100]], [90, 50, NO_PAGE]);
    // The whole slot marked: everything goes up, marked entries or not.
    tables.markPages(a, 1, 1);
    tables.markDirty(1);
    tables.flush(gpu);
    equal((await gpu.readU32(tables.tableBuffer!))[b * P + 100], 11);
  } finally {
    tables.destroy();
  }
});
