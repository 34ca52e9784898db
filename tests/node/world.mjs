// Players of examples/world over the daemon's HTTP face, on @endo/captp
// 4.5.1: each player is its own WebSocket and CapTP session, with a
// session object the world tells what the player hears.
//
//   node --experimental-websocket world.mjs ws://HOST:PORT/captp SWISS
//       reads one JSON request per line on stdin, writes one JSON line per event:
//       {"op":"login","player","secret"}     -> {"op":"login","player"} or {"op":"error",...}
//       {"op":"command","player","line","id"} -> {"op":"reply","player","id","text"}
//                                               or {"op":"error","player","id","text"}
//       {"op":"close","player"}              -> {"op":"closed","player"}
//       what a player hears                  -> {"op":"heard","player","text"}
//   node --experimental-websocket world.mjs ws://... SWISS bench PLAYERS ROUNDS
//       PLAYERS in one room; ROUNDS says, each timed until every other player
//       heard it; then every player runs `look` at once. Prints one JSON line.
import '@endo/init';
import readline from 'node:readline';
import { makeCapTP, E } from '@endo/captp';
import { Far } from '@endo/far';

const [wsUrl, swiss, mode, ...rest] = process.argv.slice(2);
if (!wsUrl || !swiss) {
  console.error('usage: node --experimental-websocket world.mjs ws://HOST:PORT/captp SWISS [bench N ROUNDS]');
  process.exit(2);
}
const out = event => console.log(JSON.stringify(event));

/** One player's connection: its CapTP, its lobby and what it hears. */
const connect = async (player, onHeard) => {
  const socket = new WebSocket(wsUrl);
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(Error(`cannot open ${wsUrl}`));
  });
  const { dispatch, getBootstrap, abort } = makeCapTP(player, m => socket.send(JSON.stringify(m)));
  socket.onmessage = event => dispatch(JSON.parse(event.data));
  socket.onclose = () => abort(Error('closed'));
  const lobby = E(getBootstrap()).restore(swiss);
  const session = Far('session', { tell: text => onHeard(text) });
  return { lobby, session, close: () => socket.close() };
};

const players = new Map();

const handle = async request => {
  const { op, player, id } = request;
  try {
    if (op === 'login') {
      const link = await connect(player, text => out({ op: 'heard', player, text }));
      link.controls = await E(link.lobby).login(player, request.secret, link.session);
      players.set(player, link);
      out({ op: 'login', player });
    } else if (op === 'command') {
      const text = await E(players.get(player).controls).command(request.line);
      out({ op: 'reply', player, id, text });
    } else if (op === 'close') {
      players.get(player)?.close();
      players.delete(player);
      out({ op: 'closed', player });
    }
  } catch (e) {
    out({ op: 'error', player, id, text: String(e?.message ?? e) });
  }
};

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

const bench = async (count, rounds) => {
  const waiting = new Map();
  const heard = (text) => {
    const match = /"(say-\d+)"/.exec(text);
    const entry = match && waiting.get(match[1]);
    if (entry && (entry.left -= 1) === 0) entry.done();
  };
  const links = [];
  for (let i = 0; i < count; i += 1) {
    const link = await connect(`p${i}`, heard);
    link.controls = await E(link.lobby).login(`p${i}`, 'secret', link.session);
    links.push(link);
  }
  await Promise.all(links.map(l => E(l.controls).command('look')));
  const latencies = [];
  for (let r = 0; r < rounds; r += 1) {
    const tag = `say-${r}`;
    const start = performance.now();
    const all = new Promise(done => waiting.set(tag, { left: count - 1, done }));
    await E(links[r % count].controls).command(`say ${tag}`);
    await all;
    latencies.push(performance.now() - start);
  }
  latencies.sort((a, b) => a - b);
  const start = performance.now();
  const perPlayer = 5;
  await Promise.all(links.map(async l => {
    for (let i = 0; i < perPlayer; i += 1) await E(l.controls).command('look');
  }));
  const seconds = (performance.now() - start) / 1000;
  out({
    players: count,
    rounds,
    say_p50_ms: quantile(latencies, 0.5),
    say_p99_ms: quantile(latencies, 0.99),
    commands_per_s: (count * perPlayer) / seconds,
  });
  process.exit(0);
};

if (mode === 'bench') {
  await bench(Number(rest[0] || 100), Number(rest[1] || 50));
} else {
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim()) handle(JSON.parse(line));
  }
  for (const link of players.values()) link.close();
  process.exit(0);
}
