"""Seeds: of synthetic identities and performances, and of the sampler's noise. The one place a seed is checked."""

import numpy as np

from actorcast.models.errors import ConfigError

MAX_SEED = 2**63 - 1  # torch generators and sample_identities take [0, 2**63)


def check_seed(seed, what: str = "seed", error: type[Exception] = ConfigError) -> int:
    """`seed` as an int when it is a whole number in 0..MAX_SEED (a bool is not one); otherwise `error` (the
    caller's kind: a bad setting or a bad request), saying that `what` must be one."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise error(f"{what} must be a whole number in 0..{MAX_SEED}")
    return int(seed)
