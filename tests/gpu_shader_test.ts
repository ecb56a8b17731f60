import { deepEqual } from "node:assert/strict";
import { SHADER_NAMES } from "../src/gpu/shader.ts";

Deno.test("shaders: the preload list names exactly the files in wgsl/", async () => {
  const files: string[] = [];
  for await (const e of Deno.readDir(new URL("../wgsl/", import.meta.url))) {
    if (e.isFile && e.name.endsWith(".wgsl")) files.push(e.name.slice(0, -5));
  }
  deepEqual([...SHADER_NAMES].sort(), files.sort());
});
