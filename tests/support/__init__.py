"""Helpers shared by the unit and integration tests."""

import os

#: The checkout's top directory (docs/, src/, etc/ are below it).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
