"""What a run leaves: the run folder (config.yaml, metrics.jsonl, final/) and where the metrics
go (the file, Ray's dashboard, TensorBoard, W&B). With config/, the only orchestrator code that
actors import."""

from instructray.orchestrator.output.metrics import (
    RUN_ENV,
    MetricsLog,
    metric_name,
    report_throughput,
    run_label,
)
from instructray.orchestrator.output.run_folder import (
    PhaseTimer,
    RunFolder,
    check_run_folder,
    read_metrics,
    truncate_metrics,
)

__all__ = [
    "RUN_ENV",
    "MetricsLog",
    "PhaseTimer",
    "RunFolder",
    "check_run_folder",
    "metric_name",
    "read_metrics",
    "report_throughput",
    "run_label",
    "truncate_metrics",
]
