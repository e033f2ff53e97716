"""Validates every line of tests/corpus/events.json against schemas/event.v1.schema.json.

Prints one JSON object per case: {"name": ..., "schema_valid": bool}. A line that is not JSON is
invalid for the schema too. Used by tests/tests/schema_agrees_with_parser.rs.
"""
import json
import pathlib
import sys

import jsonschema

root = pathlib.Path(__file__).resolve().parent.parent
schema = json.loads((root / "schemas" / "event.v1.schema.json").read_text())
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
checker = cls.FORMAT_CHECKER
if "date-time" not in checker.checkers:
    sys.exit("jsonschema cannot check format date-time here: pip install rfc3339-validator")
validator = cls(schema, format_checker=checker)
for case in json.loads((root / "tests" / "corpus" / "events.json").read_text()):
    try:
        doc = json.loads(case["line"])
        ok = validator.is_valid(doc)
    except ValueError:
        ok = False
    print(json.dumps({"name": case["name"], "schema_valid": ok}))
