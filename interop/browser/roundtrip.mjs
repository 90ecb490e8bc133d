// MQTT.js in headless Chromium: node roundtrip.mjs WS_URL
//
// The page connects to WS_URL with MQTT 5.0, subscribes to browser/in, publishes
// "hello from the browser" on browser/out, and waits (bounded) for one message on
// browser/in. Prints "ok <payload>" and exits 0, or prints the reason and exits 1.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const url = process.argv[2];
const WAIT_MS = 15000;
const profile = mkdtempSync(join(tmpdir(), "tern-chromium-"));

let context;
let code = 1;
const timer = setTimeout(() => {
  console.log("timed out");
  process.exit(1);
}, WAIT_MS + 10000);
try {
  // A fresh profile (--user-data-dir) for every run.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => console.log("page:", m.text()));
  await page.setContent("<!doctype html><title>tern</title>");
  await page.addScriptTag({ path: join(here, "node_modules/mqtt/dist/mqtt.min.js") });
  const payload = await page.evaluate(
    ({ url, wait }) =>
      new Promise((resolve, reject) => {
        const client = mqtt.connect(url, {
          protocolVersion: 5,
          clientId: "tern-browser",
          reconnectPeriod: 0,
          connectTimeout: wait,
        });
        const timer = setTimeout(() => reject(new Error("no message on browser/in")), wait);
        client.on("error", (e) => reject(new Error("mqtt error: " + e.message)));
        client.on("message", (topic, message) => {
          clearTimeout(timer);
          client.end();
          resolve(topic + " " + new TextDecoder().decode(message));
        });
        client.on("connect", () => {
          client.subscribe("browser/in", { qos: 1 }, (err) => {
            if (err) return reject(err);
            client.publish("browser/out", "hello from the browser", { qos: 1 });
          });
        });
      }),
    { url, wait: WAIT_MS },
  );
  console.log("ok " + payload);
  code = 0;
} catch (e) {
  console.log("failed: " + (e && e.message ? e.message : e));
} finally {
  clearTimeout(timer);
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
