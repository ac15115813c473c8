"""slm_sweep: compare fine-tuning methods of small language models on math word problems.

Imports nothing heavy at package level, so that scoring and reporting run without torch.
"""

__version__ = "0.1.0"

# Registers the typed settings in Hydra's ConfigStore, which conf/config.yaml needs before it composes.
from slm_sweep import settings as _settings  # noqa: E402,F401
