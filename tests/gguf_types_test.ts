import { equal, ok, throws } from "node:assert/strict";
import { BadFileError, UnsupportedError } from "../src/errors.ts";
import {
  bf16ToF32,
  dequantize,
  f32ToBf16,
  f32ToHalf,
  GGMLType,
  halfToF32,
  quantize,
  tensorByteSize,
  TYPE_TABLE,
  typeInfo,
} from "../src/gguf/mod.ts";

const f = Math.fround;

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) crypto.getRandomValues(out.subarray(at, Math.min(n, at + 65536)));
  return out;
}

/** Fresh Gaussian-ish values (sum of uniforms) with a few outliers. */
function randomValues(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * (Math.random() + Math.random() + Math.random() - 1.5);
  for (let k = 0; k < n / 97; k++) out[Math.floor(Math.random() * n)] *= 6;
  return out;
}

function sameBits(a: number, b: number): boolean {
  return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
}

// ---------------------------------------------------------------- binary16 and bfloat16

Deno.test("half: decode and encode every binary16 pattern exactly", () => {
  const reference = new Float16Array(new Uint16Array(65536).map((_, i) => i).buffer);
  for (let h = 0; h < 65536; h++) {
    ok(sameBits(halfToF32(h), reference[h]), `decode ${h.toString(16)}`);
    if (!Number.isNaN(reference[h])) equal(f32ToHalf(reference[h]), h, `encode ${h.toString(16)}`);
  }
});

Deno.test("half: encoding rounds to nearest even like Math.f16round (random and boundary floats)", () => {
  const floats = new Float32Array(randomBytes(800000).buffer);
  const extra = [
    65504,
    65519.99,
    65520,
    1e-8,
    2 ** -25,
    2 ** -25 * 1.0000001,
    2 ** -24 * 1.5,
    2 ** -24 * 2.5,
    -0,
    0.1,
  ];
  for (const x of [...floats, ...extra]) {
    if (Number.isNaN(x)) {
      ok(Number.isNaN(halfToF32(f32ToHalf(x))));
      continue;
    }
    ok(sameBits(halfToF32(f32ToHalf(x)), Math.f16round(x)), `f16 of ${x}`);
  }
});

Deno.test("bf16: decode is the high half of a float32, encode rounds to nearest even", () => {
  const view = new DataView(new ArrayBuffer(4));
  for (let h = 0; h < 65536; h++) {
    view.setUint32(0, h << 16);
    ok(sameBits(bf16ToF32(h), view.getFloat32(0)));
    if (!Number.isNaN(view.getFloat32(0))) equal(f32ToBf16(view.getFloat32(0)), h);
  }
  equal(f32ToBf16(f(1 + 2 ** -8)), 0x3f80); // tie → even
  equal(f32ToBf16(f(1 + 3 * 2 ** -8)), 0x3f82); // tie → even (up)
  equal(f32ToBf16(f(1 + 2 ** -8 + 2 ** -20)), 0x3f81);
  ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
});

// ---------------------------------------------------------------- slow per-element decoders

const half = (b: Uint8Array, at: number) => halfToF32(b[at] | (b[at + 1] << 8));
const i8 = (v: number) => (v << 24) >> 24;
const u32le = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset + at, 4).getUint32(0, true);

/** ggml's get_scale_min_k4, transcribed. */
function scaleMinK4(j: number, q: Uint8Array): [number, number] {
  if (j < 4) return [q[j] & 63, q[j + 4] & 63];
  return [(q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)];
}

/** Q3_K's sixteen signed scales via the u32 mask shuffle of ggml's decoder. */
function scalesQ3K(raw: Uint8Array): Int8Array {
  const aux = new Uint32Array(4);
  const v = new DataView(raw.buffer, raw.byteOffset, 12);
  aux[0] = v.getUint32(0, true), aux[1] = v.getUint32(4, true), aux[2] = v.getUint32(8, true);
  const k1 = 0x03030303, k2 = 0x0f0f0f0f, tmp = aux[2];
  aux[2] = ((aux[0] >>> 4) & k2) | (((tmp >>> 4) & k1) << 4);
  aux[3] = ((aux[1] >>> 4) & k2) | (((tmp >>> 6) & k1) << 4);
  aux[0] = (aux[0] & k2) | (((tmp >>> 0) & k1) << 4);
  aux[1] = (aux[1] & k2) | (((tmp >>> 2) & k1) << 4);
  return new Int8Array(aux.buffer);
}

/** Value of element e of one block, straight from the ggml block layout. */
const ELEMENT: Record<string, (blk: Uint8Array, e: number) => number> = {
  Q4_0: (b, e) => f(half(b, 0) * (((e < 16 ? b[2 + e] : b[2 + e - 16] >> 4) & 15) - 8)),
  Q4_1: (b, e) => f(f(half(b, 0) * ((e < 16 ? b[4 + e] : b[4 + e - 16] >> 4) & 15)) + half(b, 2)),
  Q5_0: (b, e) => {
    const nib = (e < 16 ? b[6 + e] : b[6 + e - 16] >> 4) & 15;
    return f(half(b, 0) * ((nib | (((u32le(b, 2) >>> e) & 1) << 4)) - 16));
  },
  Q5_1: (b, e) => {
    const nib = (e < 16 ? b[8 + e] : b[8 + e - 16] >> 4) & 15;
    return f(f(half(b, 0) * (nib | (((u32le(b, 4) >>> e) & 1) << 4))) + half(b, 2));
  },
  Q8_0: (b, e) => f(half(b, 0) * i8(b[2 + e])),
  Q2_K: (b, e) => {
    const sc = b[e >> 4];
    const v = (b[16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3;
    return f(f(f(half(b, 80) * (sc & 15)) * v) - f(half(b, 82) * (sc >> 4)));
  },
  Q3_K: (b, e) => {
    const s = scalesQ3K(b.subarray(96, 108))[e >> 4];
    const n = e >> 7, j = (e >> 5) & 3;
    const low = (b[32 + 32 * n + (e & 31)] >> (2 * j)) & 3;
    const hbit = b[e & 31] & (1 << (4 * n + j));
    return f(f(half(b, 108) * (s - 32)) * (low - (hbit ? 0 : 4)));
  },
  Q4_K: (b, e) => {
    const [sc, m] = scaleMinK4(e >> 5, b.subarray(4, 16));
    const byte = b[16 + 32 * (e >> 6) + (e & 31)];
    const nib = (e >> 5) & 1 ? byte >> 4 : byte & 15;
    return f(f(f(half(b, 0) * sc) * nib) - f(half(b, 2) * m));
  },
  Q5_K: (b, e) => {
    const [sc, m] = scaleMinK4(e >> 5, b.subarray(4, 16));
    const byte = b[48 + 32 * (e >> 6) + (e & 31)];
    const nib = (e >> 5) & 1 ? byte >> 4 : byte & 15;
    const high = (b[16 + (e & 31)] >> (e >> 5)) & 1;
    return f(f(f(half(b, 0) * sc) * (nib + 16 * high)) - f(half(b, 2) * m));
  },
  Q6_K: (b, e) => {
    const h = e >> 7, k = (e >> 5) & 3, l = e & 31;
    const byte = b[64 * h + l + 32 * (k & 1)];
    const nib = k >> 1 ? byte >> 4 : byte & 15;
    const q = (nib | (((b[128 + 32 * h + l] >> (2 * k)) & 3) << 4)) - 32;
    return f(f(half(b, 208) * i8(b[192 + 8 * h + (l >> 4) + 2 * k])) * q);
  },
  F16: (b, e) => half(b, 2 * e),
  BF16: (b, e) => bf16ToF32(b[2 * e] | (b[2 * e + 1] << 8)),
  F32: (b, e) => new DataView(b.buffer, b.byteOffset).getFloat32(4 * e, true),
};

Deno.test("dequantise: every type matches a per-element decoder bit for bit on random blocks", () => {
  for (const info of TYPE_TABLE.values()) {
    const blocks = info.blockSize === 1 ? 777 : 37;
    const n = blocks * info.blockSize;
    const bytes = randomBytes(blocks * info.bytesPerBlock);
    // a sliced view (non-zero byteOffset) must work too
    const padded = new Uint8Array(bytes.length + 3);
    padded.set(bytes, 3);
    const out = dequantize(info.type, padded.subarray(3), n);
    const element = ELEMENT[info.name];
    ok(element, info.name);
    for (let b = 0; b < blocks; b++) {
      const blk = bytes.slice(b * info.bytesPerBlock, (b + 1) * info.bytesPerBlock);
      for (let e = 0; e < info.blockSize; e++) {
        const want = element(blk, e);
        const got = out[b * info.blockSize + e];
        if (!sameBits(got, want)) throw new Error(`${info.name} block ${b} element ${e}: ${got} != ${want}`);
      }
    }
  }
});

Deno.test("dequantise: hand-built Q2_K, Q3_K, Q4_0 and Q6_K blocks", () => {
  // Q2_K: every scale byte 0x21 (scale 1, min 2), d = 1, dmin = 0.5, every qs byte 0b11_10_01_00:
  // element e holds q = (e >> 5) & 3, so x = q - 1.
  const q2 = new Uint8Array(84).fill(0x21, 0, 16).fill(0xe4, 16, 80);
  q2.set([0x00, 0x3c, 0x00, 0x38], 80);
  const x2 = dequantize(GGMLType.Q2_K, q2, 256);
  for (let e = 0; e < 256; e++) equal(x2[e], ((e >> 5) & 3) - 1);
  // Q3_K: every six-bit scale 33 (low nibbles 1, high bits 2), d = 0.5, qs as above;
  // hmask bits set → x = 0.5 · q; hmask clear → x = 0.5 · (q - 4).
  for (const hmask of [0xff, 0x00]) {
    const q3 = new Uint8Array(110).fill(hmask, 0, 32).fill(0xe4, 32, 96).fill(0x11, 96, 104).fill(
      0xaa,
      104,
      108,
    );
    q3.set([0x00, 0x38], 108);
    const x3 = dequantize(GGMLType.Q3_K, q3, 256);
    for (let e = 0; e < 256; e++) equal(x3[e], 0.5 * (((e >> 5) & 3) - (hmask ? 0 : 4)));
  }
  // Q4_0: d = 2, qs[j] = j | (15 - j) << 4 → x[j] = 2 (j - 8), x[j + 16] = 2 (7 - j)
  const q4 = new Uint8Array(18);
  q4.set([0x00, 0x40], 0);
  for (let j = 0; j < 16; j++) q4[2 + j] = j | ((15 - j) << 4);
  const x4 = dequantize(GGMLType.Q4_0, q4, 32);
  for (let j = 0; j < 16; j++) equal(x4[j], 2 * (j - 8)), equal(x4[j + 16], 2 * (7 - j));
  // Q6_K: d = 1, scale s = sub-block index - 8, ql = 0x00, qh = 0xff (all high bits 3) → q = 48 - 32 = 16
  const q6 = new Uint8Array(210).fill(0xff, 128, 192);
  for (let s = 0; s < 16; s++) q6[192 + s] = (s - 8) & 0xff;
  q6.set([0x00, 0x3c], 208);
  const x6 = dequantize(GGMLType.Q6_K, q6, 256);
  for (let e = 0; e < 256; e++) equal(x6[e], 16 * ((e >> 4) - 8));
});

// ---------------------------------------------------------------- quantisers

/** Largest |error| allowed, as a fraction of the block's (super-block's) largest magnitude. */
const QUANT_BOUND: Record<string, number> = {
  F32: 0,
  F16: 1e-3,
  BF16: 8e-3,
  Q8_0: 0.006,
  Q4_0: 0.126, // ggml's d = max / -8: the opposite extreme clips to 7·d
  Q4_1: 0.07,
  Q5_0: 0.063, // likewise 15·d
  Q5_1: 0.035,
  Q4_K: 0.08,
  Q5_K: 0.045,
  Q6_K: 0.025,
};

Deno.test("quantise: error bounded per block, re-quantising is stable, all quantisers present", () => {
  const withQuantizer = [...TYPE_TABLE.values()].filter((t) => t.quantize);
  equal(withQuantizer.length, Object.keys(QUANT_BOUND).length);
  for (const info of withQuantizer) {
    const block = Math.max(info.blockSize, 32);
    for (const scale of [1, 1e-3, 300]) {
      const n = block * 13;
      const x = randomValues(n, scale);
      const q = info.quantize!(x);
      equal(q.length, tensorByteSize(info.type, n), info.name);
      const y = dequantize(info.type, q, n);
      let worst = 0;
      for (let b = 0; b < n / block; b++) {
        let amax = 0;
        for (let i = b * block; i < (b + 1) * block; i++) amax = Math.max(amax, Math.abs(x[i]));
        for (let i = b * block; i < (b + 1) * block; i++) {
          worst = Math.max(worst, Math.abs(y[i] - x[i]) / amax);
        }
      }
      ok(worst <= QUANT_BOUND[info.name], `${info.name} scale ${scale}: worst error ${worst} of block amax`);
      // dequantise(quantise(y)) moves values by no more than the first quantisation error
      const z = dequantize(info.type, info.quantize!(y), n);
      let drift = 0, err = 0;
      for (let i = 0; i < n; i++) {
        drift = Math.max(drift, Math.abs(z[i] - y[i])), err = Math.max(err, Math.abs(y[i] - x[i]));
      }
      console.log(info.name, scale, worst.toFixed(4), (drift / err).toFixed(3));
      ok(drift <= err, `${info.name} scale ${scale}: re-quantising moved values by ${drift} (error ${err})`);
    }
    // all-zero input gives valid blocks decoding to zeros
    const zeros = dequantize(info.type, info.quantize!(new Float32Array(block)), block);
    ok(zeros.every((v) => v === 0), `${info.name} zeros`);
  }
});

// ---------------------------------------------------------------- table errors

Deno.test("type table: geometry, unsupported types and bad sizes give clear errors", () => {
  equal(TYPE_TABLE.size, 13);
  equal(typeInfo(GGMLType.Q4_K, "t").bytesPerBlock, 144);
  equal(typeInfo(12, "t").name, "Q4_K");
  equal(tensorByteSize(GGMLType.Q6_K, 512), 420);
  equal(tensorByteSize(GGMLType.F16, 3), 6);
  throws(
    () => typeInfo(17, "tensor blk.0.attn_q.weight"),
    (e: Error) =>
      e instanceof UnsupportedError &&
      e.message.startsWith(
        "tensor blk.0.attn_q.weight: type IQ2_XS (17) is not supported (supported: F32, F16,",
      ),
  );
  throws(() => typeInfo(1234, "t"), UnsupportedError);
  throws(
    () => tensorByteSize(GGMLType.Q4_0, 33, "tensor w"),
    (e: Error) => e instanceof BadFileError && e.message.includes("tensor w"),
  );
  throws(() => tensorByteSize(GGMLType.F32, -1), BadFileError);
  throws(() => tensorByteSize(GGMLType.F32, 2 ** 60), BadFileError);
  throws(() => dequantize(GGMLType.Q8_0, new Uint8Array(33), 32), BadFileError);
});

Deno.test("quantize(): table dispatch and errors", () => {
  const x = randomValues(64);
  equal(quantize(GGMLType.Q8_0, x).length, 68);
  throws(
    () => quantize(GGMLType.Q2_K, new Float32Array(256), "tensor w"),
    (e: Error) => e instanceof UnsupportedError && e.message.includes("Q2_K"),
  );
  throws(() => quantize(GGMLType.Q8_0, new Float32Array(40), "tensor w"), BadFileError);
});
