"""Tests of contrastseg/train/monitor.py: what a resumed run keeps of the earlier logs."""

import json

from contrastseg.train.monitor import RunMonitor


def test_monitor_keeps_the_records_up_to_the_resumed_step(tmp_path):
    path = tmp_path / "scalars.jsonl"
    lines = [json.dumps({"step": s, "loss/total": 1.0 / s}) for s in range(1, 9)]
    lines.insert(6, json.dumps({"step": 6, "test/miou": 0.5}))  # an end-of-run record
    path.write_text("\n".join(lines) + '\n{"step": 9, "loss/to')  # torn last write
    monitor = RunMonitor(
        tmp_path, True, total_steps=12, initial_step=6, progress=False, rerun_prefixes=("test/",)
    )
    monitor.scalars(7, {"loss/total": 0.5})
    monitor.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
