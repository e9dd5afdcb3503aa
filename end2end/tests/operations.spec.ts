import { expect, test, type Browser, type Page } from '@playwright/test';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChangePage, LoginPage, hydrated, users } from './pages';

// Running real services: the demo's `edge` node validates every staged json and toml file,
// records its reloads and answers a health probe (demo-data/demo-shadows/edge.hooks.toml).

async function signedIn(browser: Browser, user: { name: string; password: string }): Promise<Page> {
  const page = await browser.newPage();
  await new LoginPage(page).signInAs(user);
  return page;
}

/** A REST call with the page's session (state-changing calls carry the console's Origin). */
async function api(page: Page, method: 'GET' | 'POST', path: string, data?: unknown) {
  const origin = new URL(page.url()).origin;
  const response = await page.request.fetch(path, { method, data, headers: { Origin: origin } });
  expect(response.ok(), `${method} ${path}: ${await response.text()}`).toBeTruthy();
  return response.json();
}

async function currentRevision(page: Page): Promise<{ number: number; root: string }> {
  return (await api(page, 'GET', '/api/v1/revisions?limit=1')).items[0];
}

/** The approver approves the change on its page and rolls it out; answers the outcome. */
async function approveAndRollOut(page: Page, id: number): Promise<string> {
  const change = new ChangePage(page);
  await change.open(id);
  await change.act('approve');
  await expect(page.getByTestId('change-header')).toHaveAttribute('data-state', 'approved');
  await change.act('rollout');
  const result = page.getByTestId('rollout-result');
  await expect(result).toHaveAttribute('data-state', /^(applied|failed|aborted|incomplete)$/, { timeout: 30_000 });
  return (await result.getAttribute('data-state'))!;
}

test("a change the node's validator refuses is refused everywhere, with the hook's output on the page", async ({ browser }) => {
  const editor = await signedIn(browser, users.editor);
  const base = await currentRevision(editor);
  // The control plane takes it as text; only the node reads it as json (by its name).
  const created = await api(editor, 'POST', '/api/v1/changes', {
    base_revision: base.number,
    message: 'Broken json the node refuses',
    entries: [{ path: 'extra.json', content: '{ "broken": ', format: 'text', mode: '0644' }],
  });
  await api(editor, 'POST', `/api/v1/changes/${created.id}/submit`, {});

  const approver = await signedIn(browser, users.approver);
  const change = new ChangePage(approver);
  await change.open(created.id);
  // The plan: every shadow would create extra.json; the dry run asks the nodes' validators.
  const plan = approver.getByTestId('rollout-plan');
  await expect(plan.locator('[data-test=plan-shadow]')).toHaveCount(4);
  const edgePlan = plan.locator('[data-test=plan-shadow][data-name="edge"]');
  await expect(edgePlan.locator('[data-test=plan-action][data-action=create]')).toContainText('extra.json');
  await approver.getByTestId('plan-validate').click();
  await expect(edgePlan).toHaveAttribute('data-refuses', 'true');
  await expect(edgePlan.getByTestId('hook-output')).toContainText('extra.json');

  const outcome = await approveAndRollOut(approver, created.id);
  expect(outcome).toBe('failed');
  const edge = approver.locator('[data-test=rollout-shadow][data-name="edge"]');
  await expect(edge).toHaveAttribute('data-phase', 'refused');
  await expect(edge.locator('[data-test=hook-run]')).toHaveAttribute('data-hook', 'validate');
  await expect(edge.getByTestId('hook-output')).toContainText('extra.json');
  // dr-site takes the same validator from the control plane's configuration.
  await expect(approver.locator('[data-test=rollout-shadow][data-name="dr-site"]')).toHaveAttribute('data-phase', 'refused');
  for (const name of ['backup', 'dc1']) {
    await expect(approver.locator(`[data-test=rollout-shadow][data-name="${name}"]`)).toHaveAttribute('data-phase', 'aborted');
  }
  expect((await currentRevision(approver)).number).toBe(base.number);
});

test('a drill run from the shadow page proves the node could take over, with its evidence', async ({ page }) => {
  await new LoginPage(page).signInAs(users.approver);
  await page.goto('/shadows/edge');
  await hydrated(page);
  await page.getByTestId('drill-requests').fill('5');
  await page.getByTestId('run-drill').click();
  const drill = page.getByTestId('drill');
  await expect(drill).toHaveAttribute('data-verdict', 'passed', { timeout: 30_000 });
  await expect(page.locator('[data-test=drill-step]')).toHaveCount(3);
  for (const step of ['parity', 'validate', 'health']) {
    await expect(page.locator(`[data-test=drill-step][data-step=${step}]`)).toHaveAttribute('data-status', 'passed');
  }
  await expect(page.locator('[data-test=drill-step][data-step=health]')).toContainText('5 probes');
  await expect(page.locator('[data-test=last-drill][data-verdict=passed]').first()).toContainText('ready to take over');

  await page.getByTestId('nav').getByText('Drills').click();
  await expect(page.locator('[data-test=drill-row][data-shadow="edge"]').first()).toHaveAttribute('data-verdict', 'passed');
  // The demo's own drill at start is there too.
  expect(await page.locator('[data-test=drill-row][data-shadow="edge"]').count()).toBeGreaterThanOrEqual(2);
  await page.locator('[data-test=drill-link]').first().click();
  await expect(page.getByTestId('drill-steps')).toBeVisible();
});

test('a tarball imported on the Import page is approved and rolled out, then revision 1 is restored', async ({ browser }) => {
  const folder = mkdtempSync(join(tmpdir(), 'etc-shadow-import-'));
  const tree = join(folder, 'etc');
  mkdirSync(join(tree, 'conf.d'), { recursive: true });
  writeFileSync(join(tree, 'app.toml'), '[server]\nport = 9090\n');
  writeFileSync(join(tree, 'conf.d', 'site.conf'), 'listen 8080;\n', { mode: 0o640 });
  const archive = join(folder, 'node.tgz');
  execFileSync('tar', ['-C', tree, '-czf', archive, '.']);

  const editor = await signedIn(browser, users.editor);
  await editor.getByTestId('nav').getByText('Import').click();
  await expect(editor.getByTestId('import-form')).toBeVisible();
  await editor.getByTestId('import-message').fill('The node as found');
  await editor.getByTestId('import-archive').setInputFiles(archive);
  await editor.getByTestId('import-submit').click();
  await editor.waitForURL(/\/changes\/\d+$/);
  const imported = Number(editor.url().split('/').pop());
  await hydrated(editor);
  await expect(editor.getByTestId('change-title')).toContainText('The node as found');
  await expect(editor.locator('[data-test=entry-diff][data-path="conf.d/site.conf"]')).toBeVisible();
  await new ChangePage(editor).act('submit');
  await expect(editor.getByTestId('change-header')).toHaveAttribute('data-state', 'submitted');

  const approver = await signedIn(browser, users.approver);
  expect(await approveAndRollOut(approver, imported)).toBe('applied');
  const site = await api(approver, 'GET', `/api/v1/revisions/${(await currentRevision(approver)).number}`);
  const entry = site.entries.find((e: { path: string }) => e.path === 'conf.d/site.conf');
  expect(entry.mode).toBe('0640');

  // Back to revision 1, reviewed like any change.
  await editor.goto('/revisions/1');
  await hydrated(editor);
  const revisionOne = (await editor.getByTestId('revision-root').textContent())!.trim();
  await editor.getByTestId('restore-revision').click();
  await editor.getByTestId('restored-change').click();
  await editor.waitForURL(/\/changes\/\d+$/);
  const restore = Number(editor.url().split('/').pop());
  await hydrated(editor);
  await expect(editor.getByTestId('change-title')).toContainText('Restore revision 1');
  await new ChangePage(editor).act('submit');
  await expect(editor.getByTestId('change-header')).toHaveAttribute('data-state', 'submitted');
  expect(await approveAndRollOut(approver, restore)).toBe('applied');
  expect((await currentRevision(approver)).root).toBe(revisionOne);
});
