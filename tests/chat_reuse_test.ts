/**
 * Chat turns go on from the session's transcript: the replies stay as generated, and each turn prefills only
 * the rendered text after the previous reply (its end of turn, the new message and the generation prompt).
 */

import { deepEqual, equal, ok } from "node:assert/strict";
import { type ChatMessage, renderChat } from "../src/chat/template.ts";
import { ChatPrompter } from "../src/chat/prompter.ts";
import { loadModel, type Model } from "../src/engine/load.ts";
import type { ModelBackend } from "../src/engine/backend.ts";
import { type GenerationStats, Session } from "../src/engine/session.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { type Tokenizer, tokenizerFromMetadata } from "../src/tokenizer/mod.ts";
import { runCli } from "./cli_process.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const STORIES = "stories260K.gguf";

/** A template whose turns end with the EOS text and a newline: `<s>role\ncontent</s>\n`. */
const EOS_TURNS =
  `{% for m in messages %}{{ bos_token + m.role + '\\n' + m.content + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' }}{% endif %}`;

/** A template that ends turns with a blank line and no end-of-text token. */
const BLANK_LINE_TURNS =
  `{{ bos_token }}{% for m in messages %}{{ m.role + ': ' + m.content + '\\n\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}`;

async function storiesVocab(): Promise<{ meta: Record<string, unknown>; tokenizer: Tokenizer }> {
  const file = await openGGUF(fixture(STORIES));
  try {
    return { meta: { ...file.metadata }, tokenizer: tokenizerFromMetadata(file.metadata) };
  } finally {
    file.close();
  }
}

const encode = (tokenizer: Tokenizer, text: string) =>
  tokenizer.encode(text, { addBos: false, parseSpecial: true });

/** The rendering of `messages` after that of `history` (which it must begin with). */
function renderedAfter(
  meta: Record<string, unknown>,
  history: ChatMessage[],
  messages: ChatMessage[],
): string {
  const before = renderChat(meta, history, { addGenerationPrompt: false }).text;
  const after = renderChat(meta, messages).text;
  ok(after.startsWith(before));
  return after.slice(before.length);
}

fixtureTest("chat prompter: after an EOS reply the transcript goes on with the new turn's tokens", [
  STORIES,
], async () => {
  const { meta, tokenizer } = await storiesVocab();
  const eos = tokenizer.eos!;
  for (const template of [undefined, EOS_TURNS]) {
    const m = template === undefined ? meta : { ...meta, "tokenizer.chat_template": template };
    const prompter = new ChatPrompter(m, tokenizer);
    const messages: ChatMessage[] = [{ role: "system", content: "Be kind." }, {
      role: "user",
      content: "Hi",
    }];
    const first = prompter.prompt(messages, []);
    equal(first.carried, 0);
    equal(first.ids[0], tokenizer.bos);
    // The model answers ". Hello" (generated as "." right after the prompt, which no encoding of the
    // rendered text gives) and ends with EOS.
    const reply = encode(tokenizer, ". Hello").slice(1);
    const transcript = [...first.ids, ...reply, eos];
    prompter.replied(first, transcript, tokenizer.decode(reply), "eos");
    const history: ChatMessage[] = [...messages, { role: "assistant", content: ". Hello" }];
    messages.push(history[2], { role: "user", content: "Tell me more" });
    const next = prompter.prompt(messages, transcript);
    equal(next.carried, transcript.length, "the reply and its EOS stay as generated");
    deepEqual(next.ids.slice(0, transcript.length), transcript);
    // The template's EOS text after the reply is the generated EOS: not added again; what the template writes
    // after it (EOS_TURNS: a newline) is.
    const after = (template === undefined ? "" : "\n") + renderedAfter(m, history, messages);
    deepEqual(next.ids.slice(transcript.length), encode(tokenizer, after));
    equal(next.text, renderChat(m, messages).text);
    equal(next.ids.filter((t) => t === eos).length, next.text.split("</s>").length - 1);
  }
});

fixtureTest("chat prompter: a reply cut by length or a stop string gets the template's end of turn", [
  STORIES,
], async () => {
  const { meta, tokenizer } = await storiesVocab();
  const eos = tokenizer.eos!;
  const messages: ChatMessage[] = [{ role: "user", content: "Hi" }];
  const prompter = new ChatPrompter(meta, tokenizer);
  const first = prompter.prompt(messages, []);
  const reply = encode(tokenizer, " Once upon a time").slice(1);
  const text = tokenizer.streamDecoder({ previous: first.ids.at(-1) });
  const replyText = reply.map((t) => text.push(t)).join("");
  equal(replyText, " Once upon a time");
  // Ended by length: the llama2 layout's " </s>" after the reply; its space follows the reply's text.
  const transcript = [...first.ids, ...reply];
  prompter.replied(first, transcript, replyText, "length");
  const conversation: ChatMessage[] = [...messages, { role: "assistant", content: replyText.trim() }];
  const next = prompter.prompt([...conversation, { role: "user", content: "More" }], transcript);
  equal(next.carried, transcript.length);
  deepEqual(next.ids.slice(transcript.length), encode(tokenizer, "</s><s>[INST] More [/INST]"));
  equal(next.ids.filter((t) => t === eos).length, 1);

  // Stopped by the stop string "on a": "▁upon", which ran into it, goes; the reply's text it held, " up",
  // runs again, as the rendering goes on after "▁Once" (" up </s>…": the space prefix is its space).
  const stopped = replyText.slice(0, replyText.indexOf("on a"));
  equal(stopped, " Once up");
  prompter.replied(first, transcript, stopped, "stop");
  const cut: ChatMessage[] = [...messages, { role: "assistant", content: stopped.trim() }];
  const afterStop = prompter.prompt([...cut, { role: "user", content: "More" }], transcript);
  equal(afterStop.carried, first.ids.length + 1);
  deepEqual(afterStop.ids, [
    ...first.ids,
    reply[0],
    ...encode(tokenizer, "up </s><s>[INST] More [/INST]"),
  ]);
  equal(tokenizer.vocab.tokens[afterStop.ids[afterStop.carried]], "\u2581up");
});

fixtureTest("chat prompter: falls back to the whole rendering when it cannot go on", [STORIES], async () => {
  const { meta, tokenizer } = await storiesVocab();
  const eos = tokenizer.eos!;
  // A template that ends turns without EOS: the generated EOS goes, the template's text follows the reply.
  const m = { ...meta, "tokenizer.chat_template": BLANK_LINE_TURNS };
  const prompter = new ChatPrompter(m, tokenizer);
  const messages: ChatMessage[] = [{ role: "user", content: "Hi" }];
  const first = prompter.prompt(messages, []);
  const reply = encode(tokenizer, " Hello").slice(1);
  const transcript = [...first.ids, ...reply, eos];
  prompter.replied(first, transcript, " Hello", "eos");
  const messages2: ChatMessage[] = [...messages, { role: "assistant", content: "Hello" }, {
    role: "user",
    content: "More",
  }];
  const next = prompter.prompt(messages2, transcript);
  equal(next.carried, transcript.length - 1);
  ok(!next.ids.includes(eos));
  deepEqual(next.ids.slice(next.carried), encode(tokenizer, "\n\nuser: More\n\nassistant:"));
  // A session that no longer holds the reply (e.g. reset), or a conversation that dropped its oldest
  // messages, is encoded whole.
  const whole = tokenizer.encode(renderChat(m, messages2).text, { addBos: false, parseSpecial: true });
  deepEqual(prompter.prompt(messages2, []), { text: renderChat(m, messages2).text, ids: whole, carried: 0 });
  equal(prompter.prompt(messages2.slice(1), transcript).carried, 0);
  prompter.forget();
  equal(prompter.prompt(messages2, transcript).carried, 0);
});

/** One chat turn as `wgkv chat` runs it: the prompt, the tokens that ran, the reply's tokens and text. */
async function chatTurn(
  session: ReturnType<Model["session"]>,
  prompter: ChatPrompter,
  messages: ChatMessage[],
  message: string,
  maxTokens: number,
) {
  messages.push({ role: "user", content: message });
  const before = session.transcript;
  const prompt = prompter.prompt(messages, before);
  let common = 0;
  while (common < before.length && common < prompt.ids.length - 1 && before[common] === prompt.ids[common]) {
    common++;
  }
  session.rewind(common);
  const reused = session.tokens.length;
  const gen = session.generate(prompt.ids.slice(reused), { temperature: 0, maxTokens });
  const tokens: number[] = [];
  let text = "";
  let r = await gen.next();
  while (!r.done) {
    if (r.value.token >= 0) tokens.push(r.value.token);
    text += r.value.text;
    r = await gen.next();
  }
  const stats: GenerationStats = r.value;
  prompter.replied(prompt, session.transcript, text, stats.stopReason);
  messages.push({ role: "assistant", content: text.trim() });
  return { before, prompt, reused, stats, tokens, text };
}

fixtureTest(
  "chat turns prefill only the new message, and reply as a fresh session would",
  [STORIES],
  async () => {
    const model = await loadModel(fixture(STORIES), { backend: "cpu" });
    try {
      for (const template of [undefined, EOS_TURNS]) {
        const meta = template === undefined ? model.file.metadata : {
          ...model.file.metadata,
          "tokenizer.chat_template": template,
        };
        const prompter = new ChatPrompter(meta, model.tokenizer);
        const session = model.session();
        const messages: ChatMessage[] = [{ role: "system", content: "Tell stories." }];
        let previousRender = "";
        let previousStop = "";
        for (const [i, message] of ["Once upon a time", "What did the cat do?", "And then?"].entries()) {
          const turn = await chatTurn(session, prompter, messages, message, 12);
          const render = renderChat(meta, messages.slice(0, -1)).text;
          equal(turn.prompt.text, render);
          if (i === 0) {
            equal(turn.reused, 0);
          } else {
            // The whole conversation so far is reused; what runs is the last reply's last token (sampled,
            // not yet in the cache) and the tokens of the rendered text after the previous reply.
            equal(turn.prompt.carried, turn.before.length);
            equal(turn.reused, turn.before.length - 1);
            const history = messages.slice(0, -2);
            const newText = renderedAfter(meta, history, messages.slice(0, -1));
            ok(newText.includes(message) && !previousRender.includes(message));
            // The template's end of the reply's turn: " </s>" (llama2) or "</s>\n" (EOS_TURNS), less the EOS
            // the model wrote and the space that follows the reply's text (SentencePiece's space prefix).
            const content = history.at(-1)!.content;
            ok(content.length > 0);
            const historyText = renderChat(meta, history, { addGenerationPrompt: false }).text;
            let closing = historyText.slice(historyText.lastIndexOf(content) + content.length);
            if (previousStop === "eos") closing = closing.trimStart().slice("</s>".length);
            else closing = closing.replace(/^ /, "");
            const suffix = encode(model.tokenizer, closing + newText);
            deepEqual(turn.prompt.ids.slice(turn.before.length), suffix);
            equal(turn.stats.promptTokens, 1 + suffix.length);
          }
          previousRender = render;
          previousStop = turn.stats.stopReason;
          // A fresh session given the same tokens replies the same under greedy decoding.
          const fresh = model.session();
          const tokens: number[] = [];
          for await (const piece of fresh.generate(turn.prompt.ids, { temperature: 0, maxTokens: 12 })) {
            if (piece.token >= 0) tokens.push(piece.token);
          }
          deepEqual(tokens, turn.tokens, `turn ${i + 1}`);
        }
      }
    } finally {
      model.close();
    }
  },
);

fixtureTest("chat turns after an EOS reply feed the EOS once, then the new message", [STORIES], async () => {
  const { meta, tokenizer } = await storiesVocab();
  const eos = tokenizer.eos!;
  // A model whose argmax follows a script: two replies, each ending with EOS; it records what it is fed.
  const script = [
    ...encode(tokenizer, " Hi there").slice(1),
    eos,
    ...encode(tokenizer, " Bye").slice(1),
    eos,
  ];
  const fed: { tokens: number[]; pos: number }[] = [];
  const backend = {
    kind: "cpu",
    hparams: {} as ModelBackend["hparams"],
    contextLength: 512,
    forward: () => Promise.reject(new Error("not used")),
    forwardArgmax(tokens: number[], pos: number) {
      fed.push({ tokens: [...tokens], pos });
      return Promise.resolve(script[fed.length - 1]);
    },
    describe: () => [],
    dispose() {},
  } as ModelBackend;
  const session = new Session(backend, tokenizer);
  const prompter = new ChatPrompter(meta, tokenizer);
  const messages: ChatMessage[] = [];
  const first = await chatTurn(session, prompter, messages, "Hello", 10);
  equal(first.stats.stopReason, "eos");
  equal(first.text, " Hi there");
  const second = await chatTurn(session, prompter, messages, "Go on", 10);
  equal(second.stats.stopReason, "eos");
  equal(second.reused, first.prompt.ids.length + first.stats.generatedTokens - 1);
  // The second prompt's run: the first reply's EOS (sampled, not yet in the cache), then the new turn.
  const run = fed[first.stats.generatedTokens];
  equal(run.pos, second.reused);
  deepEqual(run.tokens, [eos, ...encode(tokenizer, "<s>[INST] Go on [/INST]")]);
  equal(second.stats.promptTokens, run.tokens.length);
});

/** Prefilled and reused token counts of each turn of a `wgkv chat` run. */
function turnCounts(stderr: string): { prefilled: number[]; generated: number[]; reused: number[] } {
  const stats = [...stderr.matchAll(/prefill: (\d+) tokens .*decode: (\d+) tokens/g)];
  return {
    prefilled: stats.map((m) => Number(m[1])),
    generated: stats.map((m) => Number(m[2])),
    reused: [...stderr.matchAll(/\((\d+) tokens of the conversation reused/g)].map((m) => Number(m[1])),
  };
}

for (const kv of [[], ["--kv", "window", "--window", "32", "-b", "16"]]) {
  const name = kv.length === 0 ? "the full cache" : "--kv window";
  fixtureTest(`cli: chat turns reuse the whole conversation and prefill only the new message (${name})`, [
    STORIES,
  ], async () => {
    const { tokenizer } = await storiesVocab();
    const lines = ["Tell me a story", "What did the dog do?", "And then?"];
    const backend = kv.length === 0 ? ["--backend", "cpu"] : [];
    const out = await runCli(
      ["chat", "-m", fixture(STORIES), "-n", "40", "--temp", "0", ...backend, ...kv],
      {},
      lines.join("\n") + "\n",
    );
    equal(out.code, 0, out.stderr);
    const { prefilled, generated, reused } = turnCounts(out.stderr);
    equal(prefilled.length, 3, out.stderr);
    deepEqual(generated, [40, 40, 40], out.stderr);
    equal(reused.length, 2, out.stderr);
    // Each later turn keeps the whole conversation but the last sampled token, which runs with the
    // llama2 layout's end of turn, the new message and its [/INST].
    equal(reused[0], prefilled[0] + generated[0] - 1);
    equal(reused[1], reused[0] + prefilled[1] + generated[1] - 1);
    for (const k of [1, 2]) {
      equal(prefilled[k], 1 + encode(tokenizer, `</s><s>[INST] ${lines[k]} [/INST]`).length, out.stderr);
    }
  });
}
