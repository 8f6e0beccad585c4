"""How long the tests wait before they call something hung: safety nets, never a measure of speed.

A test may be slow on a busy machine (CI's two cores shared with package installs, servers, a training
run); it must not fail for it. So every wait on something outside the test's control (a server's start,
a command's run, a request, a poll for a state) is bounded by one of these, set far above what the
slowest machine takes, and what a test checks is a count or a state, never a duration. Tests of the
product's own deadlines (the request timeout, the header deadline) check that a deadline does not fire
early; how late it may fire on a busy machine is `LATE_S`.

`ELUSERVE_TEST_TIMEOUT_SCALE` multiplies them all (for a slower machine still, or a debugger); pytest's
own per-test timeout ([tool.pytest.ini_options] timeout, or PYTEST_TIMEOUT) stands above them.
"""

from __future__ import annotations

import os

#: The factor every deadline here is multiplied by.
SCALE = float(os.environ.get("ELUSERVE_TEST_TIMEOUT_SCALE", "1"))

#: A server's start until it answers ready (a few seconds on a quiet machine).
STARTUP_S = 600.0 * SCALE
#: A command or helper process run to its end (seconds to a minute on a quiet machine).
COMMAND_S = 600.0 * SCALE
#: One request, or a wait for a state a request brings about (milliseconds to seconds when quiet).
REQUEST_S = 120.0 * SCALE
#: How much later than its setting a server-side deadline may fire on a busy machine.
LATE_S = 30.0 * SCALE
