// engine_sdk.mjs: the openai npm SDK, unchanged, straight against kvgate-engine serve (model
// "tiny", tests/data/engine_tiny). Run by tests/integ/engine_sdk.sh:
//   KV_BASE_URL=http://127.0.0.1:PORT/v1 node engine_sdk.mjs
// Prints "ok NAME" or "FAIL NAME: why" per case; exit 1 if any failed.
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.KV_BASE_URL, apiKey: 'sk-test', maxRetries: 0, timeout: 20000 });
let failed = 0;

function check(cond, why) {
  if (!cond) throw new Error(why);
}

async function run(name, fn) {
  try {
    await fn();
    console.log(`ok   sdk: ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL sdk: ${name}: ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
  }
}

const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'hi' }] }];

await run('models.list', async () => {
  const page = await client.models.list();
  check(page.data[0].id === 'tiny', `id ${page.data[0].id}`);
  check(page.data[0].max_model_len === 256, `max_model_len ${page.data[0].max_model_len}`);
});

let whole = null;
await run('chat non-stream (max_tokens clamped)', async () => {
  const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 32000, temperature: 0, seed: 1 });
  check(r.object === 'chat.completion', `object ${r.object}`);
  check(r.choices[0].message.role === 'assistant', 'role');
  check(typeof r.choices[0].message.content === 'string', 'content');
  check(['stop', 'length'].includes(r.choices[0].finish_reason), `finish ${r.choices[0].finish_reason}`);
  check(r.usage.prompt_tokens + r.usage.completion_tokens === r.usage.total_tokens, 'usage');
  whole = r.choices[0].message.content;
});

await run('chat stream with the .stream() helper', async () => {
  const s = client.chat.completions.stream({
    model: 'tiny', messages, max_tokens: 32000, temperature: 0, seed: 1, stream_options: { include_usage: true },
    tools: [{ type: 'function', function: { name: 'read', description: 'read a file', parameters: { type: 'object', properties: {} } } }],
  });
  let text = '';
  for await (const chunk of s) for (const c of chunk.choices) text += c.delta?.content ?? '';
  const fin = await s.finalChatCompletion();
  check(text === whole, `streamed ${JSON.stringify(text.slice(0, 40))} != ${JSON.stringify((whole || '').slice(0, 40))}`);
  check(fin.choices[0].message.content === whole, 'final message');
  check(fin.usage && fin.usage.completion_tokens > 0, 'usage');
});

await run('chat stream (create, stream: true)', async () => {
  const s = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 5, stream: true });
  let n = 0, role = null, fin = null;
  for await (const chunk of s) {
    n++;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.finish_reason) fin = c.finish_reason;
    }
  }
  check(n >= 2 && role === 'assistant' && fin, `chunks ${n} role ${role} finish ${fin}`);
});

await run('completions non-stream and stream', async () => {
  const r = await client.completions.create({ model: 'tiny', prompt: 'hello world', max_tokens: 8, temperature: 0 });
  check(r.object === 'text_completion', `object ${r.object}`);
  const s = await client.completions.create({ model: 'tiny', prompt: 'hello world', max_tokens: 8, temperature: 0, stream: true });
  let text = '';
  for await (const chunk of s) text += chunk.choices[0]?.text ?? '';
  check(text === r.choices[0].text, 'stream = non-stream');
});

await run('completions with logprobs', async () => {
  const r = await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 3, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  check(lp && lp.tokens.length === 3 && lp.top_logprobs[0] && Object.keys(lp.top_logprobs[0]).length >= 1, JSON.stringify(lp));
});

await run('responses (Codex shape)', async () => {
  const s = await client.responses.create({
    model: 'tiny', instructions: 'be brief', stream: true, max_output_tokens: 6,
    input: [{ type: 'message', role: 'user', content: [{ type: 'input_text', text: 'hi' }] }],
  });
  const types = [];
  for await (const ev of s) types.push(ev.type);
  check(types[0] === 'response.created' && types.at(-1) === 'response.completed', types.join(','));
  check(types.includes('response.output_item.added') && types.includes('response.output_item.done'), types.join(','));
});

await run('error: unknown model is NotFoundError', async () => {
  try {
    await client.chat.completions.create({ model: 'gpt-99', messages, max_tokens: 2 });
    throw new Error('no error');
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError, `got ${e.constructor.name}`);
    check(e.code === 'model_not_found', `code ${e.code}`);
  }
});

await run('error: context length is BadRequestError with the phrase', async () => {
  try {
    await client.completions.create({ model: 'tiny', prompt: Array(300).fill(9), max_tokens: 2 });
    throw new Error('no error');
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError, `got ${e.constructor.name}`);
    check(/maximum context length/.test(e.message), e.message);
  }
});

process.exit(failed ? 1 : 0);
