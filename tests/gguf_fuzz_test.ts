/**
 * Robustness of openGGUF: seeded random mutations of stories260K.gguf (byte flips, header fields
 * overwritten with huge or edge values, truncations) must each load, or fail with a one-line WgkvError
 * naming the file, quickly and without large allocations. Set WGKV_FUZZ_SEED to replay a run and
 * WGKV_FUZZ_VERBOSE=1 to print every case and error.
 */
import { ok } from "node:assert/strict";
import { WgkvError } from "../src/errors.ts";
import { openGGUF } from "../src/gguf/mod.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const CASES = 300;
const CASE_LIMIT_MS = 2000;
const TOTAL_LIMIT_MS = 60000;
const MEMORY_LIMIT = 2 ** 30;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Field {
  at: number;
  width: 4 | 8;
  what: string;
}

/** Offsets of the count, length, type, dimension and offset fields of a GGUF v3 header. */
function headerFields(bytes: Uint8Array): { fields: Field[]; headerEnd: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [
    { at: 4, width: 4, what: "version" },
    { at: 8, width: 8, what: "tensor_count" },
    { at: 16, width: 8, what: "kv_count" },
  ];
  let at = 24;
  const u64 = () => {
    const v = Number(view.getBigUint64(at, true));
    at += 8;
    return v;
  };
  const u32 = () => {
    const v = view.getUint32(at, true);
    at += 4;
    return v;
  };
  const string = (what: string, record: boolean) => {
    if (record) fields.push({ at, width: 8, what: `${what} length` });
    const length = u64();
    at += length;
  };
  const SIZES: Record<number, number> = {
    0: 1,
    1: 1,
    2: 2,
    3: 2,
    4: 4,
    5: 4,
    6: 4,
    7: 1,
    10: 8,
    11: 8,
    12: 8,
  };
  const value = (type: number, what: string, record: boolean) => {
    if (type === 8) string(what, record);
    else if (type === 9) {
      fields.push({ at, width: 4, what: `${what} element type` });
      const elementType = u32();
      fields.push({ at, width: 8, what: `${what} array length` });
      const n = u64();
      for (let i = 0; i < n; i++) value(elementType, `${what}[${i}]`, i < 3 || i === n - 1);
    } else {
      if (record && (SIZES[type] === 4 || SIZES[type] === 8)) {
        fields.push({ at, width: SIZES[type] as 4 | 8, what });
      }
      at += SIZES[type];
    }
  };
  const kvCount = Number(view.getBigUint64(16, true));
  for (let k = 0; k < kvCount; k++) {
    string(`key ${k}`, true);
    fields.push({ at, width: 4, what: `key ${k} value type` });
    value(u32(), `value ${k}`, true);
  }
  const tensorCount = Number(view.getBigUint64(8, true));
  for (let t = 0; t < tensorCount; t++) {
    string(`tensor ${t} name`, true);
    fields.push({ at, width: 4, what: `tensor ${t} n_dims` });
    const nDims = u32();
    for (let d = 0; d < nDims; d++) {
      fields.push({ at, width: 8, what: `tensor ${t} dim ${d}` });
      at += 8;
    }
    fields.push({ at, width: 4, what: `tensor ${t} type` });
    at += 4;
    fields.push({ at, width: 8, what: `tensor ${t} offset` });
    at += 8;
  }
  return { fields, headerEnd: at };
}

fixtureTest(
  "gguf fuzz: mutated stories260K loads or fails with a one-line WgkvError",
  ["stories260K.gguf"],
  async () => {
    const seed = Number(Deno.env.get("WGKV_FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`gguf fuzz seed ${seed} (replay with WGKV_FUZZ_SEED=${seed})`);
    const random = mulberry32(seed);
    const int = (n: number) => Math.floor(random() * n);
    const original = await Deno.readFile(fixture("stories260K.gguf"));
    const { fields, headerEnd } = headerFields(original);
    const size = original.length;
    const HUGE = [
      0xffffffffffffffffn,
      0x8000000000000000n,
      0x7fffffffffffffffn,
      0x100000000n,
      0xffffffffn,
      0x80000000n,
      0x7fffffffn,
      BigInt(size),
      BigInt(size - 1),
      BigInt(size + 1),
      0n,
      1n,
      2n,
      13n,
      31n,
      33n,
      1000000n,
    ];

    const dir = await Deno.makeTempDir({ prefix: "wgkv_fuzz_" });
    const started = performance.now();
    const outcomes = { loaded: 0, rejected: 0 };
    try {
      for (let c = 0; c < CASES; c++) {
        let bytes = original.slice();
        const kinds: string[] = [];
        const steps = 1 + int(3);
        for (let s = 0; s < steps; s++) {
          const kind = int(4);
          if (kind === 0) {
            // flip a few bytes, mostly in the header
            const flips = 1 + int(8);
            for (let i = 0; i < flips; i++) {
              const at = random() < 0.9 ? int(headerEnd) : int(bytes.length);
              bytes[at] ^= 1 << int(8);
            }
            kinds.push(`flip×${flips}`);
          } else if (kind === 1 || kind === 2) {
            // overwrite a structural field with an edge value (or random bits)
            const field = fields[int(fields.length)];
            if (field.at + field.width > bytes.length) continue;
            const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
            let value = random() < 0.8 ? HUGE[int(HUGE.length)] : BigInt(int(2 ** 32)) * BigInt(int(2 ** 32));
            if (field.width === 4) value &= 0xffffffffn;
            if (field.width === 4) view.setUint32(field.at, Number(value), true);
            else view.setBigUint64(field.at, value, true);
            kinds.push(`${field.what}=${value}`);
          } else {
            // truncate, mostly inside the header
            const length = random() < 0.7 ? int(headerEnd + 64) : int(bytes.length);
            bytes = bytes.slice(0, length);
            kinds.push(`truncate ${length}`);
          }
        }
        if (Deno.env.get("WGKV_FUZZ_VERBOSE")) console.log(`case ${c}: ${kinds.join(", ")}`);
        const path = `${dir}/case${c}.gguf`;
        await Deno.writeFile(path, bytes);
        const t0 = performance.now();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`timeout after ${CASE_LIMIT_MS} ms`)), CASE_LIMIT_MS);
        });
        const attempt = (async () => {
          const g = await openGGUF(path);
          try {
            for (const t of g.tensors) await g.readBytes(t);
            if (g.tensors.length > 0) await g.readF32(g.tensors[0]);
          } finally {
            g.close();
          }
        })();
        try {
          await Promise.race([attempt, timeout]);
          outcomes.loaded++;
        } catch (e) {
          const context = `case ${c} (seed ${seed}: ${kinds.join(", ")})`;
          if (!(e instanceof WgkvError)) {
            throw new Error(`${context}: threw ${e instanceof Error ? e.stack : String(e)}`);
          }
          ok(!e.message.includes("\n"), `${context}: multi-line message ${JSON.stringify(e.message)}`);
          ok(e.message.includes(path), `${context}: message does not name the file: ${e.message}`);
          if (Deno.env.get("WGKV_FUZZ_VERBOSE")) console.log(`  ${e.name}: ${e.message}`);
          outcomes.rejected++;
        } finally {
          clearTimeout(timer);
        }
        const ms = performance.now() - t0;
        ok(ms < CASE_LIMIT_MS, `case ${c} took ${ms.toFixed(0)} ms (${kinds.join(", ")})`);
        // This isolate's heap and array buffers, not the process's resident memory: tests run in parallel
        // in one process, and a GPU driver maps gigabytes of its own.
        const { heapTotal, external } = Deno.memoryUsage();
        ok(
          heapTotal + external < MEMORY_LIMIT,
          `case ${c}: heap ${(heapTotal / 2 ** 20).toFixed(0)} MiB, array buffers ${
            (external / 2 ** 20).toFixed(0)
          } MiB (${kinds.join(", ")})`,
        );
        await Deno.remove(path);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    const total = performance.now() - started;
    console.log(
      `gguf fuzz: ${outcomes.loaded} loaded, ${outcomes.rejected} rejected in ${total.toFixed(0)} ms`,
    );
    ok(total < TOTAL_LIMIT_MS, `fuzz run took ${total.toFixed(0)} ms`);
  },
);
