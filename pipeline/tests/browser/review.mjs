// Drives the review app in headless Chromium, as an analyst would: is sent to
// the login page, signs in, lands on the case queue, sorts and filters it,
// opens a case, checks that the evidence over the whole case is drawn with
// its alerts marked, records a verdict on the case; then opens the alert
// queue, filters it, opens a model alert, checks that the evidence chart and
// the SHAP contributions are drawn, records a verdict (under the signed-in
// name), takes screenshots, and signs out.
//
// Usage: node review.mjs BASE_URL OUT_DIR
// Environment: CHROMIUM (default /usr/bin/chromium); REVIEW_USER and
// REVIEW_PASSWORD, an analyst's account.
// Prints one JSON line on stdout: {"case_id", "case_symbol"} of the case and
// {"alert_id", "symbol", "heading"} of the alert it confirmed. Any failed check throws (exit status 1) with the reason.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, out] = process.argv.slice(2);
const user = process.env.REVIEW_USER;
const password = process.env.REVIEW_PASSWORD;
if (!base || !out || !user || !password) {
  console.error('usage: REVIEW_USER=.. REVIEW_PASSWORD=.. node review.mjs BASE_URL OUT_DIR');
  process.exit(2);
}
mkdirSync(out, { recursive: true });

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The machine has no network beyond loopback: keep Chromium from trying.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => { throw new Error(`page error: ${e}`); });

  // Signed out, the queue sends the browser to the login page.
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/login', `redirected to the login page: ${page.url()}`);
  await page.fill('input[name=name]', user);
  await page.fill('input[name=password]', 'not the password');
  await Promise.all([page.waitForLoadState(), page.click('#sign-in')]);
  check(await page.locator('p.error').count() === 1, 'a wrong password is refused');
  await page.fill('input[name=name]', user);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForURL(`${base}/`), page.click('#sign-in')]);
  const who = await page.locator('#who').innerText();
  check(who.includes(`${user} (analyst)`), `signed in as ${user}: ${who}`);
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'sa_session');
  check(session && session.httpOnly && session.sameSite === 'Lax', `an HttpOnly SameSite session cookie: ${JSON.stringify(session)}`);
  check(await page.evaluate(() => document.cookie.includes('sa_session')) === false, 'scripts cannot read the session');

  // The start page is the case queue, highest case score first.
  const caseRows = page.locator('#cases tbody tr.case-row');
  const ncases = await caseRows.count();
  check(ncases > 0, `the case queue lists cases (got ${ncases})`);
  const numbers = async (sel) => (await page.locator(sel).allInnerTexts()).map(Number);
  const descending = (xs) => xs.every((x, i) => i === 0 || xs[i - 1] >= x);
  const caseScores = await numbers('#cases td.case-score a');
  check(descending(caseScores), `cases sorted by case score: ${caseScores}`);
  await page.screenshot({ path: join(out, 'cases.png'), fullPage: false });

  // A click on a column sorts by it: most alerts first.
  await Promise.all([page.waitForURL(/sort=alerts/), page.click('#cases th a[data-sort=alerts]')]);
  const counts = await numbers('#cases td.alerts');
  check(counts.length === ncases, `the same cases, resorted (${counts.length} of ${ncases})`);
  check(descending(counts), `cases sorted by alerts: ${counts}`);

  // Filter to one symbol's cases awaiting a verdict; the sort is kept.
  const openStatus = await page.locator('#cases tr.case-row').evaluateAll((rs) => rs
    .filter((r) => r.querySelector('.status').innerText === 'open')
    .map((r) => r.querySelector('td.symbol').innerText));
  check(openStatus.length > 0, 'some case awaits a verdict');
  const caseSymbol = openStatus[0];
  await page.selectOption('select[name=symbol]', caseSymbol);
  await page.selectOption('select[name=status]', 'open');
  await Promise.all([page.waitForURL(/symbol=/), page.click('#apply')]);
  const caseSymbols = await page.locator('#cases td.symbol').allInnerTexts();
  check(caseSymbols.length > 0 && caseSymbols.every((s) => s === caseSymbol),
    `every case is ${caseSymbol}: ${caseSymbols}`);
  check(page.url().includes('sort=alerts'), `the sort survives filtering: ${page.url()}`);
  check(descending(await numbers('#cases td.alerts')), 'still sorted by alerts');

  // The case page: the evidence over the whole case, every alert marked.
  const firstCase = caseRows.first();
  const caseId = Number(await firstCase.getAttribute('data-id'));
  const caseAlerts = Number(await firstCase.locator('td.alerts').innerText());
  await Promise.all([page.waitForURL(new RegExp(`/cases/${caseId}$`)),
    firstCase.locator('td.case-score a').click()]);
  const casePrice = page.locator('#evidence-chart polyline.price');
  check(await casePrice.count() === 1, 'the case chart has a price line');
  const markers = page.locator('#evidence-chart line.alert-marker');
  const nmarkers = await markers.count();
  check(nmarkers >= 1 && nmarkers <= caseAlerts,
    `the case's alerting ticks are marked (${nmarkers} lines for ${caseAlerts} alerts)`);
  const chartBox = await page.locator('#evidence-chart').boundingBox();
  const boxes = await markers.evaluateAll((ls) => ls.map((l) => {
    const r = l.getBoundingClientRect();
    return { x: r.x, height: r.height };
  }));
  boxes.forEach((b, i) => check(
    b.x >= chartBox.x && b.x <= chartBox.x + chartBox.width && b.height >= 5,
    `marker ${i} is drawn inside the chart: ${JSON.stringify(b)} in ${JSON.stringify(chartBox)}`));
  const listed = await page.locator('#case-alert-list tr.case-alert').count();
  check(listed >= caseAlerts, `the case lists its ${caseAlerts} alerts (${listed} rows)`);
  check((await page.locator('#case-alerts').innerText()).startsWith(String(caseAlerts)), 'the alert count');
  await page.check('input[name=status][value=confirmed]');
  await page.fill('input[name=kind]', 'spoofing');
  await page.fill('textarea[name=note]', 'the whole episode: <i>layering</i>');
  await Promise.all([page.waitForURL(new RegExp(`/cases/${caseId}$`)), page.click('#record')]);
  check((await page.locator('#status').innerText()) === 'confirmed', 'the case is confirmed');
  check((await page.locator('#history tr.verdict td:nth-child(4)').last().innerText()) === user,
    'the case verdict records the signed-in user');
  await page.screenshot({ path: join(out, 'case.png'), fullPage: true });
  await page.goto(`${base}/?status=open&symbol=${encodeURIComponent(caseSymbol)}`);
  const openCases = await page.locator('#cases tr.case-row').evaluateAll(
    (rs) => rs.map((r) => Number(r.dataset.id)));
  check(!openCases.includes(caseId), 'the confirmed case left the open queue');

  // The alert queue.
  await Promise.all([page.waitForURL(`${base}/alerts`), page.click('#nav-alerts')]);
  const rows = page.locator('#queue tbody tr.alert-row');
  const total = await rows.count();
  check(total > 0, `the queue lists alerts (got ${total})`);
  await page.screenshot({ path: join(out, 'queue.png'), fullPage: false });

  // Filter: model alerts of one symbol.
  const symbols = await page.locator('select[name=symbol] option').evaluateAll(
    (os) => os.map((o) => o.value).filter((v) => v));
  check(symbols.length > 0, 'the symbol menu offers symbols');
  let symbol = null;
  for (const s of symbols) {
    await page.selectOption('select[name=symbol]', s);
    await page.selectOption('select[name=kind]', 'model');
    await Promise.all([page.waitForURL(/symbol=/), page.click('#apply')]);
    if (await rows.count() > 0) { symbol = s; break; }
    await page.goto(`${base}/alerts`);
  }
  check(symbol !== null, 'some symbol has model alerts');
  const shownSymbols = await page.locator('#queue td.symbol').allInnerTexts();
  check(shownSymbols.every((s) => s === symbol), `every row is ${symbol}: ${shownSymbols}`);
  const kinds = await page.locator('#queue td.kind').allInnerTexts();
  check(kinds.every((k) => k === 'model'), `every row is a model alert: ${kinds}`);
  const scores = (await page.locator('#queue tbody tr td.num a').allInnerTexts()).map(Number);
  check(scores.every((s, i) => i === 0 || scores[i - 1] >= s), `sorted by score: ${scores}`);
  check(page.url().includes(`symbol=${encodeURIComponent(symbol)}`), `the filter is in the URL ${page.url()}`);

  // The alert page.
  const first = rows.first();
  const alertId = Number(await first.getAttribute('data-id'));
  await Promise.all([page.waitForURL(new RegExp(`/alerts/${alertId}$`)), first.locator('a').click()]);
  const priceLine = page.locator('#evidence-chart polyline.price');
  check(await priceLine.count() === 1, 'the evidence chart has a price line');
  const points = (await priceLine.getAttribute('points')).trim().split(/\s+/);
  check(points.length >= 2, `the price line has points (${points.length})`);
  const box = await page.locator('#evidence-chart').boundingBox();
  check(box && box.width > 300 && box.height > 100, `the chart is drawn at a visible size ${JSON.stringify(box)}`);
  check(await page.locator('#evidence-chart line.alert-marker').count() === 1, 'the alert is marked');
  const bars = page.locator('#contributions-chart rect.contribution');
  const nbars = await bars.count();
  check(nbars >= 1, `contributions are drawn (${nbars} bars)`);
  for (let i = 0; i < nbars; i++) {
    const b = await bars.nth(i).boundingBox();
    check(b && b.width >= 1 && b.height > 1, `contribution bar ${i} is visible`);
  }
  const tsText = await page.locator('h1').innerText();

  // A verdict, with markup in the note: it must come back as text.
  const note = '<b>layered</b> bids & cancelled <script>window.pwned=1</script>';
  await page.check('input[name=status][value=confirmed]');
  await page.fill('input[name=kind]', 'spoofing');
  await page.fill('textarea[name=note]', note);
  await Promise.all([page.waitForURL(new RegExp(`/alerts/${alertId}$`)), page.click('#record')]);
  check((await page.locator('#status').innerText()) === 'confirmed', 'the status is confirmed');
  const noteCell = page.locator('#history tr.verdict pre.note').last();
  check((await noteCell.innerText()) === note, 'the note is shown as typed');
  check(await noteCell.locator('b, script').count() === 0, 'markup in the note is not rendered');
  check(await page.evaluate(() => window.pwned === undefined), 'script in the note never ran');
  await page.screenshot({ path: join(out, 'alert.png'), fullPage: true });

  // Back in the queue, the alert is no longer open.
  await page.goto(`${base}/alerts?status=open&symbol=${encodeURIComponent(symbol)}`);
  const openIds = await page.locator('#queue tr.alert-row').evaluateAll(
    (rs) => rs.map((r) => Number(r.dataset.id)));
  check(!openIds.includes(alertId), 'the confirmed alert left the open queue');
  const analyst = await page.goto(`${base}/alerts/${alertId}`).then(() =>
    page.locator('#history tr.verdict td:nth-child(4)').last().innerText());
  check(analyst === user, `the verdict records the signed-in user: ${analyst}`);

  // Signing out ends the session: the queue asks for a sign-in again.
  await Promise.all([page.waitForURL(/\/login$/), page.click('#sign-out')]);
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/login', 'signed out');

  console.log(JSON.stringify({
    case_id: caseId, case_symbol: caseSymbol, alert_id: alertId, symbol, heading: tsText,
  }));
} finally {
  await browser.close();
}
