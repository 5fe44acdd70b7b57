"""tsbd_utils: the reusable code behind the TSBD tutorial notebooks.

TSBD is the two-stage backdoor defense of Lin et al., *Unveiling and Mitigating Backdoor
Vulnerabilities based on Unlearning Weight Changes and Backdoor Activeness* (NeurIPS 2024,
https://arxiv.org/abs/2405.20291). The package holds data loading, models, the training loop,
metrics, the artifact cache and plotting; notebooks hold the narrative.

Modules are imported explicitly (``from tsbd_utils import data``); importing the package itself
is cheap and has no side effects.
"""

__version__ = "0.1.0"
