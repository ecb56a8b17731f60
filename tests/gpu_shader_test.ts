import { deepEqual, equal, ok } from "node:assert/strict";
import { includeShaders, SHADER_NAMES } from "../src/gpu/shader.ts";

Deno.test("shaders: the preload list names exactly the files in wgsl/", async () => {
  const files: string[] = [];
  for await (const e of Deno.readDir(new URL("../wgsl/", import.meta.url))) {
    if (e.isFile && e.name.endsWith(".wgsl")) files.push(e.name.slice(0, -5));
  }
  deepEqual([...SHADER_NAMES].sort(), files.sort());
});

Deno.test("shaders: `// #include NAME` lines are replaced by the shared file, once per shader", () => {
  const code = includeShaders("fn a() {}\n// #include rope_angle\n  // #include rope_angle\nfn b() {}");
  equal(code.split("fn rope_rotation(").length, 2);
  ok(code.startsWith("fn a() {}\n") && code.endsWith("\nfn b() {}"));
  ok(!/^[ \t]*\/\/ #include/m.test(code), "no include line left");
});
