"""What every bench ends with: its result printed as JSON and, with ``--out``, written to that file."""

import json


def report(out: dict, path: str = ""):
    print(json.dumps(out, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
