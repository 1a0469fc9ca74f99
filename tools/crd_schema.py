"""Extract the schemas of a CustomResourceDefinition into JSON data files (tests/schemas/, see its README.md).

python -m tools.crd_schema CRD.yaml tests/schemas

writes one ``<group>_<kind>_<version>.json`` per served version: that version's ``openAPIV3Schema`` with the
``description`` texts left out (they are most of the size and carry no constraint). Nothing else is changed;
tests/unit/test_deploy_schemas.py reads these files and applies the API server's rules for unknown fields.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` text of the schema removed. A property *named* ``description`` is kept
    (it sits under ``properties``, where keys are field names, not schema keywords)."""
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: without_descriptions(schema) for name, schema in value.items()}
        else:
            out[key] = without_descriptions(value)
    return out


def schemas(crd: dict) -> dict[str, dict]:
    """File name -> schema for every served version of ``crd``."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        if version.get("served", True):
            name = f"{group}_{kind}_{version['name']}.json".lower()
            out[name] = without_descriptions(version["schema"]["openAPIV3Schema"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crd", type=Path, help="CustomResourceDefinition YAML (one or more documents)")
    parser.add_argument("out", type=Path, help="directory for the JSON schema files")
    args = parser.parse_args(argv)
    for document in yaml.safe_load_all(args.crd.read_text()):
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        for name, schema in schemas(document).items():
            (args.out / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(args.out / name)


if __name__ == "__main__":
    main()
