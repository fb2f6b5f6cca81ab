"""`--workers N`: a supervisor and N serving processes that behave as one server (docs/workers.md).

supervisor.py starts, watches and replaces the workers and runs the Source; aspired_feed.py decides
which versions each worker's Manager is sent and which ones every worker may show and route to;
worker.py is a worker's side (its fed source, its gated view of the Manager, model control through
the supervisor); worker_process.py is a worker as the supervisor sees it; channel.py carries their
messages.
"""
