// A Node peer on @endo/captp 4.5.1 for tests/endo.rs: it reaches the
// kernel a sturdy ref names, restores the object (a `waiter` vat), and runs
// the scenario, printing one JSON line per step: {"step", "value"}.
//
//   node --expose-gc peer.mjs captp://DID@HOST:PORT/SWISS
//       JSON CapTP in netstrings over TCP, to the CapTP listener;
//   node --expose-gc --experimental-websocket peer.mjs captp://... ws://HOST:PORT/captp
//       one message per WebSocket frame, to the daemon's HTTP face.
import '@endo/init';
import net from 'node:net';
import { makeCapTP, E } from '@endo/captp';
import { Far } from '@endo/far';
import { makeNetstringReader, makeNetstringWriter } from '@endo/netstring';
import { makeNodeReader, makeNodeWriter } from '@endo/stream-node';

const [uri, wsUrl] = process.argv.slice(2);
const match = /^captp:\/\/[^@]+@([^:/]+):(\d+)\/(.+)$/.exec(uri || '');
if (!match) {
  console.error('usage: node --expose-gc peer.mjs captp://DID@HOST:PORT/SWISS [ws://HOST:PORT/captp]');
  process.exit(2);
}
const [, host, port, swiss] = match;

const say = (step, value) => console.log(JSON.stringify({ step, value }));
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Netstrings over TCP: returns send, a loop feeding dispatch, and close. */
const overTcp = async () => {
  const socket = net.connect({ host, port: Number(port) });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const writer = makeNetstringWriter(makeNodeWriter(socket));
  const reader = makeNetstringReader(makeNodeReader(socket));
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  return {
    send: message => writer.next(encoder.encode(JSON.stringify(message))),
    run: async dispatch => {
      for await (const message of reader) {
        dispatch(JSON.parse(decoder.decode(message)));
      }
    },
    close: () => socket.end(),
  };
};

/** One message per WebSocket frame. */
const overWebSocket = async () => {
  const socket = new WebSocket(wsUrl);
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(Error(`cannot open ${wsUrl}`));
  });
  let dispatchTo;
  const closed = new Promise(resolve => {
    socket.onclose = resolve;
  });
  socket.onmessage = event => dispatchTo(JSON.parse(event.data));
  return {
    send: message => socket.send(JSON.stringify(message)),
    run: async dispatch => {
      dispatchTo = dispatch;
      await closed;
    },
    close: () => socket.close(),
  };
};

const transport = wsUrl ? await overWebSocket() : await overTcp();
const { dispatch, getBootstrap, abort, getStats } = makeCapTP('node', transport.send, undefined, {
  gcImports: true,
});
const reading = transport.run(dispatch);

// Restore, pipelined on the bootstrap answer.
const waiter = E(getBootstrap()).restore(swiss);

// Data both ways, in the legacy capdata @endo/captp writes.
const echoed = await E(waiter).echo(harden({ n: 10n, list: [true, null, -1.5], text: 'hi' }));
say('echo', { n: String(echoed.n), list: echoed.list, text: echoed.text });

// A Far object of ours, which the kernel's vat calls back.
const greeter = Far('greeter', { hello: () => 'hi from node' });
say('callback', await E(waiter).awaitAnswer(greeter, 'hello'));

// Pipelined: a call on the answer of a call, sent before either returns.
say('pipelined', await E(E(waiter).object()).label());

// A promise of ours, resolved after the call is made.
let resolveLater;
const later = new Promise(resolve => {
  resolveLater = resolve;
});
const answer = E(waiter).echo(later);
setTimeout(() => resolveLater('resolved later'), 200);
say('promise', await answer);

// An object we let go of: collected, its slot dropped (CTP_DROP).
let thing = await E(waiter).object();
say('thing', await E(thing).label());
thing = undefined;
for (let i = 0; i < 20 && getStats().send.CTP_DROP === 0; i += 1) {
  globalThis.gc();
  await sleep(50);
}
say('dropped', getStats().send.CTP_DROP);

// A call the vat fails: the exception comes back as a rejection.
try {
  await E(waiter).noSuchMethod();
  say('failure', 'no error');
} catch (e) {
  say('failure', String(e.message || e));
}

abort(Error('done'));
transport.close();
await reading.catch(() => {});
say('disconnected', true);
process.exit(0);
