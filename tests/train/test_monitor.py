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


def test_train_log_keeps_the_lines_up_to_the_resumed_step(tmp_path):
    first = RunMonitor(tmp_path, True, total_steps=8, progress=False)
    first.info("start")
    for step in range(1, 7):
        first.scalars(step, {"loss/total": 1.0})
        first.info(f"step {step}/8\nsecond line of step {step}")
    first.close()
    resumed = RunMonitor(tmp_path, True, total_steps=8, initial_step=4, progress=False)
    resumed.info("resumed at step 4")
    resumed.scalars(5, {"loss/total": 1.0})
    resumed.info("step 5/8")
    resumed.close()
    messages = [
        line.split("] ", 1)[-1] for line in (tmp_path / "train.log").read_text().splitlines()
    ]
    expected = ["start"]
    for step in range(1, 5):
        expected += [f"step {step}/8", f"second line of step {step}"]
    assert messages == [*expected, "resumed at step 4", "step 5/8"]
