"""The ingest stage: `run` (a Source → a sharded renders.zarr, resumable), over `pixels` (composite,
mask, background), `shards` (the plan every worker follows), `workers` (a process pool) and
`mpi` (the ranks of an MPI launcher)."""
