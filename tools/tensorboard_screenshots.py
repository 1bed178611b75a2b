"""Screenshots of the TensorBoard pages in docs/tensorboard.md, taken with headless Chromium.

Plain ``chromium --headless --screenshot`` fires before TensorBoard has drawn its charts (they
load asynchronously and render in a worker), so Playwright drives the system's Chromium and waits;
it also unticks "Ignore outliers" and opens sections, as a reader would. Needs
``pip install playwright`` (no browser download: it uses ``--chromium``) and a running TensorBoard::

    memloc demo --epochs 24 --every-n-epochs 3 --width 8 --views 5 --bootstrap 200 --output-dir runs/shots
    tensorboard --logdir runs/shots/tensorboard --port 6006 &
    python tools/tensorboard_screenshots.py --url http://localhost:6006 --out docs/img
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any, Callable, Optional, Tuple

#: Screenshot name -> (URL suffix, viewport); TensorBoard 2.21 reads ``smoothing`` and ``tagFilter`` from the URL.
PAGES = {
    "tensorboard_scalars": ("/?smoothing=0#timeseries", (1500, 1500)),
    "tensorboard_images": ("/#images&tagFilter=%5Ememloc%2Fprofile%24", (1900, 1300)),
    "tensorboard_heatmaps": ("/#images&tagFilter=%5Ememloc%2Fprofile_over_training%24", (1900, 1450)),
    "tensorboard_custom_scalars": ("/#custom_scalars&_smoothingWeight=0", (1500, 2350)),
    "tensorboard_histograms": ("/#histograms&tagFilter=%5Ememloc%5C.unit_mem", (1500, 1000)),
}


def _sections(page: Any) -> None:
    page.get_by_text("Ignore outliers in chart scaling").click()  # Time Series ticks it by default
    for group in page.locator(".group-toolbar").all()[1:3]:  # it opens the first two sections (after "Pinned")
        group.click()
    page.locator(".group-toolbar").filter(has_text="memloc.excess").first.click()


def _actual_size(page: Any) -> None:
    page.get_by_text("Show actual image size").click()


def _no_outliers(page: Any) -> None:
    page.get_by_text("Ignore outliers in chart scaling").click()  # stored by TensorBoard: a reload redraws with it
    time.sleep(1)
    page.reload()


ACTIONS: dict = {"tensorboard_scalars": _sections, "tensorboard_images": _actual_size,
                 "tensorboard_heatmaps": _actual_size, "tensorboard_custom_scalars": _no_outliers}


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:6006")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--wait", type=float, default=8.0, help="seconds to let TensorBoard draw")
    parser.add_argument("pages", nargs="*", help=f"any of {sorted(PAGES)} (default: all)")
    args = parser.parse_args(argv)
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                    args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        for name in args.pages or PAGES:
            suffix, (width, height) = PAGES[name]
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(args.url + suffix)
            page.wait_for_load_state("networkidle")
            time.sleep(args.wait)
            action: Optional[Callable[[Any], None]] = ACTIONS.get(name)
            if action is not None:
                action(page)
                page.wait_for_load_state("networkidle")
                time.sleep(args.wait / 2)
            path = f"{args.out}/{name}.png"
            page.screenshot(path=path)
            page.close()
            Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)  # a third of the bytes
            print(f"wrote {args.out}/{name}.png")
        browser.close()


if __name__ == "__main__":
    main()
