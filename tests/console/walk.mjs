// End-to-end walk of the operators' console in Debian's Chromium, driven by Playwright (playwright-core,
// no browser download) and checked with axe-core.
//
//   node tests/console/walk.mjs <base url> <admin token> <read-only token> [dead notification id]
//
// Signs in, runs the seed's rollout from the feature page (UAT actor, 2%, 25%, pause with a reason,
// resume, 100%) and checks each step through the Flipper JSON API; then the history, restore, the
// report's charts, a rollout plan's overrides, the notifications page and replay, CSRF, a read-only
// session, escaping, and axe on every page. Exits non-zero on the first failure.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const [base, adminToken, readToken, deadId] = process.argv.slice(2);
if (!base || !adminToken || !readToken) {
  console.error('usage: node walk.mjs <base url> <admin token> <read-only token> [dead notification id]');
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
if (!fs.existsSync(CHROMIUM)) {
  console.error(`Chromium is missing at ${CHROMIUM}: apt-get install -y chromium (.ci/run does this)`);
  process.exit(3);
}
const FEATURE = 'event_bus_gateway_emails_enabled';
const UAT_ACTOR = '600061742';
const XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">';
const shots = path.resolve(here, '../../target/console-screenshots');
fs.mkdirSync(shots, { recursive: true });
for (const old of fs.readdirSync(shots).filter((f) => f.endsWith('.png'))) fs.rmSync(path.join(shots, old));
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

let step = 0;
function check(ok, message) {
  if (!ok) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

// ---- the JSON API, the source of truth the page is checked against ----
async function api(urlPath, init = {}) {
  const response = await fetch(base + urlPath, {
    ...init,
    headers: { authorization: `Bearer ${adminToken}`, accept: 'application/json', ...(init.headers || {}) },
  });
  if (!response.ok) throw new Error(`${urlPath}: HTTP ${response.status}`);
  return response.json();
}
const feature = () => api(`/flipper/api/features/${FEATURE}`);
const gate = (f, key) => f.gates.find((g) => g.key === key).value;

// The gates in words, computed from the Flipper JSON exactly as the page states them.
function words(f) {
  if (gate(f, 'boolean') === 'true') return 'everyone';
  const parts = [];
  const poa = parseFloat(gate(f, 'percentage_of_actors') ?? '0');
  if (poa > 0) parts.push(`${poa}% of actors`);
  const actors = gate(f, 'actors') || [];
  if (actors.length === 1) parts.push('1 actor');
  if (actors.length > 1) parts.push(`${actors.length} actors`);
  const pot = parseFloat(gate(f, 'percentage_of_time') ?? '0');
  if (pot > 0) parts.push(`${pot}% of the time`);
  return parts.length ? parts.join(', ') : 'nobody';
}

// ---- the browser ----
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const cspViolations = [];
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });
  page.on('dialog', (d) => {
    cspViolations.push(`a dialog opened: ${d.message()}`);
    d.dismiss();
  });
  return page;
}

// axe on the current page: no serious or critical violation; then a full-page screenshot.
async function audit(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'section508', 'best-practice'] } }),
  );
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of bad) console.error(`axe ${v.impact} ${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  check(bad.length === 0, `axe: no serious or critical violation on ${name} (${result.violations.length} minor)`);
  step += 1;
  await page.screenshot({ path: path.join(shots, `${String(step).padStart(2, '0')}-${name}.png`), fullPage: true });
}

// Submits through a click and waits for the page it lands on (POST-redirect-GET, or an error page).
async function submit(page, locator) {
  await Promise.all([page.waitForEvent('load'), locator.click()]);
}

async function signIn(page, token) {
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/console/sign-in', '/ redirects to /console, which asks to sign in');
  await page.getByLabel('Token').fill(token);
  await submit(page, page.getByRole('button', { name: 'Sign in' }));
  check(new URL(page.url()).pathname === '/console', 'signed in lands on the features list');
}

async function pageGates(page) {
  return (await page.locator('#gates').innerText()).trim();
}

// After each step: the page's words, the Flipper API's gates, and the expected values agree.
async function expectGates(page, label, expected) {
  const f = await feature();
  const shown = await pageGates(page);
  check(shown.startsWith(words(f)), `${label}: the page says "${shown}", the Flipper API says "${words(f)}"`);
  for (const [key, value] of Object.entries(expected)) {
    const actual = key === 'paused' ? f.paused : gate(f, key);
    check(JSON.stringify(actual) === JSON.stringify(value), `${label}: Flipper API ${key} = ${JSON.stringify(actual)}`);
  }
}

try {
  const page = await newPage();
  await page.goto(`${base}/console/sign-in`);
  await audit(page, 'sign-in');
  await page.getByLabel('Token').fill('not-a-token');
  await submit(page, page.getByRole('button', { name: 'Sign in' }));
  const refusal = await page.locator("[role=alert]").innerText().catch((e) => `none: ${e.message}`);
  check(refusal.includes("not an admin"), `a wrong token is refused (${refusal})`);
  await signIn(page, adminToken);
  await audit(page, 'features');

  // A description with markup renders as text.
  await page.getByRole('link', { name: FEATURE }).click();
  await page.locator('#description-text').fill(`Emails ${XSS}`);
  await submit(page, page.getByRole('button', { name: 'Save description' }));
  check((await page.locator('#description').innerText()).includes('<script>'), 'the description shows <script> as text');
  check((await page.evaluate(() => window.__xss)) === undefined, 'the description did not run as script');

  // The seed's rollout, from the page.
  const featureUrl = page.url().split('?')[0];
  await page.getByLabel('Actor (participant id)').fill(UAT_ACTOR);
  await page.locator('#reason-actor').fill(`UAT actor first ${XSS}`);
  await submit(page, page.getByRole('button', { name: 'Add actor' }));
  await expectGates(page, 'UAT actor', { actors: [UAT_ACTOR] });
  await audit(page, 'feature');

  for (const [percentage, reason] of [['2', 'canary 2%'], ['25', 'stage two 25%']]) {
    await page.locator('#reason-poa').fill(reason);
    await submit(page, page.getByRole('button', { name: `${percentage}%`, exact: true }));
    await expectGates(page, `${percentage}%`, { percentage_of_actors: percentage, actors: [UAT_ACTOR] });
    check((await page.getByRole('button', { name: `${percentage}%`, exact: true }).getAttribute('aria-pressed')) === 'true',
      `the ${percentage}% button shows as pressed`);
  }

  // Pause needs a reason: the browser's `required` would stop the form, so the server's check is exercised directly.
  const csrf = await page.locator('input[name=csrf]').first().inputValue();
  const noReason = await page.request.post(`${featureUrl}/pause`, { form: { csrf, reason: '' } });
  check(noReason.status() === 422, `pause without a reason is refused (${noReason.status()})`);
  await page.locator('#reason-pause').fill('error spike under investigation');
  await submit(page, page.getByRole('button', { name: 'Pause' }));
  await expectGates(page, 'paused', { paused: true, percentage_of_actors: '25' });
  check((await page.locator('#status').innerText()).includes('paused'), 'the status says paused');

  await page.locator('#reason-resume').fill('spike explained: VA Notify maintenance');
  await submit(page, page.getByRole('button', { name: 'Resume' }));
  await expectGates(page, 'resumed', { paused: false, percentage_of_actors: '25' });

  await page.locator('#reason-poa').fill('general availability 100%');
  await submit(page, page.getByRole('button', { name: '100%', exact: true }));
  await expectGates(page, '100%', { percentage_of_actors: '100' });
  check((await page.locator('#status').innerText()).includes('on'), 'the status says on');

  // Disabling asks for the feature's name.
  await page.getByLabel(/to disable for everyone/).fill('wrong name');
  await submit(page, page.getByRole('button', { name: 'Disable for everyone' }));
  check((await page.locator('[role=alert]').innerText()).includes('type the feature'), 'disable with the wrong name is refused');
  check(gate(await feature(), 'percentage_of_actors') === '100', 'and nothing changed');

  // The history shows every step with its reason, and escapes the reason with markup.
  await page.goto(featureUrl);
  const history = await page.locator('#history-table').innerText();
  for (const reason of ['UAT actor first', 'canary 2%', 'stage two 25%', 'error spike under investigation',
    'spike explained: VA Notify maintenance', 'general availability 100%']) {
    check(history.includes(reason), `history shows "${reason}"`);
  }
  check(history.includes('<script>'), 'the reason with <script> is shown as text');
  check((await page.evaluate(() => window.__xss)) === undefined, 'no injected script ran');
  check(/25%\s*→\s*100%/.test(history), 'the history shows before → after (25% → 100%)');
  const audit_ = await api(`/admin/features/${FEATURE}/audit?limit=50`);
  const rows = await page.locator('#history-table tbody tr').count();
  check(rows === audit_.entries.length, `one history row per audit entry (${rows})`);

  // Restore the state after the 25% step.
  const row25 = page.locator('#history-table tbody tr', { hasText: 'stage two 25%' }).first();
  await submit(page, row25.getByRole('button', { name: /Restore/ }));
  await expectGates(page, 'restored 25%', { percentage_of_actors: '25', paused: false });
  const restored = (await api(`/admin/features/${FEATURE}/audit?limit=1`)).entries[0];
  check(restored.operation === 'restore' && restored.actor === 'ops', `audited as restore by ops (${restored.operation})`);
  await page.locator('#reason-poa').fill('back to 100% after the restore check');
  await submit(page, page.getByRole('button', { name: '100%', exact: true }));
  await expectGates(page, '100% again', { percentage_of_actors: '100' });

  // A POST without the CSRF token is refused, and changes nothing.
  const forged = await page.request.post(`${featureUrl}/enable`, { form: { reason: 'no token' } });
  check(forged.status() === 403, `a POST without the CSRF token is refused (${forged.status()})`);
  const wrong = await page.request.post(`${featureUrl}/enable`, { form: { csrf: 'AAAA', reason: 'bad token' } });
  check(wrong.status() === 403, `a POST with a wrong CSRF token is refused (${wrong.status()})`);
  check(gate(await feature(), 'boolean') === null, 'the boolean gate is still unset');

  // The report: one bar per stage in each chart, as many stages as the JSON report.
  await page.getByRole('link', { name: 'Report' }).click();
  const report = await api(`/admin/rollout/report?feature=${FEATURE}`);
  for (const chart of ['chart-error-rate', 'chart-ctr', 'chart-users', 'chart-sends']) {
    const bars = await page.locator(`#${chart} rect.bar`).count();
    check(bars === report.stages.length, `${chart}: one bar per stage (${bars} of ${report.stages.length})`);
  }
  check((await page.locator('#chart-error-rate line.threshold').count()) === 1, 'the error-rate chart draws the 5% line');
  check((await page.locator('#report-table tbody tr').count()) === report.stages.length, 'one table row per stage');
  const md = await page.request.get(await page.getByRole('link', { name: 'Download as Markdown' }).getAttribute('href').then((h) => base + h));
  check(md.status() === 200 && (await md.text()).includes('|'), 'the Markdown download is a table');
  await audit(page, 'report');

  // Rollouts: create the seed's plan (advise), see its timeline, pause / resume / advance / abort.
  await page.getByRole('link', { name: 'Rollouts' }).click();
  await audit(page, 'rollouts');
  await submit(page, page.getByRole('button', { name: 'Create plan' }));
  check((await page.locator('.timeline li').count()) === 5, 'the seed plan has 5 stages on its timeline');
  await page.locator('#reason-pause').fill('hold for the change window');
  await submit(page, page.getByRole('button', { name: 'Pause' }));
  check((await page.locator('#plan-state').innerText()).trim() === 'paused', 'the plan is paused');
  await submit(page, page.getByRole('button', { name: 'Resume' }));
  check((await page.locator('#plan-state').innerText()).trim() === 'running', 'the plan runs again');
  await submit(page, page.getByRole('button', { name: 'Advance to the next stage' }));
  check((await page.locator('.timeline li.current').innerText()).includes('Stage 2: 25%'), 'the plan advanced to stage 2 (25%)');
  check(gate(await feature(), 'percentage_of_actors') === '100', 'an advise plan records the advance and leaves the gates alone');
  check((await page.locator('#evidence').count()) + (await page.getByText('Not evaluated yet.').count()) === 1,
    'the last evaluation (with its evidence) or its absence is shown');
  await audit(page, 'rollout-plan');
  await page.locator('#reason-abort').fill('walk finished');
  await submit(page, page.getByRole('button', { name: 'Abort' }));
  check((await page.locator('#plan-state').innerText()).trim() === 'aborted', 'the plan is aborted');

  // Notifications: queue, look-up, dead letters and their replay (dry run first).
  await page.getByRole('link', { name: 'Notifications' }).click();
  check((await page.locator('#queue').innerText()).includes('Oldest due for'), 'the queue shows the oldest due age');
  if (deadId) {
    check((await page.locator('#ended').innerText()).includes(deadId), 'the dead letter is listed');
    await page.getByLabel('Notification id').fill(deadId);
    await submit(page, page.getByRole('button', { name: 'Look up' }));
    check(new URL(page.url()).pathname === `/console/notifications/${deadId}`, 'the look-up opens the notification');
    check((await page.locator('#notification-state').innerText()).includes('dead'), 'its page shows its state');
    const history = await api(`/admin/notifications/${deadId}`);
    const attempts = await page.locator('#attempts tbody tr').count();
    check(history.attempts.length > 0 && attempts === history.attempts.length,
      `its page shows its attempts (${attempts}, as GET /admin/notifications/{id})`);
    for (const a of history.attempts) {
      const row = await page.locator('#attempts tbody tr').nth(a.attempt - 1).innerText();
      check(row.includes(a.outcome) && row.includes(String(a.http_status ?? '—')), `attempt ${a.attempt}: ${a.outcome} ${a.http_status}`);
    }
    check(!(await page.content()).includes(history.participant_id ?? '600043201'), 'the page shows no participant id');
    await audit(page, 'notification');
    await page.getByRole('link', { name: 'Back to notifications' }).click();
    await page.locator('#replay-status').selectOption('dead');
    await submit(page, page.getByRole('button', { name: 'Preview replay (dry run)' }));
    check((await page.locator('#replay-preview').innerText()).includes('1 notification(s)'), 'the dry run counts 1');
    await audit(page, 'notifications');
    await submit(page, page.getByRole('button', { name: /Requeue 1/ }));
    check((await page.locator('[role=status]').innerText()).includes('Requeued 1'), 'the replay requeued 1');
  } else {
    await audit(page, 'notifications');
  }

  // A read-only session: no write control, and a forged POST (with its own valid CSRF token) is refused.
  // Keyboard only: Tab reaches the skip link, then the token field (with a visible focus ring); Enter signs in.
  const reader = await newPage();
  await reader.goto(`${base}/console/sign-in`);
  await reader.keyboard.press('Tab');
  check(await reader.evaluate(() => document.activeElement.classList.contains('skip')), 'Tab first reaches the skip link');
  await reader.keyboard.press('Tab');
  const focus = await reader.evaluate(() => {
    const el = document.activeElement;
    const style = getComputedStyle(el);
    return { id: el.id, outline: style.outlineStyle, width: parseFloat(style.outlineWidth) };
  });
  check(focus.id === 'token' && focus.outline !== 'none' && focus.width >= 2, `the focused token field shows a focus ring (${JSON.stringify(focus)})`);
  await reader.keyboard.type(readToken);
  await Promise.all([reader.waitForEvent('load'), reader.keyboard.press('Enter')]);
  check(new URL(reader.url()).pathname === '/console', 'signed in with the keyboard alone');
  await reader.goto(featureUrl);
  const writeForms = await reader.locator('form[method=post]:not([action="/console/sign-out"])').count();
  check(writeForms === 0, `a read-only session sees no write control (${writeForms} forms)`);
  check((await reader.getByRole('button', { name: 'Enable for everyone' }).count()) === 0, 'no enable button');
  await audit(reader, 'feature-read-only');
  const readerCsrf = await reader.locator('form[action="/console/sign-out"] input[name=csrf]').inputValue();
  const before = await feature();
  for (const [action, form] of [['enable', {}], ['pause', { reason: 'forged' }], ['percentage-of-actors', { percentage: '0' }]]) {
    const res = await reader.request.post(`${featureUrl}/${action}`, { form: { csrf: readerCsrf, ...form } });
    check(res.status() === 403, `read-only forged POST ${action} is refused (${res.status()})`);
  }
  const res = await reader.request.post(`${base}/console/rollouts`, { form: { csrf: readerCsrf } });
  check(res.status() === 403, `read-only forged POST to create a plan is refused (${res.status()})`);
  check(JSON.stringify(await feature()) === JSON.stringify(before), 'the read-only session changed nothing');
  for (const url of ['/console/rollouts', '/console/notifications']) {
    await reader.goto(base + url);
    check((await reader.locator('form[method=post]:not([action="/console/sign-out"])').count()) === 0, `no write form on ${url} when read-only`);
  }

  // Sign out ends the session.
  await submit(page, page.getByRole('button', { name: 'Sign out' }));
  await page.goto(`${base}/console`);
  check(new URL(page.url()).pathname === '/console/sign-in', 'after sign-out the console asks to sign in again');

  check(cspViolations.length === 0, `no CSP violation or dialog (${cspViolations.join('; ')})`);
  console.log(`walk passed; screenshots in ${shots}`);
  await browser.close();
} catch (e) {
  console.error(e.stack || String(e));
  await browser.close();
  process.exit(1);
}
