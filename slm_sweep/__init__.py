"""slm_sweep: compare fine-tuning methods of small language models on math word problems.

Imports nothing heavy at package level, so that scoring and reporting run without torch.
"""

__version__ = "0.1.0"
