"""The twistd dropin for ``twistd gridbackup``: one ServiceMaker, nothing else."""

from twisted.application.service import ServiceMaker

gridbackup = ServiceMaker(
    "gridbackup",
    "gridbackupd.tap",
    "A backup daemon for Tahoe-LAFS grids",
    "gridbackup",
)
