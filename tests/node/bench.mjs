// Round trips and pipelined throughput of an @endo/captp 4.5.1 client,
// for benches/endo.rs:
//
//   node bench.mjs client captp://DID@HOST:PORT/SWISS [ws://HOST:PORT/captp] ROUNDS BURST
//       calls `echo(i)` on the restored object: ROUNDS one after another,
//       then BURST at once; prints {"roundTripUs", "pipelinedPerS"}.
//   node bench.mjs serve
//       an @endo/captp server (Node to Node, the anchor): its bootstrap
//       restores any swiss number to an echo object; prints {"port"}.
import '@endo/init';
import net from 'node:net';
import { makeCapTP, E } from '@endo/captp';
import { Far } from '@endo/far';
import { makeNetstringReader, makeNetstringWriter } from '@endo/netstring';
import { makeNodeReader, makeNodeWriter } from '@endo/stream-node';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** CapTP over a TCP socket in netstrings; `bootstrap` is what we export. */
const overSocket = (socket, bootstrap) => {
  const writer = makeNetstringWriter(makeNodeWriter(socket));
  const reader = makeNetstringReader(makeNodeReader(socket));
  const send = message => writer.next(encoder.encode(JSON.stringify(message)));
  const captp = makeCapTP('bench', send, bootstrap);
  (async () => {
    for await (const message of reader) captp.dispatch(JSON.parse(decoder.decode(message)));
  })().catch(() => {});
  return captp;
};

const overWebSocket = async url => {
  const socket = new WebSocket(url);
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(Error(`cannot open ${url}`));
  });
  const captp = makeCapTP('bench', message => socket.send(JSON.stringify(message)));
  socket.onmessage = event => captp.dispatch(JSON.parse(event.data));
  return captp;
};

const serve = () => {
  const echo = Far('echo', { echo: x => x });
  const gate = Far('gate', { restore: _swiss => echo });
  const server = net.createServer(socket => overSocket(socket, gate));
  server.listen(0, '127.0.0.1', () => {
    console.log(JSON.stringify({ port: server.address().port }));
  });
};

const client = async (uri, wsUrl, rounds, burst) => {
  const [, host, port, swiss] = /^captp:\/\/[^@]+@([^:/]+):(\d+)\/(.+)$/.exec(uri);
  let captp;
  if (wsUrl) {
    captp = await overWebSocket(wsUrl);
  } else {
    const socket = net.connect({ host, port: Number(port) });
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    captp = overSocket(socket, undefined);
  }
  const target = await E(captp.getBootstrap()).restore(swiss);
  await E(target).echo(0); // warm
  let started = process.hrtime.bigint();
  for (let i = 0; i < rounds; i += 1) await E(target).echo(i);
  const roundTripUs = Number(process.hrtime.bigint() - started) / 1000 / rounds;
  started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: burst }, (_, i) => E(target).echo(i)));
  const pipelinedPerS = burst / (Number(process.hrtime.bigint() - started) / 1e9);
  console.log(JSON.stringify({ roundTripUs, pipelinedPerS }));
  process.exit(0);
};

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'serve') {
  serve();
} else if (mode === 'client') {
  const ws = rest.length === 4 ? rest[1] : undefined;
  const [rounds, burst] = rest.slice(-2).map(Number);
  await client(rest[0], ws, rounds, burst);
} else {
  console.error('usage: node bench.mjs serve | client URI [WS_URL] ROUNDS BURST');
  process.exit(2);
}
