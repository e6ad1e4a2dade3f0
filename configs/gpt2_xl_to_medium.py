"""GPT-2 XL (1.5B) -> GPT-2 medium (340M), DPKD; as gpt2_xl_to_base.py with the medium student."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("gpt2_xl_to_base", os.path.join(os.path.dirname(__file__),
                                                                                "gpt2_xl_to_base.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    return _base.get_config(student="gpt2-medium")
