from pathlib import Path

from nacosae.config import load_settings


def test_dotenv_fills_in_and_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("NACOSAE_HOME", raising=False)
    monkeypatch.setenv("SAVE_DIR", str(tmp_path / "from_env"))
    env = tmp_path / ".env"
    env.write_text(
        f"NACOSAE_HOME={tmp_path / 'home'}\nSAVE_DIR=ignored\nHF_TOKEN=hf_secret_value\n"
    )
    s = load_settings(env)
    assert s.nacosae_home == tmp_path / "home"
    assert s.save_dir == tmp_path / "from_env"
    assert s.hf_token == "hf_secret_value"
    assert s.controls_dir == tmp_path / "home" / "controls"
    assert s.default_imagenet_dir == tmp_path / "home" / "data" / "imagenet" / "val"


def test_token_never_in_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_print")
    s = load_settings(tmp_path / "absent.env")
    assert "hf_do_not_print" not in repr(s)
    assert "hf_do_not_print" not in str(s)


def test_defaults(tmp_path, monkeypatch):
    for key in ("NACOSAE_HOME", "SAVE_DIR", "HF_TOKEN", "HF_HOME"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings(tmp_path / "absent.env")
    assert s.nacosae_home == Path.home() / ".cache" / "nacosae"
    assert s.save_dir == Path("runs")
    assert s.hf_token is None
