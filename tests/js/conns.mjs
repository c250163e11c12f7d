// conns.mjs: many connections and stalled TLS handshakes, for tests/integ/faults_conns.sh.
//
//   node conns.mjs idle PORT N HOLD_MS
// Opens N plain TCP connections to 127.0.0.1:PORT (256 connects in flight at a time) and sends
// nothing. Once every connect has settled, prints a line "ready {json}" (the caller samples the
// server meanwhile), holds what is still open for HOLD_MS, then prints "done {json}" and closes
// everything with a reset (no TIME_WAIT left behind). The json: opened (connects that succeeded),
// failed (connects refused or reset), closed (closed by the peer so far), got503 (of those, how many
// had received a 503 first), bytes (connections that received anything), open (still open).
//
//   node conns.mjs tlsstall PORT MODE N
// N raw TCP connections to a TLS port, each stalling the handshake, MODE:
//   partial   send the first 40 bytes of a real ClientHello, then nothing
//   hello     send a whole ClientHello, read the server's answer, never send the next flight
//   drip      send a whole ClientHello one byte every 50 ms (a handshake kept "active")
//
//   node conns.mjs chunkext PORT N [API_KEY]
// POST /v1/echo with a chunked body of N one-byte chunks, each carrying a 60,000-byte chunk
// extension (N x 60 KB on the wire, N bytes of body); prints what came back (or "closed").
// Waits until every connection is closed by the peer (at most 8 s) and prints
// {"n","closed","min_ms","max_ms","server_bytes"}: close times since each connection opened.
import net from 'node:net';
import tls from 'node:tls';

const [mode, portS, a3, a4] = process.argv.slice(2);
const port = Number(portS);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function idle(n, holdMs) {
  const st = { opened: 0, failed: 0, closed: 0, got503: 0, bytes: 0, open: 0 };
  const socks = [];
  let next = 0;
  async function worker() {
    while (next < n) {
      next++;
      await new Promise((res) => {
        const s = net.connect({ port, host: '127.0.0.1' });
        let connected = false;
        let got = '';
        s.on('connect', () => { connected = true; st.opened++; socks.push(s); res(); });
        s.on('data', (b) => { if (!got) st.bytes++; got += b.toString('latin1'); });
        s.on('error', () => {});
        s.on('close', () => {
          if (!connected) { st.failed++; res(); return; }
          st.closed++;
          if (/^HTTP\/1\.1 503/.test(got)) st.got503++;
        });
      });
    }
  }
  await Promise.all(Array.from({ length: 256 }, worker));
  await sleep(200);
  st.open = socks.filter((s) => !s.destroyed && s.readyState === 'open').length;
  process.stdout.write(`ready ${JSON.stringify(st)}\n`);
  await sleep(holdMs);
  st.open = socks.filter((s) => !s.destroyed && s.readyState === 'open').length;
  process.stdout.write(`done ${JSON.stringify(st)}\n`);
  for (const s of socks) if (!s.destroyed) s.resetAndDestroy();
  await sleep(100);
  process.exit(0);
}

// A real ClientHello: what tls.connect writes first, captured by a local listener.
function clientHello() {
  return new Promise((res) => {
    const srv = net.createServer((c) => {
      c.once('data', (b) => { res(b); c.destroy(); srv.close(); });
    });
    srv.listen(0, '127.0.0.1', () => {
      const t = tls.connect({ port: srv.address().port, host: '127.0.0.1', servername: 'localhost',
        rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
      t.on('error', () => {});
    });
  });
}

async function tlsstall(how, n) {
  const hello = await clientHello();
  const times = [];
  let serverBytes = 0;
  const done = Array.from({ length: n }, () => new Promise((res) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    const t0 = Date.now();
    let timer = null;
    s.on('error', () => {});
    s.on('data', (b) => { serverBytes += b.length; });
    s.on('close', () => { if (timer) clearInterval(timer); times.push(Date.now() - t0); res(); });
    s.on('connect', () => {
      if (how === 'partial') s.write(hello.subarray(0, 40));
      else if (how === 'hello') s.write(hello);
      else {
        let i = 0;
        timer = setInterval(() => { if (i < hello.length && !s.destroyed) s.write(hello.subarray(i, ++i)); }, 50);
      }
    });
    setTimeout(() => { s.destroy(); }, 8000).unref();
  }));
  await Promise.all(done);
  // a connection destroyed by our own 8 s guard still counts in times: tell them apart by duration
  const closed = times.filter((t) => t < 7900).length;
  process.stdout.write(JSON.stringify({ n, closed, min_ms: Math.min(...times), max_ms: Math.max(...times),
    server_bytes: serverBytes, hello_bytes: hello.length }) + '\n');
}

function chunkext(n, key) {
  const s = net.connect({ port, host: '127.0.0.1' }, () => {
    s.write(`POST /v1/echo HTTP/1.1\r\nHost: x\r\n${key ? `Authorization: Bearer ${key}\r\n` : ''}Transfer-Encoding: chunked\r\n\r\n`);
    const chunk = `1;e=${'0'.repeat(60000)}\r\nx\r\n`;
    let i = 0;
    const more = () => {
      while (i < n) {
        i++;
        if (!s.write(chunk)) { s.once('drain', more); return; }
      }
      s.write('0\r\n\r\n');
    };
    more();
  });
  let got = '';
  s.on('data', (d) => {
    got += d.toString('latin1');
    const m = /content-length: *(\d+)\r\n[^]*?\r\n\r\n/i.exec(got);
    if (m && got.length >= m.index + m[0].length + Number(m[1])) { process.stdout.write(got); s.destroy(); }
  });
  s.on('error', () => {});
  s.on('close', () => { if (!got) process.stdout.write('closed\n'); });
  setTimeout(() => { process.stdout.write(got || 'timeout\n'); process.exit(0); }, 10000).unref();
}

if (mode === 'chunkext') chunkext(Number(a3), a4);
else if (mode === 'idle') idle(Number(a3), Number(a4));
else if (mode === 'tlsstall') tlsstall(a3, Number(a4));
else { process.stderr.write('usage: conns.mjs idle PORT N HOLD_MS | tlsstall PORT MODE N\n'); process.exit(2); }
