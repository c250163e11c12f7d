// raw.mjs: a scripted raw TCP (or TLS) client, for what curl cannot do: pipelining, a request sent in
// pieces, a connection left idle, many connections held open.
//
//   node raw.mjs [--tls] PORT STEP...
// Steps, run in order on one connection:
//   send:TEXT        write TEXT; \r \n \t and \xHH escapes are decoded
//   sleep:MS         wait
//   expect:N:REGEX   wait (at most N ms) until everything received so far matches REGEX (flags s)
//   count:N:REGEX    fail unless REGEX occurs exactly N times in what was received so far
//   closed:MS        wait (at most MS ms) until the peer closes the connection
//   open:MS          fail if the peer closes the connection within MS ms
//   mark             print the ms since the start to stderr (timing checks in the caller)
// At the end (or on failure) prints everything received to stdout; exit 0 when every step passed,
// 1 with the failing step on stderr.
//
//   node raw.mjs hold PORT N MS REQUEST
// Opens N connections, sends REQUEST (escapes decoded) on each, waits for a complete response on
// each, prints "held N", keeps them open for MS ms, then closes them (or the caller kills it).
import net from 'node:net';
import tls from 'node:tls';

const args = process.argv.slice(2);
const useTls = args[0] === '--tls';
if (useTls) args.shift();

function unescape(s) {
  return s.replace(/\\(r|n|t|\\|x[0-9a-fA-F]{2})/g, (_, c) =>
    c === 'r' ? '\r' : c === 'n' ? '\n' : c === 't' ? '\t' : c === '\\' ? '\\'
      : String.fromCharCode(parseInt(c.slice(1), 16)));
}

function connect(port) {
  return useTls
    ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
    : net.connect({ port, host: '127.0.0.1' });
}

const t0 = Date.now();
const ms = () => Date.now() - t0;
const sleep = (n) => new Promise((r) => setTimeout(r, n));

async function script(port, steps) {
  const sock = connect(port);
  let got = '';
  let closed = false;
  let closedAt = -1;
  sock.setNoDelay(true);
  sock.on('data', (b) => { got += b.toString('latin1'); });
  sock.on('close', () => { closed = true; closedAt = ms(); });
  sock.on('error', () => {});
  await new Promise((res, rej) => {
    sock.once(useTls ? 'secureConnect' : 'connect', res);
    sock.once('error', rej);
  });
  const fail = (step, why) => {
    process.stdout.write(got);
    process.stderr.write(`raw: step "${step}" failed at ${ms()} ms: ${why}\n` +
      `raw: received ${got.length} bytes${closed ? `, closed at ${closedAt} ms` : ', still open'}\n`);
    sock.destroy();
    process.exit(1);
  };
  for (const step of steps) {
    const i = step.indexOf(':');
    const op = i < 0 ? step : step.slice(0, i);
    const rest = i < 0 ? '' : step.slice(i + 1);
    if (op === 'send') {
      if (closed) fail(step, 'the connection is closed');
      sock.write(Buffer.from(unescape(rest), 'latin1'));
    } else if (op === 'sleep') {
      await sleep(Number(rest));
    } else if (op === 'expect' || op === 'count') {
      const j = rest.indexOf(':');
      const n = Number(rest.slice(0, j));
      const re = new RegExp(rest.slice(j + 1), op === 'count' ? 'gs' : 's');
      if (op === 'count') {
        const found = (got.match(re) || []).length;
        if (found !== n) fail(step, `found ${found} times, not ${n}`);
        continue;
      }
      const until = Date.now() + n;
      while (!re.test(got) && Date.now() < until && !closed) await sleep(5);
      if (!re.test(got)) fail(step, `no match within ${n} ms`);
    } else if (op === 'closed') {
      const until = Date.now() + Number(rest);
      while (!closed && Date.now() < until) await sleep(5);
      if (!closed) fail(step, `still open after ${rest} ms`);
    } else if (op === 'open') {
      const until = Date.now() + Number(rest);
      while (!closed && Date.now() < until) await sleep(5);
      if (closed) fail(step, `closed at ${closedAt} ms`);
    } else if (op === 'mark') {
      process.stderr.write(`mark ${ms()}\n`);
    } else {
      fail(step, 'unknown step');
    }
  }
  process.stdout.write(got);
  sock.destroy();
}

async function hold(port, n, holdMs, req) {
  const socks = [];
  await Promise.all(Array.from({ length: n }, () => new Promise((res, rej) => {
    const s = connect(port);
    let got = '';
    socks.push(s);
    s.on('error', rej);
    s.on('close', () => rej(new Error(`connection closed early: ${JSON.stringify(got)}`)));
    s.on(useTls ? 'secureConnect' : 'connect', () => s.write(unescape(req)));
    s.on('data', (b) => {
      got += b.toString('latin1');
      const m = /\r\n\r\n/.exec(got);
      const cl = /content-length:\s*(\d+)/i.exec(got);
      if (m && cl && got.length >= m.index + 4 + Number(cl[1])) res();
    });
  }))).catch((e) => {
    process.stderr.write(`raw hold: ${e.message}\n`);
    process.exit(1);
  });
  for (const s of socks) s.removeAllListeners('close');
  process.stdout.write(`held ${n}\n`);
  await sleep(holdMs);
  for (const s of socks) s.destroy();
  process.exit(0);
}

if (args[0] === 'hold') hold(Number(args[1]), Number(args[2]), Number(args[3]), args[4]);
else script(Number(args[0]), args.slice(1)).catch((e) => {
  process.stderr.write(`raw: ${e.message}\n`);
  process.exit(1);
});
