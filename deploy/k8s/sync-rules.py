#!/usr/bin/env python3
"""Keeps the rules.toml key of deploy/k8s/configmap.yaml equal to config/rules.toml.

    python3 deploy/k8s/sync-rules.py           # rewrite the copy from config/rules.toml
    python3 deploy/k8s/sync-rules.py --check   # exit 1 if the copy is stale (CI)

Needs PyYAML. The comment header and the journeyd.toml key are kept as they are.
"""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGMAP = ROOT / "deploy/k8s/configmap.yaml"
RULES = ROOT / "config/rules.toml"


class Literal(str):
    pass


yaml.add_representer(
    Literal, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|")
)


def main() -> int:
    text = CONFIGMAP.read_text()
    doc = yaml.safe_load(text)
    rules = RULES.read_text()
    if "--check" in sys.argv[1:]:
        if doc["data"].get("rules.toml") != rules:
            print(f"{CONFIGMAP.relative_to(ROOT)}: rules.toml differs from config/rules.toml; "
                  "run python3 deploy/k8s/sync-rules.py", file=sys.stderr)
            return 1
        print(f"{CONFIGMAP.relative_to(ROOT)}: rules.toml is current")
        return 0
    header = text[: text.index("apiVersion:")]  # the leading comment block
    doc["data"] = {k: Literal(v) for k, v in doc["data"].items()}
    doc["data"]["rules.toml"] = Literal(rules)
    CONFIGMAP.write_text(header + yaml.dump(doc, sort_keys=False, width=1000, allow_unicode=True))
    print(f"{CONFIGMAP.relative_to(ROOT)}: rules.toml updated from config/rules.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
