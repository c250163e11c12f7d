// routing.mjs URL KEY SESSIONS TURNS MODEL: a multi-turn coding workload. SESSIONS conversations run
// at once, each TURNS turns in sequence; every turn resends the whole conversation (system prompt,
// earlier questions and answers) plus a new question, as coding assistants do, streamed. Prints
// one JSON line: {"requests", "errors", "ttft_ms": [...]} with the time to the first content
// token of each request.
const [url, key, sessions, turns, model] = process.argv.slice(2);

const code = (s, t) => `def handler_${s}_${t}(request):\n    items = load(request.path)\n` +
  `    for i, item in enumerate(items):\n        if item.size > LIMIT_${t}:\n            continue\n` +
  `    return render(items)\n`;

async function turn(messages) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model, messages, stream: true, max_tokens: 16, temperature: 0 }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  let ttft = null, text = '', buf = '';
  const dec = new TextDecoder();
  for await (const chunk of res.body) {
    buf += dec.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6));
      if (j.error) throw new Error(j.error.message);
      const c = j.choices?.[0]?.delta?.content;
      if (c) {
        if (ttft === null) ttft = performance.now() - t0;
        text += c;
      }
    }
  }
  return { ttft: ttft ?? performance.now() - t0, text };
}

async function session(s, out) {
  const messages = [{ role: 'system', content: `Project ${s}: you review Python code for the team. ` +
    'Answer briefly and point at the line that is wrong. '.repeat(12) }];
  for (let t = 0; t < +turns; t++) {
    messages.push({ role: 'user', content: `Why is this slow?\n${code(s, t)}` });
    try {
      const r = await turn(messages);
      out.ttft.push(r.ttft);
      messages.push({ role: 'assistant', content: r.text });
    } catch (e) {
      out.errors++;
      messages.push({ role: 'assistant', content: 'ok' });
    }
    out.requests++;
  }
}

const out = { requests: 0, errors: 0, ttft: [] };
await Promise.all(Array.from({ length: +sessions }, (_, s) => session(s, out)));
console.log(JSON.stringify({ requests: out.requests, errors: out.errors, ttft_ms: out.ttft }));
