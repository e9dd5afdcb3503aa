import { defineConfig } from '@playwright/test';

const listen = process.env.E2E_LISTEN ?? '127.0.0.1:3011';
// The throw-away data directory of the server the tests run against (serve.sh empties it
// first): the drift journey edits a shadow's file under it by hand.
export const dataDir = process.env.E2E_DATA_DIR ?? '/tmp/etc-shadow-e2e-data';

export default defineConfig({
  testDir: './tests',
  timeout: 60_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  use: {
    baseURL: `http://${listen}`,
    testIdAttribute: 'data-test',
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    },
  },
  webServer: {
    command: './serve.sh',
    url: `http://${listen}/healthz`,
    env: { E2E_LISTEN: listen, E2E_DATA_DIR: dataDir },
    reuseExistingServer: false,
    timeout: 120_000,
    stdout: 'pipe',
    stderr: 'pipe',
  },
});
