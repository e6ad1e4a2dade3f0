"""The local data of the dpkd_tiny_* lm-eval tasks: dpkd_tiny.jsonl beside this file (offline, any cwd)."""

import os

import datasets


def load(**kwargs):
    here = os.path.dirname(os.path.abspath(__file__))
    return datasets.load_dataset("json", data_files={"test": os.path.join(here, "dpkd_tiny.jsonl")})
