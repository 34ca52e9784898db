// The inspector page in headless Chromium (Debian's), driven by
// playwright-core, for tests/endo.rs: it opens the page, waits for the vat
// `counter` in the vats table, sends `increment` to it through the form,
// waits for the result, and saves a screenshot. Prints one JSON line:
// {"vats": [names listed], "result": what the form showed}.
//
//   node inspector.mjs INSPECTOR_URL SCREENSHOT.png
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node inspector.mjs INSPECTOR_URL SCREENSHOT.png');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForSelector('#vats tbody tr td:text-is("counter")', { timeout: 20000 });
  const vats = await page.$$eval('#vats tbody tr', rows => rows.map(row => row.children[1].textContent));
  await page.fill('#target', 'counter');
  await page.fill('#method', 'increment');
  await page.click('#send button');
  await page.waitForFunction(() => {
    const result = document.getElementById('result');
    return result.dataset.ok !== undefined;
  }, null, { timeout: 20000 });
  const result = await page.textContent('#result');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ vats, result }));
} finally {
  await browser.close();
}
