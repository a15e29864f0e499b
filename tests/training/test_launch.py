"""How a pipeline task launches training: the accelerate command, and a failed training named by its output."""

from __future__ import annotations

import sys

import pytest

from lmindexer.training.launch import TrainingFailed, accelerate_command, run_training


def test_the_command_is_accelerate_launch_of_the_cli_with_gpus_only_for_several_processes():
    one = accelerate_command(1, "no", ["retriever", "train", "--quiet"])
    assert one[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" not in one
    assert one[one.index("--num_processes") + 1] == "1" and one[one.index("--mixed_precision") + 1] == "no"
    assert one[-5:] == ["-m", "lmindexer.cli", "retriever", "train", "--quiet"]
    many = accelerate_command(4, "bf16", ["fit"])
    assert "--multi_gpu" in many and many[many.index("--num_processes") + 1] == "4"


def test_a_training_that_fails_or_writes_nothing_is_an_error_quoting_its_last_lines(tmp_path):
    produced = tmp_path / "summary.json"
    crash = [sys.executable, "-c", "import sys; print('loading'); sys.exit('CUDA out of memory')"]
    with pytest.raises(TrainingFailed, match=r"exited with code 1: .*CUDA out of memory"):
        run_training(crash, produces=produced)
    silent = [sys.executable, "-c", "print('done')"]
    with pytest.raises(TrainingFailed, match="exited with code 0: done"):
        run_training(silent, produces=produced)
    writes = [sys.executable, "-c", f"open({str(produced)!r}, 'w').write('{{}}')"]
    run_training(writes, produces=produced)
    assert produced.read_text() == "{}"
