"""The worker side of pretraining: what every Ray Train worker of a rung runs, along its seams.

- `training.loop`         the step loop (`train_loop`), one step, the held-out loss, a step's metrics
- `training.engine`       the worker's place, the DeepSpeed engine build, and the resume from a checkpoint
- `training.sinks`        where rank 0's per-step metrics go: metrics.jsonl, MLflow, progress.json, a store
- `training.checkpoints`  saving a checkpoint: ZeRO shards, the encoder export, the upload to a store
- `training.stop`         leaving the step loop together when the driver is interrupted (a flag actor)

`train_loop` reads as the run does, top to bottom:

    worker = start_worker(config)        this process's rank, device and process group   (engine)
    engine = build_engine(worker)        the model, AdamW and LR schedule under DeepSpeed ZeRO
    start  = resume(engine, worker)      the newest valid checkpoint; a Ray Train restart noted
    sinks  = MetricSinks.open(...)       rank 0: MLflow, metrics.jsonl, progress.json   (sinks)
    each step: train_step -> step_metrics -> [val_loss] -> sinks.log -> save_checkpoint when due

Batches and masks are pure functions of (seed, step, rank), so a resumed run logs the same
losses as one never stopped. The driver side (the TorchTrainer, outcomes): orchestrator.pretrain.
The modules import one another one way only: loop -> engine, sinks, checkpoints, stop; checkpoints ->
engine; engine -> sinks.
"""
