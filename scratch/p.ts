function probeMatrices(): Float32Array {
  const m = new Float32Array(4 * 256);
  for (let q = 0; q < 4; q++) for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) m[q * 256 + i * 16 + j] = ((i * (q + 2) + j * (2 * q + 3) + q) % 7) - 3;
  return m;
}
function product(m: Float32Array, ao: number, bo: number) { const out = new Float32Array(256); for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) { let s = 0; for (let k = 0; k < 16; k++) s += m[ao + i * 16 + k] * m[bo + k * 16 + j]; out[i * 16 + j] = s; } return out; }
const m = probeMatrices();
const ab = product(m, 0, 256), ba = product(m, 256, 0);
let diff = 0; for (let i = 0; i < 256; i++) if (ab[i] !== ba[i]) diff++;
console.log("differ", diff, "max", Math.max(...ab.map(Math.abs)));
const ab1 = product(m, 512, 768), ba1 = product(m, 768, 512);
diff = 0; for (let i = 0; i < 256; i++) if (ab1[i] !== ba1[i]) diff++;
console.log("differ1", diff);
// transposed products
