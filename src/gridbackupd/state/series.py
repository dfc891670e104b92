"""
The ``upload_samples`` table: one row a minute of what the uploader did
(bytes sent in that minute, the backlog at its end), for the console's plots.
Rows older than ``KEEP`` go as new ones come.
"""

from gridbackupd.state import db as dbmod

KEEP = 2 * 86400.0


def add(conn, time, uploaded_bytes, backlog_bytes, backlog_blobs):
    with dbmod.transaction(conn):
        conn.execute("INSERT OR REPLACE INTO upload_samples VALUES (?, ?, ?, ?)",
                     (time, uploaded_bytes, backlog_bytes, backlog_blobs))
        conn.execute("DELETE FROM upload_samples WHERE time < ?", (time - KEEP,))


def since(conn, start):
    """``[(time, uploaded_bytes, backlog_bytes, backlog_blobs)]`` from ``start`` on, oldest first."""
    return conn.execute(
        "SELECT time, uploaded_bytes, backlog_bytes, backlog_blobs FROM upload_samples "
        "WHERE time >= ? ORDER BY time", (start,)).fetchall()
