"""Several devices and several machines: the run controller driving executors that are Ray actors.

`ray_runtime` connects to Ray (optional: `pip install rapidfire_core[ray]`), `executor_actor`
is the executor process (the single-device engine, `LocalExecutor`, on its device),
`ray_executor` its controller-side `Executor`, `placement` decides which executor trains which
run at each chunk boundary, `parallel_rounds` trains on every executor at once, and `scale_out`
makes the experiment's controller of them. Importing this package does not import Ray.
"""
