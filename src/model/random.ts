/**
 * A small, fast, seeded pseudo-random generator (xoshiro128**, seeded through splitmix32) that fills
 * typed arrays. The same seed always gives the same stream on every platform, which is what makes
 * synthetic model files byte-identical from run to run.
 *
 * @module
 */

/** splitmix32 step: a well-mixed 32-bit value from a 32-bit state, used to seed and to derive seeds. */
export function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** A 32-bit seed mixed from a base seed and any number of integer labels (e.g. a tensor index). */
export function deriveSeed(seed: number, ...labels: number[]): number {
  let s = splitmix32(seed >>> 0);
  for (const label of labels) s = splitmix32((s ^ Math.imul(label >>> 0, 0x27d4eb2d)) >>> 0);
  return s;
}

/** xoshiro128** generator with helpers that fill whole typed arrays. */
export class Xoshiro128 {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  /** A generator whose whole state is derived from the 32-bit `seed`. */
  constructor(seed: number) {
    let s = seed >>> 0;
    this.#a = s = splitmix32(s);
    this.#b = s = splitmix32(s);
    this.#c = s = splitmix32(s);
    this.#d = splitmix32(s);
    if ((this.#a | this.#b | this.#c | this.#d) === 0) this.#a = 1;
  }

  /** The next uniformly distributed unsigned 32-bit integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.#b, 5), 7), 9) >>> 0;
    const t = this.#b << 9;
    this.#c ^= this.#a;
    this.#d ^= this.#b;
    this.#b ^= this.#c;
    this.#a ^= this.#d;
    this.#c ^= t;
    this.#d = rotl(this.#d, 11);
    return result;
  }

  /** A uniform number in [0, 1) with 32 bits of resolution. */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** A uniform integer in [lo, hi] (inclusive; the range must be small next to 2³²). */
  nextInt(lo: number, hi: number): number {
    return lo + Math.floor(this.nextFloat() * (hi - lo + 1));
  }

  /** A standard normal sample (Box–Muller). */
  nextNormal(): number {
    const u = 1 - this.nextFloat();
    const v = this.nextFloat();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** Fills `out` with uniform random 32-bit words. */
  fillU32(out: Uint32Array): void {
    let a = this.#a, b = this.#b, c = this.#c, d = this.#d;
    for (let i = 0; i < out.length; i++) {
      out[i] = Math.imul(rotl(Math.imul(b, 5), 7), 9);
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
    }
    this.#a = a;
    this.#b = b;
    this.#c = c;
    this.#d = d;
  }

  /** Fills `out` with uniform random bytes (any byte offset and length). */
  fillBytes(out: Uint8Array): void {
    const whole = out.length >>> 2;
    if (out.byteOffset % 4 === 0 && whole > 0) {
      this.fillU32(new Uint32Array(out.buffer, out.byteOffset, whole));
    } else {
      for (let i = 0; i < whole * 4; i += 4) {
        const r = this.nextU32();
        out[i] = r;
        out[i + 1] = r >>> 8;
        out[i + 2] = r >>> 16;
        out[i + 3] = r >>> 24;
      }
    }
    for (let i = whole * 4; i < out.length; i++) out[i] = this.nextU32();
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
