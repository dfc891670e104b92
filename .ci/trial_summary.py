"""
Run trial, show its output as it comes, and end with one line
"N passed, N failed"; exit non-zero if anything failed or nothing ran.
"""

import re
import subprocess
import sys


def main(args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "twisted.trial", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    summary = None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        if re.match(r"^(PASSED|FAILED) \(", line):
            summary = line
    code = proc.wait()
    counts = dict(
        (k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", summary or "")
    )
    passed = counts.get("successes", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    if summary is None and code != 0:
        failed = max(failed, 1)
    print(f"{passed} passed, {failed} failed")
    return 1 if (code != 0 or failed or passed == 0) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
