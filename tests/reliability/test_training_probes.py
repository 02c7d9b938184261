"""Reliability probes of the training side: ``pretrain`` / ``finetune-*`` run folders, checkpoints and
resume (issue 16 items 1, 2, 3, 6, 7, 8, 9, 12, 13). One test per probe, named after it.

The runs are the tiny preset on a 30-token-block corpus, a few steps each; one finished run
(:func:`finished_run`) is copied by the probes that start from it.
"""
import errno
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time

import pytest
import torch

from spanbert_fast.hub import read_state_dict
from spanbert_fast.run_lock import LOCK_FILE
from spanbert_fast.train import TrainingArgs

from .conftest import ROOT, cli, one_line_error, run_command, spawn

TINY_RUN = ("--preset", "tiny", "--batch-size", "2", "--log-every", "1", "--no-progress", "--seed", "5",
            "--lr", "1e-3", "--device", "cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, prose, tokenizer_dir):
    out = tmp_path_factory.mktemp("training") / "corpus"
    assert cli("prepare", "--input", prose, "--tokenizer", tokenizer_dir, "--out", out, "--quiet",
               "--block-size", "30") == (0, None)
    return out


def pretrain(corpus, out, *extra):
    return cli("pretrain", "--data", corpus, "--out", out, *TINY_RUN, *extra)


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (all kept)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert pretrain(corpus, out, "--max-steps", "4", "--save-every", "2", "--keep-checkpoints", "0") == (0, None)
    return out


@pytest.fixture()
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def step_dir(out, step):
    return out / "checkpoints" / f"step-{step:08d}"


def checkpoint_names(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def weights_are_finite(folder) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in read_state_dict(str(folder / "model.safetensors")).values())


def file_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(condition, process, timeout=120.0):
    deadline = time.time() + timeout
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return condition()


# ----------------------------------------------------------------------------- item 1: no code from trainer_state.pt


class WritesAFile:
    """Unpickling this runs ``open(path, "w").write(...)``: the payload of a crafted trainer_state.pt."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('payload ran')",)


def test_resume_never_runs_code_from_a_crafted_trainer_state(corpus, run_copy, tmp_path):
    marker = tmp_path / "payload-ran"
    crafted = step_dir(run_copy, 4) / "trainer_state.pt"
    state = torch.load(crafted, weights_only=True)
    state["scaler"] = WritesAFile(marker)
    torch.save(state, crafted)
    with pytest.warns(UserWarning, match=r"skipping .*step-00000004.*trainer_state\.pt does not load safely"):
        assert pretrain(corpus, run_copy, "--max-steps", "4", "--save-every", "2", "--resume") == (0, None)
    assert not marker.exists()
    assert checkpoint_names(run_copy) == ["step-00000002", "step-00000004", "step-00000004.unusable"]


def test_trainer_state_loads_with_weights_only(finished_run):
    state = torch.load(step_dir(finished_run, 4) / "trainer_state.pt", weights_only=True)  # no allowlist
    assert state["format"] == 1 and state["step"] == 4
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


# ----------------------------------------------------------------------------- item 2: a used --out


def test_fresh_run_into_a_folder_holding_a_run_refuses(corpus, run_copy):
    before = file_bytes(run_copy)
    code, message = pretrain(corpus, run_copy, "--max-steps", "2")
    message = one_line_error(message, "pretrain")
    assert "holds a run" in message and "--resume" in message and "--overwrite" in message
    assert file_bytes(run_copy) == before  # checkpoints, log.csv untouched


def test_overwrite_replaces_the_old_run_and_prunes_only_its_own(corpus, run_copy, capsys):
    # the old run is longer (step 4) than the new one (step 2): pruning must keep the new run's
    code, message = pretrain(corpus, run_copy, "--max-steps", "2", "--save-every", "1", "--keep-checkpoints", "1",
                             "--overwrite")
    assert (code, message) == (0, None)
    assert checkpoint_names(run_copy) == ["step-00000002"]
    summary = capsys.readouterr().out
    named = [line.split(":", 1)[1].strip() for line in summary.splitlines() if line.startswith("checkpoint:")]
    assert named and os.path.isdir(named[0]) and named[0].endswith("step-00000002")
    assert [line.split(",")[0] for line in (run_copy / "log.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert not [p for p in run_copy.iterdir() if p.name.startswith("replaced-run-")]  # deleted after step 1's save


def test_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(corpus, run_copy):
    before = file_bytes(run_copy)
    code, message = pretrain(corpus, run_copy, "--max-steps", "2", "--overwrite", "--lr", "1e6")  # diverges at 2
    assert "no checkpoint of this run was saved" in one_line_error(message, "pretrain")
    aside = [p for p in run_copy.iterdir() if p.name.startswith("replaced-run-")]
    assert len(aside) == 1 and file_bytes(aside[0]) == before  # the whole old run, moved aside
    assert "--keep-checkpoints" in subprocess.run(  # documented
        [sys.executable, "-m", "spanbert_fast", "pretrain", "--help"], capture_output=True, text=True,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout


# ----------------------------------------------------------------------------- item 3: one run per folder


def test_second_pretrain_on_a_running_out_exits_naming_the_owner(corpus, tmp_path):
    out = tmp_path / "run"
    first = spawn("pretrain", "--data", corpus, "--out", out, *TINY_RUN, "--max-steps", "100000")
    try:
        assert wait_for(lambda: (out / LOCK_FILE).exists() and "pid" in (out / LOCK_FILE).read_text(), first)
        second = run_command("pretrain", "--data", corpus, "--out", out, *TINY_RUN, "--max-steps", "2", "--resume")
        lines = second.stderr.strip().splitlines()
        assert second.returncode != 0 and len(lines) == 1, second.stderr
        assert lines[0].startswith("pretrain: error: ") and f"in use by pretrain (pid {first.pid}" in lines[0]
    finally:
        first.kill()
        first.wait()


def test_finetune_on_a_locked_out_exits_naming_the_owner(finished_run, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"sentence number {i},{'ab'[i % 2]}\n" for i in range(8)))
    out = tmp_path / "cls"
    code = ("import sys; from spanbert_fast.run_lock import lock_folder; lock = lock_folder(sys.argv[1], 'pretrain'); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        _, message = cli("finetune-cls", "--train", train, "--init", step_dir(finished_run, 4), "--out", out,
                         "--max-steps", "2", "--no-progress", "--device", "cpu")
        assert f"in use by pretrain (pid {holder.pid}" in one_line_error(message, "finetune-cls")
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "checkpoints").exists()


# ----------------------------------------------------------------------------- item 6: nothing non-finite saved


def test_divergence_saves_no_non_finite_checkpoint_and_is_one_line(corpus, tmp_path):
    # the probe (--lr 1e6 --save-every 2 --log-every 10), with an lr that diverges after a few good saves
    out = tmp_path / "run"
    code, message = pretrain(corpus, out, "--lr", "1e3", "--warmup-steps", "0", "--max-steps", "20",
                             "--save-every", "2", "--log-every", "10", "--keep-checkpoints", "0")
    message = one_line_error(message, "pretrain")
    assert "not finite" in message or "loss is nan" in message, message
    saved = checkpoint_names(out)
    assert saved and all(weights_are_finite(out / "checkpoints" / name) for name in saved)
    assert f"the last good checkpoint is {out / 'checkpoints' / saved[-1]}" in message


def test_resume_with_no_steps_to_train_never_saves_non_finite_weights(corpus, run_copy):
    from safetensors.torch import save_file

    weights = read_state_dict(str(step_dir(run_copy, 4) / "model.safetensors"))
    next(iter(weights.values())).view(-1)[0] = float("inf")
    save_file(weights, str(step_dir(run_copy, 4) / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"skipping .*step-00000004.*non-finite"):
        assert pretrain(corpus, run_copy, "--max-steps", "4", "--save-every", "2", "--resume") == (0, None)
    assert weights_are_finite(step_dir(run_copy, 4))  # trained again from step 2


def test_resume_of_a_finished_run_trains_nothing_and_rewrites_nothing(corpus, run_copy, capsys):
    before = {p: p.stat().st_ino for p in step_dir(run_copy, 4).iterdir()}
    assert pretrain(corpus, run_copy, "--max-steps", "4", "--save-every", "2", "--resume") == (0, None)
    assert {p: p.stat().st_ino for p in step_dir(run_copy, 4).iterdir()} == before  # the same files
    assert f"checkpoint: {step_dir(run_copy, 4)}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- item 7: resume keeps what it can


def test_kill_9_while_resuming_a_finished_run_keeps_its_newest_checkpoint(corpus, run_copy):
    process = spawn("pretrain", "--data", corpus, "--out", run_copy, *TINY_RUN, "--max-steps", "4",
                    "--save-every", "2", "--resume")
    assert process.stdout.readline().startswith("model: ")  # the model is built: resume comes next
    time.sleep(random.Random(7).uniform(0.0, 0.5))  # seeded: loading, or where the old code re-saved step 4
    process.kill()
    process.wait()
    assert weights_are_finite(step_dir(run_copy, 4))
    assert torch.load(step_dir(run_copy, 4) / "trainer_state.pt", weights_only=True)["step"] == 4


def test_kill_9_at_a_random_moment_then_resume_finishes(corpus, tmp_path):
    out = tmp_path / "run"
    process = spawn("pretrain", "--data", corpus, "--out", out, *TINY_RUN, "--max-steps", "400", "--save-every", "1")
    assert wait_for(lambda: step_dir(out, 1).exists(), process)
    time.sleep(random.Random(16).uniform(0.0, 1.0))  # seeded: mid-save or mid-step
    process.kill()
    process.wait()
    newest = int(checkpoint_names(out)[-1].split("-")[1].split(".")[0]) if checkpoint_names(out) else 0
    with pytest.warns(UserWarning, match="changed settings"):  # a shorter run than the killed one
        code, message = pretrain(corpus, out, "--max-steps", str(newest + 2), "--save-every", "1", "--resume")
    assert (code, message) == (0, None)
    assert [n for n in checkpoint_names(out) if n.endswith(".tmp")] == []
    assert weights_are_finite(step_dir(out, newest + 2))


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.pt"])
def test_resume_falls_back_from_a_truncated_newest_checkpoint(corpus, run_copy, damaged):
    path = step_dir(run_copy, 4) / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=rf"skipping .*step-00000004.*{damaged.split('.')[0]}"):
        assert pretrain(corpus, run_copy, "--max-steps", "4", "--save-every", "2", "--resume") == (0, None)
    assert (step_dir(run_copy, 4).parent / "step-00000004.unusable" / damaged).exists()  # kept for inspection
    assert weights_are_finite(step_dir(run_copy, 4))


def test_stale_checkpoint_temporaries_are_removed_at_start(corpus, run_copy):
    checkpoints = run_copy / "checkpoints"
    for name in ("step-00000006.k2j4_x9a.tmp", "step-00000004.abcd1234.old.tmp"):  # atomic_directory's names
        (checkpoints / name).mkdir()
        (checkpoints / name / "model.safetensors").write_bytes(b"half")
    for name in ("notes.tmp", "step-4-backup"):  # not ours: kept
        (checkpoints / name).mkdir()
    assert pretrain(corpus, run_copy, "--max-steps", "4", "--save-every", "2", "--resume") == (0, None)
    assert checkpoint_names(run_copy) == ["notes.tmp", "step-00000002", "step-00000004", "step-4-backup"]


# ----------------------------------------------------------------------------- item 8: bad option values


@pytest.mark.parametrize("flag, value", [
    ("--grad-clip", "-1"), ("--save-every", "-1"), ("--warmup-steps", "-5"), ("--weight-decay", "-0.1"),
    ("--log-every", "0"), ("--keep-checkpoints", "-1"), ("--lr", "-1e-3"),
])
def test_bad_training_option_is_one_line_naming_the_flag(corpus, tmp_path, flag, value):
    code, message = pretrain(corpus, tmp_path / "run", "--max-steps", "2", f"{flag}={value}")
    assert flag in one_line_error(message, "pretrain")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_training_args_from_python_are_value_errors():
    for field, value in (("grad_clip", -1.0), ("save_every", -1), ("warmup_steps", -1), ("weight_decay", -0.5),
                         ("log_every", 0)):
        with pytest.raises(ValueError, match=f"{field} \\(--{field.replace('_', '-')}\\)"):
            TrainingArgs(out_dir="unused", max_steps=2, **{field: value})


# ----------------------------------------------------------------------------- item 9: sharded index confined


def sharded_copy(finished_run, tmp_path, index):
    """A checkpoint folder whose weights are a sharded index (``index``) instead of model.safetensors."""
    folder = tmp_path / "sharded"
    shutil.copytree(step_dir(finished_run, 4), folder)
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_sharded_index_pointing_outside_the_checkpoint_is_refused(corpus, finished_run, tmp_path):
    folder = sharded_copy(finished_run, tmp_path, {"weight_map": {"bert.embeddings.word_embeddings.weight":
                                                                  "../outside.safetensors"}})
    _, message = cli("pretrain", "--data", corpus, "--out", tmp_path / "run", "--init-from", folder,
                     *TINY_RUN[2:], "--max-steps", "1")
    assert "outside the checkpoint folder" in one_line_error(message, "pretrain")


def test_sharded_index_without_weight_map_is_one_line(corpus, finished_run, tmp_path):
    folder = sharded_copy(finished_run, tmp_path, {"metadata": {}})
    _, message = cli("pretrain", "--data", corpus, "--out", tmp_path / "run", "--init-from", folder,
                     *TINY_RUN[2:], "--max-steps", "1")
    assert "weight_map" in one_line_error(message, "pretrain")


# ----------------------------------------------------------------------------- item 12: permissions


def test_checkpoint_files_follow_the_umask(corpus, tmp_path):
    data = tmp_path / "corpus"
    shutil.copytree(corpus, data)
    for path in data.glob("*tokenizer.json"):
        path.chmod(0o600)  # a private source file: its copy in the checkpoint still follows the umask
    umask = os.umask(0o022)
    try:
        assert pretrain(data, tmp_path / "run", "--max-steps", "1") == (0, None)
    finally:
        os.umask(umask)
    folder = step_dir(tmp_path / "run", 1)
    for path in [folder, *folder.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path.name, oct(mode))


# ----------------------------------------------------------------------------- item 13: one line, not a traceback


@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_bad_device_is_one_line(corpus, tmp_path, device):
    code, message = cli("pretrain", "--data", corpus, "--out", tmp_path / "run", *TINY_RUN[:-2], "--device", device,
                        "--max-steps", "1")
    assert "--device" in one_line_error(message, "pretrain")


@pytest.mark.skipif(torch.cuda.is_available(), reason="probes a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(corpus, tmp_path):
    code, message = cli("pretrain", "--data", corpus, "--out", tmp_path / "run", *TINY_RUN[:-2], "--device", "cuda",
                        "--max-steps", "1")
    assert "no CUDA GPU" in one_line_error(message, "pretrain")


@pytest.mark.parametrize("problem", ["missing folder", "empty meta.json"])
def test_bad_corpus_is_one_line(corpus, tmp_path, problem):
    data = tmp_path / "data"
    if problem == "empty meta.json":
        shutil.copytree(corpus, data)
        (data / "meta.json").write_text("")
    code, message = pretrain(data, tmp_path / "run", "--max-steps", "1")
    assert str(data) in one_line_error(message, "pretrain")


FULL_DISK_SCRIPT = """
mount -t tmpfs -o size="$2" tmpfs "$1" || exit 99
out="$1"; shift 2
"$@"; code=$?
echo "left in checkpoints/: $(ls -A "$out/checkpoints" 2>/dev/null | tr '\\n' ' ')"
exit $code
"""


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing(corpus, finished_run, tmp_path,
                                                                             monkeypatch):
    out = tmp_path / "small-disk"
    out.mkdir()
    command = ["pretrain", "--data", str(corpus), "--out", str(out), *TINY_RUN, "--max-steps", "2"]
    if unshare_works():
        # A real full disk: a tmpfs (in a private mount namespace) with room for the weights but not for
        # trainer_state.pt, so torch.save meets ENOSPC (which it reports without an errno).
        size = sum(p.stat().st_size for p in step_dir(finished_run, 4).iterdir() if p.name != "trainer_state.pt")
        result = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK_SCRIPT, "sh", str(out), str(size + 200_000),
                                 sys.executable, "-m", "spanbert_fast", *command],
                                capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode not in (0, 99) and len(lines) == 1, result.stderr
        message = one_line_error(lines[0], "pretrain")
        left = result.stdout.strip().splitlines()[-1]
    else:  # no namespaces here: a simulated ENOSPC from the checkpoint writer
        from spanbert_fast import hub

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(hub, "save_state_dict", full_disk)
        _, message = cli(*command)
        message = one_line_error(message, "pretrain")
        left = "left in checkpoints/: " + " ".join(checkpoint_names(out) if (out / "checkpoints").exists() else [])
    assert "No space left on device" in message and "step-00000002" in message
    assert left.strip() == "left in checkpoints/:", left
