"""api.errors: the one table from the domain's exceptions to an HTTP answer."""

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import errors
from gridbackupd.api.errors import APIError, answer, failure_answer
from gridbackupd.format.logfields import LogFormatError


class AnswerTests(SynchronousTestCase):
    def test_domain_errors(self):
        for cls, status in ((errors.Invalid, 400), (errors.ReadOnly, 403), (errors.NotFound, 404),
                            (errors.Conflict, 409), (errors.Unavailable, 503)):
            got = answer(cls("some_code", "what happened"))
            self.assertEqual((got.status, got.code, got.message), (status, "some_code", "what happened"))

    def test_own_answers_and_the_unexpected(self):
        own = APIError(405, "method_not_allowed", "no")
        self.assertIs(answer(own), own)
        for unexpected in (RuntimeError("x"), errors.DomainError("c", "m"), LogFormatError("bad"),
                           errors.TahoeError("download")):
            self.assertIsNone(answer(unexpected), unexpected)

    def test_failures_where_a_handler_maps_them(self):
        got = failure_answer(LogFormatError("backup log line 3: bad"))
        self.assertEqual((got.status, got.code, got.message),
                         (500, "log_unreadable", "a backup log cannot be read: backup log line 3: bad"))
        got = failure_answer(errors.TahoeUnavailable("download", detail="refused"))
        self.assertEqual((got.status, got.code), (502, "grid_error"))
        self.assertTrue(got.message.startswith("cannot fetch the content from the grid: download"), got.message)
        self.assertRaises(TypeError, failure_answer, RuntimeError("x"))


class OneLineTests(SynchronousTestCase):
    """errors.one_line: what an API answer says of an error, one line for a person."""

    def test_first_error_unwrapped(self):
        from twisted.internet.defer import FirstError
        from twisted.python.failure import Failure

        try:
            raise errors.Unavailable("grid_unavailable", "the grid is not connected yet")
        except errors.Unavailable:
            failure = Failure()
        wrapped = FirstError(failure, 0)
        self.assertIn("Traceback", str(wrapped))
        self.assertEqual(errors.one_line(wrapped), "the grid is not connected yet")
        self.assertEqual(errors.one_line(failure), "the grid is not connected yet")

    def test_own_message_on_one_line_without_the_installation(self):
        import os

        import gridbackupd

        installed = os.path.dirname(os.path.dirname(os.path.abspath(gridbackupd.__file__)))
        error = RuntimeError(f"went wrong\n  in {installed}{os.sep}gridbackupd/restore/engine.py")
        self.assertEqual(errors.one_line(error), "went wrong in gridbackupd/restore/engine.py")
        self.assertEqual(errors.one_line(RuntimeError()), "RuntimeError")
        self.assertEqual(errors.one_line(errors.TahoeUnavailable("download", detail="refused")),
                         "download: refused")
