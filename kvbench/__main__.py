import sys

from kvbench.cli import main

code = main()
# a process that started a NIXL agent ends through os._exit (kvbench.tiers.remote_nixl.exit_process)
if "kvbench.tiers.remote_nixl" in sys.modules:
    sys.modules["kvbench.tiers.remote_nixl"].exit_process(code)
raise SystemExit(code)
