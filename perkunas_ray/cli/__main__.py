"""`python -m perkunas_ray.cli` runs the `perkunas` command."""

import sys

from perkunas_ray.cli import main

sys.exit(main())
