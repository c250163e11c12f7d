// kvcheck.mjs: small checks the integration scripts (tests/integ/*.sh) run on files they captured.
//   node kvcheck.mjs json FILE EXPR    print the value of EXPR, a JS expression over `j` (FILE parsed)
//   node kvcheck.mjs sse FILE EXPR     parse FILE as an SSE body; EXPR over `s`, the summary below
//   node kvcheck.mjs err FILE [STATUS-TYPE]  exit 0 if FILE is an OpenAI-shaped error body
// Exit 2 when FILE does not parse, with the reason and the start of FILE on stderr.
import { readFileSync } from 'node:fs';

const [cmd, file, expr] = process.argv.slice(2);
const text = readFileSync(file, 'utf8');

function die(msg) {
  process.stderr.write(`kvcheck: ${msg}\n  file starts: ${JSON.stringify(text.slice(0, 300))}\n`);
  process.exit(2);
}

function parse(t) {
  try {
    return JSON.parse(t);
  } catch (e) {
    return die(`not JSON: ${e.message}`);
  }
}

function show(v) {
  process.stdout.write((typeof v === 'string' ? v : JSON.stringify(v)) + '\n');
}

// The summary of an SSE body (CLIENTS.md "Stream shape"):
//   events: data payloads (strings), chunks: parsed JSON ones, done: saw [DONE] as the last event,
//   content: concatenated delta.content / text, role_first: the first chunk's delta.role,
//   finish: finish_reasons seen, usage: the usage chunk (choices []) or null, same_id / same_created,
//   usage_null_before: every chunk before the usage one has "usage": null, error: the error event's
//   error object or null, error_last: the error event is the last event, bad: lines not in SSE form.
function sse(t) {
  const s = { events: [], chunks: [], done: false, content: '', role_first: null, finish: [],
    usage: null, same_id: true, same_created: true, usage_null_before: true, error: null,
    error_last: false, bad: [] };
  for (const block of t.split('\n\n')) {
    if (block.trim() === '') continue;
    const lines = block.split('\n').filter((l) => l !== '' && !l.startsWith(':'));
    const data = [];
    for (const l of lines) {
      if (l.startsWith('data: ')) data.push(l.slice(6));
      else if (l.startsWith('data:')) data.push(l.slice(5));
      else s.bad.push(l);
    }
    if (data.length) s.events.push(data.join('\n'));
  }
  s.events.forEach((e, i) => {
    if (e === '[DONE]') {
      s.done = i === s.events.length - 1;
      return;
    }
    let c;
    try {
      c = JSON.parse(e);
    } catch {
      s.bad.push(e);
      return;
    }
    if (c.error) {
      s.error = c.error;
      s.error_last = i === s.events.length - 1;
      return;
    }
    s.chunks.push(c);
  });
  const first = s.chunks[0];
  if (first && first.choices && first.choices[0] && first.choices[0].delta)
    s.role_first = first.choices[0].delta.role ?? null;
  for (const c of s.chunks) {
    if (first && c.id !== first.id) s.same_id = false;
    if (first && c.created !== first.created) s.same_created = false;
    if (Array.isArray(c.choices) && c.choices.length === 0 && c.usage) {
      s.usage = c.usage;
      continue;
    }
    if (c.usage !== null) s.usage_null_before = false;
    for (const ch of c.choices || []) {
      if (ch.delta && typeof ch.delta.content === 'string') s.content += ch.delta.content;
      if (typeof ch.text === 'string') s.content += ch.text;
      if (ch.finish_reason) s.finish.push(ch.finish_reason);
    }
  }
  return s;
}

function evaluate(name, value) {
  // eslint-disable-next-line no-new-func
  return new Function(name, `return (${expr});`)(value);
}

if (cmd === 'json') {
  show(evaluate('j', parse(text)));
} else if (cmd === 'sse') {
  show(evaluate('s', sse(text)));
} else if (cmd === 'err') {
  const j = parse(text);
  const e = j && j.error;
  const why = !e || typeof e !== 'object' ? 'no "error" object'
    : typeof e.message !== 'string' || e.message === '' ? 'error.message is not a non-empty string'
    : typeof e.type !== 'string' ? 'error.type is not a string'
    : !('param' in e) ? 'error.param is missing'
    : !('code' in e) ? 'error.code is missing'
    : expr && e.type !== expr ? `error.type is ${JSON.stringify(e.type)}, not ${JSON.stringify(expr)}`
    : null;
  if (why) {
    process.stderr.write(`kvcheck: not an OpenAI-shaped error: ${why}: ${text.slice(0, 300)}\n`);
    process.exit(1);
  }
} else {
  die(`unknown command ${cmd}`);
}
