"""
An in-memory fake of the part of the Tahoe-LAFS web API that
``gridbackupd.grid.client.TahoeClient`` uses, as twisted.web resources.

It answers as Tahoe 1.20 does (tests/integration/test_tahoe.py runs the same contract
checks against it and against a real grid), with deterministic caps:

- immutable files: identical bytes give identical caps (like convergent
  encryption); up to 55 bytes a ``URI:LIT:`` cap holding the data, else
  ``URI:CHK:...:needed:total:size``;
- mutable directories (``URI:DIR2:`` / ``URI:DIR2-RO:``) and deep-immutable
  ones (``URI:DIR2-CHK:``, the empty one ``URI:DIR2-LIT:``);
- ranged GETs (206 with Content-Range, cut at the end; 416 past it);
- ``t=json`` for nodes and for the welcome page, with as many connected
  servers as ``connected`` says;
- Tahoe's error answers: 400 for a malformed cap, 404 "No such child",
  409 for ``replace=false`` clashes, 410 for an object without shares,
  500 with an UploadUnhappinessError traceback for an immutable upload
  while fewer than ``happy`` servers are connected.

Failure injection: ``fail_next(status)``, ``fail_next_unhappy()``,
``drop_next()`` (the node does the work, the answer is lost) and
``refuse_next()`` (connection refused, nothing sent); each can be limited
to one HTTP method.  ``requests`` records every request the client made.

Where the fake is stricter than Tahoe, it says so: a cap it does not
recognise is refused in ``set_children``/``mkdir-immutable`` (Tahoe would
store it as an unknown node).

``fake_client()`` gives a TahoeClient wired to a fake through
``treq.testing.RequestTraversalAgent``: everything runs synchronously,
file bodies (``FileBodyProducer``) included.

The package's parts: ``caps`` (cap shapes and hashing), ``answers`` (Tahoe's
error answers), ``node`` (the state of the node and its grid, with the
failure switches), ``web`` (the twisted.web resource that serves it) and
``agent`` (the in-memory IAgent and ``fake_client``).
"""

from .agent import FakeTahoeAgent, fake_client
from .node import FakeTahoe, RecordedRequest

__all__ = ["FakeTahoe", "FakeTahoeAgent", "RecordedRequest", "fake_client"]
