"""FemurUNetTrainLib.process: the background training process the FemurUNetTrain module polls."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from FemurUNetTrainLib import process
from FemurUNetTrainLib.options import TrainConfig, config_from_args
from FemurUNetTrainLib.process import BackgroundProcess, TrainingRun


def wait_for(condition, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def python(code):
    return [sys.executable, "-c", code]


def test_train_command_passes_only_given_options_and_round_trips():
    config = TrainConfig(data="/d", out="/m.pt", val="/v", epochs=3, lr=1e-5, seed=0, resume=True, input_size=64)
    cmd = process.train_command(config, python="/py")
    assert cmd[:5] == ["/py", "-m", "FemurUNetTrainLib.cli", "train", "/d"] and cmd[-2:] == ["--progress", "json"]
    assert cmd[cmd.index("--epochs") + 1] == "3" and cmd[cmd.index("--seed") + 1] == "0"
    assert cmd[cmd.index("--out") + 1] == "/m.pt" and cmd[cmd.index("--val") + 1] == "/v" and "--resume" in cmd
    assert "--lr" not in cmd and "--batch-size" not in cmd and "--device" not in cmd    # at their defaults
    from FemurUNetTrainLib.cli import build_parser   # the real CLI parses it back into the same config
    assert config_from_args(build_parser().parse_args(cmd[3:])) == config


@pytest.mark.parametrize("out, log", [("m.pt", "m.log.jsonl"), ("runs/model", "runs/model.log.jsonl"),
                                      ("a.b.pt", "a.b.log.jsonl"), ("x.model", "x.model.log.jsonl")])
def test_log_path_beside_the_model(out, log):
    assert process.log_path(out) == Path(log)


def test_library_environment_puts_the_lib_folders_first(tmp_path):
    env = process.library_environment({"PYTHONPATH": "/elsewhere", "PATH": os.environ["PATH"]})
    folders = env["PYTHONPATH"].split(os.pathsep)
    import FemurUNetLib
    import FemurUNetTrainLib
    assert folders[:2] == [str(Path(FemurUNetLib.__file__).parents[1]), str(Path(FemurUNetTrainLib.__file__).parents[1])]
    assert folders[-1] == "/elsewhere" and env["PYTHONUNBUFFERED"] == "1"
    out = subprocess.run(python("import sys; print(repr(sys.path[1:3]))"), env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert eval(out) == folders[:2]


def test_background_process_output_poll_and_cleanup():
    p = BackgroundProcess(python("import time; print('first', flush=True); time.sleep(1.0); print('second')")).start()
    assert p.poll() is None and p.running
    assert wait_for(lambda: "first" in p.output_tail())
    seen = p.read_output()
    assert wait_for(lambda: p.poll() is not None)
    assert p.returncode == 0 and not p.stopped
    assert "first" in seen and "second" in seen + p.read_output()
    assert p.read_output() == ""
    output = p.output_path
    p.close()
    assert not output.exists()


INTERRUPTIBLE = ("import time\nprint('sleeping', flush=True)\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
                 "    print('interrupted', flush=True); raise SystemExit(130)")


def stop_when_sleeping(p):
    assert wait_for(lambda: "sleeping" in p.output_tail())
    started = time.monotonic()
    code = p.stop(grace_seconds=10)
    return code, time.monotonic() - started


def test_stop_interrupts_like_ctrl_c():
    p = BackgroundProcess(python(INTERRUPTIBLE)).start()
    code, seconds = stop_when_sleeping(p)
    assert code == 130 and seconds < 5 and p.stopped and "interrupted" in p.output_tail()
    p.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal dispositions")
def test_stop_interrupts_even_when_the_parent_ignores_ctrl_c():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)    # as in a shell's background job
    try:
        p = BackgroundProcess(python(INTERRUPTIBLE)).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    code, seconds = stop_when_sleeping(p)
    assert code == 130 and seconds < 5 and "interrupted" in p.output_tail()
    p.close()


def test_stop_kills_a_stubborn_process_and_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n")
    p = BackgroundProcess(python(code)).start()
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text())
    child = int(pid_file.read_text())
    assert p.stop(grace_seconds=0.3) == -signal.SIGKILL

    def gone():
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        return state == "Z"
    assert wait_for(gone, timeout=5)
    p.close()


def test_stop_goes_on_to_terminate_when_the_interrupt_cannot_be_sent(monkeypatch):
    """Windows: a child started with CREATE_NO_WINDOW has no console, so send_signal(CTRL_BREAK_EVENT) raises OSError."""
    p = BackgroundProcess(python("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
                                 "    raise SystemExit(130)")).start()
    monkeypatch.setattr(process, "WINDOWS", True)
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", 1, raising=False)   # its value on Windows
    send_signal, sent = p.process.send_signal, []

    def no_console(sig):
        sent.append(sig)
        if sig == signal.CTRL_BREAK_EVENT:
            raise OSError(6, "The handle is invalid")
        send_signal(sig)
    monkeypatch.setattr(p.process, "send_signal", no_console)
    started = time.monotonic()
    assert p.stop(grace_seconds=30) == -signal.SIGTERM                   # Popen.terminate()
    assert time.monotonic() - started < 10                              # at once, not after the grace time
    assert sent == [signal.CTRL_BREAK_EVENT, signal.SIGTERM] and p.stopped and not p.running
    p.close()


def test_read_log_records_skips_partial_and_bad_lines(tmp_path):
    log = tmp_path / "m.log.jsonl"
    assert process.read_log_records(log) == []
    log.write_text('{"epoch": 1, "loss": 0.9}\nnot json\n[1, 2]\n{"epoch": 2, "loss": 0.8}\n{"epoch": 3, "lo')
    assert process.read_log_records(log) == [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.8}]


def test_training_run_polls_new_records_and_a_rewritten_log(tmp_path):
    out = tmp_path / "m.pt"
    log = process.log_path(out)
    log.write_text('{"epoch": 9, "loss": 0.1}\n')            # an old run's log: a fresh start drops it
    run = TrainingRun(TrainConfig(data=str(tmp_path), out=str(out)))
    writer = ("import json, sys, time\n"
              "path = sys.argv[1]\n"
              "for e in (1, 2):\n"
              "    open(path, 'a').write(json.dumps({'epoch': e, 'loss': 1.0 / e}) + '\\n'); time.sleep(0.4)\n"
              "open(path, 'w').write(json.dumps({'epoch': 1, 'loss': 0.7}) + '\\n')\n"   # resumed: rewritten
              "print('done')\n")
    run.process = BackgroundProcess([sys.executable, "-c", writer, str(log)])
    run.start()
    polls = []
    while True:
        status = run.poll()
        polls.append(status)
        if status.finished:
            break
        time.sleep(0.05)
    status = run.poll()
    assert status.returncode == 0 and status.records == [{"epoch": 1, "loss": 0.7}]
    new = [r["epoch"] for s in polls for r in s.new_records]
    assert new[:2] == [1, 2] and new[-1] == 1            # each epoch reported once, then the rewrite
    assert "done" in "".join(s.output for s in polls) + status.output
    assert not run.succeeded                              # exit 0 but no model file
    run.close()


def test_json_progress_lines_parse_back(capsys):
    from FemurUNetTrainLib.cli.train import JsonProgress
    from FemurUNetTrainLib.train import TrainProgress
    progress = JsonProgress(stream=sys.stdout)
    progress(TrainProgress(epoch=3, epochs=300, step=1, steps=100, loss=0.5))
    progress(TrainProgress(epoch=3, epochs=300, step=46, steps=100, loss=0.4))
    progress(TrainProgress(epoch=3, epochs=300, step=100, steps=100, loss=0.3, record={"epoch": 3, "loss": 0.3}))
    text = capsys.readouterr().out + "warning: something else\n"
    step, others = process.split_progress(text)
    assert (step.epoch, step.epochs, step.step, step.steps, step.loss) == (3, 300, 46, 100, 0.4)
    assert step.fraction == (2 * 100 + 46) / (300 * 100)
    assert others == ["warning: something else"]
    assert process.split_progress("no progress here") == (None, ["no progress here"])


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from FemurUNetLib.phantom import generate_case
    from FemurUNetTrainLib.export import export_arrays
    folder = tmp_path_factory.mktemp("data")
    case = generate_case(11, shape=(16, 48, 48))
    export_arrays(case.ct, case.label, case.geometry, folder, case.name, empty_fraction=0.5)
    return folder


@pytest.fixture(scope="module")
def stopped_training(tiny_dataset, tmp_path_factory):
    """A real background training stopped after its first epoch(s): (settings, epochs done, final status)."""
    out = tmp_path_factory.mktemp("run") / "tiny.pt"
    settings = TrainConfig(data=str(tiny_dataset), out=str(out), epochs=500, steps_per_epoch=1, batch_size=2,
                           base_filters=2, seed=0, device="cpu", input_size=32)
    run = TrainingRun(settings).start()
    reached = wait_for(lambda: len(run.poll().records) >= 1 or not run.running, timeout=90)
    running = run.running
    tail = run.process.output_tail()
    run.stop(grace_seconds=10)
    status = run.poll()
    stopped = run.process.stopped
    run.close()
    assert reached and running, tail
    return settings, status, stopped


@pytest.mark.slow
def test_real_training_stops_and_keeps_its_checkpoint(stopped_training):
    settings, status, stopped = stopped_training
    assert status.finished and status.returncode != 0 and stopped
    done = len(status.records)
    assert done >= 1 and [r["epoch"] for r in status.records] == list(range(1, done + 1))
    assert {"loss", "dice", "val_loss", "val_dice", "lr"} <= set(status.records[0])
    out = Path(settings.out)
    assert out.is_file() and out.with_name("tiny.checkpoint.pt").is_file()


@pytest.mark.slow
def test_real_training_resumes_from_the_stopped_checkpoint(stopped_training):
    settings, status, _ = stopped_training
    done = len(status.records)
    settings.resume, settings.epochs = True, done + 1
    resumed = TrainingRun(settings).start()
    assert wait_for(lambda: not resumed.running, timeout=90)
    status = resumed.poll()
    assert status.returncode == 0 and resumed.succeeded, resumed.process.output_tail()
    assert [r["epoch"] for r in status.records] == list(range(1, done + 2))
    from FemurUNetLib import load_model
    assert load_model(settings.out).base_filters == 2
    resumed.close()


def test_finetune_recipe_fills_what_is_not_given_and_starts_from_the_demo_model(monkeypatch, tmp_path):
    from FemurUNetLib.paths import DEFAULT_MODEL_PATH
    from FemurUNetTrainLib.cli import main
    from FemurUNetTrainLib.cli import train as train_command
    seen = []

    class Stop(Exception):
        pass

    def fake_train(config, progress=None):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(train_command, "train", fake_train)
    for argv in (["--recipe", "finetune", "--lr", "3e-4"], ["--epochs", "2"]):
        with pytest.raises(Stop):
            main(["train", str(tmp_path), "--out", str(tmp_path / "m.pt"), *argv])
    tuned, seed = seen
    assert tuned.lr == 3e-4 and tuned.epochs == 20 and tuned.batch_size == 8 and tuned.early_stopping == 5
    assert tuned.intensity.enabled and tuned.bce_weight == 10.0 and tuned.lr_schedule == "cosine"
    assert tuned.init == str(DEFAULT_MODEL_PATH) and tuned.base_filters == 16          # the demo model's width
    assert seed == TrainConfig(data=str(tmp_path), out=str(tmp_path / "m.pt"), epochs=2)   # the seed's recipe
