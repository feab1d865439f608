"""The scenarios, in catalogue order; importing this module registers them."""

from catalogue.scenarios import same_tensor  # noqa: F401  (1, 2)
from catalogue.scenarios import regularizers  # noqa: F401  (3)
from catalogue.scenarios import clipping  # noqa: F401  (4)
from catalogue.scenarios import weights  # noqa: F401  (5)
from catalogue.scenarios import loss_weights  # noqa: F401  (6)
from catalogue.scenarios import dropout  # noqa: F401  (7)
from catalogue.scenarios import mixed_precision  # noqa: F401  (8)
from catalogue.scenarios import accumulation_ema  # noqa: F401  (9)
from catalogue.scenarios import keras2_vs_keras3  # noqa: F401  (10)
