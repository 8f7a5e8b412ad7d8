"""``python -m unlearning.tuning``: see :mod:`unlearning.tuning.equal_budget`."""

import sys

from unlearning.tuning.equal_budget import main

sys.exit(main())
