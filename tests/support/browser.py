"""
Headless Chromium for the console's tests: Debian's ``chromium`` driven
through ``/usr/bin/chromedriver`` with Selenium (no browser download), a
temporary profile, its console log collected, screenshots at a set size.
"""

import os
import shutil
import time

CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--disable-dev-shm-usage", "--password-store=basic",
)


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def unavailable():
    """Why no browser test can run here (a sentence), or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    if chromium_binary() is None or not os.access(CHROMEDRIVER, os.X_OK):
        return ("Debian's chromium and chromium-driver are not installed "
                "(make install installs them with apt-get as root)")
    return None


class Browser:
    """One Chromium for a whole test class."""

    def __init__(self, profile, downloads):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium_binary()
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.add_experimental_option("prefs", {
            "download.default_directory": downloads,
            "download.prompt_for_download": False,
        })
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": downloads})
        self.downloads = downloads
        self.log = []
        self.size(1280, 800)

    def size(self, width, height=800):
        """The viewport's size, exactly (a window's size would include its frame)."""
        self.width = width
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, check, what, timeout=60):
        """Poll ``check()`` (the browser and the daemon are other processes) until it is true."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except Exception as e:  # an element not there yet, a stale one
                result, last = None, e
            else:
                last = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))
            time.sleep(0.1)

    def css(self, selector):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector, timeout=30):
        return self.wait(lambda: (self.css(selector) or [None])[0], selector, timeout)

    def text(self, selector):
        return self.one(selector).text

    def collect_log(self):
        """The browser's console messages since the last call (kept in self.log too)."""
        entries = self.driver.get_log("browser")
        self.log.extend(entries)
        return entries

    def fits(self):
        """[scrollWidth, innerWidth]: the page has no horizontal scroll when the first is not larger."""
        return self.js("return [document.documentElement.scrollWidth, window.innerWidth]")

    def screenshot(self, path, full=True):
        """The viewport, or (full) the whole page at the current width."""
        if full:
            height = self.js("return document.documentElement.scrollHeight")
            self.size(self.width, max(800, min(int(height), 6000)))
        try:
            self.driver.save_screenshot(path)
        finally:
            if full:
                self.size(self.width, 800)

    def quit(self):
        self.driver.quit()
