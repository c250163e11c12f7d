// sdk_proxy.mjs: the openai npm SDK against kvgate over TLS (trusting the local CA through
// NODE_EXTRA_CA_CERTS), in front of a kvup named up1. Run by tests/integ/proxy_sdk.sh.
//   KV_BASE_URL=https://127.0.0.1:PORT/v1 KV_UP_STATS=http://127.0.0.1:UPPORT/kvup/stats \
//   NODE_EXTRA_CA_CERTS=ca.crt node sdk_proxy.mjs
// Prints "ok NAME" or "FAIL NAME: why" per case; exit 1 if any failed.
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.KV_BASE_URL, apiKey: 'sk-test', maxRetries: 0, timeout: 10000 });
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

async function stats() {
  const r = await fetch(process.env.KV_UP_STATS);
  return r.json();
}

const messages = [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }];

await run('models.list', async () => {
  const page = await client.models.list();
  const m = page.data[0];
  check(m && m.id === 'up1', `data[0].id ${m && m.id}`);
  check(m.max_model_len === 4096, `max_model_len ${m.max_model_len}`);
});

await run('chat non-stream', async () => {
  const r = await client.chat.completions.create({ model: 'm', messages, max_tokens: 32000 });
  check(r.choices[0].message.content === 'tok0 tok1 tok2 tok3 tok4 ', `content ${JSON.stringify(r.choices[0].message)}`);
  check(r.choices[0].finish_reason === 'stop', `finish_reason ${r.choices[0].finish_reason}`);
  check(r.usage && r.usage.completion_tokens === 5, `usage ${JSON.stringify(r.usage)}`);
});

await run('chat stream with include_usage', async () => {
  const s = await client.chat.completions.create({ model: 'm', messages, stream: true,
    stream_options: { include_usage: true } });
  let content = '';
  let role = null;
  let finish = null;
  let usage = null;
  let n = 0;
  for await (const c of s) {
    n++;
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    if (ch.delta.role) role = ch.delta.role;
    if (ch.delta.content) content += ch.delta.content;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  check(role === 'assistant', `role ${role}`);
  check(content === 'tok0 tok1 tok2 tok3 tok4 ', `content ${JSON.stringify(content)}`);
  check(finish === 'stop', `finish ${finish}`);
  check(usage && usage.total_tokens === usage.prompt_tokens + 5, `usage ${JSON.stringify(usage)}`);
  check(n === 8, `${n} chunks, expected 8`);
});

await run('chat.completions.stream() helper', async () => {
  const s = client.chat.completions.stream({ model: 'm', messages, stream_options: { include_usage: true } });
  const final = await s.finalChatCompletion();
  check(final.choices[0].message.content === 'tok0 tok1 tok2 tok3 tok4 ',
    `content ${JSON.stringify(final.choices[0].message.content)}`);
  check(final.choices[0].message.role === 'assistant', `role ${final.choices[0].message.role}`);
});

await run('completions non-stream and stream', async () => {
  const r = await client.completions.create({ model: 'm', prompt: 'def f(', suffix: ')', max_tokens: 16 });
  check(r.object === 'text_completion' && r.choices[0].text === 'tok0 tok1 tok2 tok3 tok4 ',
    `${r.object} ${JSON.stringify(r.choices[0].text)}`);
  const s = await client.completions.create({ model: 'm', prompt: 'x', stream: true,
    stop: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'] });
  let text = '';
  for await (const c of s) text += c.choices[0] ? c.choices[0].text : '';
  check(text === 'tok0 tok1 tok2 tok3 tok4 ', `stream text ${JSON.stringify(text)}`);
});

await run('upstream 400 -> BadRequestError', async () => {
  try {
    await client.chat.completions.create({ model: 'm', messages }, { headers: { 'x-kvup-status': '400' } });
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError, `got ${e.constructor.name}`);
    check(e.status === 400 && e.code === 'kvup_forced', `status ${e.status} code ${e.code}`);
    return;
  }
  throw new Error('no error thrown');
});

await run("kvgate's own 405 -> APIError with its message", async () => {
  try {
    await client.get('/chat/completions');
  } catch (e) {
    check(e instanceof OpenAI.APIError && e.status === 405, `got ${e.constructor.name} ${e.status}`);
    check(typeof e.message === 'string' && e.error && e.error.message, `message ${e.message}`);
    return;
  }
  throw new Error('no error thrown');
});

await run("kvgate's own 404 -> NotFoundError", async () => {
  try {
    await client.get('/../nope');
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError, `got ${e.constructor.name} ${e.status}`);
    return;
  }
  throw new Error('no error thrown');
});

await run('error event mid-stream -> the SDK throws while iterating', async () => {
  const s = await client.chat.completions.create({ model: 'm', messages, stream: true },
    { headers: { 'x-kvup-die-after': '3', 'x-kvup-events': '10' } });
  let content = '';
  try {
    for await (const c of s) content += (c.choices[0] && c.choices[0].delta.content) || '';
  } catch (e) {
    check(e instanceof OpenAI.APIError, `got ${e.constructor.name}: ${e.message}`);
    check(content === 'tok0 tok1 ', `content before the error ${JSON.stringify(content)}`);
    return;
  }
  throw new Error(`the stream ended without an error (content ${JSON.stringify(content)})`);
});

await run('abort mid-stream -> the upstream stream is cancelled', async () => {
  const before = (await stats()).streams_cancelled;
  const ac = new AbortController();
  const s = await client.chat.completions.create({ model: 'm', messages, stream: true },
    { headers: { 'x-kvup-events': '100', 'x-kvup-delay-ms': '50' }, signal: ac.signal });
  let n = 0;
  try {
    for await (const c of s) {
      void c;
      if (++n === 3) ac.abort();
    }
  } catch (e) {
    check(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', `got ${e.constructor.name}`);
  }
  const until = Date.now() + 1000;
  let after = before;
  while (Date.now() < until && after === before) {
    await new Promise((r) => setTimeout(r, 50));
    after = (await stats()).streams_cancelled;
  }
  check(after === before + 1, `streams_cancelled ${before} -> ${after} within 1 s`);
});

process.exit(failed ? 1 : 0);
