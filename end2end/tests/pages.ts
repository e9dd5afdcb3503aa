import { expect, type Page } from '@playwright/test';

export const users = {
  editor: { name: 'e2e-editor', password: 'e2e-editor-password' },
  approver: { name: 'e2e-approver', password: 'e2e-approver-password' },
  viewer: { name: 'e2e-viewer', password: 'e2e-viewer-password' },
  admin: { name: 'e2e-admin', password: 'e2e-admin-password' },
};

/** Waits until the wasm has hydrated the page, so clicks reach their handlers. */
export async function hydrated(page: Page) {
  await expect(page.locator('body[data-hydrated="true"]')).toHaveCount(1);
}

export class LoginPage {
  constructor(private page: Page) {}

  async signIn(user: { name: string; password: string }) {
    await this.page.goto('/login');
    await hydrated(this.page);
    await this.page.getByTestId('login-username').fill(user.name);
    await this.page.getByTestId('login-password').fill(user.password);
    await this.page.getByTestId('login-submit').click();
  }

  async signInAs(user: { name: string; password: string }) {
    await this.signIn(user);
    await expect(this.page.getByTestId('whoami')).toHaveText(user.name);
  }
}

export class EditorPage {
  constructor(private page: Page) {}

  async open(path: string, change?: number) {
    await this.page.goto(`/edit?path=${encodeURIComponent(path)}${change ? `&change=${change}` : ''}`);
    await hydrated(this.page);
    await expect(this.page.getByTestId('editor-text')).toBeVisible();
  }

  text() {
    return this.page.getByTestId('editor-text');
  }

  validation() {
    return this.page.getByTestId('validation');
  }

  async save(message?: string) {
    if (message !== undefined) await this.page.getByTestId('editor-message').fill(message);
    await this.page.getByTestId('editor-save').click();
    await this.page.waitForURL(/\/changes\/\d+$/);
    return Number(this.page.url().split('/').pop());
  }
}

export class ChangePage {
  constructor(private page: Page) {}

  async open(id: number) {
    await this.page.goto(`/changes/${id}`);
    await hydrated(this.page);
    await expect(this.page.getByTestId('change-header')).toBeVisible();
  }

  state() {
    return this.page.getByTestId('change-header').getAttribute('data-state');
  }

  async act(action: 'submit' | 'approve' | 'rollout' | 'rebase') {
    await this.page.getByTestId(action).click();
  }
}
