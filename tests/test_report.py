"""Report: one offline HTML file (plotly inlined once), Markdown + PNGs, size bound, browser."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from analysis_fixtures import make_results, synthetic_table, write_synthetic_run

from analysis.dataset import load_results, results_from_frame
from analysis.pareto import pareto_front
from analysis.report import failures_table, front_table, write_compare, write_report

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("run") / "out", 120, seed=4)


@pytest.fixture(scope="module")
def report(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(run_dir, tmp_path_factory.mktemp("rep") / "report.html").html


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert '<script src="http' not in text and "cdn.plot.ly" not in text.split("</script>")[-1]
    # plotly.js is inlined exactly once; later figures reuse it.
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert text.count(bundle[:2000]) == 1  # plotly.js inlined exactly once
    assert text.count("Plotly.newPlot(") - bundle.count("Plotly.newPlot(") == 3
    for section in ("Pareto front", "Front vs baseline", "Parameters", "Hypervolume",
                    "Latency ties", "Failures", "Environment", "quantized_engine"):
        assert section in text


def test_markdown_and_pngs(report: Path) -> None:
    md = report.with_suffix(".md")
    assert md.is_file()
    text = md.read_text()
    pngs = [p for p in report.parent.glob("*.png")]
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(f"]({p.name})" in text for p in pngs)
    assert "## Failures" in text and "## Front vs baseline" in text


def test_report_size_bound_for_10k_trials(tmp_path: Path) -> None:
    t = synthetic_table(10_000, seed=1)
    results = results_from_frame(t.to_pandas(), metadata=t.schema.metadata)
    paths = write_report(results, tmp_path / "big.html", markdown=False)
    assert paths.html.stat().st_size <= 5_000_000


def test_front_table_has_gains_and_knee() -> None:
    rows = [
        {"trial_number": -1, "latency_ms": 2.0, "size_bytes": 100, "accuracy": 0.95},
        {"trial_number": 0, "latency_ms": 1.0, "size_bytes": 50, "accuracy": 0.94, "speedup": None,
         "baseline_latency_ms": 2.0, "compression_ratio": 2.0, "accuracy_drop": 0.01},
    ]
    f = front_table(pareto_front(make_results(rows)))
    row = f[f["trial_number"] == 0].iloc[0]
    assert row["speedup"] == 2.0 and row["compression_ratio"] == 2.0 and f["knee"].sum() == 1


def test_failures_grouped(run_dir: Path) -> None:
    fails = failures_table(load_results(run_dir))
    assert list(fails.columns) == ["state", "error_type", "error", "count", "trials"]
    assert fails["count"].sum() == (load_results(run_dir).frame["state"] != "COMPLETE").sum()


def _scatter3d_traces(text: str) -> int:
    from plotly.offline import get_plotlyjs

    needle = '"type":"scatter3d"'
    return text.count(needle) - get_plotlyjs().count(needle)


def test_three_objectives_use_a_3d_scatter(run_dir: Path, tmp_path: Path) -> None:
    text = write_report(run_dir, tmp_path / "r.html", markdown=False).html.read_text()
    assert _scatter3d_traces(text) >= 2  # dominated, front, baseline
    two = write_report(run_dir, tmp_path / "r2.html", objectives=["latency_ms:min", "accuracy:max"],
                       markdown=False).html.read_text()
    assert _scatter3d_traces(two) == 0


def test_compare_labels_by_hardware(tmp_path: Path) -> None:
    a = write_synthetic_run(tmp_path / "a", 40, seed=1, hardware="Xeon")
    b = write_synthetic_run(tmp_path / "b", 40, seed=2, hardware="Graviton")
    path, fronts = write_compare([a, b], tmp_path / "c.html")
    assert set(fronts["group"]) == {"Xeon", "Graviton"}
    text = path.read_text()
    assert "Xeon (a)" in text and "Graviton (b)" in text and '<script src="http' not in text


# -- headless Chromium via the DevTools protocol over a pipe ------------------------------------

class _DevTools:
    """Minimal CDP client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated)."""

    def __init__(self, user_data: Path) -> None:
        self._to_r, self._to_w = os.pipe()
        self._from_r, self._from_w = os.pipe()
        to_r, from_w = self._to_r, self._from_w

        def child() -> None:
            # Move both ends above 4 first: either may itself be fd 3 or 4.
            a, b = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(user_data.parent / f"{user_data.name}-chromium.log", "wb")  # noqa: SIM115
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-swiftshader", f"--user-data-dir={user_data}",
                 "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([CHROMIUM, *flags], preexec_fn=child, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self._read(deadline - time.monotonic())
            if m is None:
                continue
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return dict(m.get("result", {}))
            self.events.append(m)
        raise TimeoutError(method)

    def _read(self, timeout: float) -> dict[str, Any] | None:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_r], [], [], max(timeout, 0.0))
            if not ready:
                return None
            chunk = os.read(self._from_r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe; see {self._log.name}")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return dict(json.loads(raw))

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self._read(deadline - time.monotonic())
            if m is not None:
                self.events.append(m)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the browser may already be gone
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_w)
        os.close(self._from_r)
        self._log.close()


def _page_errors(html: Path, user_data: Path) -> tuple[list[str], int]:
    cdp = _DevTools(user_data)
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            cdp.send(method, session=session)
        cdp.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                e.get("method") == "Page.loadEventFired" for e in cdp.events):
            cdp.pump(0.5)
        cdp.pump(2.0)  # let plotly finish drawing
        plots = cdp.send("Runtime.evaluate", {
            "expression": "document.querySelectorAll('.js-plotly-plot').length",
            "returnByValue": True}, session=session)["result"]["value"]
        errors = []
        for e in cdp.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(p["exceptionDetails"].get("text", "") + " " + json.dumps(
                    p["exceptionDetails"].get("exception", {}).get("description", ""))[:300])
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(p["entry"].get("text", ""))
        return errors, int(plots)
    finally:
        cdp.close()


browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")


@pytest.mark.browser
@browser
def test_report_opens_in_chromium_without_console_errors(report: Path, tmp_path: Path) -> None:
    errors, plots = _page_errors(report, tmp_path / "profile")
    assert errors == []
    assert plots == 3


@pytest.mark.browser
@browser
def test_browser_check_detects_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); undefinedFn();</script></body></html>")
    errors, plots = _page_errors(bad, tmp_path / "profile")
    assert any("boom" in e for e in errors) and any("undefinedFn" in e for e in errors)
    assert plots == 0
