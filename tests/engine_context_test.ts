import { equal, throws } from "node:assert/strict";
import { contextForPrompt, DEFAULT_GPU_CONTEXT } from "../src/engine/load.ts";
import { OutOfMemoryError } from "../src/errors.ts";

Deno.test("context for a prompt: the default, grown to fit the prompt and -n, within the trained context", () => {
  equal(DEFAULT_GPU_CONTEXT, 4096);
  equal(contextForPrompt(131072, 10, 128), 4096);
  equal(contextForPrompt(2048, 10, 128), 2048); // a model trained shorter than the default
  equal(contextForPrompt(131072, 9000, 128), 9128);
  equal(contextForPrompt(131072, 131000, 128), 131072); // capped: generation stops at the full context
  equal(contextForPrompt(131072, 9000, Infinity), 9001); // -n -1 keeps the default's rule: room to start
  equal(contextForPrompt(131072, 9000, 128, 16384), 16384); // -c wins
  equal(contextForPrompt(131072, 16384, 128, 16384), 16384);
});

Deno.test("context for a prompt: a prompt that cannot fit is refused with the numbers", () => {
  throws(
    () => contextForPrompt(2048, 3000, 16),
    (e: Error) =>
      e instanceof OutOfMemoryError &&
      e.message === "context overflow: the prompt's 3000 tokens exceed the model's trained context of 2048",
  );
  throws(
    () => contextForPrompt(131072, 200, 16, 100),
    (e: Error) =>
      e instanceof OutOfMemoryError &&
      e.message === "context overflow: the prompt's 200 tokens exceed --ctx 100",
  );
});
