// Drives stategate's dashboard in the system's headless Chromium, with
// JavaScript off (the pages must work without it) and every request to
// another host refused. Started by tests/e2e/ui.rs, which prepares the
// states and passes what to expect in the environment:
//
//   STATEGATE_URL   the server, e.g. http://127.0.0.1:PORT
//   SHOTS_DIR       where screenshots go (desktop and phone width)
//   EXPECT          JSON: {app, locked, lock_id, from, to, added, removed, changed}
//   CHROMIUM        the browser (default /usr/bin/chromium)
//
// Prints one JSON object: {failures: [...], pages: [{name, url, html}],
// external: [...]}; exits 1 when a check failed.

import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.STATEGATE_URL;
const shots = process.env.SHOTS_DIR;
const expect = JSON.parse(process.env.EXPECT);
mkdirSync(shots, { recursive: true });

const failures = [];
const pages = [];
const external = [];
const check = (ok, what) => {
  if (!ok) failures.push(what);
};

const userDataDir = mkdtempSync(join(tmpdir(), 'stategate-ui-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  javaScriptEnabled: false,
  viewport: { width: 1280, height: 800 },
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
await context.route('**/*', (route) => {
  const url = route.request().url();
  if (url.startsWith(base + '/')) return route.continue();
  external.push(url);
  return route.abort();
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(15000);

// Keeps the page's HTML and screenshots it at desktop and phone width.
async function keep(name) {
  pages.push({ name, url: page.url(), html: await page.content() });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: join(shots, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shots, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
}

const rowKeys = async () =>
  page.$$eval('table.states td.key a', (as) => as.map((a) => a.textContent.trim()));
const text = async (sel) => (await page.textContent(sel)) ?? '';

try {
  // The list: every state, the stale lock marked.
  let response = await page.goto(`${base}/ui/`);
  check(response.status() === 200, `GET /ui/ answered ${response.status()}`);
  const headers = response.headers();
  check(/frame-ancestors 'none'/.test(headers['content-security-policy'] ?? ''), 'no CSP frame-ancestors');
  check(headers['referrer-policy'] === 'no-referrer', 'no Referrer-Policy');
  let keys = await rowKeys();
  check(keys.includes(expect.app), `the list lacks ${expect.app}: ${keys}`);
  check(keys.includes(expect.locked), `the list lacks ${expect.locked}: ${keys}`);
  check((await page.$$('tr.stale')).length === 1, 'the stale lock is not marked');
  check((await text('table.states')).includes('dev'), 'the dev workspace is not listed');
  await keep('states');

  // Filtering by key prefix, then by workspace.
  await page.fill('input[name=prefix]', expect.locked.split('/')[0]);
  await Promise.all([page.waitForURL(/prefix=/), page.click('form.filter button')]);
  keys = await rowKeys();
  check(keys.length === 1 && keys[0] === expect.locked, `prefix filter shows ${keys}`);
  await keep('states-filtered');
  await page.fill('input[name=prefix]', '');
  await page.fill('input[name=workspace]', 'dev');
  await Promise.all([page.waitForURL(/workspace=dev/), page.click('form.filter button')]);
  const workspaces = await page.$$eval('table.states tbody tr td:nth-child(2)', (tds) =>
    tds.map((td) => td.textContent.trim()),
  );
  check(
    workspaces.length === 1 && workspaces[0] === 'dev',
    `workspace filter shows ${workspaces}`,
  );

  // Explore: reached from the nav; the filters, the counts, and links to
  // each state found.
  await Promise.all([page.waitForURL(/\/ui\/explore/), page.click('header nav a[href$="/ui/explore"]')]);
  for (const name of ['type', 'provider', 'module', 'address', 'key', 'terraform_version', 'written_before', 'locked_for']) {
    check((await page.$$(`form.explore input[name=${name}]`)).length === 1, `the Explore form lacks ${name}`);
  }
  const foundKeys = async () =>
    page.$$eval('table.found td.key a', (as) => as.map((a) => a.textContent.trim()));
  const counts = await text('section.counts');
  check(counts.includes('terraform_data'), `the counts lack terraform_data: ${counts}`);
  check(counts.includes('terraform.io/builtin/terraform'), `the counts lack the provider: ${counts}`);
  await page.fill('form.explore input[name=module]', 'module.net');
  await page.fill('form.explore input[name=key]', expect.locked);
  await Promise.all([page.waitForURL(/module=module.net/), page.click('form.explore button')]);
  let found = await foundKeys();
  check(found.length === 1 && found[0] === expect.locked, `Explore by module and key shows ${found}`);
  check(
    (await text('table.found')).includes('module.net.terraform_data.inner'),
    'Explore does not show the matching address',
  );
  check(!(await text('table.found')).includes('terraform_data.secret'), 'Explore shows a resource the filter left out');
  check((await text('table.found')).includes('ci@runner-7'), 'Explore does not show the lock holder');
  await keep('explore');
  await Promise.all([page.waitForURL(/\/ui\/states\//), page.click('table.found td.key a')]);
  check(page.url().includes(`/ui/states/${expect.locked}`), `the Explore link leads to ${page.url()}`);

  // One state: resources by type, output names, charts, history, a diff.
  await page.goto(`${base}/ui/`);
  await Promise.all([
    page.waitForURL(/\/ui\/states\//),
    page.click(`table.states td.key a[href$="/ui/states/${expect.app}"]`),
  ]);
  const body = await text('main');
  check(body.includes('terraform_data'), 'the state page lacks the resource type');
  check(body.includes('password') && body.includes('endpoint'), 'the state page lacks output names');
  check((await page.$$('.chart svg polyline')).length === 2, 'the charts are missing');
  check(
    (await page.$$('table.history tbody tr')).length >= 3,
    'the history table has fewer than three versions',
  );
  await keep('state');
  await page.selectOption('select[name=from]', String(expect.from));
  await page.selectOption('select[name=to]', String(expect.to));
  await Promise.all([page.waitForURL(/from=/), page.click('#diff button')]);
  const diff = await text('.diff');
  for (const a of expect.added) check(diff.includes(`+ ${a}`), `the diff does not add ${a}: ${diff}`);
  for (const a of expect.removed) check(diff.includes(`− ${a}`), `the diff does not remove ${a}: ${diff}`);
  for (const a of expect.changed) check(diff.includes(`~ ${a}`), `the diff does not change ${a}: ${diff}`);
  check(diff.includes('input'), `the diff does not name the changed attribute: ${diff}`);
  await keep('diff');

  // The lock: its LockInfo, the commands, and a release from the page.
  await page.goto(`${base}/ui/`);
  await Promise.all([page.waitForURL(/\/ui\/locks\//), page.click('tr.stale a.lock')]);
  const lock = await text('main');
  check(lock.includes(expect.lock_id), 'the lock page lacks the lock ID');
  check(lock.includes(`terraform force-unlock ${expect.lock_id}`), 'no terraform force-unlock command');
  check(lock.includes(`stategate lock release ${expect.locked} --id ${expect.lock_id}`), 'no stategate lock release command for this lock');
  check(lock.includes('stale'), 'the lock is not called stale');
  await keep('lock');
  await page.goto(`${base}/ui/locks`);
  await keep('locks');
  await page.goBack();
  await Promise.all([page.waitForURL(/\/ui\/states\//), page.click('form.danger button')]);
  check(!(await text('main')).includes('Locked by'), 'the state is still locked after release');
  await keep('released');

  // Restore an old version, with its confirmation step.
  await page.goto(`${base}/ui/`);
  await Promise.all([
    page.waitForURL(/\/ui\/states\//),
    page.click(`table.states td.key a[href$="/ui/states/${expect.app}"]`),
  ]);
  const workspaceOfRow = page.url().includes('workspace=');
  check(!workspaceOfRow, `clicked the wrong workspace: ${page.url()}`);
  await Promise.all([
    page.waitForURL(/\/ui\/restore\//),
    page.click(`table.history a[href*="version=${expect.from}"]`),
  ]);
  const preview = await text('.diff');
  for (const a of expect.added) {
    check(preview.includes(`− ${a}`), `the restore preview does not remove ${a}: ${preview}`);
  }
  await keep('restore');
  await Promise.all([page.waitForURL(/\/ui\/states\//), page.click('form.danger button')]);
  const current = await text('table.history tr.current');
  check(current.includes('restore'), `the current version is not the restore: ${current}`);
  await keep('restored');

  // An error page.
  response = await page.goto(`${base}/ui/states/no/such.tfstate`);
  check(response.status() === 404, `a missing state answered ${response.status()}`);
  await keep('not-found');
} catch (e) {
  failures.push(`the browser run stopped: ${e.stack ?? e}`);
  try {
    await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true });
  } catch {}
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
check(external.length === 0, `requests left the server: ${external}`);
process.stdout.write(JSON.stringify({ failures, pages, external }));
process.exit(failures.length ? 1 : 0);
