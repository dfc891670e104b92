"""
docs/openapi.yaml is a valid OpenAPI 3.0 document by the reference
validator (openapi-spec-validator), so a generated client or Swagger UI
reads it; tests/integration/test_openapi.py checks real answers against it.
"""

import os

import yaml
from openapi_spec_validator.validation.validators import OpenAPIV30SpecValidator
from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO


class OpenAPIValidTests(SynchronousTestCase):
    def test_the_reference_validator_finds_no_error(self):
        with open(os.path.join(REPO, "docs", "openapi.yaml")) as f:
            spec = yaml.safe_load(f)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
                  for e in OpenAPIV30SpecValidator(spec).iter_errors()]
        self.assertEqual(errors, [])

    def test_no_description_split_into_keys(self):
        """A flow mapping's unquoted comma makes a key with no value: never in this file."""
        with open(os.path.join(REPO, "docs", "openapi.yaml")) as f:
            spec = yaml.safe_load(f)
        empty = []

        def walk(node, where):
            if isinstance(node, dict):
                for key, value in node.items():
                    if value is None:
                        empty.append(where + [key])
                    walk(value, where + [key])
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    walk(value, where + [i])

        walk(spec, [])
        self.assertEqual(empty, [])
