import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { renderChat, renderContinuation } from "../src/chat/template.ts";
import { BadFileError, BadFlagError } from "../src/errors.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { tokenizerFromMetadata } from "../src/tokenizer/mod.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

/** A Llama-3-style template: header markers, optional dated system block, `<|eot_id|>` after each turn. */
const LLAMA3_STYLE = `{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "01 Jan 2000" %}{%- endif %}
{%- if tools is not none %}{{ raise_exception("tools are not supported") }}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}`;

/** A ChatML template. */
const CHATML =
  `{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}`;

const meta = (extra: Record<string, unknown>) => ({
  "tokenizer.ggml.model": "gpt2",
  "tokenizer.ggml.tokens": ["<|begin_of_text|>", "<|end_of_text|>", "a"],
  "tokenizer.ggml.bos_token_id": 0,
  "tokenizer.ggml.eos_token_id": 1,
  ...extra,
});

const CONVERSATION = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "Hi!" },
  { role: "assistant", content: "Hello." },
  { role: "user", content: "Why is the sky blue?" },
] as const;

Deno.test("Llama-3-style template: markers, date, generation prompt on and off", () => {
  const on = renderChat(meta({ "tokenizer.chat_template": LLAMA3_STYLE }), CONVERSATION, {
    dateString: "26 Jul 2024",
  });
  equal(on.template, "model");
  equal(on.layout, "model");
  ok(on.startsWithBos);
  equal(
    on.text,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nWhy is the sky blue?<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
  );
  const off = renderChat(meta({ "tokenizer.chat_template": LLAMA3_STYLE }), CONVERSATION, {
    addGenerationPrompt: false,
    dateString: "26 Jul 2024",
  });
  equal(off.text, on.text.slice(0, -"<|start_header_id|>assistant<|end_header_id|>\n\n".length));
  // Without dateString, today's date in the "%d %b %Y" form.
  ok(
    /Today Date: \d\d [A-Z][a-z]{2} \d{4}\n/.test(
      renderChat(meta({ "tokenizer.chat_template": LLAMA3_STYLE }), []).text,
    ),
  );
});

Deno.test("ChatML template", () => {
  const m = meta({ "tokenizer.chat_template": CHATML });
  const on = renderChat(m, [{ role: "user", content: "2+2?" }]);
  equal(on.text, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  ok(!on.startsWithBos);
  equal(
    renderChat(m, [{ role: "user", content: "2+2?" }], { addGenerationPrompt: false }).text,
    "<|im_start|>user\n2+2?<|im_end|>\n",
  );
});

Deno.test("fallbacks: plain layout, and Llama-2 [INST] for SentencePiece vocabularies", () => {
  const plain = renderChat(meta({}), CONVERSATION);
  deepEqual(plain, {
    text: "System: Be brief.\nUser: Hi!\nAssistant: Hello.\nUser: Why is the sky blue?\nAssistant:",
    template: "fallback",
    layout: "plain",
    startsWithBos: false,
  });
  equal(renderChat(meta({}), CONVERSATION, { addGenerationPrompt: false }).text.endsWith("blue?\n"), true);
  const spm = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
  };
  const llama2 = renderChat(spm, CONVERSATION);
  equal(llama2.layout, "llama2");
  equal(llama2.template, "fallback");
  ok(llama2.startsWithBos);
  equal(
    llama2.text,
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Why is the sky blue? [/INST]",
  );
});

Deno.test("template and message errors", () => {
  throws(() => renderChat(meta({ "tokenizer.chat_template": "{% if %}" }), []), BadFileError);
  throws(
    () => renderChat(meta({ "tokenizer.chat_template": "{% for x in %}" }), []),
    /^BadFileError: tokenizer\.chat_template: /,
  );
  throws(
    () => renderChat(meta({ "tokenizer.chat_template": "{{ raise_exception('only user turns') }}" }), []),
    /tokenizer\.chat_template: .*only user turns/,
  );
  throws(() => renderChat(meta({ "tokenizer.chat_template": 7 }), []), /tokenizer\.chat_template/);
  // deno-lint-ignore no-explicit-any
  throws(() => renderChat(meta({}), [{ role: "robot", content: "x" } as any]), BadFlagError);
});

Deno.test("renderContinuation splits a rendering around the reply that answered the previous prompt", () => {
  const options = { dateString: "26 Jul 2024" };
  const earlier = CONVERSATION.slice(0, 2);
  const spm = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
  };
  const cases = [
    { m: meta({ "tokenizer.chat_template": LLAMA3_STYLE }), lead: "", closing: "<|eot_id|>" },
    { m: meta({ "tokenizer.chat_template": CHATML }), lead: "", closing: "<|im_end|>\n" },
    { m: spm, lead: " ", closing: " </s>" },
    { m: meta({}), lead: " ", closing: "\n" },
  ];
  for (const { m, lead, closing } of cases) {
    const previous = renderChat(m, earlier, options).text;
    const whole = renderChat(m, CONVERSATION, options).text;
    const cont = renderContinuation(m, CONVERSATION, 2, previous, options);
    ok(cont, whole);
    equal(cont.lead, lead);
    equal(cont.closing, closing);
    equal(cont.text, whole);
    equal(previous + lead + "Hello." + closing + cont.next, whole);
    ok(cont.next.includes("Why is the sky blue?"));
    // A prompt the conversation does not go on from, or a message that is no reply, gives nothing.
    equal(renderContinuation(m, CONVERSATION, 2, previous + "x", options), undefined);
    equal(renderContinuation(m, CONVERSATION, 1, previous, options), undefined);
  }
});

Deno.test("renderContinuation gives nothing when the template renders earlier turns otherwise", () => {
  // Earlier replies lose their reasoning; the last message is rendered as it is.
  const stripsReasoning = meta({
    "tokenizer.chat_template":
      `{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}`,
  });
  const reasoned = [
    { role: "user", content: "Hi!" },
    { role: "assistant", content: "<think>greet</think>Hello." },
    { role: "user", content: "Bye!" },
  ] as const;
  const previous = renderChat(stripsReasoning, reasoned.slice(0, 1)).text;
  equal(renderContinuation(stripsReasoning, reasoned, 1, previous), undefined);
  // Without reasoning the same template goes on from the previous prompt.
  const plain = [reasoned[0], { role: "assistant", content: "Hello." }, reasoned[2]] as const;
  equal(renderContinuation(stripsReasoning, plain, 1, previous)?.closing, "<|end|>");
  // A template that renders only the newest message, or fails on a conversation, gives nothing.
  const newest = meta({ "tokenizer.chat_template": "{{ messages[-1].content }}" });
  equal(renderContinuation(newest, plain, 1, renderChat(newest, plain.slice(0, 1)).text), undefined);
  const failing = meta({
    "tokenizer.chat_template":
      "{% if messages | length > 2 %}{{ raise_exception('one turn only') }}{% endif %}" +
      "{{ messages[0].content }}",
  });
  equal(renderContinuation(failing, plain, 1, renderChat(failing, plain.slice(0, 1)).text), undefined);
});

fixtureTest("rendered Llama-3-style prompt encodes its markers as single special tokens", [
  "vocab/ggml-vocab-llama-bpe.gguf",
], async () => {
  const file = await openGGUF(fixture("vocab/ggml-vocab-llama-bpe.gguf"));
  const m = { ...file.metadata, "tokenizer.chat_template": LLAMA3_STYLE };
  const tok = tokenizerFromMetadata(m);
  const chat = renderChat(m, CONVERSATION, { dateString: "26 Jul 2024" });
  ok(chat.startsWithBos);
  const ids = tok.encode(chat.text, { addBos: !chat.startsWithBos, parseSpecial: true });
  const id = (text: string) => tok.vocab.ids.get(text)!;
  equal(ids[0], tok.bos);
  equal(ids.filter((t) => t === tok.bos).length, 1, "exactly one BOS");
  equal(ids.filter((t) => t === id("<|start_header_id|>")).length, 5);
  equal(ids.filter((t) => t === id("<|end_header_id|>")).length, 5);
  equal(ids.filter((t) => t === id("<|eot_id|>")).length, 4);
  equal(tok.decode(ids, { skipSpecial: false }), chat.text);
  ok(!tok.decode(ids).includes("<|"), "markers vanish when special tokens are skipped");
});
