"""``python -m router_service.sketch_worker``: the sketch worker process (started by the router)."""

import sys

from router_service.sketch_worker.worker import main

sys.exit(main())
