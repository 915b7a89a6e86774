"""What a person sees in the MLflow UI, clicked through in a real headless browser (a fresh profile each time).

    apt-get install chromium chromium-driver && pip install selenium     # once; neither is a metassl dependency
    python benchmarks/ui_walkthrough.py                                   # about a minute

It trains one short digits run into a store of its own, starts `metassl ui` on it, opens the link that command
prints, and then clicks as a person would:
  1. the printed link: the experiment's runs table;
  2. a click on the run's name: the run page;
  3. a click on "Model training" (the view toggle at the top left) on that page;
  4. the printed link again, and a click on the run's name: does the browser keep the view?
  5. the experiment list, with no view in its URL.
After each step it prints the URL and which view the page shows, read from the side bar: model training ("Model
registry") or GenAI ("Evaluation runs", "Judges", "Sessions"). Exit 1 if the run page of step 4 is not in the
model-training view.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The side bar tells the views apart: only the GenAI one lists these ...
GENAI_MARKERS = ("Evaluation runs", "Judges", "Sessions")
# ... and only the model-training one this.
TRAINING_MARKERS = ("Model registry",)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metassl(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"metassl {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def browser(profile: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")  # a fresh profile: nothing remembered from before
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def page_text(driver, seconds: float = 30.0, wanted: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    """The page's visible text once the single-page app has drawn it (any marker of either view, or `wanted`)."""
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if any(marker in text for marker in (*wanted, *GENAI_MARKERS, *TRAINING_MARKERS)):
            time.sleep(1.0)  # let the rest of the page settle
            return driver.find_element("tag name", "body").text
        time.sleep(0.25)
    return text


def view_of(text: str) -> str:
    genai = [marker for marker in GENAI_MARKERS if marker in text]
    training = [marker for marker in TRAINING_MARKERS if marker in text]
    if genai and not training:
        return f"GenAI ({', '.join(genai)})"
    if training and not genai:
        return f"model training ({', '.join(training)})"
    return f"unclear (GenAI markers {genai}, model-training markers {training})"


def click_text(driver, text: str, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for element in driver.find_elements("xpath", f"//*[normalize-space(text())='{text}']"):
            if element.is_displayed():
                element.click()
                return
        time.sleep(0.25)
    raise SystemExit(f"nothing to click labeled {text!r} on {driver.current_url}")


SHOTS: Path | None = None


def report(step: str, driver, wanted: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    text = page_text(driver, wanted=wanted)
    view = view_of(text)
    print(f"{step}\n  url:  {driver.current_url}\n  view: {view}")
    if SHOTS is not None:
        name = step.split(".")[0]
        driver.save_screenshot(str(SHOTS / f"step{name}.png"))
        (SHOTS / f"step{name}.txt").write_text(text)
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshots", type=Path, help="save each step's screenshot and page text here")
    global SHOTS
    SHOTS = parser.parse_args().screenshots
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metassl-ui-") as scratch:
        store = Path(scratch) / "mlruns"
        uri = f"sqlite:///{store}/mlflow.db"
        overrides = ["-o", f"tracking.tracking_uri={uri}", "-o", f"tracking.artifact_root={store}"]
        overrides += ["-o", "schedule.iterations=4", "-o", "schedule.eval_every=4"]
        finished = metassl("run", "recipes/digits_tiny.yaml", *overrides)
        run_id = re.findall(r"run (\w+) finished", finished)[-1]
        run_name = "digits_tiny"
        port = free_port()
        ui = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "ui", "--port", str(port), "--tracking-uri", uri],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its `mlflow ui` and that server's workers stop with it
        )
        try:
            assert ui.stdout is not None
            printed = ui.stdout.readline().strip()
            hint = ui.stdout.readline().strip()
            link = re.search(r"(http://\S+)", printed)
            if link is None:
                raise SystemExit(f"metassl ui printed no link: {printed}")
            print(f"metassl ui printed:\n  {printed}\n  {hint}\nrun {run_id}")
            deadline = time.monotonic() + 120
            while True:  # the UI server starts
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the MLflow UI did not start in 120 s") from None
                    time.sleep(0.5)
            driver = browser(Path(scratch) / "profile")
            try:
                driver.get(link.group(1))
                report("1. the printed link", driver)
                click_text(driver, run_name)
                report(f"2. a click on the run name '{run_name}'", driver)
                click_text(driver, "Model training")
                report("3. a click on 'Model training' there", driver)
                driver.get(link.group(1))
                page_text(driver)
                click_text(driver, run_name)
                final = report("4. the printed link again, and a click on the run name", driver)
                driver.get(f"http://127.0.0.1:{port}/#/experiments")
                report("5. the experiment list, without workflowType", driver)
            finally:
                driver.quit()
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)
    if not final.startswith("model training"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
