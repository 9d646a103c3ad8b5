"""The browser the workbench's tests drive: Debian's Chromium through Playwright, and what the
tests ask of a page beyond Playwright's own (the accessibility check, screenshots)."""

from __future__ import annotations

import pathlib
import shutil
from dataclasses import dataclass

from playwright.sync_api import Page

ROOT = pathlib.Path(__file__).resolve().parents[2]
AXE_SCRIPT = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "var" / "screenshots"
# Serious and critical violations fail a page; moderate and minor ones are reported by axe but are
# matters of taste (landmark nesting, heading order) that the check leaves to review.
BLOCKING_IMPACTS = ("serious", "critical")


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("Chromium is not installed: run `make test` (it installs Debian's chromium) "
                           "or `apt-get install chromium` as root")
    return found


@dataclass(frozen=True)
class AxeViolation:
    rule: str
    impact: str
    help: str
    targets: list[str]

    def __str__(self) -> str:
        return f"{self.impact} {self.rule}: {self.help} at {', '.join(self.targets[:5])}"


def accessibility_violations(page: Page) -> list[AxeViolation]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.1 A and AA)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated through the browser's debugging protocol, which the page's Content Security
        # Policy (scripts from its own origin only) doesn't govern, unlike an injected <script>.
        page.evaluate(AXE_SCRIPT.read_text())
    found = page.evaluate(
        """async () => (await window.axe.run(document, {runOnly: {type: 'tag',
              values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})).violations
            .map(v => ({rule: v.id, impact: v.impact || '', help: v.help,
                        targets: v.nodes.map(n => n.target.join(' '))}))""")
    return [AxeViolation(**v) for v in found if v["impact"] in BLOCKING_IMPACTS]


def screenshot(page: Page, name: str) -> pathlib.Path:
    """A full-page screenshot under var/screenshots (the README shows the latest run's)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
