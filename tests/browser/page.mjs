// Loads the page of a running `rectok serve` in headless Chromium (Debian's), uploads an image
// through the file input, waits for the reconstruction and its PSNR, then generates a grid.
// Usage: node page.mjs URL IMAGE [CHROMIUM]; prints one JSON line of what the page showed.
import { chromium } from "playwright-core";

const [url, image, executable = "/usr/bin/chromium"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: executable,
  headless: true,
  // As root in a container, and without the background traffic this closed network refuses.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => !document.getElementById("models").textContent.startsWith("loading"));
  await page.setInputFiles("#file", image);
  await page.waitForFunction(() => {
    const img = document.getElementById("reconstruction");
    return img.complete && img.naturalWidth > 0 && document.getElementById("metrics").textContent.startsWith("PSNR");
  }, null, { timeout: 60000 });
  const reconstruction = await page.evaluate(() => {
    const img = document.getElementById("reconstruction");
    return { width: img.naturalWidth, height: img.naturalHeight, metrics: document.getElementById("metrics").textContent };
  });
  await page.fill("#classes", "0,1");
  await page.fill("#per-class", "2");
  await page.fill("#steps", "5");
  await page.click("#generate");
  await page.waitForFunction(() => {
    const img = document.getElementById("grid");
    return (img.complete && img.naturalWidth > 0) || document.getElementById("status").textContent !== "";
  }, null, { timeout: 60000 });
  const grid = await page.evaluate(() => {
    const img = document.getElementById("grid");
    return { width: img.naturalWidth, height: img.naturalHeight, status: document.getElementById("status").textContent };
  });
  console.log(JSON.stringify({ reconstruction, grid, errors }));
} finally {
  await browser.close();
}
