"""Drive JupyterLab in headless Chromium with selenium, for tests/test_browser.py.

Chromium and chromedriver are Debian's `chromium` and `chromium-driver` (`make setup`
installs them). Selenium is always given both paths, so Selenium Manager never runs
and nothing is downloaded.

JupyterLab runs from this interpreter on loopback, rooted at the project, with its
own settings, workspace, runtime, data and checkpoint directories under a temporary
folder and autosave off: opening and running the committed notebooks never writes
beside them.
"""

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import namedtuple
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from utils.runtime.processes import CHROMEDRIVER, CHROMIUM, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BROWSER_BUILD_DIR = PROJECT_ROOT / "build" / "browser"
SCREENSHOTS_DIR = BROWSER_BUILD_DIR / "screenshots"

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
]
# Settings a fresh JupyterLab gets here: no autosave (the committed notebooks stay as they are)
# and no news or update checks (the machine may be offline).
LAB_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}
LAB_START_TIMEOUT_SECONDS = 120
NOTEBOOK_RUN_TIMEOUT_SECONDS = 600
PAGE_TIMEOUT_SECONDS = 120

Problem = namedtuple("Problem", "check cell message")


class BrowserMissing(Exception):
    """Chromium or chromedriver cannot be found."""


def browser_binaries():
    """(chromium, chromedriver) as the lab finds them: $LAB_CHROMIUM / $LAB_CHROMEDRIVER, PATH, or unpacked."""
    found = []
    for program in (CHROMIUM, CHROMEDRIVER):
        path = program.find()
        if path is None:
            variable = program.env_var
            where = (f"${variable}={os.environ[variable]!r}" if os.environ.get(variable)
                     else f"{program.name} on PATH or unpacked by make setup")
            raise BrowserMissing(f"No {program.name} found ({where}): run `make setup`, which installs Chromium "
                                 f"and chromedriver, or set {variable} to the program.")
        found.append(path)
    return tuple(found)


def start_chromium(chromium, chromedriver, profile_dir, log_path):
    """Headless Chromium under chromedriver, both from the given paths (Selenium Manager is never asked)."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    service = Service(executable_path=chromedriver, log_output=str(log_path))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(NOTEBOOK_RUN_TIMEOUT_SECONDS)
    return driver


class JupyterLab:
    """`python -m jupyter lab` on 127.0.0.1 and a free port, rooted at `root_dir`, isolated under `work_dir`."""

    def __init__(self, root_dir, work_dir, log_path, env=None):
        self.root_dir = Path(root_dir)
        self.work_dir = Path(work_dir)
        self.log_path = Path(log_path)
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.process = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def environment(self):
        env = dict(os.environ)
        for name in ["JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"]:
            env[name] = str(self.work_dir / name.lower())
        env.update(self.extra_env)
        return env

    def start(self):
        settings_dir = self.work_dir / "user-settings"
        for relative, settings in LAB_USER_SETTINGS.items():
            (settings_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            (settings_dir / relative).write_text(json.dumps(settings))
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={settings_dir}", f"--LabApp.workspaces_dir={self.work_dir / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
            "--ServerApp.allow_root=True",
            # Checkpoints (JupyterLab makes one when it opens a file) go here, not into .ipynb_checkpoints/ beside it.
            f"--FileCheckpoints.checkpoint_dir={self.work_dir / 'checkpoints'}",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                                            cwd=self.root_dir)
        try:
            self.wait_until_ready()
        except Exception:
            self.stop()
            raise

    def wait_until_ready(self):
        """Poll /api/status until it answers 200; fail at once if JupyterLab exits."""
        status_url = self.url(f"/api/status?token={self.token}")
        deadline = time.monotonic() + LAB_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                self.process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            else:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode} while starting; "
                                   f"see {self.log_path}.")
            try:
                with urllib.request.urlopen(status_url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                continue
        raise TimeoutError(f"JupyterLab did not answer {self.url('/api/status')} within "
                           f"{LAB_START_TIMEOUT_SECONDS} s; see {self.log_path}.")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# JavaScript run in the page. `window.jupyterapp` exists with --LabApp.expose_app_in_browser.
# Each script is an async function body; selenium passes its callback as the last argument.
ASYNC_SCRIPT = """
const done = arguments[arguments.length - 1];
(async (...args) => { %s })(...Array.from(arguments).slice(0, -1))
  .then(done, error => done({error: String(error && error.stack || error)}));
"""
OPEN_NOTEBOOK_JS = """
const [path] = args;
const panel = await jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook'});
await panel.context.ready;
await panel.sessionContext.ready;
await panel.sessionContext.session.kernel.info;
jupyterapp.shell.activateById(panel.id);
window.labUnderTest = {panel, run: null};
return {kernel: panel.sessionContext.session && panel.sessionContext.session.kernel.name};
"""
START_COMMAND_JS = """
const [command] = args;
const lab = window.labUnderTest;
jupyterapp.shell.activateById(lab.panel.id);
lab.run = {settled: false};
jupyterapp.commands.execute(command).then(
  result => { lab.run = {settled: true, result: result === undefined ? null : result}; },
  error => { lab.run = {settled: true, error: String(error)}; });
return true;
"""
RESTART_BUTTON_CSS = ".jp-Dialog button:has([aria-label='Confirm Kernel Restart'])"
KERNEL_IDLE_JS = """
return window.labUnderTest.panel.sessionContext.kernelDisplayStatus === 'idle';
"""
RUN_SETTLED_JS = """
const lab = window.labUnderTest;
return lab.run.settled && lab.panel.sessionContext.kernelDisplayStatus === 'idle' ? lab.run : null;
"""
# Per cell, as the page shows it: images (decoded or not), rendered text, widget errors, sideways scrolling.
# Each cell is scrolled into view first, as a reader would, so the browser lays it out and loads its images.
PAGE_FACTS_JS = """
const panel = window.labUnderTest.panel;
const cells = [];
for (const cell of panel.content.widgets) {
  cell.node.scrollIntoView({block: 'start'});
  const outputs = Array.from(cell.node.querySelectorAll('.jp-OutputArea-output'));
  const images = await Promise.all(Array.from(cell.node.querySelectorAll('.jp-OutputArea-output img')).map(
    image => image.decode().then(() => true, () => false).then(
      () => ({naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight, shownWidth: image.clientWidth}))));
  const scroller = cell.node.querySelector('.jp-InputArea .cm-scroller');
  cells.push({
    images,
    outputText: outputs.map(e => e.innerText).join('\\n'),
    codeScrollsSideways: !!scroller && scroller.scrollWidth > scroller.clientWidth + 1,
    outputScrollsSideways: outputs.some(e => e.scrollWidth > e.clientWidth + 1),
  });
}
return {notebook: panel.context.model.toJSON(), cells};
"""
CLOSE_NOTEBOOK_JS = """
const lab = window.labUnderTest;
await lab.panel.sessionContext.shutdown();
lab.panel.dispose();
window.labUnderTest = null;
return true;
"""
SCROLL_TO_CELL_JS = """
const [index] = args;
window.labUnderTest.panel.content.widgets[index].node.scrollIntoView({block: 'start'});
return true;
"""


class LabPage:
    """One JupyterLab page in Chromium, working on one notebook at a time."""

    def __init__(self, driver, lab):
        self.driver = driver
        self.lab = lab

    def run_js(self, body, *args):
        result = self.driver.execute_async_script(ASYNC_SCRIPT % body, *args)
        if isinstance(result, dict) and set(result) == {"error"}:
            raise RuntimeError(f"JavaScript in JupyterLab failed: {result['error']}")
        return result

    def load(self):
        self.driver.get(self.lab.url(f"/lab?token={self.lab.token}"))
        WebDriverWait(self.driver, PAGE_TIMEOUT_SECONDS).until(
            lambda d: d.execute_script("return !!window.jupyterapp"))
        self.run_js("await jupyterapp.restored; return true;")

    def open_notebook(self, path):
        """Open `path` (relative to JupyterLab's root) in the Notebook editor; returns its kernel's name.

        Returns once the kernel has answered and shows idle, as a person waits for the kernel
        indicator: a restart issued while the first connection is still being set up can
        leave JupyterLab 4.6 with a kernel that never receives the cells (server log:
        "Replacing stale connection", then "struct.error" decoding the next message).
        """
        kernel = self.run_js(OPEN_NOTEBOOK_JS, path)["kernel"]
        WebDriverWait(self.driver, PAGE_TIMEOUT_SECONDS).until(lambda d: d.execute_script(KERNEL_IDLE_JS))
        return kernel

    def run_command(self, command, confirm_restart=False, timeout=NOTEBOOK_RUN_TIMEOUT_SECONDS):
        """Run a notebook command (accepting its restart dialog as a person would) and wait until it is done.

        Done means the command's promise settled (for the run commands: every cell ran, or one
        failed and the rest were skipped) and the kernel is idle. Returns {'result': ...} or {'error': ...}.
        """
        self.run_js(START_COMMAND_JS, command)
        if confirm_restart:
            button = WebDriverWait(self.driver, PAGE_TIMEOUT_SECONDS).until(
                lambda d: d.find_element(By.CSS_SELECTOR, RESTART_BUTTON_CSS))
            button.click()
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=1).until(
                lambda d: d.execute_script(RUN_SETTLED_JS))
        except TimeoutException:
            return {"error": f"{command} did not finish within {timeout} s"}

    def page_facts(self):
        """The notebook's model (cells, outputs, execution counts) and what each cell shows."""
        return self.run_js(PAGE_FACTS_JS)

    def close_notebook(self):
        """Shut down the notebook's kernel and close it without saving."""
        self.run_js(CLOSE_NOTEBOOK_JS)

    def save_evidence(self, stem, cell=None):
        """Screenshot of the window (scrolled to `cell`) and the page's visible text; returns the PNG path."""
        if cell is not None:
            self.run_js(SCROLL_TO_CELL_JS, cell)
        return save_window(self.driver, stem)


def save_window(driver, stem, directory=SCREENSHOTS_DIR):
    """Save `stem`.png (the window) and `stem`.txt (the page's visible text) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{stem}.png"
    driver.save_screenshot(str(png))
    png.with_suffix(".txt").write_text(driver.execute_script("return document.body.innerText"))
    return png


def notebook_problems(facts, expected_images):
    """What is wrong with a notebook after a run, as Problems (check, cell index, one sentence).

    `facts` is LabPage.page_facts(); `expected_images` is how many image/png outputs the
    committed notebook holds (every figure the notebook makes). Sentences number cells
    from 1, as JupyterLab's status bar does.
    """
    problems = []
    cells = facts["notebook"]["cells"]
    not_run = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and "".join(c["source"]).strip()
               and c["execution_count"] is None]
    if not_run:
        problems.append(Problem("not-run", not_run[0], f"code cells {[i + 1 for i in not_run]} did not run."))
    for index, (cell, shown) in enumerate(zip(cells, facts["cells"])):
        number = index + 1
        outputs = cell.get("outputs", [])
        for output in outputs:
            if output["output_type"] == "error":
                problems.append(Problem("error", index, f"cell {number} raised {output['ename']}: {output['evalue']}"))
            elif output["output_type"] == "stream" and output["name"] == "stderr":
                text = "".join(output["text"])
                problems.append(Problem("stderr", index, f"cell {number} wrote to stderr: {text[:300]!r}"))
        if any("\r" in text for text in map(output_text, outputs)):
            problems.append(Problem("progress", index, f"cell {number} has a raw carriage return (\\r) in its text "
                                                       "output, shown as a line per update."))
        if "Error displaying widget" in shown["outputText"]:
            problems.append(Problem("widget", index, f"cell {number} shows 'Error displaying widget'."))
        broken = [image for image in shown["images"] if not image["naturalWidth"]]
        if broken:
            problems.append(Problem("figures", index, f"cell {number} has {len(broken)} image(s) that did not render."))
    rendered = sum(bool(image["naturalWidth"]) for shown in facts["cells"] for image in shown["images"])
    if rendered != expected_images:
        first = next((i for i, shown in enumerate(facts["cells"]) if shown["images"]), None)
        problems.append(Problem("figures", first, f"{rendered} figure(s) rendered as images, "
                                                  f"the committed notebook has {expected_images}."))
    return problems


def output_text(output):
    """The text of a stream output, or the text/plain of a display or result."""
    text = output.get("text") if output["output_type"] == "stream" else output.get("data", {}).get("text/plain", "")
    return "".join(text or "")


def wide_cells(facts):
    """Cell indices (from 0) whose code or output scrolls sideways in the window, for the record."""
    return {"code": [i for i, c in enumerate(facts["cells"]) if c["codeScrollsSideways"]],
            "output": [i for i, c in enumerate(facts["cells"]) if c["outputScrollsSideways"]]}


# Every image on the page, scrolled into view and decoded (a broken image has naturalWidth 0).
PAGE_IMAGES_JS = """
return await Promise.all(Array.from(document.images).map(image => {
  image.scrollIntoView();
  return image.decode().then(() => true, () => false).then(
    () => ({src: (image.getAttribute('src') || '').slice(0, 80), naturalWidth: image.naturalWidth}));
}));
"""
# Each link's absolute URL, and whether its #fragment (if any) names an element on this page.
LINKS_JS = """
return Array.from(document.links).map(
  a => [a.href, !a.hash || !!document.getElementById(decodeURIComponent(a.hash.slice(1)))]);
"""
CHROME_ERROR_PREFIX = "chrome-error://"


def page_problems(driver, url):
    """Load `url` and list what is wrong: the page did not load, or an image on it did not render."""
    driver.get(url)
    if driver.execute_script("return document.URL").startswith(CHROME_ERROR_PREFIX):
        error = re.search(r"ERR_[A-Z_]+", driver.execute_script("return document.body.innerText"))
        return [f"{url} did not load ({error.group() if error else 'browser error page'})."]
    images = driver.execute_async_script(ASYNC_SCRIPT % PAGE_IMAGES_JS)
    return [f"{url}: image {image['src']!r} did not render." for image in images if not image["naturalWidth"]]


def report_problems(driver, report_path):
    """What is broken in an HTML report opened from disk: local links that do not resolve, images that do not render.

    Checks the report page and every page it links to on disk. Links to the web (http, https,
    mailto) are not followed: the report must open offline, and they may not answer here.
    """
    index_url = Path(report_path).resolve().as_uri()
    problems = page_problems(driver, index_url)
    linked_pages = []
    for href, names_element in driver.execute_script(LINKS_JS):
        target, _, fragment = href.partition("#")
        if not target.startswith("file:"):
            continue
        if target == index_url:
            problems += [] if names_element else [f"{index_url}: link #{fragment} names no element on the page."]
        elif not Path(urllib.request.url2pathname(urllib.parse.urlparse(target).path)).is_file():
            problems.append(f"{index_url}: link {href} names no file.")
        elif target not in linked_pages:
            linked_pages.append(target)
    for target in linked_pages:
        problems += page_problems(driver, target)
    return problems


def check_report(driver, report_path, screenshots_dir=SCREENSHOTS_DIR):
    """Assert that the report at `report_path` opens from disk, every local link resolving, every image rendering.

    On failure, a screenshot of the report page is saved in `screenshots_dir`.
    """
    problems = report_problems(driver, report_path)
    if problems:
        driver.get(Path(report_path).resolve().as_uri())
        evidence = save_window(driver, f"report-{Path(report_path).stem}", screenshots_dir)
        raise AssertionError(f"report {report_path}: " + " ".join(problems) + f" Screenshot: {evidence}")
