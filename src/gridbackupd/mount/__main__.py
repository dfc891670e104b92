"""``python -m gridbackupd.mount``: what ``gridbackup mount`` runs."""

import sys

from gridbackupd.mount.main import main

sys.exit(main())
