"""The web console: static files served at / by the API listener (api/console.py)."""
