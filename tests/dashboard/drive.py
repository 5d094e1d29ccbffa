"""Drives the dashboard in a real headless Chromium (Debian's `chromium` and `chromedriver`) through Selenium.

Run by tests/dashboard.rs with one argument, a JSON file: the daemon's URL, the keypair, the golden signing
vectors, the agents and what each should show, the PID of the watcher to stop for the live update, and where to
put screenshots. Each step waits for what a user would see (polling the page with a timeout, never a bare sleep),
saves a screenshot, and prints one line. Any failure raises: the exit status is non-zero and the last screenshot
is `failed.png`.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

WAIT_S = 20
STORE_SECRET = "agent-supervisor.secret-key"
STORE_ACCESS = "agent-supervisor.access-key"


class Failed(AssertionError):
    pass


def check(cond, message):
    if not cond:
        raise Failed(message)


class Dashboard:
    def __init__(self, cfg):
        self.cfg = cfg
        self.shots = Path(cfg["screenshots"])
        self.shots.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.started = time.monotonic()
        options = webdriver.ChromeOptions()
        options.binary_location = cfg["chromium"]
        for arg in [
            "--headless=new",
            "--no-sandbox",  # the tests run as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,800",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            "--password-store=basic",
            f"--user-data-dir={cfg['profile']}",
            "--lang=en-US",
        ]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
        service = Service(executable_path=cfg["chromedriver"])
        self.d = webdriver.Chrome(options=options, service=service)
        self.d.set_script_timeout(WAIT_S)
        self.desktop()
        self.network = []
        self.console = []

    # -- helpers ---------------------------------------------------------------------------------------------

    def desktop(self):
        """A 1280×800 viewport (a window of that size has a smaller one)."""
        self.d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
        )

    def log(self, msg):
        print(f"[{time.monotonic() - self.started:6.1f} s] {msg}", flush=True)

    def shot(self, name):
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def el(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def els(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    # The table and the panel are rebuilt on every poll: read them with one script each, never through a
    # WebElement that a poll may have replaced in between.

    def text(self, css):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)

    def attrs(self, css, *names):
        return self.js(
            "return [...document.querySelectorAll(arguments[0])].map(e => arguments[1].map(n => e.getAttribute(n)))",
            css,
            list(names),
        )

    def wait(self, what, probe, timeout=WAIT_S):
        """Polls `probe` until it returns something truthy; fails naming `what` and the last value seen."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = probe()
                if last:
                    return last
            except (StaleElementReferenceException, WebDriverException) as e:
                last = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if time.monotonic() > deadline:
                raise Failed(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")
            time.sleep(0.1)

    def visible(self, css):
        return self.js("const e = document.querySelector(arguments[0]); return !!e && e.checkVisibility()", css)

    def enabled(self, css):
        return self.js("return [...document.querySelectorAll(arguments[0])].map(b => !b.disabled)", css)

    def dialog_open(self, dialog_id):
        return self.js("return document.getElementById(arguments[0]).open", dialog_id)

    def row_text(self, agent, col):
        return self.text(f'#agents-body tr[data-agent-id="{agent}"] .col-{col}')

    def storage(self):
        return self.js("return Object.assign({}, sessionStorage)")

    def drain_logs(self):
        for entry in self.d.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"].startswith("Network."):
                self.network.append(message)
        self.console.extend(self.d.get_log("browser"))

    def confirm(self, expect_title):
        self.wait("the confirmation dialog", lambda: self.dialog_open("confirm"))
        title = self.el("#confirm-title").text
        check(expect_title in title, f"confirmation title {title!r} lacks {expect_title!r}")
        return title

    def seq(self):
        """How many commands the page has sent: a result with a higher number is the next command's."""
        return int(self.el("#panel-command").get_attribute("data-seq") or 0)

    def command_result(self, after):
        """Waits for the result of the first command sent after `after` (see `seq`), read in one go."""

        def probe():
            r = self.js(
                "const r = document.querySelector('#panel-command .result');"
                "return r && {seq: +r.dataset.seq, outcome: r.dataset.outcome, code: r.dataset.errorCode || null, text: r.innerText}"
            )
            return r if r and r["seq"] > after else None

        return self.wait("the command's result", probe)

    def agent_rows(self):
        return [a[0] for a in self.attrs("#agents-body tr", "data-agent-id")]

    def event_ids(self):
        return [int(a[0]) for a in self.attrs("#events-body tr", "data-event-id")]

    # -- steps -----------------------------------------------------------------------------------------------

    def open_page(self):
        self.d.get(self.cfg["url"] + "/ui")
        check(self.d.current_url == self.cfg["url"] + "/ui/", f"/ui did not lead to /ui/: {self.d.current_url}")
        self.wait("the sign-in form", lambda: self.visible("#sign-in-form"))
        check(self.js("return document.activeElement.id") == "access-key", "the access key field has the focus")
        self.log("the page loads at /ui/ (redirected from /ui) and shows the sign-in form")

    def signer_matches_the_golden_vectors(self):
        g = self.cfg["golden"]
        got = self.d.execute_async_script(
            """
            const [g, done] = arguments;
            import('/ui/sign.js').then(async (m) => {
              const sigs = [];
              for (const [method, relUrl, date, contentType] of g.rows) {
                sigs.push(await m.sign(g.sk, {method, relUrl, date, host: g.host, contentType, apiVersion: g.version}));
              }
              const req = {method: 'post', relUrl: '/resource/recalculate-usage', host: g.host,
                           contentType: 'Text/Plain', apiVersion: g.version};
              done({
                sigs,
                kDate: m.hex(await m.hmac(g.sk, '20261127')),
                kSigning: m.hex(await m.signingKey(g.sk, m.signingDay('2026-11-27T12:18:37.025313+00:00'), g.host)),
                whole: await m.signRequest(g.ak, g.sk, req, new Date('2026-11-27T12:00:00Z')),
                micros: await m.signRequest(g.ak, g.sk, req, new Date('2026-11-27T12:18:37.025Z')),
                lateDay: m.signingDay('2026-11-27T23:30:00-05:00'),
                available: m.available(),
              });
            }).catch((e) => done({error: String(e && e.stack || e)}));
            """,
            g,
        )
        check("error" not in got, f"sign.js failed: {got.get('error')}")
        check(got["available"], "WebCrypto is available on http://127.0.0.1")
        for n, (row, sig) in enumerate(zip(g["rows"], got["sigs"]), 1):
            check(sig == row[4], f"golden row {n} ({row[0]} {row[1]}): signed {sig}, expected {row[4]}")
        check(got["kDate"] == g["k_date"], f"k_date {got['kDate']} != {g['k_date']}")
        check(got["kSigning"] == g["k_signing"], f"signing key {got['kSigning']} != {g['k_signing']}")
        check(got["whole"]["date"] == "2026-11-27T12:00:00+00:00", f"short date form: {got['whole']['date']}")
        expected = f"BackendAI signMethod=HMAC-SHA256, credential={g['ak']}:{g['rows'][11][4]}"
        check(got["whole"]["authorization"] == expected, f"Authorization {got['whole']['authorization']}")
        check(got["micros"]["date"] == "2026-11-27T12:18:37.025000+00:00", f"micro date form: {got['micros']['date']}")
        check(got["lateDay"] == "20261127", "the day is the one written in the date")
        self.log(f"sign.js reproduces all {len(g['rows'])} golden signatures, the derived keys and the date forms")

    def sign_in_with_a_wrong_key_shows_the_servers_message(self):
        self.el("#access-key").send_keys(self.cfg["access_key"])
        self.el("#secret-key").send_keys(self.cfg["wrong_secret_key"])
        self.el("#secret-key").send_keys(Keys.ENTER)
        err = self.wait("the sign-in error", lambda: self.visible("#sign-in-error") and self.el("#sign-in-error").text)
        for part in self.cfg["expect"]["wrong_key_message"]:
            check(part in err, f"sign-in error {err!r} lacks {part!r}")
        check(STORE_SECRET not in self.storage(), "a refused secret is not kept")
        check(not self.visible("#dashboard"), "the dashboard stays hidden")
        self.shot("sign-in-wrong-key")
        self.log(f"a wrong secret key is refused with the server's message: {err!r}")

        # A valid keypair that is not a superadmin one: the page says why it cannot be used.
        self.el("#access-key").clear()
        self.el("#access-key").send_keys(self.cfg["user_access_key"])
        self.el("#secret-key").clear()
        self.el("#secret-key").send_keys(self.cfg["user_secret_key"])
        self.el("#sign-in-button").click()
        self.wait("the refusal of a user keypair", lambda: "is not a superadmin keypair" in (self.text("#sign-in-error") or ""))
        check(not self.storage(), f"nothing kept for a user keypair: {list(self.storage())}")
        self.el("#access-key").clear()
        self.el("#access-key").send_keys(self.cfg["access_key"])
        self.log("a keypair without superadmin is refused: the page says it needs one")

    def sign_in(self):
        box = self.el("#secret-key")
        box.clear()
        box.send_keys(self.cfg["secret_key"])
        self.el("#sign-in-button").click()
        self.wait("the dashboard", lambda: self.visible("#dashboard"))
        check(self.el("#whoami").text == self.cfg["access_key"], "the signed-in access key is shown")
        stored = self.storage()
        check(stored.get(STORE_SECRET) == self.cfg["secret_key"], "the secret key is in session storage")
        check(self.js("return localStorage.length") == 0, "nothing in local storage")
        check(self.el("#secret-key").get_attribute("value") == "", "the secret is cleared from the form")
        check(self.cfg["secret_key"] not in self.d.current_url, "the secret is not in the URL")
        self.log("signed in; the secret key is in session storage only")

    def table_lists_the_agents_with_their_states(self):
        expect = self.cfg["expect"]["agents"]

        def states():
            seen = {}
            for agent, want in expect.items():
                got = {"status": self.row_text(agent, "status"), "watcher": self.row_text(agent, "watcher")}
                if got["status"] is None or got["status"] != want["status"]:
                    return None
                if got["watcher"] is None or not got["watcher"].startswith(want["watcher"]):
                    return None
                seen[agent] = got
            return seen

        self.wait(f"every agent in its state {expect}", states)
        check(sorted(self.agent_rows()) == sorted(expect), f"rows {self.agent_rows()}")
        counts = self.cfg["expect"]["counts"]
        for name, n in counts.items():
            self.wait(f"count {name} = {n}", lambda name=name, n=n: self.el(f"#count-{name}").text == str(n))
        slots = self.row_text("i-a100-01", "slots")
        for part in self.cfg["expect"]["slots_before"]:
            check(part in slots, f"slots of i-a100-01 {slots!r} lack {part!r}")
        check(self.js("return document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scroll at 1280")
        self.shot("agents")
        self.log(f"the table lists {len(expect)} agents with their states; counts {counts}")

    def refresh_now_asks_the_watchers(self):
        before = self.el("#updated").text
        self.el("#refresh-now").click()
        self.wait("a refreshed listing", lambda: self.el("#updated").text.startswith("Updated") and self.el("#updated").text != before)
        self.log("Refresh now re-reads every watcher")

    def filter_sort_and_keyboard(self):
        box = self.el("#filter-text")
        box.send_keys("a100")
        self.wait("the text filter", lambda: sorted(self.agent_rows()) == ["i-a100-01", "i-a100-02"])
        box.clear()
        box.send_keys(Keys.BACKSPACE)  # an input event for the cleared box
        self.js("document.getElementById('filter-status').value = 'LOST'; document.getElementById('filter-status').dispatchEvent(new Event('input'))")
        self.wait("the status filter", lambda: self.agent_rows() == ["i-lost-01"])
        self.js("document.getElementById('filter-status').value = ''; document.getElementById('filter-status').dispatchEvent(new Event('input'))")
        self.js("document.getElementById('filter-group').value = 'a100'; document.getElementById('filter-group').dispatchEvent(new Event('input'))")
        self.wait("the scaling group filter", lambda: sorted(self.agent_rows()) == ["i-a100-01", "i-a100-02"])
        self.js("document.getElementById('filter-group').value = ''; document.getElementById('filter-group').dispatchEvent(new Event('input'))")
        self.wait("all rows again", lambda: len(self.agent_rows()) == len(self.cfg["expect"]["agents"]))
        header = self.el('#agents th[data-sort="id"] button')
        header.click()  # already sorted by id ascending: now descending
        self.wait("descending ids", lambda: self.agent_rows() == sorted(self.agent_rows(), reverse=True))
        check(self.el('#agents th[data-sort="id"]').get_attribute("aria-sort") == "descending", "aria-sort says so")
        header.click()
        self.wait("ascending ids", lambda: self.agent_rows() == sorted(self.agent_rows()))
        self.el('#agents th[data-sort="status"] button').click()
        self.wait("LOST sorted after ALIVE", lambda: self.agent_rows()[-1] == "i-lost-01")
        self.el('#agents th[data-sort="id"] button').click()
        self.wait("ascending ids", lambda: self.agent_rows() == sorted(self.agent_rows()))
        # Keyboard only: from the filter box, Tab moves on with a visible focus ring.
        box.click()
        box.send_keys(Keys.TAB)
        focused = self.js("const e = document.activeElement; return [e.id, getComputedStyle(e).outlineStyle]")
        check(focused == ["filter-group", "solid"], f"Tab lands on the next control with a focus ring: {focused}")
        self.log("filter by text, status and scaling group; sort by column; Tab shows a focus ring")

    def open_panel_by_keyboard(self, agent):
        self.js("document.querySelector(arguments[0]).focus()", f'#agents-body tr[data-agent-id="{agent}"] .col-id button')
        ActionChains(self.d).send_keys(Keys.ENTER).perform()
        self.wait(f"the panel of {agent}", lambda: self.dialog_open("panel") and self.el("#panel-title").text == f"Agent {agent}")

    def close_panel_by_keyboard(self):
        agent = self.el("#panel-title").text.removeprefix("Agent ")
        ActionChains(self.d).send_keys(Keys.ESCAPE).perform()
        focus = "const e = document.activeElement.closest('#agents-body tr'); return e && e.dataset.agentId"
        self.wait(f"the panel to close, focus back on {agent}", lambda: not self.dialog_open("panel") and self.js(focus) == agent)

    def panel_shows_row_watcher_json_and_audit_trail(self):
        self.open_panel_by_keyboard("i-a100-01")
        self.wait("the watcher's JSON", lambda: '"agent-status": "active"' in self.el("#panel-watcher-json").text)
        self.wait("the audit trail", lambda: self.el("#events-meta").text)
        facts = self.text("#panel-facts")
        for part in ["ALIVE", "a100", "tcp://127.0.0.1:6001"]:
            check(part in facts, f"panel facts lack {part!r}: {facts!r}")
        self.shot("agent-panel")
        self.log("the agent panel shows the row, the watcher's raw JSON and the audit trail")

    def stop_with_kernels_needs_force(self):
        kernels = self.cfg["expect"]["kernels"]
        before = self.seq()
        self.el('#panel-actions button[data-command="stop"]').click()
        self.confirm("Stop i-a100-01?")
        self.shot("confirm-stop")
        self.el("#confirm-ok").click()
        title = self.wait(
            "the force dialog",
            lambda: self.dialog_open("confirm") and f"{kernels} running kernels" in self.el("#confirm-title").text and self.el("#confirm-title").text,
        )
        check(not self.el("#confirm-ok").is_enabled(), "Force stop is disabled until the force box is ticked")
        check("agent_has_running_kernels" in self.el("#confirm-text").text, "the dialog names the refusal")
        check(self.el("#confirm-ok").text == "Force stop", "the button says Force stop")
        self.shot("force-dialog")
        self.el("#confirm-check-box").click()
        check(self.el("#confirm-ok").is_enabled(), "ticking force enables the button")
        self.el("#confirm-ok").click()
        # While the command runs (the service takes a second to stop), the panel shows progress, buttons disabled.
        self.wait(
            "progress, with the actions disabled",
            lambda: "Stopping i-a100-01 (force)" in self.el("#panel-command .running").text
            and not any(self.enabled("#panel-actions button")),
        )
        self.shot("stop-in-flight")
        result = self.command_result(before + 1)  # the refused stop was command `before + 1`
        check(result["outcome"] == "ok", f"the forced stop succeeded: {result}")
        self.wait("the row to show it stopped", lambda: (self.row_text("i-a100-01", "watcher") or "").startswith("inactive"))
        self.wait("the buttons back", lambda: all(self.enabled("#panel-actions button")))
        self.wait(
            "the audit trail with the refused and the forced stop",
            lambda: {"rejected", "succeeded"}
            <= set(self.js("return [...document.querySelectorAll('#events-body tr td:nth-child(3)')].map(t => t.innerText)")),
        )
        self.shot("stopped")
        self.log(f"stop: confirmation, then the force dialog with {kernels} kernels ({title!r}); after force the row shows inactive")

    def start_again(self):
        before = self.seq()
        self.el('#panel-actions button[data-command="start"]').click()
        self.confirm("Start i-a100-01?")
        self.el("#confirm-ok").click()
        result = self.command_result(before)
        check(result["outcome"] == "ok", f"the start succeeded: {result}")
        self.wait("the row to show it running", lambda: (self.row_text("i-a100-01", "watcher") or "").startswith("active"))
        self.shot("started")
        self.close_panel_by_keyboard()  # and the focus returns to the agent's button
        self.log("start: the row shows active again")

    def failed_start_shows_the_watchers_reason(self):
        self.open_panel_by_keyboard("i-fail-01")
        before = self.seq()
        self.el('#panel-actions button[data-command="start"]').click()
        self.confirm("Start i-fail-01?")
        self.el("#confirm-ok").click()
        result = self.command_result(before)
        text = result["text"]
        check(result["outcome"] == "failed", f"the start failed: {text}")
        check(result["code"] == "agent_start_failed", f"error code: {text}")
        for part in ["agent_start_failed", self.cfg["expect"]["failed_start_reason"]]:
            check(part in text, f"the failure {text!r} lacks {part!r}")
        self.shot("start-failed")
        self.close_panel_by_keyboard()
        self.log(f"a failed start shows the error code and the watcher's reason: {text.splitlines()[-1]!r}")

    def sync_without_kernels(self):
        self.open_panel_by_keyboard("i-a100-02")
        before = self.seq()
        self.el('#panel-actions button[data-command="sync"]').click()
        self.confirm("Sync i-a100-02?")
        self.el("#confirm-ok").click()
        result = self.command_result(before)
        check(result["outcome"] == "ok" and "nothing sent" in result["text"], f"sync: {result}")
        self.close_panel_by_keyboard()
        self.log("sync of an agent without kernels: nothing to send")

    def audit_trail_pages_back(self):
        agent, total = self.cfg["expect"]["paged_agent"], self.cfg["expect"]["paged_events"]
        self.open_panel_by_keyboard(agent)
        first = self.wait("the first page", lambda: len(self.event_ids()) == 20 and self.event_ids())
        check(first == sorted(first, reverse=True), f"newest first: {first}")
        self.el("#events-older").click()
        second = self.wait("the second page", lambda: 0 < len(self.event_ids()) < 20 and self.event_ids())
        check(max(second) < min(first), f"older events on page two: {second} after {first}")
        check(len(first) + len(second) >= total, f"{len(first)} + {len(second)} events, expected at least {total}")
        check(not self.el("#events-older").is_enabled(), "no third page")
        self.wait("the watcher's error", lambda: "watcher_not_registered" in self.el("#panel-watcher-meta").text)
        self.shot("audit-trail-page-2")
        self.el("#events-newest").click()
        self.wait("the newest page", lambda: self.event_ids() == first)
        self.close_panel_by_keyboard()
        self.log(f"the audit trail pages back: {len(first)} then {len(second)} events")

    def recalculation_shows_its_report(self):
        want = self.cfg["expect"]["recalc"]
        self.el("#recalc").click()
        self.wait("the report", lambda: self.visible('#recalc-report [data-report="updated"]'))
        for key in ["updated", "reset", "skipped"]:
            dd = self.el(f'#recalc-report [data-report="{key}"]')
            check(dd.get_attribute("data-count") == str(len(want[key])), f"{key}: {dd.text!r}, expected {want[key]}")
            for item in want[key]:
                check(item in dd.text, f"{key} {dd.text!r} lacks {item!r}")
        check(self.el('#recalc-report [data-report="total"]').text == str(want["total"]), "agents total")
        self.wait(
            "the new occupied slots in the row",
            lambda: all(part in (self.row_text("i-a100-01", "slots") or "") for part in self.cfg["expect"]["slots_after"]),
        )
        self.js("document.getElementById('recalc-report').scrollIntoView()")
        self.shot("recalculation")
        self.log(f"recalculation report: {self.el('#recalc-report').text!r}")
        self.js("window.scrollTo(0, 0)")

    def rolling_restart(self, parallel, stop_early):
        self.js("document.getElementById('rolling-group').value = 'a100'")
        box = self.el("#rolling-parallel")
        box.clear()
        box.send_keys(str(parallel))
        run = int(self.el("#rolling-run").get_attribute("data-run") or 0) + 1
        self.el("#rolling-start").click()
        self.confirm("Restart 2 agents of a100?")
        self.el("#confirm-ok").click()
        self.wait(f"rolling restart {run}", lambda: self.el("#rolling-run").get_attribute("data-run") == str(run))
        self.js("document.getElementById('rolling-run').scrollIntoView()")
        if stop_early:
            self.wait("the first restart running", lambda: self.els('#rolling-results li[data-state="running"]'))
            self.el("#rolling-stop").click()
        self.wait("the run to end", lambda: self.el("#rolling-run").get_attribute("data-running") == "false")
        states = dict(self.attrs("#rolling-results li", "data-agent-id", "data-state"))
        summary = self.el("#rolling-summary").text
        progress = self.js("const p = document.getElementById('rolling-progress'); return [p.value, p.max]")
        if stop_early:
            check(sorted(states.values()) == ["not-run", "ok"], f"one restarted, one not run: {states}")
            check("Stopped" in summary and "1 not run" in summary, f"summary {summary!r}")
            check(progress == [1, 2], f"progress {progress}")
            self.shot("rolling-restart-stopped")
        else:
            check(set(states.values()) == {"ok"}, f"every agent restarted: {states}")
            check("2 of 2 done" in summary and "Finished" in summary, f"summary {summary!r}")
            check(progress == [2, 2], f"progress {progress}")
            self.shot("rolling-restart-done")
        self.js("window.scrollTo(0, 0)")
        self.log(f"rolling restart of a100 (max {parallel} in parallel{', stopped early' if stop_early else ''}): {summary!r}")

    def live_update_when_a_watcher_goes_down(self):
        agent = self.cfg["expect"]["killed_agent"]
        self.js("window.__not_reloaded = true")
        down_before = int(self.el("#count-watcher-down").text)
        self.wait(f"{agent} active first", lambda: (self.row_text(agent, "watcher") or "").startswith("active"))
        os.kill(self.cfg["kill_pid"], signal.SIGTERM)
        self.wait(f"{agent}'s watcher shown unreachable", lambda: (self.row_text(agent, "watcher") or "").startswith("unreachable"))
        self.wait("the watcher-down count", lambda: self.el("#count-watcher-down").text == str(down_before + 1))
        check(self.js("return window.__not_reloaded === true"), "the page was not reloaded")
        self.shot("watcher-down")
        self.log(f"{agent}'s watcher stopped: the row and the count update without a reload")

    def phone_width(self):
        self.d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
        )
        try:
            self.wait("the card layout", lambda: self.js("return getComputedStyle(document.querySelector('#agents tbody tr')).display") == "block")
            fits = self.js("return [document.documentElement.scrollWidth, window.innerWidth]")
            check(fits[0] <= fits[1], f"no sideways scroll at 390 px: {fits}")
            self.shot("phone")
            self.open_panel_by_keyboard("i-a100-01")
            fits = self.js("const d = document.getElementById('panel'); return [d.getBoundingClientRect().right, window.innerWidth]")
            check(fits[0] <= fits[1], f"the panel fits at 390 px: {fits}")
            self.shot("phone-panel")
            self.close_panel_by_keyboard()
        finally:
            self.desktop()
        self.log("readable at 390 px: agents as cards, no sideways scroll, the panel fits")

    def sign_out_forgets_the_secret(self):
        self.el("#sign-out").click()
        self.wait("the sign-in form", lambda: self.visible("#sign-in-form"))
        stored = self.storage()
        check(STORE_SECRET not in stored and STORE_ACCESS not in stored, f"session storage after sign-out: {list(stored)}")
        check(not self.visible("#dashboard"), "the dashboard is hidden")
        check(self.el("#agents-body").text == "", "the agent rows are gone")
        self.shot("signed-out")
        self.log("sign-out removes the keys from session storage")

    def the_secret_never_left_the_browser(self):
        self.drain_logs()
        secrets = [self.cfg["secret_key"], self.cfg["wrong_secret_key"], self.cfg["user_secret_key"]]
        requests = [m for m in self.network if m["method"] == "Network.requestWillBeSent"]
        api = [m["params"]["request"] for m in requests if "/v1/" in m["params"]["request"]["url"]]
        check(len(api) > 10, f"the log holds the API requests ({len(api)})")
        for req in api:
            headers = {k.lower(): v for k, v in req["headers"].items()}
            check("x-backendai-date" in headers and headers["authorization"].startswith("BackendAI "), f"signed: {req['url']}")
        dump = json.dumps(self.network)
        for s in secrets:
            check(s not in dump, "a secret key appears in the network log")
        bad = [c for c in self.console if "Content Security Policy" in c["message"] or "Uncaught" in c["message"]]
        check(not bad, f"console errors: {bad}")
        self.log(f"{len(requests)} requests, {len(api)} of them signed API calls: no secret in any URL, header or body; no CSP violation")

    def run(self):
        steps = [
            self.open_page,
            self.signer_matches_the_golden_vectors,
            self.sign_in_with_a_wrong_key_shows_the_servers_message,
            self.sign_in,
            self.table_lists_the_agents_with_their_states,
            self.refresh_now_asks_the_watchers,
            self.filter_sort_and_keyboard,
            self.panel_shows_row_watcher_json_and_audit_trail,
            self.stop_with_kernels_needs_force,
            self.start_again,
            self.failed_start_shows_the_watchers_reason,
            self.sync_without_kernels,
            self.audit_trail_pages_back,
            self.recalculation_shows_its_report,
            lambda: self.rolling_restart(1, True),
            lambda: self.rolling_restart(2, False),
            self.live_update_when_a_watcher_goes_down,
            self.phone_width,
            self.sign_out_forgets_the_secret,
            self.the_secret_never_left_the_browser,
        ]
        for step in steps:
            step()
            self.drain_logs()


def main():
    cfg = json.loads(Path(sys.argv[1]).read_text())
    dash = Dashboard(cfg)
    try:
        dash.run()
        print(f"dashboard: all steps passed in {time.monotonic() - dash.started:.1f} s", flush=True)
    except BaseException:
        try:
            dash.d.save_screenshot(str(dash.shots / "failed.png"))
            print("page text at the failure:\n" + dash.js("return document.body.innerText"), file=sys.stderr)
            for c in dash.d.get_log("browser"):
                print(f"console: {c['level']} {c['message']}", file=sys.stderr)
        except Exception as e:  # the browser may be gone
            print(f"(no screenshot: {e})", file=sys.stderr)
        raise
    finally:
        dash.d.quit()


if __name__ == "__main__":
    main()
