"""The loop harness: runs the bot, the training worker and the simulator together in one process
(``loopdesk loop``, ``loopdesk simulate``), writes the loop's reports, and hosts the gate's panel.

The only room besides the tests and benchmarks that imports ``bot`` in-process; the simulated
actors it drives (``sim``) still reach the bot over HTTP only."""
