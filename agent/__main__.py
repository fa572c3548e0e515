"""``python -m agent``: run the agent."""

import sys

from agent.main import main

sys.exit(main())
