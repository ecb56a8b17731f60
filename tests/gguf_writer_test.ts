import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { existsSync } from "node:fs";
import { BadFlagError } from "../src/errors.ts";
import {
  array,
  bool,
  f32,
  f32s,
  f64,
  GGMLType,
  GGUFValueType,
  i16,
  i32,
  i32s,
  i64,
  i8,
  metadataOf,
  openGGUF,
  str,
  strings,
  tensorByteSize,
  TYPE_TABLE,
  u16,
  u32,
  u32s,
  u64,
  u8,
  writeGGUF,
} from "../src/gguf/mod.ts";
import type { MetadataEntry, TensorEntry } from "../src/gguf/mod.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) crypto.getRandomValues(out.subarray(at, Math.min(n, at + 65536)));
  return out;
}

const f32r = Math.fround;

const METADATA: Record<string, MetadataEntry> = {
  "general.architecture": str("llama"),
  "t.u8": u8(250),
  "t.i8": i8(-100),
  "t.u16": u16(65000),
  "t.i16": i16(-32000),
  "t.u32": u32(4_000_000_000),
  "t.i32": i32(-2_000_000_000),
  "t.f32": f32(f32r(1e-5)),
  "t.bool.true": bool(true),
  "t.bool.false": bool(false),
  "t.string": str("héllo ▁wörld 🦙"),
  "t.string.empty": str(""),
  "t.u64.small": u64(123456789),
  "t.u64.big": u64(2n ** 64n - 1n),
  "t.i64.small": i64(-42),
  "t.i64.big": i64(-(2n ** 63n)),
  "t.f64": f64(Math.PI),
  "t.arr.strings": strings(["a", "", "▁the", "<0x0A>"]),
  "t.arr.f32": f32s([0.5, -1.25, f32r(0.1)]),
  "t.arr.i32": i32s([1, -2, 3]),
  "t.arr.u32": u32s([0, 4294967295]),
  "t.arr.u8": array(GGUFValueType.UINT8, [0, 1, 255]),
  "t.arr.i8": array(GGUFValueType.INT8, [-128, 127]),
  "t.arr.u16": array(GGUFValueType.UINT16, [65535]),
  "t.arr.i16": array(GGUFValueType.INT16, [-32768]),
  "t.arr.bool": array(GGUFValueType.BOOL, [true, false, true]),
  "t.arr.u64": array(GGUFValueType.UINT64, [1, 2n ** 60n]),
  "t.arr.i64": array(GGUFValueType.INT64, [-1, -(2n ** 60n)]),
  "t.arr.f64": array(GGUFValueType.FLOAT64, [1e300, -0.1]),
  "t.arr.empty": array(GGUFValueType.INT32, []),
};

/** What the reader gives back for a writer entry: safe 64-bit integers become numbers. */
function expected(entry: MetadataEntry): unknown {
  const norm = (v: unknown) =>
    typeof v === "bigint" && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  return Array.isArray(entry.value) ? entry.value.map(norm) : norm(entry.value);
}

Deno.test("gguf writer: metadata of every value type and tensors of every type round-trip", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const alignment of [32, 64]) {
      const path = `${dir}/all.gguf`;
      const tensors: TensorEntry[] = [];
      const datas = new Map<string, Uint8Array>();
      for (const info of TYPE_TABLE.values()) {
        // odd sizes: 3 rows of (1 or 3 blocks) so tensor ends are rarely aligned
        const shape = [info.blockSize * (info.blockSize === 1 ? 7 : 1), 3];
        const bytes = randomBytes(tensorByteSize(info.type, shape[0] * shape[1]));
        const name = `t.${info.name}`;
        datas.set(name, bytes);
        // alternate plain data, a callback, and a chunked async provider
        const k = tensors.length % 3;
        const data = k === 0 ? bytes : k === 1 ? () => bytes : async function* () {
          yield bytes.subarray(0, 5);
          await Promise.resolve();
          yield bytes.subarray(5);
        };
        tensors.push({ name, type: info.type, shape, data });
      }
      datas.set("t.4d", randomBytes(60));
      tensors.push({ name: "t.4d", type: GGMLType.F16, shape: [2, 3, 1, 5], data: datas.get("t.4d")! });
      const metadata = alignment === 32 ? METADATA : { ...METADATA, "general.alignment": u32(alignment) };
      await writeGGUF(path, { metadata, tensors });
      ok(!existsSync(`${path}.tmp`));
      const g = await openGGUF(path);
      try {
        equal(g.version, 3);
        equal(g.alignment, alignment);
        deepEqual(Object.keys(g.metadata), Object.keys(metadata));
        for (const [key, entry] of Object.entries(metadata)) {
          deepEqual(g.metadata[key], expected(entry), key);
          equal(g.metadataTypes[key].type, entry.type, key);
          if (entry.type === GGUFValueType.ARRAY) {
            equal(g.metadataTypes[key].elementType, entry.elementType, key);
          }
        }
        equal(g.tensors.length, tensors.length);
        for (const t of tensors) {
          const info = g.tensor(t.name);
          equal(info.type, t.type);
          deepEqual(info.shape, t.shape);
          equal(info.offset % alignment, 0);
          deepEqual(await g.readBytes(info), datas.get(t.name)!, t.name);
        }
        // rewrite through metadataOf: identical metadata again
        await writeGGUF(`${dir}/copy.gguf`, { metadata: metadataOf(g) });
        const copy = await openGGUF(`${dir}/copy.gguf`);
        deepEqual(copy.metadata, g.metadata);
        deepEqual(copy.metadataTypes, g.metadataTypes);
        copy.close();
      } finally {
        g.close();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gguf writer: bad input is a BadFlagError and leaves no file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/bad.gguf`;
    const meta = { "general.architecture": str("llama") };
    const cases: [string, Parameters<typeof writeGGUF>[1]][] = [
      ["u8 range", { metadata: { k: u8(256) } }],
      ["i32 fraction", { metadata: { k: i32(1.5) } }],
      ["u64 negative", { metadata: { k: u64(-1n) } }],
      ["string type", { metadata: { k: { type: GGUFValueType.STRING, value: 5 } } }],
      ["alignment", { metadata: { "general.alignment": u32(48) } }],
      ["short data", {
        metadata: meta,
        tensors: [{ name: "w", type: GGMLType.F32, shape: [4], data: new Uint8Array(15) }],
      }],
      ["long data", {
        metadata: meta,
        tensors: [{
          name: "w",
          type: GGMLType.F32,
          shape: [4],
          data: () => [new Uint8Array(16), new Uint8Array(1)],
        }],
      }],
      ["block size", {
        metadata: meta,
        tensors: [{ name: "w", type: GGMLType.Q4_0, shape: [48, 2], data: new Uint8Array(54) }],
      }],
      ["zero dim", {
        metadata: meta,
        tensors: [{ name: "w", type: GGMLType.F32, shape: [4, 0], data: new Uint8Array(0) }],
      }],
      ["duplicate", {
        metadata: meta,
        tensors: [
          { name: "w", type: GGMLType.F32, shape: [1], data: new Uint8Array(4) },
          { name: "w", type: GGMLType.F32, shape: [1], data: new Uint8Array(4) },
        ],
      }],
    ];
    for (const [what, opts] of cases) {
      await rejects(
        writeGGUF(path, opts),
        (e: Error) => e instanceof BadFlagError && !e.message.includes("\n"),
        what,
      );
      ok(!existsSync(path) && !existsSync(`${path}.tmp`), what);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

fixtureTest(
  "gguf writer: rewriting stories260K keeps metadata and tensor bytes",
  ["stories260K.gguf"],
  async () => {
    const dir = await Deno.makeTempDir();
    const src = await openGGUF(fixture("stories260K.gguf"));
    try {
      const path = `${dir}/copy.gguf`;
      await writeGGUF(path, {
        metadata: metadataOf(src),
        tensors: src.tensors.map((t) => ({
          name: t.name,
          type: t.type,
          shape: t.shape,
          data: () => src.readBytes(t),
        })),
      });
      const copy = await openGGUF(path);
      try {
        deepEqual(copy.metadata, src.metadata);
        equal(copy.dataOffset, src.dataOffset);
        deepEqual(copy.tensors, src.tensors);
        equal(copy.fileSize, src.fileSize);
        deepEqual(await Deno.readFile(path), await Deno.readFile(src.path));
      } finally {
        copy.close();
      }
    } finally {
      src.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
