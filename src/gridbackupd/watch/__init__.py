"""
Watching the backup paths for changes (see docs/DESIGN-NOTES.md, "Watching").

``watcher.Watcher`` decides when to scan and what is dirty; a backend
(``inotify`` on Linux, the only one here) tells it which directories
changed.  ``tree`` walks the paths to set the watches up.
"""
