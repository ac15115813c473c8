"""slm_sweep: compare fine-tuning methods of small language models on math word problems.

Imports nothing heavy at package level, so that scoring and reporting run without torch.
"""

__version__ = "0.1.0"

# Registers the typed settings in Hydra's ConfigStore, which conf/config.yaml needs before it composes.
from slm_sweep import settings as _settings  # noqa: E402,F401


def _drop_repacked_kernel_notice(record) -> bool:
    # bitsandbytes looks for a hub kernel of the AVX512-BF16 path that slm_sweep turns off
    # (models.without_cpu_repacking), and says at import, in every cell's log, that it found none
    return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


import logging as _logging  # noqa: E402

_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_repacked_kernel_notice)
