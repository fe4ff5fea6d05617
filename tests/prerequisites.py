"""What some tests need from the machine (a service, Debian's chromium), and the one rule for its absence:
skip with the reason on a developer's machine, fail on CI (CI=true), where everything must be present."""
import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]

# Pixels that are neither transparent nor near-white: the white background the charts paint for
# PNG export fills every pixel, so "painted" alone would not tell a drawn chart from a blank one.
INKED_PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  if (!canvas || !canvas.width || !canvas.height) return -1;
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && (d[i] < 230 || d[i + 1] < 230 || d[i + 2] < 230)) inked++;
  }
  return inked;
}"""


def require(problem: str | None) -> None:
    """Nothing when `problem` is None; else skip with it, or fail on CI."""
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}; CI must provide it")
    pytest.skip(problem)


def require_chromium() -> None:
    require(None if Path(CHROMIUM).exists() else f"{CHROMIUM} is not installed (make test-deps installs it)")


def launch_chromium(playwright):
    """Debian's chromium through Playwright, headless, with the flags this network needs."""
    require_chromium()
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def nvml_works() -> bool:
    """True on a host with a working NVIDIA driver (NVML opens)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


# The no-GPU path can only happen on a host without one; on a GPU host these tests have nothing to show.
needs_no_gpu = pytest.mark.skipif(nvml_works(), reason="this host has a working NVML; the no-GPU path cannot happen")
