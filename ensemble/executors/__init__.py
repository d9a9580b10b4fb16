"""Where the (run, fold) tasks of ``ens train`` run: here, in worker processes, or on a Dask cluster.

The job (:mod:`ensemble.training`) plans the missing runs, holds each run's lock and hands out
fold tasks (:mod:`.pools`); a run is assembled when its last fold lands (:mod:`.job`).
Workers (:mod:`.worker`) only write into the run's hidden staging directory, so nothing
partial ever becomes visible, and report progress through files there (:mod:`.progress`).
"""
