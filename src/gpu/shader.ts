/**
 * Loads WGSL sources from `wgsl/`. Works from a checkout, from a `deno compile` binary (built with
 * `--include wgsl`) and from a remote import (JSR), where the files are fetched once and cached.
 *
 * @module
 */

import { UnsupportedError } from "../errors.ts";

const cache = new Map<string, string>();

/** Base URL of the `wgsl/` folder, next to `src/`. */
const WGSL_DIR = new URL("../../wgsl/", import.meta.url);

/** Every shader file in `wgsl/` (without extension); a test keeps this list equal to the folder. */
export const SHADER_NAMES: readonly string[] = [
  "admission_rule",
  "argmax",
  "attention_int8_out",
  "attention_int8_out_none",
  "coop_fragments",
  "coop_fragments_emulated",
  "coop_probe",
  "copy",
  "copy_row",
  "decode_attend",
  "dequant",
  "elementwise",
  "embed",
  "flash_decode",
  "flash_prefill",
  "int8_block",
  "int8_units",
  "kv_append",
  "kv_tiles_f16",
  "matmul",
  "matmul_coop",
  "matmul_int8",
  "matmul_int8_stacked",
  "matmul_weights",
  "matvec_fast",
  "matvec_int8_out",
  "matvec_int8_out_none",
  "matvec_partials",
  "matvec_partials_emulated",
  "matvec_partials_plain",
  "matvec_units",
  "matvec_x_int8_shared",
  "matvec_x_int8_staged",
  "prefill_staging_f16",
  "prefill_staging_f32",
  "qkv_kv_store",
  "qkv_ring_store",
  "quantize_q8",
  "rmsnorm",
  "rope",
  "rope_angle",
  "sample",
  "shuffle_xor",
  "shuffle_xor_emulated",
  "shuffle_xor_none",
  "slot_plan",
  "smoke",
  "dispatch_probe",
  "wgkv_append",
  "wgkv_promote",
  "write_gate",
  "write_gate_append",
];

/** Whether the shaders are local files (a checkout or a compiled binary) rather than remote URLs. */
export function shadersAreLocal(): boolean {
  return WGSL_DIR.protocol === "file:";
}

/**
 * Returns the text of `wgsl/<name>.wgsl`. For remote module URLs call {@link preloadShaders} first
 * (synchronous reads only work for local files).
 */
export function loadShader(name: string): string {
  const hit = cache.get(name);
  if (hit !== undefined) return hit;
  const url = new URL(`${name}.wgsl`, WGSL_DIR);
  if (url.protocol !== "file:") {
    throw new UnsupportedError(`shader ${name} was not preloaded (call preloadShaders() for remote imports)`);
  }
  const text = Deno.readTextFileSync(url);
  cache.set(name, text);
  return text;
}

/**
 * `code` with each line `// #include NAME` replaced by the text of `wgsl/NAME.wgsl` (functions several
 * kernels share; an included file may include others, each at most once per shader).
 */
export function includeShaders(code: string, seen: Set<string> = new Set()): string {
  return code.replace(/^[ \t]*\/\/ #include (\w+)[ \t]*$/gm, (_line, name: string) => {
    if (seen.has(name)) return "";
    seen.add(name);
    return includeShaders(loadShader(name), seen);
  });
}

/** Fetches the named shaders into the cache (needed when the module itself was imported over https). */
export async function preloadShaders(names: string[]): Promise<void> {
  await Promise.all(names.map(async (name) => {
    if (cache.has(name)) return;
    const url = new URL(`${name}.wgsl`, WGSL_DIR);
    const text = url.protocol === "file:" ? await Deno.readTextFile(url) : await (await fetch(url)).text();
    cache.set(name, text);
  }));
}
