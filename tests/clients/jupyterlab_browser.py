"""Drives a real JupyterLab in headless Chromium (playwright, with Debian's chromium at CHROMIUM)
on one notebook and its kernel, as a person would: run a cell, a cell that prints through a link
cut, interrupt, restart and shut down from the Kernel menu.

Usage: python jupyterlab_browser.py BASE_URL TOKEN KERNEL_NAME ROOT_DIR CONFIG_DIR SCREENSHOT CHROMIUM

The caller runs `jupyter lab` at BASE_URL with TOKEN, ROOT_DIR as its root dir and CONFIG_DIR as
its JUPYTER_CONFIG_DIR, and stops it afterwards. Protocol on stdout/stdin: "ok: ..." lines say
what passed; "cut" means the line-a-second cell is printing and the caller may cut the link now,
and the script then waits for one line on stdin (the link is back) before it checks that cell.
Exits 0 on success, 1 with a "FAILED: ..." line on stderr (and a screenshot) otherwise. Every
step is bounded.
"""
import json
import os
import re
import sys
import time
import urllib.request

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

NOTEBOOK = "browser.ipynb"
STEP_MS = 60_000
LINES = 12

CELLS = [
    "import os\nprint(6 * 7, os.getpid())",
    # ~12 s of output: the caller cuts the link for 20 s while it prints.
    f"import time\nfor i in range({LINES}):\n    print(f'line {{i}}', flush=True)\n    time.sleep(1)",
    "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
    "import os\nprint('after restart', os.getpid())",
]


class Failure(Exception):
    pass


def ok(what):
    print("ok:", what, flush=True)


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


def prepare(root, config, kernel):
    write_json(os.path.join(root, NOTEBOOK), {
        "nbformat": 4, "nbformat_minor": 5,
        # A kernelspec in the metadata: JupyterLab starts it on open, no kernel picker.
        "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": src} for i, src in enumerate(CELLS)],
    })
    settings = os.path.join(config, "lab", "user-settings", "@jupyterlab")
    # Every cell stays in the DOM (no virtual scrolling), so its text can be read.
    write_json(os.path.join(settings, "notebook-extension", "tracker.jupyterlab-settings"),
               {"windowingMode": "none"})
    # No news or update check: no outside network here, and no toast over the notebook.
    write_json(os.path.join(settings, "apputils-extension", "notification.jupyterlab-settings"),
               {"fetchNews": "false", "checkForUpdates": False})


def api(base, token, path):
    req = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_for_server(base, token):
    deadline = time.monotonic() + 120
    while True:
        try:
            return api(base, token, "/api/status")
        except OSError as e:
            if time.monotonic() > deadline:
                raise Failure(f"jupyter lab at {base} not answering after 120 s: {e}") from None
            time.sleep(0.3)


class Notebook:
    def __init__(self, page):
        self.page = page
        self.cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        self.kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName")

    def prompt(self, i):
        return self.cells.nth(i).locator(".jp-InputPrompt")

    def output(self, i):
        return "".join(self.cells.nth(i).locator(".jp-OutputArea-output").all_text_contents())

    def run(self, i):
        # As a person does: click into the cell, Shift+Enter.
        self.cells.nth(i).locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")

    def wait_output(self, i, what, pred, timeout=STEP_MS / 1000):
        deadline = time.monotonic() + timeout
        while not pred(self.output(i)):
            if time.monotonic() > deadline:
                raise Failure(f"cell {i}: {what} not shown after {timeout:g} s; prompt "
                              f"{self.prompt(i).text_content()!r}, output {self.output(i)!r}")
            time.sleep(0.2)

    def wait_idle(self):
        expect(self.page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
            "data-status", "idle", timeout=STEP_MS)

    def kernel_menu(self, item):
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def drive(page, base, token, kernel):
    display = api(base, token, "/api/kernelspecs")["kernelspecs"][kernel]["spec"]["display_name"]
    nb = Notebook(page)
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=STEP_MS)
    # Seen once on a loaded machine: JupyterLab's theme stylesheet failed to load, and the
    # notebook came up without its toolbar. Nothing to do with the kernel: reload once, as a
    # person would, and say so.
    theme_error = page.locator(".jp-Dialog", has_text="Error Loading Theme")
    ready = nb.kernel_name.and_(page.locator(f"[aria-label={json.dumps(display)}]"))
    expect(ready.or_(theme_error).first).to_be_visible(timeout=STEP_MS)
    if theme_error.count():
        print(f"note: reloading the page after {theme_error.inner_text()!r}", flush=True)
        page.reload(timeout=STEP_MS)
    expect(nb.cells).to_have_count(len(CELLS), timeout=STEP_MS)
    expect(nb.kernel_name).to_have_attribute("aria-label", display, timeout=STEP_MS)
    nb.wait_idle()
    ok(f"the notebook is open on kernel {kernel} ({display!r}), idle")

    nb.run(0)
    expect(nb.prompt(0)).to_have_text("[1]:", timeout=STEP_MS)
    nb.wait_output(0, "42", lambda t: t.startswith("42 "))
    pid = nb.output(0).split()[1]
    ok(f"a cell runs and shows its output: {nb.output(0).strip()!r}")

    nb.run(1)
    nb.wait_output(1, "its first line", lambda t: "line 0" in t)
    print("cut", flush=True)
    if not sys.stdin.readline():
        raise Failure("stdin closed before the link came back")
    started = time.monotonic()
    expect(nb.prompt(1)).to_have_text("[2]:", timeout=STEP_MS)
    want = [f"line {i}" for i in range(LINES)]
    # The reply can overtake the last stream output through jupyter_server: a short grace.
    nb.wait_output(1, f"{LINES} lines", lambda t: t.count("\n") >= LINES, timeout=10)
    if nb.output(1).split("\n")[:-1] != want:
        raise Failure(f"the cell printed through the cut shows {nb.output(1)!r}")
    ok(f"the cell printed through the cut ends with [2]: and all {LINES} lines in order "
       f"({time.monotonic() - started:.1f} s after the link came back)")

    nb.run(2)
    nb.wait_output(2, "sleeping", lambda t: "sleeping" in t)
    expect(nb.prompt(2)).to_have_text("[*]:")
    nb.kernel_menu("Interrupt Kernel")
    nb.wait_output(2, "KeyboardInterrupt", lambda t: "KeyboardInterrupt" in t, timeout=20)
    expect(nb.prompt(2)).to_have_text("[3]:", timeout=STEP_MS)
    nb.wait_idle()
    ok("Kernel > Interrupt Kernel ends a sleeping cell with KeyboardInterrupt")

    nb.kernel_menu("Restart Kernel…")
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click(timeout=STEP_MS)
    expect(page.locator(".jp-Dialog")).to_have_count(0, timeout=STEP_MS)
    nb.wait_idle()
    nb.run(3)
    expect(nb.prompt(3)).to_have_text("[1]:", timeout=STEP_MS)
    nb.wait_output(3, "after restart", lambda t: t.startswith("after restart "))
    new_pid = nb.output(3).split()[2]
    if new_pid == pid:
        raise Failure(f"after the restart the kernel is the same process {pid}")
    ok(f"Kernel > Restart Kernel: a new kernel (pid {pid} -> {new_pid}) runs the next cell as [1]")

    nb.kernel_menu("Shut Down Kernel")
    expect(nb.kernel_name).to_have_attribute("aria-label", "No Kernel", timeout=STEP_MS)
    deadline = time.monotonic() + STEP_MS / 1000
    while kernels := api(base, token, "/api/kernels"):
        if time.monotonic() > deadline:
            raise Failure(f"the server still has kernels after the shutdown: {kernels}")
        time.sleep(0.2)
    ok("Kernel > Shut Down Kernel: the notebook shows No Kernel and the server has none")


def main():
    if len(sys.argv) != 8:
        raise SystemExit(__doc__)
    base, token, kernel, root, config, screenshot, chromium = sys.argv[1:]
    prepare(root, config, kernel)
    wait_for_server(base, token)
    ok("jupyter lab is up")
    # Playwright's own browser download is not used: Debian's chromium. As root it needs
    # --no-sandbox (Chromium refuses a sandbox for root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    failed, page = None, None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(STEP_MS)
            # What the browser could not load, for the failure report.
            page.on("requestfailed", lambda r: print(
                f"browser: request failed: {r.url} {r.failure}", file=sys.stderr, flush=True))
            page.on("console", lambda m: m.type == "error" and print(
                f"browser console: {m.text}", file=sys.stderr, flush=True))
            drive(page, base, token, kernel)
        except (Failure, PlaywrightError, AssertionError) as e:
            failed = e
        finally:
            try:
                if page is not None:
                    page.screenshot(path=screenshot)
            except PlaywrightError:
                pass
            browser.close()
    if failed is not None:
        print(f"FAILED: {failed}", file=sys.stderr)
        sys.exit(1)
    ok(f"screenshot in {screenshot}")


if __name__ == "__main__":
    main()
