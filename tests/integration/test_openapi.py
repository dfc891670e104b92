"""
docs/openapi.yaml matches the implementation: every route is documented
(and nothing else), and real answers of a running daemon (on the shared
grid) have a documented status, content type and, for JSON, the documented
shape.  The schema checker is a small one for the subset of OpenAPI 3.0
the file uses (type, nullable, enum, required, properties,
additionalProperties, items, allOf, $ref).
"""

import json
import os
import re

import yaml
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gridbackupd.api import console
from gridbackupd.api.routes import router
from gridbackupd.config import parse_config
from gridbackupd.service import from_config
from tests.support import REPO
from tests.support.daemoncase import write_config
from tests.support.rawhttp import raw_request, tcp_endpoint
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import make_tree

SPEC_PATH = os.path.join(REPO, "docs", "openapi.yaml")
_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
    "integer": int, "number": (int, float),
}


def load_spec():
    with open(SPEC_PATH) as f:
        return yaml.safe_load(f)


class SchemaError(AssertionError):
    pass


def check(spec, schema, value, where="$"):
    """Raise SchemaError naming the place where ``value`` does not fit ``schema``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return check(spec, spec["components"]["schemas"][name], value, where)
    if value is None:
        if schema.get("nullable"):
            return
        if "type" in schema or "allOf" in schema:
            raise SchemaError(f"{where}: null is not allowed")
    for part in schema.get("allOf", []):
        check(spec, part, value, where)
    kind = schema.get("type")
    if kind is not None:
        if isinstance(value, bool) and kind in ("integer", "number"):
            raise SchemaError(f"{where}: {value!r} is a boolean, not {kind}")
        if not isinstance(value, _TYPES[kind]):
            raise SchemaError(f"{where}: {value!r} is not of type {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{where}: {key!r} is missing")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                check(spec, properties[key], item, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise SchemaError(f"{where}: {key!r} is not allowed")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(spec, schema["items"], item, f"{where}[{i}]")


def route_templates():
    """(method, template) of every route the daemon serves."""
    result = set()
    for method, regex, _ in router.routes:
        template = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", regex.pattern)
        result.add((method.lower(), template.strip("^$")))
    return result | console.ROUTES


class SpecTests(SynchronousTestCase):
    def test_every_route_documented(self):
        spec = load_spec()
        documented = {(m, p) for p, ops in spec["paths"].items() for m in ops if m != "parameters"}
        self.assertEqual(route_templates(), documented)

    def test_refs_resolve(self):
        spec = load_spec()
        text = json.dumps(spec)
        refs = set(re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', text))
        self.assertTrue(refs)
        for ref in refs:
            self.assertIn(ref[1], spec["components"][ref[0]], ref)

    def test_checker(self):
        spec = load_spec()
        error = {"error": {"code": "x", "message": "y"}}
        check(spec, {"$ref": "#/components/schemas/Error"}, error)
        for bad in ({"error": {"code": "x"}}, {"error": error["error"], "extra": 1}, {"error": None}, []):
            self.assertRaises(SchemaError, check, spec, {"$ref": "#/components/schemas/Error"}, bad)
        self.assertRaises(SchemaError, check, spec, {"type": "integer"}, True)
        self.assertRaises(SchemaError, check, spec, {"type": "string", "enum": ["a"]}, "b")
        check(spec, {"type": "string", "nullable": True}, None)


class ResponseTests(TestCase):
    timeout = 240

    async def setUp(self):
        self.spec = load_spec()
        node_url = await shared_node_url()
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.tree = os.path.join(self.base, "data")
        make_tree(self.tree, files=20)
        self.daemon = from_config(reactor, parse_config(write_config(self.base, node_url, [self.tree])))
        self.daemon.startService()
        self.addCleanup(lambda: self.daemon.running and self.daemon.stopService())
        self.assertEqual(await self.daemon.when_ready(), "ready", self.daemon.error)
        self.seen = set()

    async def call(self, method, template, path=None, body=None, auth=True):
        """Make the request; check its answer against the spec; return (status, document)."""
        path = path or template
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if auth:
            lines.append(f"Authorization: Bearer {self.daemon.token}")
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            lines.append(f"Content-Length: {len(data)}")
        status, headers, raw = await raw_request(
            tcp_endpoint(self.daemon), ("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        operation = self.spec["paths"][template][method.lower()]
        responses = operation["responses"]
        self.assertIn(str(status), responses, f"{method} {path}: {status} is not documented: {raw[:300]!r}")
        answer = responses[str(status)]
        if "$ref" in answer:
            answer = self.spec["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
        content_type = headers["content-type"].split(";")[0]
        self.assertIn(content_type, answer["content"], f"{method} {path}")
        self.seen.add((method.lower(), template))
        if content_type != "application/json":
            return status, raw
        doc = json.loads(raw)
        try:
            check(self.spec, answer["content"][content_type]["schema"], doc)
        except SchemaError as e:
            self.fail(f"{method} {path} ({status}): {e}")
        return status, doc

    async def test_responses(self):
        S = "/v1/snapshots/{snapshot_id}"
        await self.call("GET", "/v1/status")
        await self.call("GET", "/v1/status", auth=False)
        status, doc = await self.call("POST", "/v1/backups")
        snapshot = doc["id"]
        self.assertEqual(await self.daemon.wait_for_snapshot(snapshot), "complete")
        await self.call("GET", "/v1/status")
        await self.call("GET", "/v1/snapshots")
        await self.call("GET", "/v1/snapshots", "/v1/snapshots?limit=0")
        await self.call("GET", S, f"/v1/snapshots/{snapshot}")
        await self.call("GET", S, "/v1/snapshots/nope")
        status, doc = await self.call("GET", S, "/v1/snapshots/latest")
        self.assertEqual((status, doc["id"]), (200, snapshot))
        await self.call("GET", S + "/files", f"/v1/snapshots/{snapshot}/files?path={self.tree}")
        await self.call("GET", S + "/files", "/v1/snapshots/latest/files?recursive=true&limit=5")
        await self.call("GET", S + "/files", "/v1/snapshots/latest/files?path=rel")
        await self.call("GET", S + "/files", f"/v1/snapshots/latest/files?path={self.tree}/nothing")
        status, body = await self.call("GET", S + "/content",
                                       f"/v1/snapshots/latest/content?path={self.tree}/docs/letter.txt")
        self.assertEqual((status, body), (200, b"Dear grid,\n" * 300))
        await self.call("GET", S + "/content", f"/v1/snapshots/latest/content?path={self.tree}/docs")
        await self.call("GET", S + "/content", f"/v1/snapshots/latest/content?path={self.tree}/none")
        await self.call("GET", "/v1/snapshots/{a}/diff/{b}", f"/v1/snapshots/{snapshot}/diff/latest")
        await self.call("GET", "/v1/snapshots/{a}/diff/{b}", f"/v1/snapshots/{snapshot}/diff/nope")
        with open(os.path.join(self.tree, "new"), "w") as f:
            f.write("new\n")
        status, doc = await self.call("POST", "/v1/backups")
        self.assertEqual(await self.daemon.wait_for_snapshot(doc["id"]), "complete")
        status, doc = await self.call("GET", "/v1/diff", f"/v1/diff?from={snapshot}&to=latest")
        self.assertIn("added", {c["change"] for c in doc["changes"]})
        await self.call("GET", "/v1/diff", "/v1/diff?from=x")
        await self.call("GET", S, f"/v1/snapshots/{doc['to']}")
        status, doc = await self.call("GET", "/v1/history", f"/v1/history?path={self.tree}/new")
        self.assertEqual([v["change"] for v in doc["versions"]], ["added"])
        await self.call("GET", "/v1/history", "/v1/history")
        status, text = await self.call("GET", "/metrics")
        self.assertIn(b"gridbackup_last_complete_snapshot_age_seconds", text)
        await self.call("GET", "/metrics", auth=False)

        target = os.path.join(self.base, "restored")
        status, doc = await self.call("POST", "/v1/restores", body={"target": target})
        self.assertEqual(status, 202)
        await self.daemon.wait_for_restore(doc["id"])
        await self.call("GET", "/v1/restores/{restore_id}", f"/v1/restores/{doc['id']}")
        await self.call("GET", "/v1/restores/{restore_id}", "/v1/restores/nope")
        await self.call("DELETE", "/v1/restores/{restore_id}", f"/v1/restores/{doc['id']}")
        await self.call("GET", "/v1/restores")
        await self.call("POST", "/v1/restores", body={"target": "relative"})
        await self.call("POST", "/v1/restores", body={"target": "/tmp/x", "snapshot": "nope"})
        await self.call("POST", "/v1/restores", body={"target": "/tmp/x", "paths": ["/no/such/path"]})
        await self.call("GET", "/v1/uploads/queue")
        status, job = await self.call("POST", "/v1/jobs", body={"kind": "prune"})
        self.assertEqual(status, 202)
        await self.call("GET", "/v1/jobs/{job_id}", f"/v1/jobs/{job['id']}")
        await self.call("GET", "/v1/jobs/{job_id}", "/v1/jobs/nope")
        await self.call("POST", "/v1/jobs", body={"kind": "nope"})
        await self.call("GET", "/v1/jobs")
        await self.call("POST", "/v1/forget", body={"dry_run": True})
        await self.call("POST", "/v1/forget", body={"dry_run": True, "snapshots": [snapshot]})
        await self.call("POST", "/v1/uploads/pause")
        await self.call("POST", "/v1/uploads/resume")
        await self.call("POST", "/v1/uploads/take-over")
        await self.call("GET", "/v1/series")
        await self.call("GET", "/", auth=False)
        await self.call("GET", "/static/{name}", "/static/no-such-file.js", auth=False)
        status, code = await self.call("POST", "/v1/ui/code")
        await self.call("GET", "/v1/session")
        await self.call("GET", "/v1/session", auth=False)
        await self.call("GET", "/login", code["path"], auth=False)
        await self.call("GET", "/login", "/login?code=spent", auth=False)
        await self.call("POST", "/v1/session", body={"token": "wrong"}, auth=False)
        await self.call("POST", "/v1/session", body={"token": self.daemon.token}, auth=False)
        await self.call("DELETE", "/v1/session")
        await self.call("GET", "/v1/notifications")
        await self.call("GET", "/v1/notifications", "/v1/notifications?limit=0")
        status, _ = await self.call("POST", "/v1/notifications/test")
        self.assertEqual(status, 409)  # no [notify] target here

        self.assertEqual(self.seen, route_templates())
