"""`python -m actorcast.cluster.cli ARGS`: the `actorcast` command, run by this interpreter (tests and benchmarks
start it so)."""

import sys

from actorcast.cluster.cli import main

sys.exit(main())
