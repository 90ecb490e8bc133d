// The dashboard in headless Chromium (Debian's, driven by playwright-core from
// interop/browser/node_modules): node dashboard.mjs URL [SCREENSHOT.png]
//
// Run by tests/http/dashboard.rs, which connects the MQTT clients `dash-client` (publishing
// on dash/load all along, after a retained message on dash/retained/temp) and `dash-tracer`
// (publishing too). Prints one line per step that passed:
//   loaded / chart changed / client shown / topics shown / trace shows PUBLISH / kicked
// then "ok", and exits 0; or prints "failed: why" and exits 1.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const { chromium } = await import(pathToFileURL(join(root, "interop/browser/node_modules/playwright-core/index.mjs")).href);

const url = process.argv[2];
const screenshot = process.argv[3];
const STEP_MS = 15000;
const profile = mkdtempSync(join(tmpdir(), "tern-dashboard-"));
const timer = setTimeout(() => { console.log("failed: timed out"); process.exit(1); }, 6 * STEP_MS);

let context;
let code = 1;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") console.log("page error:", m.text()); });
  page.on("pageerror", (e) => console.log("page exception:", e.message));
  page.on("dialog", (d) => d.accept());

  await page.goto(url + "/#overview");
  await page.waitForSelector("#chart-connections[data-value]", { timeout: STEP_MS });
  console.log("loaded");

  // Messages in per second: the clients publish all along, so it leaves 0.
  await page.waitForFunction(() => Number(document.getElementById("chart-in").dataset.value || 0) > 0, null, { timeout: STEP_MS });
  console.log("chart changed");
  if (screenshot) {
    // A few more points on the charts for the picture.
    await page.waitForTimeout(8000);
    await page.screenshot({ path: screenshot });
  }

  await page.click('nav a[data-view="clients"]');
  await page.waitForSelector('tr[data-client="dash-client"]', { timeout: STEP_MS });
  console.log("client shown");

  await page.click('nav a[data-view="topics"]');
  await page.click("#topic-tree >> text=temp");
  await page.waitForFunction(() => document.getElementById("topic-payload").textContent.includes('"t": 21'), null, { timeout: STEP_MS });
  // dash/load, published before the page opened: in the broker's record of topics seen recently.
  await page.waitForSelector('#topic-tree span[title="seen recently"] >> text=load \u2022', { timeout: STEP_MS });
  await page.click("#topics-live");
  await page.waitForSelector('#topic-tree span[title="seen live"] >> text=load \u2022', { timeout: STEP_MS });
  console.log("topics shown");

  await page.click('nav a[data-view="trace"]');
  await page.fill("#trace-client", "dash-tracer");
  await page.click("#trace-start");
  await page.waitForSelector('#trace-table tr[data-type="PUBLISH"]', { timeout: STEP_MS });
  console.log("trace shows PUBLISH");
  await page.click("#trace-stop");

  await page.click('nav a[data-view="clients"]');
  await page.click('button[data-kick="dash-client"]', { timeout: STEP_MS });
  await page.waitForSelector('tr[data-client="dash-client"]', { state: "detached", timeout: STEP_MS });
  console.log("kicked");
  console.log("ok");
  code = 0;
} catch (e) {
  console.log("failed: " + (e && e.message ? e.message : e));
} finally {
  clearTimeout(timer);
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
