// Two players of examples/world in headless Chromium (Debian's), driven by
// playwright-core, for tests/world.rs. Each player is a browser context of
// its own (its own localStorage) on the face's /world page.
//
//   node world-browser.mjs WORLD_URL SCREENSHOT_DIR
//
// 1. ann and ben log in through the page's form; ann says a line with
//    markup in it; ben's page shows it as text. Prints {"stage":"heard",...}
//    and waits for one line on stdin (the test restarts the kernel then).
// 2. ann's page reconnects by itself; ben reloads his (logging in again
//    from what the page remembered); ben says a line, ann's page shows it.
//    Prints {"stage":"reconnected",...}.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [url, screenshots] = process.argv.slice(2);
if (!url || !screenshots) {
  console.error('usage: node world-browser.mjs WORLD_URL SCREENSHOT_DIR');
  process.exit(2);
}
const WAIT_MS = 30000;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const out = event => console.log(JSON.stringify(event));

/** Waits until a page has logged in `times` times since it loaded. */
const entered = (page, times) =>
  page.waitForFunction(n => Number(document.body.dataset.entered || 0) >= n, times, { timeout: WAIT_MS });

/** Waits until a line of the page's screen contains `text`; that line. */
const sees = async (page, text) => {
  const line = page.locator('#screen div', { hasText: text }).first();
  await line.waitFor({ timeout: WAIT_MS });
  return line.textContent();
};

const login = async (browser, name, secret) => {
  const page = await (await browser.newContext()).newPage();
  // What the page logs goes to stderr, which the test shows if it fails.
  page.on('console', message => console.error(`${name}: ${message.text()}`));
  page.on('pageerror', error => console.error(`${name}: ${error}`));
  await page.goto(url);
  await page.fill('#name', name);
  await page.fill('#secret', secret);
  await page.click('#login button');
  await entered(page, 1);
  await sees(page, 'The Lobby');
  return page;
};

const say = async (page, line) => {
  await page.fill('#line', line);
  await page.press('#line', 'Enter');
};

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const ann = await login(browser, 'ann', 'ann-secret');
  const ben = await login(browser, 'ben', 'ben-secret');
  await say(ann, 'say hello <b>ben</b>');
  const heard = await sees(ben, 'ann says');
  const markup = await ben.locator('#screen b').count();
  await ben.screenshot({ path: `${screenshots}/world-ben.png` });
  out({ stage: 'heard', heard, markup });

  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  await lines.next();
  await entered(ann, 2);
  await ben.reload();
  await entered(ben, 1);
  await say(ben, 'say still here');
  const again = await sees(ann, 'ben says, "still here"');
  const status = await ann.textContent('#status');
  await ann.screenshot({ path: `${screenshots}/world-ann.png` });
  out({ stage: 'reconnected', heard: again, status });
} finally {
  await browser.close();
}
// The stdin reader would keep the process alive.
process.exit(0);
