import { expect, test } from '@playwright/test';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dataDir } from '../playwright.config';
import { ChangePage, EditorPage, LoginPage, hydrated, users } from './pages';

test('nothing is reachable without signing in, and a wrong password is refused', async ({ page }) => {
  await page.goto('/config');
  // To the sign-in, which would come back to the page.
  await expect(page).toHaveURL(/\/login\?next=\/config$/);
  await new LoginPage(page).signIn({ name: users.editor.name, password: 'not the password' });
  await expect(page.getByTestId('login-error')).toContainText('wrong username or password');
  await expect(page).toHaveURL(/\/login$/);
});

test('an edit is validated as you type, reviewed by a second person and rolled out', async ({ page }) => {
  await new LoginPage(page).signInAs(users.editor);
  await expect(page.getByTestId('current-revision')).toContainText('#1');

  // Configuration: the sample entries of the current revision.
  await page.getByTestId('nav').getByText('Configuration').click();
  await expect(page.getByTestId('entry-row')).toHaveCount(4);
  await expect(page.locator('[data-test=entry-row][data-path="secrets/db.env"]')).toContainText('secret');

  // Edit features.json: a syntax error is flagged with its line while typing.
  const editor = new EditorPage(page);
  await editor.open('features.json');
  await expect(editor.text()).toHaveValue(/"dark_mode": true/);
  await editor.text().fill('{\n  "new_checkout": ,\n}\n');
  await expect(editor.validation()).toContainText('line 2, column');
  await expect(page.locator('[data-test=gutter] span.bad')).toHaveText('2');
  await editor.text().fill('{\n  "new_checkout": true,\n  "dark_mode": true,\n  "rate_limit_per_minute": 900\n}\n');
  await expect(editor.validation()).toContainText('valid json');
  const id = await editor.save('Enable the new checkout');

  // The change: diff with intra-line highlights, submit, and no approving one's own work.
  const change = new ChangePage(page);
  await hydrated(page);
  await expect(page.getByTestId('change-title')).toContainText('Enable the new checkout');
  const diff = page.locator('[data-test=entry-diff][data-path="features.json"]');
  await expect(diff.locator('[data-test=line-del]')).toHaveCount(2);
  await expect(diff.locator('[data-test=line-ins] mark').first()).toHaveText(/^true,?$/);
  await page.getByTestId('diff-split').click();
  await expect(page.getByTestId('diff-table-split')).toBeVisible();
  await change.act('submit');
  await expect(page.getByTestId('change-header')).toHaveAttribute('data-state', 'submitted');
  await expect(page.getByTestId('approve')).toHaveCount(0);
  await expect(page.getByTestId('own-change-note')).toBeVisible();
  await page.getByTestId('logout').click();
  await expect(page).toHaveURL(/\/login$/);

  // A second person approves and rolls out.
  await new LoginPage(page).signInAs(users.approver);
  await change.open(id);
  await change.act('approve');
  await expect(page.getByTestId('approval')).toHaveAttribute('data-valid', 'true');
  await expect(page.getByTestId('change-header')).toHaveAttribute('data-state', 'approved');
  // The rollout is watched live: the page subscribes to the event stream and each shadow's
  // prepare and commit appear as they happen, with no reload (the marker below would go).
  await expect(page.getByTestId('live-flag')).toHaveAttribute('data-live', 'true');
  await page.evaluate(() => ((window as unknown as { stillThisPage: boolean }).stillThisPage = true));
  await change.act('rollout');
  await expect(page.getByTestId('rollout-result')).toContainText('revision #2 is current');
  // The demo's four shadows each went through prepare and commit, and prove the new root.
  const rows = page.locator('[data-test=rollout-shadow]');
  await expect(rows).toHaveCount(4);
  for (const name of ['backup', 'dc1', 'dr-site', 'edge']) {
    const steps = page.locator(`[data-test=rollout-shadow][data-name="${name}"] [data-test=rollout-step]`);
    await expect(steps).toHaveText([/^prepared/, /^committed/]);
  }
  await expect(page.locator('[data-test=rollout-shadow][data-phase=committed]')).toHaveCount(4);
  await expect(page.getByTestId('rollout-shadows')).not.toContainText('—');
  expect(await page.evaluate(() => (window as unknown as { stillThisPage?: boolean }).stillThisPage)).toBe(true);
  await expect(page.getByTestId('change-header')).toHaveAttribute('data-state', 'rolled_out');
  await expect(page.getByTestId('became-revision')).toHaveText('revision #2');

  // The new revision is current and holds the new content.
  await page.goto('/config');
  await expect(page.getByTestId('current-number')).toHaveText('Revision #2');
  await page.goto('/entry?path=features.json');
  await expect(page.getByTestId('entry-content')).toContainText('"rate_limit_per_minute": 900');
});

test('an edit after approval voids it until approved again', async ({ browser }) => {
  const editorPage = await browser.newPage();
  await new LoginPage(editorPage).signInAs(users.editor);
  const editor = new EditorPage(editorPage);
  await editor.open('app.toml');
  // The demo's app.toml holds a secret key, shown as a placeholder the editor explains.
  await expect(editorPage.getByTestId('editor-secrets-hint')).toContainText('Leave one as it is to keep the stored value');
  await editor.text().fill('[server]\nhost = "0.0.0.0"\nport = 8080\ntimeout = 45\n');
  const id = await editor.save('Longer timeout');
  const change = new ChangePage(editorPage);
  await hydrated(editorPage);
  await change.act('submit');
  await expect(editorPage.getByTestId('change-header')).toHaveAttribute('data-state', 'submitted');

  const approverPage = await browser.newPage();
  await new LoginPage(approverPage).signInAs(users.approver);
  const review = new ChangePage(approverPage);
  await review.open(id);
  await review.act('approve');
  await expect(approverPage.getByTestId('approval')).toHaveAttribute('data-valid', 'true');

  await editor.open('app.toml', id);
  await editor.text().fill('[server]\nhost = "0.0.0.0"\nport = 8080\ntimeout = 60\n');
  await editor.save();
  await hydrated(editorPage);
  await expect(editorPage.getByTestId('change-header')).toHaveAttribute('data-state', 'draft');
  await expect(editorPage.getByTestId('approval')).toHaveAttribute('data-valid', 'false');

  await review.open(id);
  await expect(approverPage.getByTestId('rollout')).toHaveCount(0);
  await expect(approverPage.getByTestId('approval')).toContainText('voided by an edit');
});

test('the shadows page shows every shadow in sync after the demo rollout', async ({ page }) => {
  await new LoginPage(page).signInAs(users.viewer);
  await page.goto('/shadows');
  await expect(page.getByTestId('shadow-row')).toHaveCount(4);
  for (const name of ['backup', 'dc1', 'dr-site', 'edge']) {
    await expect(page.locator(`[data-test=shadow-row][data-name="${name}"]`)).toHaveAttribute('data-status', 'in_sync');
  }
  await expect(page.getByTestId('reconcile-shadow')).toHaveCount(0);
  await expect(page.getByTestId('remove-shadow')).toHaveCount(0);
});

test('the audit log verifies its chain and filters', async ({ page }) => {
  await new LoginPage(page).signInAs(users.viewer);
  await page.goto('/audit');
  await hydrated(page);
  await expect(page.getByTestId('audit-head')).toContainText('#');
  await page.getByTestId('verify-chain').click();
  await expect(page.getByTestId('verify-result')).toHaveAttribute('data-intact', 'true');
  // Checked against the head every shadow keeps from its rollouts.
  await expect(page.getByTestId('audit-anchor')).toHaveCount(4);
  for (const name of ['backup', 'dc1', 'dr-site', 'edge']) {
    await expect(page.locator(`[data-test=audit-anchor][data-shadow="${name}"]`)).toHaveAttribute('data-status', 'matches');
  }
  await page.getByTestId('audit-filter-action').fill('change.approve');
  await page.getByTestId('audit-filter-apply').click();
  await expect(page).toHaveURL(/action=change.approve/);
  const actions = page.getByTestId('audit-action');
  await expect(actions.first()).toHaveText('change.approve');
  for (const text of await actions.allTextContents()) expect(text).toContain('change.approve');
});

test('a viewer reads but is offered no edits', async ({ page }) => {
  await new LoginPage(page).signInAs(users.viewer);
  await page.goto('/config');
  await expect(page.getByTestId('entry-row').first()).toBeVisible();
  await expect(page.getByTestId('new-entry')).toHaveCount(0);
  await expect(page.getByTestId('edit-entry')).toHaveCount(0);
});

test('a hand edit on a shadow becomes an incident live, and reconcile brings the shadow back', async ({ page }) => {
  await new LoginPage(page).signInAs(users.approver);
  await page.goto('/incidents');
  await hydrated(page);
  await expect(page.getByTestId('live-flag')).toHaveAttribute('data-live', 'true');
  await expect(page.locator('[data-test=incident-row][data-shadow=edge]')).toHaveCount(0);
  await page.evaluate(() => ((window as unknown as { stillThisPage: boolean }).stillThisPage = true));

  // Somebody edits a file on the agent's node by hand.
  const edited = join(dataDir, 'demo-shadows', 'edge', 'live', 'app.toml');
  writeFileSync(edited, readFileSync(edited, 'utf8').replace('port = 8080', 'port = 6666'));
  const row = page.locator('[data-test=incident-row][data-shadow=edge]');
  await expect(row).toHaveCount(1);
  await expect(row).toHaveAttribute('data-kind', 'content');
  expect(await page.evaluate(() => (window as unknown as { stillThisPage?: boolean }).stillThisPage)).toBe(true);

  // The incident: what differs, and the diff of the primary against the shadow.
  await row.getByTestId('incident-link').click();
  await hydrated(page);
  await expect(page.getByTestId('incident')).toHaveAttribute('data-status', 'open');
  await expect(page.locator('[data-test=incident-entry][data-path="app.toml"]')).toHaveAttribute('data-kind', 'content');
  const diff = page.locator('[data-test=entry-diff][data-path="app.toml"]');
  await expect(diff.locator('[data-test=line-ins]')).toContainText('6666');
  await expect(diff.getByTestId('key-change')).toHaveText('server.port: 8080 → 6666');
  await expect(page.locator('[data-test=timeline-event][data-event=detected]')).toHaveCount(1);

  // Reconcile: the current revision goes back to the shadow and the incident closes.
  await page.getByTestId('reconcile').click();
  await expect(page.getByTestId('reconcile-result')).toHaveAttribute('data-state', 'applied');
  await expect(page.getByTestId('incident')).toHaveAttribute('data-status', 'resolved');
  await expect(page.getByTestId('incident-resolution')).toContainText('reconciled');
  await page.goto('/shadows');
  await expect(page.locator('[data-test=shadow-row][data-name=edge]')).toHaveAttribute('data-status', 'in_sync');
  // The shadow's page: identical to the primary again, and the checks that saw it drift.
  await page.locator('[data-test=shadow-row][data-name=edge]').getByTestId('shadow-link').click();
  await expect(page.getByTestId('shadow')).toHaveAttribute('data-status', 'in_sync');
  await expect(page.getByTestId('shadow-matches')).toBeVisible();
  await expect(page.locator('[data-test=check-row][data-trigger=event][data-status=drifted]').first()).toBeVisible();

  // The overview: the fleet in sync again, and today's bar of the incidents chart.
  await page.goto('/');
  await expect(page.locator('[data-test=fleet-shadow][data-status=in_sync]')).toHaveCount(4);
  await expect(page.getByTestId('chart-day')).toHaveCount(14);
  await expect(page.getByTestId('chart-day').last()).not.toHaveAttribute('data-opened', '0');
});

test.describe('without JavaScript', () => {
  test.use({ javaScriptEnabled: false });

  test('pages are readable from the server-rendered HTML', async ({ page, context }) => {
    // Sign in through the API; the browser keeps the session cookie.
    const response = await context.request.post('/api/v1/session', {
      data: { username: users.viewer.name, password: users.viewer.password },
    });
    expect(response.ok()).toBeTruthy();
    await page.goto('/config');
    await expect(page.getByTestId('entry-row')).toHaveCount(4);
    await page.goto('/revisions/1');
    await expect(page.getByTestId('revision-root')).toHaveText(/^[0-9a-f]{64}$/);
    await expect(page.locator('[data-test=entry-diff]')).toHaveCount(4);
  });
});

test('an approval after the recent-password window asks for the password in place', async ({ browser }) => {
  // serve.sh sets the window to 30 s; this journey outwaits it once.
  test.setTimeout(120_000);
  const editorPage = await browser.newPage();
  await new LoginPage(editorPage).signInAs(users.editor);
  const editor = new EditorPage(editorPage);
  await editor.open('nginx/site.conf');
  await editor.text().fill('server {\n    listen 8080;\n    server_name example.test;\n}\n');
  const id = await editor.save('Listen on 8080');
  await hydrated(editorPage);
  await new ChangePage(editorPage).act('submit');
  await expect(editorPage.getByTestId('change-header')).toHaveAttribute('data-state', 'submitted');

  const page = await browser.newPage();
  await new LoginPage(page).signInAs(users.approver);
  const change = new ChangePage(page);
  await change.open(id);
  await page.waitForTimeout(31_000);
  await change.act('approve');
  const refusal = page.getByTestId('action-error');
  await expect(refusal).toContainText('confirm your password');
  await expect(page.getByTestId('change-header')).toHaveAttribute('data-state', 'submitted');
  await page.getByTestId('confirm-password').fill('not my password');
  await page.getByTestId('confirm-password-submit').click();
  await expect(page.getByTestId('confirm-error')).toContainText('wrong password');
  await page.getByTestId('confirm-password').fill(users.approver.password);
  await page.getByTestId('confirm-password-submit').click();
  await expect(page.getByTestId('password-confirmed')).toBeVisible();
  await change.act('approve');
  await expect(page.getByTestId('change-header')).toHaveAttribute('data-state', 'approved');
  await expect(page.getByTestId('approval')).toHaveAttribute('data-valid', 'true');
  await expect(page.getByTestId('action-error')).toHaveCount(0);
});

test('an admin manages users and API tokens in the console', async ({ page, request }) => {
  await new LoginPage(page).signInAs(users.admin);
  await page.getByTestId('nav-users').click();
  await expect(page).toHaveURL(/\/users$/);
  await hydrated(page);
  await page.getByTestId('user-name').fill('e2e-newcomer');
  await page.getByTestId('user-role').selectOption('viewer');
  await page.getByTestId('user-password').fill('a newcomer passphrase');
  await page.getByTestId('user-add').click();
  const row = page.locator('[data-test=user-row][data-name="e2e-newcomer"]');
  await expect(row).toHaveAttribute('data-role', 'viewer');
  await row.getByTestId('user-set-role').selectOption('editor');
  await row.getByTestId('user-save-role').click();
  await expect(row).toHaveAttribute('data-role', 'editor');
  await expect(page.getByTestId('user-updated')).toContainText('e2e-newcomer is now editor');
  await row.getByTestId('user-disable').click();
  await expect(row).toHaveAttribute('data-disabled', 'true');

  // A token is shown once, works as a bearer token, and stops working when revoked.
  await page.getByTestId('nav-tokens').click();
  await expect(page).toHaveURL(/\/tokens$/);
  await hydrated(page);
  await page.getByTestId('token-name').fill('release pipeline');
  await page.getByTestId('token-role').selectOption('viewer');
  await page.getByTestId('token-days').fill('7');
  await page.getByTestId('token-create').click();
  await expect(page.getByTestId('new-token')).toContainText('working until');
  const secret = (await page.getByTestId('new-token-secret').textContent()) ?? '';
  expect(secret).toMatch(/^esk_[0-9a-f]{64}$/);
  const tokenRow = page.locator('[data-test=token-row][data-name="release pipeline"]');
  await expect(tokenRow).toHaveAttribute('data-active', 'true');
  await expect(page.getByTestId('token-table')).not.toContainText(secret);
  const who = await request.get('/api/v1/session', { headers: { authorization: `Bearer ${secret}` } });
  expect(who.status()).toBe(200);
  expect((await who.json()).role).toBe('viewer');
  await tokenRow.getByTestId('token-revoke').click();
  await expect(tokenRow).toHaveAttribute('data-active', 'false');
  const after = await request.get('/api/v1/session', { headers: { authorization: `Bearer ${secret}` } });
  expect(after.status()).toBe(401);

  // An agent shadow registered without a token gets a generated one, shown this once.
  await page.goto('/shadows');
  await hydrated(page);
  await page.getByTestId('shadow-name').fill('e2e-new-node');
  await page.getByTestId('shadow-driver').selectOption('agent');
  await page.getByTestId('shadow-url').fill('http://127.0.0.1:9');
  await page.getByTestId('shadow-register').click();
  await expect(page.getByTestId('agent-token-secret')).toHaveText(/^est_[0-9a-f]{64}$/);
  const generated = (await page.getByTestId('agent-token-secret').textContent()) ?? '';
  const node = page.locator('[data-test=shadow-row][data-name="e2e-new-node"]');
  await expect(node).toHaveCount(1);
  await page.reload();
  await expect(page.locator('body')).not.toContainText(generated);
  await page.locator('[data-test=shadow-row][data-name="e2e-new-node"]').getByTestId('remove-shadow').click();
  await expect(page.locator('[data-test=shadow-row][data-name="e2e-new-node"]')).toHaveCount(0);
});

test('an approver reveals a secret entry with the password, and the reveal is audited', async ({ page }) => {
  await new LoginPage(page).signInAs(users.approver);
  await page.goto('/entry?path=secrets/db.env');
  await hydrated(page);
  await expect(page.locator('.secret-note')).toBeVisible();
  await expect(page.getByTestId('revealed')).toHaveCount(0);
  await page.getByTestId('reveal-password').fill('not my password');
  await page.getByTestId('reveal').click();
  await expect(page.getByTestId('action-error')).toContainText('wrong password');
  await page.getByTestId('reveal-password').fill(users.approver.password);
  await page.getByTestId('reveal').click();
  await expect(page.getByTestId('revealed')).toContainText('DB_PASSWORD=');
  await page.goto('/audit');
  await expect(page.locator('body')).toContainText('secret.reveal');

  // A secret key inside an ordinary entry shows as a placeholder, and reveals the same way.
  await page.goto('/entry?path=app.toml');
  await hydrated(page);
  const content = page.getByTestId('entry-content');
  await expect(content).toContainText('cookie_secret = "«secret:');
  await page.getByTestId('reveal-password').fill(users.approver.password);
  await page.getByTestId('reveal').click();
  await expect(page.getByTestId('revealed')).toContainText(/cookie_secret = "[0-9a-f]{32}"/);
});
