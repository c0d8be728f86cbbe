# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read report.html as a person sees it: Debian's headless Chromium through chromedriver (selenium).

:func:`read_page` loads the page, takes a screenshot of the whole page and returns what was
rendered: the text of the wave and device rows (from the DOM after layout) and, for every bar of
the timeline, the colour of the pixel at its centre in the screenshot. Importable from every test
directory (tests/ is on sys.path through tests/conftest.py). Needs ``chromium`` and
``chromium-driver`` (tests/tools/apt-packages.txt) and runs as root, hence ``--no-sandbox``.
"""

from __future__ import annotations

import io
import tempfile
import typing as t
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: the flags this machine needs (no GPU, no network beyond loopback, root)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--force-device-scale-factor=1", "--hide-scrollbars")
WIDTH = 1400


@dataclass
class Bar:
    device: str
    outcome: str
    rgb: tuple[int, int, int]  # the rendered pixel at the bar's centre
    box: tuple[float, float, float, float]  # x, y, width, height in CSS pixels


@dataclass
class Page:
    title: str
    waves: dict[str, str]  # wave name -> rendered text of its row
    devices: dict[str, str]  # device name -> rendered text of its row
    device_outcomes: dict[str, str]
    bars: dict[str, Bar]
    screenshot: Path


def hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def read_page(html_file: Path, screenshot: Path) -> Page:
    """Render ``html_file`` in headless Chromium; the full-page screenshot goes to ``screenshot``."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from selenium import webdriver  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory(prefix="osfleet-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.get(html_file.resolve().as_uri())
            height = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.set_window_size(WIDTH, height + 100)
            png = driver.get_screenshot_as_png()
            screenshot.write_bytes(png)
            image = Image.open(io.BytesIO(png)).convert("RGB")

            def rows(selector: str, key: str) -> dict[str, t.Any]:
                return {el.get_attribute(key): el for el in driver.find_elements(By.CSS_SELECTOR, selector)}

            waves = {k: el.text for k, el in rows("tr.wave", "data-wave").items()}
            device_rows = rows("tr.device", "data-device")
            bars = {}
            for name, el in rows("rect.bar", "data-device").items():
                box = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.x, r.y, r.width, r.height]", el)
                x, y, w, h = (float(v) for v in box)
                bars[name] = Bar(name, el.get_attribute("data-outcome"), image.getpixel((int(x + w / 2), int(y + h / 2))), (x, y, w, h))
            return Page(
                title=driver.title,
                waves=waves,
                devices={k: el.text for k, el in device_rows.items()},
                device_outcomes={k: el.get_attribute("data-outcome") for k, el in device_rows.items()},
                bars=bars,
                screenshot=screenshot,
            )
        finally:
            driver.quit()
