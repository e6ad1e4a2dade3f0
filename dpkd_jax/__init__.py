"""dpkd_jax: Direct Preference Knowledge Distillation and its neighbours, in JAX."""

import os as _os

# transformers serves only tokenizers, configs and GGUF reading here; its advisory
# "PyTorch was not found. Models won't be available ..." line is noise for our users.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
