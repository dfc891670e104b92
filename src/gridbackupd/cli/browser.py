"""
Opening the console in a browser, only where one can show it (a screen, or
macOS/Windows) and without waiting for it: ``gridbackup ui`` must return at
once, and on a bare server the terminal browser that ``webbrowser`` would
pick (lynx, w3m) would take over the terminal.
"""

import os
import subprocess
import sys
import webbrowser


def has_screen():
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url):
    """Start a browser on ``url`` in the background; False where there is none to start."""
    if not has_screen():
        return False
    try:
        if sys.platform.startswith("linux"):
            subprocess.Popen(["xdg-open", url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            return True
        return webbrowser.open(url)
    except (OSError, webbrowser.Error):
        return False
