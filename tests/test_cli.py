import subprocess
import sys

from nacosae import __version__


def test_help_lists_the_commands_that_exist(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    assert "controls" in result.output and "download" in result.output
    assert "explain" in result.output
    assert "report" in result.output
    assert "dashboard" in result.output
    assert "evaluate" in result.output and "top-images" in result.output


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"nacosae {__version__}"


def test_usage_error_exits_2(invoke, runner):
    from nacosae.cli import app

    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["controls", "--dtype", "float64"])
    assert result.exit_code == 2


OUT_OF_RANGE = [
    ("explain", "--num-img", "1"),
    ("explain", "--num-img", "0"),
    ("explain", "--num-inf-steps", "0"),
    ("explain", "--num-inf-steps", "-5"),
    ("explain", "--n-iters", "-1"),
    ("explain", "--t2i-batch", "0"),
    ("explain", "--llm-batch", "0"),
    ("explain", "--max-new-tokens", "0"),
    ("explain", "--llm-concurrency", "0"),
    ("explain", "--reasoning-chars", "0"),
    ("controls", "--batch-size", "0"),
    ("controls", "--shard-size", "0"),
    ("controls", "--workers", "-1"),
    ("evaluate", "--top-k", "0"),
    ("evaluate", "--num-img", "1"),
    ("evaluate", "--num-inf-steps", "0"),
    ("evaluate", "--t2i-batch", "0"),
]


def test_out_of_range_option_values_are_usage_errors(runner, isolated_env, tmp_path):
    """Click's own range checks: exit 2 naming the option, before anything is read or made."""
    from nacosae.cli import app

    for command, flag, value in OUT_OF_RANGE:
        extra = ["--neuron-id", "0"] if command == "explain" else []
        extra += [str(tmp_path / "found.csv")] if command == "evaluate" else []
        result = runner.invoke(app, [command, *extra, flag, value])
        assert result.exit_code == 2, (flag, value, result.output)
        assert f"Invalid value for '{flag}'" in result.output, result.output
    assert not (tmp_path / "runs").exists() and not (isolated_env / "controls").exists()


def test_cli_module_does_not_import_heavy_libraries():
    code = (
        "import sys, nacosae.cli; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'streamlit') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_domain_error_is_one_line_and_exit_1(invoke, tmp_path):
    result = invoke("controls", "--model", "tiny_cnn", "--images", tmp_path / "missing")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: image folder")
    assert "does not exist" in lines[0]
    assert lines[1] == "set NACOSAE_DEBUG=1 for the traceback"
    assert len(lines) == 2


def test_debug_env_shows_the_traceback(invoke, tmp_path, monkeypatch):
    import pytest

    from nacosae.errors import ImagesNotFound

    monkeypatch.setenv("NACOSAE_DEBUG", "1")
    with pytest.raises(ImagesNotFound):
        invoke("controls", "--model", "tiny_cnn", "--images", tmp_path / "missing")


def test_a_bare_ray_flag_means_the_running_cluster(invoke):
    import json

    bare = invoke("explain", "--preset", "smoke", "--ray", "--dry-run")
    assert json.loads(bare.stdout)["options"]["ray"] == "auto"
    at_the_end = invoke("explain", "--preset", "smoke", "--dry-run", "--ray")
    assert json.loads(at_the_end.stdout)["options"]["ray"] == "auto"
    given = invoke("explain", "--preset", "smoke", "--ray", "local", "--dry-run")
    assert json.loads(given.stdout)["options"]["ray"] == "local"


def test_explain_help_is_grouped_and_shows_no_empty_types(invoke):
    help_text = invoke("explain", "--help").output
    for panel in ("Units", "Models", "The search", "Images", "LLM answers", "Memory and devices",
                  "The run", "The original's behaviours"):  # fmt: skip
        assert f"─ {panel} " in help_text, panel
    assert "<bool>" not in help_text and "<str>" not in help_text and "<path>" not in help_text
    assert "[default: resnet18]" in help_text and "<auto|json|tags>" in help_text
    assert "<bool>" not in invoke("--help").output


def test_verbose_shows_the_details_and_default_does_not(invoke):
    quiet = invoke("explain", "--preset", "smoke", "--n-iters", "0")
    assert (
        quiet.exit_code == 0
        and "loaded " not in quiet.stderr
        and "phase 0 done" not in quiet.stderr
    )
    loud = invoke("-v", "explain", "--preset", "smoke", "--n-iters", "0", "--seed", "7")
    assert loud.exit_code == 0, loud.output
    assert "phase 0 done" in loud.stderr and "concept cache:" in loud.stderr


def test_library_progress_bars_are_silenced_in_a_terminal_too(monkeypatch):
    import diffusers
    import transformers
    from rich.console import Console

    from nacosae import progress

    monkeypatch.setattr(progress, "console", Console(stderr=True, force_terminal=True))
    diffusers.utils.logging.enable_progress_bar()
    transformers.utils.logging.enable_progress_bar()
    progress.configure()
    progress.calm_libraries()
    assert not diffusers.utils.logging.is_progress_bar_enabled()
    assert not transformers.utils.logging.is_progress_bar_enabled()
