import sys

from kvbench.cli import main

code = 1
try:
    code = main()
finally:
    # a process that loaded NIXL ends through os._exit (kvbench.tiers.remote_onesided.exit_process)
    if "kvbench.tiers.remote_onesided" in sys.modules:
        if sys.exc_info()[0] is not None:
            import traceback

            traceback.print_exc()
        sys.modules["kvbench.tiers.remote_onesided"].exit_process(code)
raise SystemExit(code)
