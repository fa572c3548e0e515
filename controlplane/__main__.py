"""``python -m controlplane``: run the control plane."""

import sys

from controlplane.server import main

sys.exit(main())
