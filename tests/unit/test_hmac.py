"""
Signed API requests (apisign, api.auth): what the CLI sends instead of the
token, and what the daemon accepts: the right signature within the time
window, once; a Bearer token (curl); nothing else.
"""

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import apisign
from gridbackupd.api.auth import Authenticator
from gridbackupd.api.errors import APIError

TOKEN = "tOkEn-0123456789abcdefghijklmnopqrstuvwxyzAB"
NOW = 1_800_000_000


class SigningTests(SynchronousTestCase):
    def test_header_never_holds_the_token(self):
        header, nonce = apisign.authorization(TOKEN, "GET", "/v1/status", None, now=NOW)
        self.assertTrue(header.startswith("GridBackup-HMAC ts=1800000000,nonce="), header)
        self.assertNotIn(TOKEN, header)
        self.assertEqual(apisign.parse_authorization(header)[:2], (NOW, nonce))

    def test_signature_covers_each_part(self):
        base = dict(method="POST", target="/v1/restores?x=1", body=b'{"a": 1}', ts=NOW, nonce="n" * 24)
        sig = apisign.request_signature(TOKEN, **base)
        for name, other in [("method", "PUT"), ("target", "/v1/restores?x=2"), ("body", b'{"a": 2}'),
                            ("ts", NOW + 1), ("nonce", "m" * 24)]:
            self.assertNotEqual(apisign.request_signature(TOKEN, **dict(base, **{name: other})), sig, name)
        self.assertNotEqual(apisign.request_signature(TOKEN + "x", **base), sig)
        # The answer's signature is of another kind: a request's cannot stand for it.
        self.assertNotEqual(apisign.response_signature(TOKEN, "n" * 24), sig)

    def test_malformed_headers(self):
        for value in ["", "Bearer x", "GridBackup-HMAC", "GridBackup-HMAC ts=1,nonce=short,sig=ab",
                      "GridBackup-HMAC ts=x1,nonce=" + "n" * 20 + ",sig=ab",
                      "GridBackup-HMAC ts=1,ts=2,nonce=" + "n" * 20 + ",sig=ab",
                      "GridBackup-HMAC ts=1,nonce=" + "n" * 20]:
            self.assertIsNone(apisign.parse_authorization(value), value)


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self):
        self.now = NOW
        self.auth = Authenticator(TOKEN, now=lambda: self.now)

    def sign(self, method="GET", target="/v1/status", body=b"", ts=None, nonce=None, token=TOKEN):
        header, nonce = apisign.authorization(token, method, target, body,
                                              now=self.now if ts is None else ts, nonce=nonce)
        return header, nonce

    def refused(self, method, target, body, header):
        with self.assertRaises(APIError) as caught:
            self.auth.check(method, target, body, header)
        self.assertEqual((caught.exception.status, caught.exception.code), (401, "unauthorized"))
        return caught.exception.message

    def test_signed_request_accepted_and_answered(self):
        header, nonce = self.sign("POST", "/v1/backups", b"{}")
        self.assertEqual(self.auth.check(b"POST", b"/v1/backups", b"{}", header), nonce)
        name, value = self.auth.answer_header(nonce)
        self.assertEqual(name, apisign.RESPONSE_HEADER)
        self.assertEqual(value, apisign.response_signature(TOKEN, nonce))

    def test_replayed_nonce_refused(self):
        header, _ = self.sign()
        self.auth.check(b"GET", b"/v1/status", b"", header)
        self.assertIn("used already", self.refused(b"GET", b"/v1/status", b"", header))
        # Long after, the same request is refused for its time instead.
        self.now += 3600
        self.assertIn("off the daemon's clock", self.refused(b"GET", b"/v1/status", b"", header))

    def test_stale_or_future_time_refused(self):
        for ts in (NOW - 61, NOW + 61):
            header, _ = self.sign(ts=ts)
            self.assertIn("off the daemon's clock", self.refused(b"GET", b"/v1/status", b"", header))
        for ts in (NOW - 60, NOW + 60):
            header, _ = self.sign(ts=ts)
            self.auth.check(b"GET", b"/v1/status", b"", header)

    def test_wrong_signature_refused(self):
        header, _ = self.sign(token="not-the-token")
        self.assertIn("signature is wrong", self.refused(b"GET", b"/v1/status", b"", header))
        # Signed for another request: the body, the path or the method changed on the way.
        header, _ = self.sign("POST", "/v1/forget", b'{"snapshots": ["a"]}')
        self.refused(b"POST", b"/v1/forget", b'{"snapshots": ["b"]}', header)
        self.refused(b"POST", b"/v1/forget?dry_run=1", b'{"snapshots": ["a"]}', header)
        self.refused(b"DELETE", b"/v1/forget", b'{"snapshots": ["a"]}', header)
        self.refused(b"GET", b"/v1/status", b"", "GridBackup-HMAC garbage")
        # A wrong signature does not spend the nonce of a right one.
        header, nonce = self.sign()
        self.refused(b"GET", b"/v1/status", b"", header.replace("sig=", "sig=0"))
        self.assertEqual(self.auth.check(b"GET", b"/v1/status", b"", header), nonce)

    def test_bearer(self):
        self.assertIsNone(self.auth.check(b"GET", b"/v1/status", b"", f"Bearer {TOKEN}"))
        self.assertIsNone(self.auth.check(b"GET", b"/v1/status", b"", f"bearer  {TOKEN} "))
        for header in ["", f"Bearer {TOKEN}x", "Basic abc", TOKEN]:
            self.assertIn("Bearer", self.refused(b"GET", b"/v1/status", b"", header))

    def test_nonces_are_forgotten_once_out_of_the_window(self):
        for _ in range(5):
            self.auth.check(b"GET", b"/v1/status", b"", self.sign()[0])
        self.assertEqual(len(self.auth._seen), 5)
        self.now += 200
        self.auth.check(b"GET", b"/v1/status", b"", self.sign()[0])
        self.assertEqual(len(self.auth._seen), 1)
