import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { BadFileError, UnsupportedError } from "../src/errors.ts";
import { readGate, writeGate } from "../src/gate/format.ts";
import { gateFromStateDict, importGate, lambdaFromFileName } from "../src/gate/import.ts";
import { ggufToHf, hfToGguf } from "../src/gate/key_order.ts";
import { gateScores } from "../src/gate/reference.ts";
import { parseTorchCheckpoint, readTorchCheckpoint } from "../src/gate/torch.ts";
import { crc32, ZipArchive } from "../src/gate/zip.ts";
import { bf16ToF32, f32ToBf16 } from "../src/gguf/half.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const FP32 = "gate/stories260K-gate-fp32.pt";
const BF16 = "gate/stories260K-gate-bf16.pt";
const VALUES = "gate/stories260K-gate.json";
const CASES = "gate/stories260K-gate-cases.json";
const MODEL = "stories260K.gguf";
const ALL = [FP32, BF16, VALUES, CASES, MODEL];

interface ValuesJson {
  L: number;
  Hkv: number;
  head_dim: number;
  tensors: Record<string, { shape: number[]; values: number[] }>;
}
interface CasesJson {
  cases: { layer: number; pre_key: number[][][]; post_key: number[][][]; g: number[][] }[];
}

const readJson = async <T>(rel: string): Promise<T> => JSON.parse(await Deno.readTextFile(fixture(rel))) as T;
const toBf16 = (v: number) => bf16ToF32(f32ToBf16(Math.fround(v)));

/** [h][t][d] nested arrays → f32 [t][h][d]. */
function tokenMajor(k: number[][][]): Float32Array {
  const H = k.length, T = k[0].length, D = k[0][0].length;
  const out = new Float32Array(T * H * D);
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < T; t++) for (let d = 0; d < D; d++) out[(t * H + h) * D + d] = k[h][t][d];
  }
  return out;
}

// ---- a tiny stored/deflated ZIP writer and pickle assembler, to make checkpoints the fixtures lack ----

async function deflateRaw(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("deflate-raw"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function makeZip(files: { name: string; data: Uint8Array; deflate?: boolean }[]): Promise<Uint8Array> {
  const enc = new TextEncoder();
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  for (const f of files) {
    const name = enc.encode(f.name);
    const body = f.deflate ? await deflateRaw(f.data) : f.data;
    const method = f.deflate ? 8 : 0;
    const crc = crc32(f.data);
    const local = new Uint8Array(30 + name.length + body.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(8, method, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, body.length, true);
    lv.setUint32(22, f.data.length, true);
    lv.setUint16(26, name.length, true);
    local.set(name, 30);
    local.set(body, 30 + name.length);
    const central = new Uint8Array(46 + name.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(10, method, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, body.length, true);
    cv.setUint32(24, f.data.length, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, offset, true);
    central.set(name, 46);
    locals.push(local);
    centrals.push(central);
    offset += local.length;
  }
  const dirSize = centrals.reduce((n, c) => n + c.length, 0);
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, files.length, true);
  ev.setUint16(10, files.length, true);
  ev.setUint32(12, dirSize, true);
  ev.setUint32(16, offset, true);
  const out = new Uint8Array(offset + dirSize + 22);
  let o = 0;
  for (const part of [...locals, ...centrals, eocd]) {
    out.set(part, o);
    o += part.length;
  }
  return out;
}

/** Pickle bytes from a list of ops: strings become BINUNICODE, numbers BININT1, arrays raw bytes. */
function pickle(...ops: (string | number | number[])[]): Uint8Array {
  const out: number[] = [0x80, 2];
  for (const op of ops) {
    if (typeof op === "string") {
      const b = new TextEncoder().encode(op);
      out.push(0x58, b.length & 0xff, (b.length >> 8) & 0xff, 0, 0, ...b);
    } else if (typeof op === "number") {
      out.push(0x4b, op);
    } else out.push(...op);
  }
  out.push(0x2e);
  return new Uint8Array(out);
}
const ascii = (s: string) => [...new TextEncoder().encode(s)];
const GLOBAL = (m: string, n: string) => [0x63, ...ascii(`${m}\n${n}\n`)];
const MARK = [0x28], TUPLE = [0x74], REDUCE = [0x52], EMPTY_TUPLE = [0x29];

/** A one-tensor checkpoint: `name` of `shape`/`stride` over a FloatStorage of `values`. */
function tensorPickle(
  name: string,
  numel: number,
  offset: number,
  shape: number[],
  stride: number[],
): Uint8Array {
  const tuple = (xs: number[]) => [...MARK, ...xs.flatMap((x) => [0x4b, x]), ...TUPLE];
  return pickle(
    [0x7d], // EMPTY_DICT
    MARK,
    name,
    GLOBAL("torch._utils", "_rebuild_tensor_v2"),
    MARK,
    MARK,
    "storage",
    GLOBAL("torch", "FloatStorage"),
    "0",
    "cpu",
    numel,
    TUPLE,
    [0x51], // BINPERSID
    offset,
    tuple(shape),
    tuple(stride),
    [0x89], // NEWFALSE
    GLOBAL("collections", "OrderedDict"),
    EMPTY_TUPLE,
    REDUCE,
    TUPLE,
    REDUCE,
    [0x75], // SETITEMS
  );
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

// ---- tests ----

fixtureTest(
  "gate import: both checkpoints hold exactly the JSON values (bf16 as bf16→f32)",
  ALL,
  async () => {
    const ref = await readJson<ValuesJson>(VALUES);
    for (const [rel, round] of [[FP32, Math.fround], [BF16, toBf16]] as const) {
      const tensors = await readTorchCheckpoint(fixture(rel));
      equal(tensors.size, 6 * ref.L, rel);
      for (const [name, want] of Object.entries(ref.tensors)) {
        const got = tensors.get(name);
        ok(got, `${rel}: ${name} missing`);
        deepEqual(got.shape, want.shape, name);
        equal(got.dtype, rel === FP32 ? "float32" : "bfloat16");
        for (let i = 0; i < want.values.length; i++) {
          if (got.data[i] !== round(want.values[i])) {
            throw new Error(`${rel}: ${name}[${i}] = ${got.data[i]}, expected ${round(want.values[i])}`);
          }
        }
      }
    }
  },
);

fixtureTest("gate import: HF-order and GGUF-order gates reproduce the reference scores", ALL, async () => {
  const { cases } = await readJson<CasesJson>(CASES);
  for (const [rel, tol] of [[FP32, 1e-5], [BF16, 1e-2]] as const) {
    const hf = await importGate(fixture(rel), fixture(MODEL), { keyOrder: "hf" });
    const gguf = await importGate(fixture(rel), fixture(MODEL));
    equal(hf.keyOrder, "hf");
    equal(gguf.keyOrder, "gguf");
    equal(gguf.inner, 32);
    for (const c of cases) {
      const pre = tokenMajor(c.pre_key), post = tokenMajor(c.post_key);
      const T = c.pre_key[0].length, H = c.pre_key.length;
      const sHf = gateScores(hf, c.layer, pre, post, T);
      const sGguf = gateScores(gguf, c.layer, hfToGguf(pre, 8), hfToGguf(post, 8), T);
      for (let h = 0; h < H; h++) {
        for (let t = 0; t < T; t++) {
          const want = c.g[h][t];
          const a = sHf[h * T + t], b = sGguf[h * T + t];
          ok(
            Math.abs(a - want) <= tol,
            `${rel} layer ${c.layer} h${h} t${t}: HF gate ${a}, expected ${want}`,
          );
          ok(Math.abs(b - a) <= 1e-6, `${rel} layer ${c.layer} h${h} t${t}: GGUF gate ${b}, HF gate ${a}`);
        }
      }
    }
    // The permutation itself: norm weights and both W1 blocks, exactly.
    const l = 3;
    deepEqual(gguf.layers[l].preNorm, hfToGguf(hf.layers[l].preNorm, 8));
    deepEqual(ggufToHf(gguf.layers[l].w1, 8), hf.layers[l].w1);
    deepEqual(gguf.layers[l].b1, hf.layers[l].b1);
  }
});

fixtureTest("gate file: write/read round trip, model fit and hash check", ALL, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = await openGGUF(fixture(MODEL));
    const other = await openGGUF(fixture("llama-2-tiny-random.gguf"));
    try {
      const gate = await importGate(fixture(FP32), fixture(MODEL), {
        window: 48,
        threshold: 0.25,
        lambda: 0.16,
      });
      const path = `${dir}/g.gguf`;
      await writeGate(path, gate);
      const back = await readGate(path, model);
      equal(back.window, 48);
      equal(back.threshold, Math.fround(0.25));
      equal(back.lambda, Math.fround(0.16));
      equal(back.baseKHash, gate.baseKHash);
      deepEqual(back.layers, gate.layers);
      await rejects(
        readGate(path, other),
        (e) => e instanceof BadFileError && /does not fit model/.test(e.message),
      );
      // Same shapes, other K bytes: the hash names both files.
      const forged = `${dir}/forged.gguf`;
      await writeGate(forged, { ...gate, baseKHash: "0".repeat(64) });
      await rejects(
        readGate(forged, model),
        (e) =>
          e instanceof BadFileError && e.message.includes(forged) && e.message.includes(model.path) &&
          !e.message.includes("\n"),
      );
      ok(await readGate(forged, model, { skipHashCheck: true }));
      // A model file is not a gate file.
      await rejects(
        readGate(fixture(MODEL)),
        (e) => e instanceof BadFileError && /wgkv-gate/.test(e.message),
      );
    } finally {
      model.close();
      other.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

fixtureTest("gate import: corrupt or mismatched checkpoints are one-line BadFileErrors", ALL, async () => {
  const bytes = await Deno.readFile(fixture(FP32));
  const model = await openGGUF(fixture(MODEL));
  const other = await openGGUF(fixture("llama-2-tiny-random.gguf"));
  const oneLine = (re: RegExp) => (e: unknown) =>
    e instanceof BadFileError && re.test(e.message) && !e.message.includes("\n");
  try {
    // Truncated archives.
    for (const n of [10, 1000, bytes.length - 30, bytes.length - 200]) {
      await rejects(parseTorchCheckpoint(bytes.subarray(0, n), "cut.pt"), oneLine(/^cut\.pt: /));
    }
    // A flipped data byte fails the CRC.
    const zip = new ZipArchive(bytes, "x.pt");
    const entry = zip.get("stories260K-gate-fp32/data/2")!;
    const flipped = bytes.slice();
    const lh = new DataView(bytes.buffer, bytes.byteOffset + entry.localHeaderOffset);
    flipped[entry.localHeaderOffset + 30 + lh.getUint16(26, true) + lh.getUint16(28, true) + 200] ^= 0x40;
    // Rebuild the archive with altered entries, so CRCs match and only the content is wrong.
    const rebuild = async (edit: (name: string, data: Uint8Array) => Uint8Array) => {
      const files = [];
      for (const e of zip.entries) files.push({ name: e.name, data: edit(e.name, await zip.extract(e)) });
      return makeZip(files);
    };
    const swapText = (data: Uint8Array, from: string, to: string) => {
      const s = new TextDecoder("latin1").decode(data);
      const i = s.indexOf(from);
      ok(i >= 0 && from.length === to.length);
      const out = data.slice();
      out.set(new TextEncoder().encode(to), i);
      return out;
    };
    const renamed = await rebuild((n, d) =>
      n.endsWith("data.pkl") ? swapText(d, "pre_key_norm", "pre_kex_norm") : d
    );
    await rejects(
      gateFromStateDict(await parseTorchCheckpoint(renamed, "renamed.pt"), "renamed.pt", model),
      oneLine(/renamed\.pt: unexpected key model\.layers\.0\.self_attn\.g_predictors\.pre_kex_norm\.weight/),
    );
    // Swap the names of conv1.bias and conv2.bias of layer 0: both present, shapes wrong.
    const swapped = await rebuild((n, d) => {
      if (!n.endsWith("data.pkl")) return d;
      const a = "layers.0.self_attn.g_predictors.conv1.bias",
        b = "layers.0.self_attn.g_predictors.conv2.bias";
      return swapText(
        swapText(swapText(d, a, "layers.0.self_attn.g_predictors.convX.bias"), b, a),
        "convX",
        "conv2",
      );
    });
    await rejects(
      gateFromStateDict(await parseTorchCheckpoint(swapped, "swapped.pt"), "swapped.pt", model),
      oneLine(
        /swapped\.pt: model\.layers\.0\.self_attn\.g_predictors\.conv1\.bias has shape \[4\], expected \[128\]/,
      ),
    );
    // The right checkpoint for another model.
    await rejects(
      gateFromStateDict(await parseTorchCheckpoint(bytes, "fp32.pt"), "fp32.pt", other),
      oneLine(/fp32\.pt: unexpected key model\.layers\.1\..*does not exist/),
    );
    // Wrong expand.
    await rejects(
      gateFromStateDict(await parseTorchCheckpoint(bytes, "fp32.pt"), "fp32.pt", model, { expand: 1.5 }),
      oneLine(/expand option to 4/),
    );
    // Corrupted data bytes: the CRC check catches them.
    await rejects(parseTorchCheckpoint(flipped, "flip.pt"), oneLine(/CRC-32 mismatch/));
    // A disallowed global and an unknown opcode.
    const evil = await makeZip([{
      name: "a/data.pkl",
      data: pickle(GLOBAL("os", "system"), "echo hi", [0x85], REDUCE),
    }]);
    await rejects(parseTorchCheckpoint(evil, "evil.pt"), oneLine(/global os\.system is not allowed/));
    const odd = await makeZip([{ name: "a/data.pkl", data: pickle([0x7d], [0x8f]) }]);
    await rejects(parseTorchCheckpoint(odd, "odd.pt"), oneLine(/opcode 0x8f .* is not supported/));
    await rejects(
      parseTorchCheckpoint(new TextEncoder().encode("not a zip at all, no"), "t.pt"),
      oneLine(/zip/),
    );
  } finally {
    model.close();
    other.close();
  }
});

Deno.test("torch reader: strided views, storage offsets and deflated entries", async () => {
  // Storage [0..11]; the tensor is the transpose of a 3×4 view starting at offset 0 → shape [4, 3], strides [1, 4].
  const storage = Array.from({ length: 12 }, (_, i) => i + 0.5);
  for (const deflate of [false, true]) {
    const zip = await makeZip([
      { name: "ck/data.pkl", data: tensorPickle("w", 12, 0, [4, 3], [1, 4]), deflate },
      { name: "ck/byteorder", data: new TextEncoder().encode("little") },
      { name: "ck/data/0", data: f32Bytes(storage), deflate },
    ]);
    const t = (await parseTorchCheckpoint(zip, "t.pt")).get("w")!;
    deepEqual(t.shape, [4, 3]);
    deepEqual([...t.data], [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11].map((i) => i + 0.5));
  }
  // Offset 5, shape [2, 3], strides [3, 1] → elements 5..10.
  const zip = await makeZip([
    { name: "ck/data.pkl", data: tensorPickle("w", 12, 5, [2, 3], [3, 1]) },
    { name: "ck/data/0", data: f32Bytes(storage) },
  ]);
  deepEqual([...(await parseTorchCheckpoint(zip, "t.pt")).get("w")!.data], [5.5, 6.5, 7.5, 8.5, 9.5, 10.5]);
  // A view reaching past its storage.
  const past = await makeZip([
    { name: "ck/data.pkl", data: tensorPickle("w", 12, 7, [2, 3], [3, 1]) },
    { name: "ck/data/0", data: f32Bytes(storage) },
  ]);
  await rejects(
    parseTorchCheckpoint(past, "p.pt"),
    (e) => e instanceof BadFileError && /reads past/.test(e.message),
  );
  const big = await makeZip([
    { name: "ck/data.pkl", data: tensorPickle("w", 12, 0, [12], [1]) },
    { name: "ck/byteorder", data: new TextEncoder().encode("big") },
    { name: "ck/data/0", data: f32Bytes(storage) },
  ]);
  await rejects(parseTorchCheckpoint(big, "b.pt"), UnsupportedError);
  const missing = await makeZip([{ name: "ck/data.pkl", data: tensorPickle("w", 12, 0, [12], [1]) }]);
  await rejects(
    parseTorchCheckpoint(missing, "m.pt"),
    (e) => e instanceof BadFileError && /data\/0 is missing/.test(e.message),
  );
});

Deno.test("gate import: λ from released file names", () => {
  equal(lambdaFromFileName("weights/llama-3.1-8b-instruct-0.16.pt"), 0.16);
  equal(lambdaFromFileName("qwen3-4b-instruct-2507-1.28.pt"), 1.28);
  equal(lambdaFromFileName("stories260K-gate-fp32.pt"), undefined);
  equal(lambdaFromFileName("other.pt"), undefined);
  equal(lambdaFromFileName("model-2507.pt"), undefined);
});
