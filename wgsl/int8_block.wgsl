// A block of 16 values as 8-bit integers for the decode products' int8 input (included by
// wgsl/matvec_fast.wgsl with a line `// #include int8_block`, used by its X_INT8 and INT8_OUT text defines):
// q = round(x / d) with d = max |x| / 127 (all zero for a zero block), so x ≈ d · q.

struct Int8Block {
  words: vec4u, // 16 signed bytes, value 4k + i in byte i of word k
  scale: vec2f, // (d, d · Σq)
}

fn int8_block(v: array<vec4f, 4>) -> Int8Block {
  let a = max(max(abs(v[0]), abs(v[1])), max(abs(v[2]), abs(v[3])));
  let amax = max(max(a.x, a.y), max(a.z, a.w));
  let inv = select(0.0, 127.0 / amax, amax > 0.0);
  var words: vec4u;
  var sum = vec4i(0);
  // @unroll
  for (var k = 0u; k < 4u; k++) {
    let q = clamp(vec4i(round(v[k] * inv)), vec4i(-127), vec4i(127));
    sum += q;
    words[k] = pack4xI8(q);
  }
  let d = amax / 127.0;
  return Int8Block(words, vec2f(d, d * f32(sum.x + sum.y + sum.z + sum.w)));
}
