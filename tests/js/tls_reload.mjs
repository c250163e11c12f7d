// tls_reload.mjs: certificate reload on SIGHUP, seen from clients.
//   node tls_reload.mjs PORT 'SHELL COMMAND'
// Opens a TLS keep-alive connection and sends a request on it; runs the command (which replaces the
// certificate files and sends SIGHUP); opens a new connection and sends a request on it; then sends
// a second request on the first connection. Prints JSON: {old_serial, new_serial, old_status1,
// new_status, old_status2, old_alive} (serials in upper-case hex, statuses as numbers or null).
import tls from 'node:tls';
import { execSync } from 'node:child_process';

const port = Number(process.argv[2]);
const cmd = process.argv[3];
const sleep = (n) => new Promise((r) => setTimeout(r, n));

function open() {
  return new Promise((res, rej) => {
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    s.once('secureConnect', () => res(s));
    s.once('error', rej);
  });
}

// One GET on socket s; resolves to the status (null if the connection ends first or after 3 s).
function get(s, path) {
  return new Promise((res) => {
    let got = '';
    const done = (v) => {
      s.removeListener('data', onData);
      clearTimeout(t);
      res(v);
    };
    const onData = (b) => {
      got += b.toString('latin1');
      const h = got.indexOf('\r\n\r\n');
      const cl = /content-length:\s*(\d+)/i.exec(got);
      if (h >= 0 && cl && got.length >= h + 4 + Number(cl[1])) done(Number(got.split(' ')[1]));
    };
    const t = setTimeout(() => done(null), 3000);
    s.on('data', onData);
    s.once('close', () => done(null));
    s.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  });
}

const serial = (s) => (s.getPeerCertificate().serialNumber || '').toUpperCase().replace(/^0+/, '');
const out = {};
const a = await open();
let aClosed = false;
a.on('close', () => { aClosed = true; });
a.on('error', () => {});
out.old_serial = serial(a);
out.old_status1 = await get(a, '/health');
execSync(cmd, { stdio: 'inherit' });
await sleep(300);
const b = await open().catch((e) => ({ error: e.message }));
if (b.error) {
  out.new_error = b.error;
} else {
  out.new_serial = serial(b);
  out.new_status = await get(b, '/health');
  b.destroy();
}
out.old_alive = !aClosed;
out.old_status2 = aClosed ? null : await get(a, '/v1/models');
a.destroy();
process.stdout.write(JSON.stringify(out) + '\n');
