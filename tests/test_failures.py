"""Every failure a user can cause is one clear line and loses nothing: interrupts, resumes,
locks, killed processes, unwritable locations, unreadable inputs, runs that failed in substance."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nacosae.config import settings
from tests.chatserver import ChatServer
from tests.conftest import fresh_home
from tests.test_explain import answers, events_of, explain_args, only_run

SMOKE = ("explain", "--preset", "smoke", "--n-iters", "2")


def record_of(run) -> dict:
    return json.loads((run / "run.json").read_text())


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def interrupt_on_call(monkeypatch, number: int, action=None):
    """Make the smoke LLM's `number`-th batch stop the run (KeyboardInterrupt or `action`)."""
    from nacosae.models import language

    real = language.LocalLLM.chat_many
    calls = []

    def chat_many(self, requests):
        calls.append(1)
        if len(calls) == number:
            if action is None:
                raise KeyboardInterrupt
            action()
        return real(self, requests)

    monkeypatch.setattr(language.LocalLLM, "chat_many", chat_many)


def test_totals_add_up_over_attempts(invoke, tmp_path, monkeypatch, smoke_parts):
    with pytest.MonkeyPatch.context() as patched:
        interrupt_on_call(patched, 2)
        assert invoke(*SMOKE, "--out", tmp_path / "cut").exit_code == 130
    run = only_run(tmp_path / "cut")
    assert invoke("explain", "--resume", run).exit_code == 0
    fresh = fresh_home(tmp_path / "fresh", smoke_parts)
    monkeypatch.setenv("NACOSAE_HOME", str(fresh))  # no concept cache hits
    settings.cache_clear()
    assert invoke(*SMOKE, "--out", tmp_path / "whole").exit_code == 0
    resumed, whole = record_of(run), record_of(only_run(tmp_path / "whole"))
    assert [a["status"] for a in resumed["attempts"]] == ["interrupted", "done"]
    for key in ("images_rendered", "llm_calls", "parse_retries"):
        assert resumed["totals"][key] == whole["totals"][key], key
        assert resumed["totals"][key] == sum(a[key] for a in resumed["attempts"])
    assert resumed["attempts"][1]["images_rendered"] < whole["totals"]["images_rendered"]


def test_a_run_in_use_is_refused_and_a_dead_holder_is_taken_over(invoke, tmp_path):
    from nacosae.store.runs import LOCK_FILE, RunLock

    with pytest.MonkeyPatch.context() as patched:
        interrupt_on_call(patched, 1)
        assert invoke(*SMOKE).exit_code == 130
    run = only_run(tmp_path / "runs")
    holder = RunLock(run)
    holder.acquire()  # another process working on the run, as far as flock can tell
    try:
        busy = invoke("explain", "--resume", run)
    finally:
        holder.release()
    assert busy.exit_code == 1
    assert f"is in use by process {os.getpid()} on " in busy.output
    assert events_of(run)  # untouched
    (run / LOCK_FILE).write_text("4242 on a machine that crashed")  # left behind, not held
    assert invoke("explain", "--resume", run).exit_code == 0
    assert record_of(run)["status"] == "done"


def test_sigterm_stops_a_run_like_ctrl_c(invoke, tmp_path, monkeypatch):
    interrupt_on_call(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = invoke(*SMOKE)
    assert result.exit_code == 130
    run = only_run(tmp_path / "runs")
    assert record_of(run)["status"] == "interrupted"
    assert "nacosae explain --resume" in " ".join(result.output.split())
    assert [e["iteration"] for e in events_of(run)].count(1) == 1  # complete phases only


def test_a_run_whose_process_died_reads_stale(invoke, runs_dir, tmp_path):
    from nacosae.report.runs import load_run

    done = next(runs_dir.glob("*n0-5"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    copy = tmp_path / "runs" / done.name
    copy.mkdir(parents=True)
    for name in ("events.jsonl", "summary.json"):
        (copy / name).write_bytes((done / name).read_bytes())
    record = {**record_of(done), "status": "running"}
    record["process"] = {"pid": int(dead.stdout), "host": socket.gethostname()}
    (copy / "run.json").write_text(json.dumps(record))
    assert load_run(copy).status == "stale"
    table = invoke("report", tmp_path / "runs", "--format", "csv")
    assert ",stale," in table.output and "resume it with nacosae explain --resume" in table.output


def test_controls_killed_while_finishing_resume(invoke, image_tree, monkeypatch):
    from nacosae.store.activations import StoreBuilder

    real = StoreBuilder.finish

    def killed(self, names):
        monkeypatch.setattr(StoreBuilder, "finish", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreBuilder, "finish", killed)
    args = ("controls", "--model", "tiny_cnn", "--images", image_tree, "--workers", "0")
    stopped = invoke(*args)
    assert stopped.exit_code == 130 and "rerun the same command to continue" in stopped.output
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "done" in again.output


def test_controls_refuse_folders_with_no_readable_image(invoke, tmp_path, isolated_env):
    images = tmp_path / "broken"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
        (images / name / "0.jpg").write_bytes(b"not a jpeg")
    result = invoke("controls", "--model", "tiny_cnn", "--images", images, "--workers", "0")
    assert result.exit_code == 1
    assert f"none of the 2 image files under {images} could be read" in " ".join(
        result.output.split()
    )
    assert not (isolated_env / "controls" / "tiny_cnn").exists()


@pytest.mark.parametrize("variable", ["SAVE_DIR", "NACOSAE_HOME"])
def test_a_file_where_a_folder_belongs_is_one_line(invoke, tmp_path, monkeypatch, variable):
    blocker = tmp_path / "in-the-way"
    blocker.write_text("a file")
    monkeypatch.setenv(variable, str(blocker / "below"))
    result = invoke(*SMOKE)
    assert result.exit_code == 1
    assert lines_of(result.output)[0].startswith("error: ") and len(lines_of(result.output)) == 2
    assert f"{blocker} is a file" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert blocker.read_text() == "a file"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def as_unprivileged_user(run: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """`run()` in this process, or, as root (CI runs as root, and root writes into read-only
    folders), in a forked child that became user `nobody` first; (exit code, output)."""
    if os.geteuid() != 0:
        return run()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            code, output = run()
            os.write(write, json.dumps([code, output]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    code, output = json.loads(answer)
    return code, output


def test_a_read_only_out_folder_is_one_line(invoke):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="nacosae-read-only-"))  # not under root's 0700 tmp
    try:
        root.chmod(0o755)
        locked = root / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)

        def run() -> tuple[int, str]:
            os.chdir(root)
            result = invoke(*SMOKE, "--out", locked / "runs")
            return result.exit_code, result.output

        code, output = as_unprivileged_user(run)
        assert code == 1, output
        assert "is not writable" in output and "permission denied" in output
        assert not (locked / "runs").exists()
    finally:
        (root / "locked").chmod(0o755)
        shutil.rmtree(root)


def test_programming_errors_in_parsing_are_not_taken_for_bad_answers(invoke, monkeypatch):
    from nacosae.search import loop

    def broken(reply, tried, answer_format, example_answers, parsing):
        raise ValueError("a bug, not the LLM's fault")

    monkeypatch.setattr(loop, "parse_answer", broken)
    with pytest.raises(ValueError, match="a bug"):
        invoke(*SMOKE)


def test_a_run_whose_proposals_mostly_fail_says_so(invoke, controls, t2i_dir, tmp_path):
    with ChatServer(answers("I refuse to use the format.")) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "0"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: 3 of 3 LLM proposals could not be used (9 re-asks)" in text
    run = only_run(tmp_path / "runs")
    assert "3 of 3 LLM proposals could not be used" in record_of(run)["warnings"][0]
    seeds = [r["seed"] for r in server.requests]
    assert len(set(seeds)) == len(seeds)  # every re-ask samples anew
    report = invoke("report", tmp_path / "runs", "--format", "csv")
    assert "LLM proposals could not be used" in report.output


def test_explain_progress_is_plain_lines_when_not_a_terminal(invoke):
    result = invoke(*SMOKE)
    assert result.exit_code == 0
    phases = [line for line in result.output.splitlines() if ": phase " in line]
    assert [p.split(",")[0] for p in phases] == [f"1 neuron: phase {k}/4" for k in (1, 2, 3, 4)]
    assert all(len(p) <= 80 for p in phases)
    assert "\r" not in result.output


def test_every_help_shows_its_defaults_and_no_bool_metavar(runner, monkeypatch):
    import typer.main
    import typer.rich_utils

    from nacosae.cli import app

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)
    root = typer.main.get_command(app)
    pending = [((), root)]
    checked = 0
    while pending:
        path, command = pending.pop()
        pending += [((*path, n), c) for n, c in getattr(command, "commands", {}).items()]
        output = " ".join(runner.invoke(app, [*path, "--help"]).output.split())
        for param in command.params:
            help_text = " ".join((getattr(param, "help", None) or "").split())
            if "\\[default:" in help_text:
                hint = help_text.split("\\[default:")[1].split("]")[0]
                assert f"[default:{hint}]" in output, (path, param.name)
                checked += 1
        assert "<bool>" not in output.replace("--help <bool>", ""), path
    assert checked >= 8


def test_report_table_to_a_file_fixed_columns_errors_and_smoke(invoke, runs_dir, tmp_path):
    from nacosae.report.runs import ROW_COLUMNS

    out = tmp_path / "table.txt"
    assert invoke("report", runs_dir, "--out", out).exit_code == 0
    table = out.read_text()
    assert table.split()[:3] == ["run_id", "model", "layer"]
    assert "the language model broke down" in table
    assert "smoke: meaningless" in table
    csv_text = invoke("report", runs_dir, "--format", "csv").output
    assert csv_text.splitlines()[0] == ",".join(ROW_COLUMNS)
    assert "the language model broke down" in csv_text and ",smoke," in csv_text
    rows = json.loads(invoke("report", runs_dir, "--format", "json").output)
    assert all(list(r) == list(ROW_COLUMNS) for r in rows)
    assert any(r["error"] == "the language model broke down" for r in rows)
    kept = invoke("report", runs_dir, "--format", "csv", "--exclude-smoke").output
    assert ",smoke," not in kept and kept.splitlines()[0] == ",".join(ROW_COLUMNS)


def test_files_that_are_not_utf8_or_not_json_are_one_line(
    invoke, tmp_path, image_tree, monkeypatch
):
    """A Latin-1 .env is read (with a warning); a Latin-1 template, evaluation CSV or vocabulary
    and a damaged classes.json are each one line, never a traceback."""
    import shutil

    from nacosae.config import settings

    (tmp_path / ".env").write_bytes("SAVE_DIR=r\xe9sultats\n".encode("latin-1"))
    monkeypatch.delenv("SAVE_DIR")
    settings.cache_clear()
    listed = invoke("controls", "--list")
    assert listed.exit_code == 0 and "is not UTF-8; read as Latin-1" in listed.output
    assert settings().save_dir.name == "résultats"
    (tmp_path / ".env").unlink()
    settings.cache_clear()

    latin = "caf\xe9".encode("latin-1")
    template = tmp_path / "prompt.txt"
    template.write_bytes(b"{concepts} {forbidden} " + latin)
    result = invoke(*SMOKE, "--prompt", template)
    assert result.exit_code == 1 and "prompt template" in result.output
    assert "is not UTF-8 text" in result.output
    scores = tmp_path / "evaluation.csv"
    scores.write_bytes(b"neuron,concept,AUC,MAD\n1," + latin + b",0.9,1.0\n")
    compared = invoke("evaluate", "--compare", scores, scores)
    assert compared.exit_code == 1 and "is not UTF-8 text" in compared.output
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_bytes(latin + b"\n")
    explanations = tmp_path / "ours.csv"
    explanations.write_text("neuron,concept\n1,dog\n")
    novelty = invoke("evaluate", "--novelty", explanations, "--vocabulary", vocabulary)
    assert novelty.exit_code == 1 and "vocabulary file" in novelty.output

    tree = tmp_path / "tree"
    shutil.copytree(image_tree, tree)
    (tree / "classes.json").write_text("{not json")
    built = invoke("controls", "--model", "tiny_cnn", "--images", tree, "--workers", "0")
    assert built.exit_code == 0 and "classes.json is unreadable" in built.output
    assert "Traceback" not in built.output + novelty.output + compared.output + result.output


def test_a_store_of_other_weights_is_named_before_anything_is_created(invoke, image_tree, tmp_path):
    built = invoke("controls", "--model", "resnet18", "--weights", "none", "--images", image_tree,
                   "--workers", "0")  # fmt: skip
    assert built.exit_code == 0, built.output
    result = invoke("explain", "--model", "resnet18", "--neuron-id", "3", "--out", tmp_path / "r")
    assert result.exit_code == 1
    assert "built with weights random-init:seed=0" in result.output
    assert "pass --weights none" in result.output
    assert not (tmp_path / "r").exists()  # no run folder, no hub retries


def test_an_image_cut_short_before_its_phase_was_recorded_is_written_again(
    invoke, tmp_path, monkeypatch
):
    """A kill (or a full disk) after a phase linked its images but before its events were
    written: the resumed run writes those images again instead of keeping a cut file."""
    import json as json_module

    from tests.killing import ctrl_c_at_llm_call
    from tests.test_explain import events_of, only_run

    with ctrl_c_at_llm_call(3):  # the summary's call: iterations 1 and 2 are recorded
        assert invoke(*SMOKE, "--out", tmp_path / "runs").exit_code == 130
    run = only_run(tmp_path / "runs")
    events = events_of(run)
    last = [e for e in events if e["iteration"] == 2]
    cut = run / last[0]["images"][0]
    cut.unlink()  # a copy (not a link) that the full disk cut to nothing
    cut.write_bytes(b"")
    kept = [e for e in events if e["iteration"] < 2]  # ... before iteration 2 was recorded
    (run / "events.jsonl").write_text("".join(json_module.dumps(e) + "\n" for e in kept))
    assert invoke("explain", "--resume", run).exit_code == 0
    for event in events_of(run):
        for image in event["images"]:
            assert (run / image).stat().st_size > 0, image
    assert not list(run.rglob(".*.part"))


def test_an_events_file_deleted_mid_run_is_a_warning(invoke, tmp_path, monkeypatch):
    import json as json_module

    from nacosae.models import language
    from tests.test_explain import only_run

    real = language.LocalLLM.chat_many
    calls = []

    def deleting(self, requests):
        calls.append(1)
        if len(calls) == 2:
            next((tmp_path / "runs").glob("*/events.jsonl")).unlink()
        return real(self, requests)

    monkeypatch.setattr(language.LocalLLM, "chat_many", deleting)
    result = invoke(*SMOKE, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    record = json_module.loads((only_run(tmp_path / "runs") / "run.json").read_text())
    assert any("events.jsonl holds" in w for w in record["warnings"])
    assert "events.jsonl holds" in result.output


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(
    invoke, controls, image_tree, isolated_env, tmp_path
):
    from nacosae.store.activations import ControlStore

    store = isolated_env / "controls" / "tiny_cnn" / "avgpool"
    before = (store / "index.json").read_text()
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    for k in range(3):
        (broken / "a" / f"{k}.jpg").write_bytes(b"not an image")
    result = invoke("controls", "--model", "tiny_cnn", "--images", broken, "--workers", "0",
                    "--overwrite")  # fmt: skip
    assert result.exit_code == 1 and "could be read" in result.output
    assert (store / "index.json").read_text() == before
    assert ControlStore(store).n_images == 12
    rebuilt = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--workers", "0",
                     "--overwrite", "--shard-size", "5")  # fmt: skip
    assert rebuilt.exit_code == 0, rebuilt.output
    assert len(ControlStore(store).index["shards"]) == 3
    assert sorted(p.name for p in store.parent.iterdir()) == ["avgpool"]


def test_two_commands_preparing_the_smoke_models_at_once_both_succeed(tmp_path):
    """Two processes (here: threads, whose flocks exclude each other the same way) building
    the smoke parts on one fresh NACOSAE_HOME: one builds, the other waits and reuses."""
    from concurrent.futures import ThreadPoolExecutor

    from nacosae.models.cache import ModelCache
    from nacosae.presets import SMOKE_LLM, SMOKE_T2I, build_smoke_parts

    home = tmp_path / "fresh" / "smoke"
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: build_smoke_parts(home, ModelCache()), range(2)))
    assert done == [home / "controls"] * 2
    assert (home / "models" / SMOKE_T2I / "model_index.json").is_file()
    assert (home / "models" / SMOKE_LLM / "config.json").is_file()
    assert not list((home / "models").glob("*.tmp"))


def test_two_builds_of_one_store_at_once_write_it_once(isolated_env, image_tree):
    from concurrent.futures import ThreadPoolExecutor

    from nacosae.controls import ControlsRequest, build_controls
    from nacosae.models.cache import ModelCache
    from nacosae.store.activations import ControlStore

    controls_root = isolated_env / "controls"
    request = ControlsRequest(
        model="tiny_cnn", layer="avgpool", images=image_tree, controls_root=controls_root,
        workers=0, device="cpu",
    )  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: build_controls(request, ModelCache()), range(2)))
    assert sorted(r.already_complete for r in results) == [False, True]
    assert ControlStore(results[0].directory).n_images == 12
