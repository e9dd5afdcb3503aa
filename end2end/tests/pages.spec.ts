import { expect, test, type Page } from '@playwright/test';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dataDir } from '../playwright.config';
import { LoginPage, hydrated, users } from './pages';

/** Every browser console error and uncaught exception (a hydration panic is both). */
function collectErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  return errors;
}

/** A drift incident of its own: a hand edit on the `dc1` directory shadow. */
async function openIncident(page: Page): Promise<number> {
  const file = join(dataDir, 'demo-shadows', 'dc1', 'live', 'features.json');
  writeFileSync(file, readFileSync(file, 'utf8') + '\n');
  let id: number | undefined;
  await expect(async () => {
    const response = await page.request.get('/api/v1/incidents?shadow=dc1&status=open');
    const items = (await response.json()).items as { id: number }[];
    expect(items.length).toBeGreaterThan(0);
    id = items[0].id;
  }).toPass({ timeout: 20_000 });
  return id!;
}

async function newest(page: Page, path: string): Promise<number> {
  const response = await page.request.get(`${path}?limit=1`);
  expect(response.ok()).toBeTruthy();
  return (await response.json()).items[0].id;
}

test('every page opened directly hydrates without an error', async ({ page }) => {
  const errors = collectErrors(page);
  await new LoginPage(page).signInAs(users.admin);
  const incident = await openIncident(page);
  const change = await newest(page, '/api/v1/changes');
  const rollout = await newest(page, '/api/v1/rollouts');
  const routes = [
    '/',
    '/config',
    '/entry?path=app.toml',
    '/edit?path=app.toml',
    '/revisions',
    '/revisions/1',
    '/changes',
    `/changes/${change}`,
    '/rollouts',
    `/rollouts/${rollout}`,
    '/drills',
    '/drills/1',
    '/import',
    '/shadows',
    '/shadows/dc1',
    '/incidents',
    `/incidents/${incident}`,
    '/audit',
    '/webhooks',
    '/tokens',
    '/users',
  ];
  for (const route of routes) {
    // A full load, as a link from a webhook, a bookmark or a reload opens it.
    await page.goto(route);
    await hydrated(page);
    await expect(page.getByTestId('page-title')).toBeVisible();
    // Interactive after hydration: a reactive part of every page (the live flag, or the
    // navigation) still answers; any panic has been reported as an error by now.
    await page.waitForTimeout(300);
    expect(errors, `opening ${route} directly`).toEqual([]);
  }
  // The incident page's buttons work after a direct load.
  await page.goto(`/incidents/${incident}`);
  await hydrated(page);
  await page.getByTestId('acknowledge').click();
  await expect(page.getByTestId('incident')).toHaveAttribute('data-status', 'acknowledged');
  expect(errors).toEqual([]);
});

test('an action after the session ended asks to sign in again and comes back', async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = collectErrors(page);
  await new LoginPage(page).signInAs(users.approver);
  const incident = await newest(page, '/api/v1/incidents');
  await page.goto(`/incidents/${incident}`);
  await hydrated(page);

  // Signed out in another tab of the same browser.
  const other = await context.newPage();
  await other.goto('/');
  await hydrated(other);
  await other.getByTestId('logout').click();
  await expect(other).toHaveURL(/\/login/);

  await page.getByTestId('reconcile').click();
  // (The page's data, refetched after the action, says the same.)
  const prompt = page.getByTestId('signed-out').first();
  await expect(prompt).toBeVisible();
  await expect(prompt).not.toContainText('deserializ');
  await prompt.getByTestId('sign-in-again').click();
  await expect(page).toHaveURL(/\/login\?next=/);
  await hydrated(page);
  await page.getByTestId('login-username').fill(users.approver.name);
  await page.getByTestId('login-password').fill(users.approver.password);
  await page.getByTestId('login-submit').click();
  await expect(page).toHaveURL(new RegExp(`/incidents/${incident}$`));
  await expect(page.getByTestId('incident')).toBeVisible();
  // A page opened without a session (a bookmark, a link in a webhook) comes back to
  // itself after the sign-in too.
  const stranger = await browser.newPage();
  await stranger.goto(`/incidents/${incident}`);
  await expect(stranger).toHaveURL(new RegExp(`/login\\?next=/incidents/${incident}$`));
  await hydrated(stranger);
  await stranger.getByTestId('login-username').fill(users.viewer.name);
  await stranger.getByTestId('login-password').fill(users.viewer.password);
  await stranger.getByTestId('login-submit').click();
  await expect(stranger).toHaveURL(new RegExp(`/incidents/${incident}$`));
  await stranger.close();
  // Only the expected 401 of the refused action reached the console.
  expect(errors.filter((e) => !e.includes('401'))).toEqual([]);
  await context.close();
});
