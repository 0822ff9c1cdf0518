"""How `explain` treats its models: each used only inside `cache.use`, cache keys that follow the
model's exact version, the text-to-image batch, and the LLM backends' limits and failures."""

import json
import socket
import threading
from collections import Counter
from types import SimpleNamespace

import pytest

from nacosae.models.cache import shared_cache
from nacosae.models.residency import modules_of
from tests.chatserver import ChatServer
from tests.test_explain import answers, events_of, explain_args, only_run

REPLIES = answers("<thinking>x</thinking><answer>red apple</answer>", "<answer>blue sky</answer>")


def loaded(kind: str, model_id: str | None = None):
    return [
        (spec, obj)
        for spec, obj in shared_cache().loaded()
        if spec.kind == kind and (model_id is None or spec.id == model_id)
    ]


def test_every_model_computes_only_inside_its_use_scope(invoke, runs_dir, monkeypatch, tmp_path):
    """The search takes each model inside the step that needs it: a forward pass of the vision
    model, the pipeline or the LLM while the cache does not have it pinned would mean that the
    cache could move it away under the computation. (`runs_dir` ran the smoke preset in this
    process, so its models are in the cache already: hooks go on them before this run.)"""
    home = runs_dir.parent / "home"
    monkeypatch.setenv("NACOSAE_HOME", str(home))
    cache = shared_cache()
    calls: Counter = Counter()
    hooks = []
    for spec, obj in cache.loaded():
        if spec.kind == "vision" or (spec.kind in ("t2i", "llm") and str(home) in spec.id):
            for module in modules_of(obj):

                def check(_module, _inputs, spec=spec):
                    assert cache.is_pinned(spec), f"{spec.label()} computed outside cache.use"
                    calls[spec.kind] += 1

                hooks.append(module.register_forward_pre_hook(check))
    args = ("explain", "--preset", "smoke", "--n-iters", "1", "--out", tmp_path / "runs")
    loads = cache.stats.loads
    try:
        result = invoke(*args, "--seed", "7")  # another seed: new images, no concept cache hits
    finally:
        for hook in hooks:
            hook.remove()
    assert result.exit_code == 0, result.output
    assert {"vision", "t2i", "llm"} <= set(calls)
    assert cache.stats.loads == loads  # the same models, hooked, did the work


def test_start_line_t2i_batch_and_revision_are_recorded(invoke, controls, t2i_dir, tmp_path):
    with ChatServer(REPLIES) as server:
        first = invoke(*explain_args(t2i_dir, server, "--neuron-id", "0", "--n-iters", "1"))
    assert first.exit_code == 0, first.output
    text = " ".join(first.output.split())
    assert "memory plan (cpu, no limit): vision tiny_cnn 65.8 KiB resident, batch 64 images" in text
    assert "t2i tiny-sd 544.3 KiB resident, batch 8 images" in text
    (spec, pipeline), *_ = loaded("t2i", str(t2i_dir))
    batches: list[int] = []
    hook = pipeline.unet.register_forward_pre_hook(
        lambda _m, inputs: batches.append(inputs[0].shape[0])
    )
    try:
        with ChatServer(REPLIES) as server:
            args = explain_args(t2i_dir, server, "--neuron-id", "0", "--n-iters", "1")
            extra = ("--t2i-batch", "3", "--guidance-scale", "0", "--seed", "5")
            second = invoke(*args, *extra, "--out", tmp_path / "b")
    finally:
        hook.remove()
    assert second.exit_code == 0, second.output
    assert batches == [3, 3, 2]  # 4 concepts x 2 images, rendered 3 at a time
    record = json.loads((only_run(tmp_path / "b") / "run.json").read_text())
    assert record["generation"]["t2i_batch"] == 3
    assert record["models"]["t2i"]["revision"] == spec.revision
    assert spec.revision.startswith("sha256:")
    assert record["totals"]["model_loads"] == 0  # the first run's models, not loaded again
    assert record["model_cache"]["hits"] > 0 and record["model_cache"]["placements"] >= 2


def test_a_retrained_model_folder_is_a_cache_miss_never_a_stale_hit(invoke, controls, tmp_path):
    from nacosae.models.tiny import tiny_text2image_pipeline

    folder = tmp_path / "my-sd"
    tiny_text2image_pipeline(tmp_path / "work", seed=0).save_pretrained(folder)

    def run(out: str) -> dict:
        with ChatServer(REPLIES) as server:
            args = explain_args(folder, server, "--neuron-id", "0", "--n-iters", "1")
            result = invoke(*args, "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
        return json.loads((only_run(tmp_path / out) / "run.json").read_text())

    first = run("first")
    assert first["totals"]["images_rendered"] > 0
    again = run("again")
    assert again["totals"]["images_rendered"] == 0 and again["totals"]["cache_hits"] > 0
    tiny_text2image_pipeline(tmp_path / "work", seed=1).save_pretrained(folder)  # retrained
    retrained = run("retrained")
    assert retrained["totals"]["cache_hits"] == 0
    assert retrained["totals"]["images_rendered"] == first["totals"]["images_rendered"]
    assert retrained["models"]["t2i"]["revision"] != first["models"]["t2i"]["revision"]


def test_resume_refuses_a_model_folder_that_changed(invoke, controls, tmp_path, monkeypatch):
    from nacosae.models import language
    from nacosae.models.tiny import tiny_text2image_pipeline

    folder = tmp_path / "my-sd"
    tiny_text2image_pipeline(tmp_path / "work", seed=0).save_pretrained(folder)

    def interrupt(self, requests):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patched, ChatServer(REPLIES) as server:
        patched.setattr(language.HTTPLLM, "chat_many", interrupt)
        assert invoke(*explain_args(folder, server, "--neuron-id", "0")).exit_code == 130
    tiny_text2image_pipeline(tmp_path / "work", seed=1).save_pretrained(folder)
    result = invoke("explain", "--resume", only_run(tmp_path / "runs"))
    assert result.exit_code == 1
    assert "changed since this run started" in result.output and "start a new run" in result.output


# ---------------------------------------------------------------- LLM backends


def test_pad_token_id_zero_is_a_real_pad_id():
    from nacosae.models.language import pad_token_id
    from nacosae.models.tiny import smoke_tokenizer

    tokenizer = smoke_tokenizer()
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id != 0
    assert pad_token_id(tokenizer) == 0


def test_http_llm_retries_transient_errors_and_honours_max_tokens():
    from nacosae.models.language import HTTPLLM

    with ChatServer(answers("<answer>ok</answer>"), fail={1: 429, 2: 503}.get) as server:
        llm = HTTPLLM(server.url, "served", max_tokens=77)
        assert llm.chat([{"role": "user", "content": "hi"}], seed=3) == "<answer>ok</answer>"
    assert server.received == 3
    assert server.requests[0]["max_tokens"] == 77 and server.requests[0]["seed"] == 3


def test_http_llm_keeps_at_most_llm_concurrency_requests_in_flight():
    from nacosae.models.language import HTTPLLM

    with ChatServer(answers("<answer>ok</answer>"), delay=0.05) as server:
        llm = HTTPLLM(server.url, "served", concurrency=3)
        replies = llm.chat_many([([{"role": "user", "content": str(k)}], k) for k in range(12)])
    assert len(replies) == 12
    assert server.max_in_flight == 3


def test_a_server_that_keeps_failing_is_one_line_and_finished_work_is_kept(
    invoke, controls, t2i_dir, tmp_path
):
    with ChatServer(answers("<answer>red apple</answer>"), fail=lambda n: 500) as server:
        args = explain_args(t2i_dir, server, "--neuron-id", "0", "--max-new-tokens", "99")
        result = invoke(*args)
    assert result.exit_code == 1
    assert "the LLM server at" in result.output and "answered 500 after 5 retries" in result.output
    assert "Traceback" not in result.output
    run = only_run(tmp_path / "runs")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "answered 500" in record["error"]
    assert [e["iteration"] for e in events_of(run)] == [0, 0, 0]  # the initial phase is kept
    assert server.received == 6  # the first proposal: one request and five retries
    assert record["config"]["max_new_tokens"] == 99


def test_a_server_that_moved_takes_the_run_on_with_resume(invoke, controls, t2i_dir, tmp_path):
    with ChatServer(answers("<answer>red apple</answer>"), fail=lambda n: 500) as broken:
        assert invoke(*explain_args(t2i_dir, broken, "--neuron-id", "0")).exit_code == 1
    run = only_run(tmp_path / "runs")
    with ChatServer(REPLIES) as moved:
        resumed = invoke("explain", "--resume", run, "--llm-url", moved.url, "--llm-timeout", "30")
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["config"]["llm_url"] == moved.url
    assert record["config"]["llm_timeout"] == 30


def test_a_web_page_or_a_cut_body_where_the_api_belongs_is_one_line(invoke, controls, t2i_dir):
    from nacosae.errors import NacosaeError
    from nacosae.models.language import HTTPLLM

    page = ("text/html", b"<html><body>llama.cpp</body></html>")
    with ChatServer(REPLIES, page=page) as server:
        without_v1 = SimpleNamespace(url=server.url.removesuffix("/v1"))
        result = invoke(*explain_args(t2i_dir, without_v1, "--neuron-id", "0"))
    assert result.exit_code == 1 and "is not an OpenAI-compatible API" in result.output
    assert "under /v1" in result.output and "Traceback" not in result.output
    cut = ChatServer(REPLIES, body_of=lambda n: b'{"id": "chat-1", "choi')
    not_json = pytest.raises(NacosaeError, match="did not answer in the chat-completions format")
    with cut as server, not_json:
        HTTPLLM(server.url, "served", retries=0).chat([{"role": "user", "content": "x"}], 1)
    too_slow = pytest.raises(NacosaeError, match="within 0.2 s .* --llm-timeout")
    with ChatServer(REPLIES, delay=1.0) as server, too_slow:
        HTTPLLM(server.url, "served", retries=0, timeout=0.2).chat(
            [{"role": "user", "content": "x"}], 1
        )


def test_an_unreachable_server_fails_before_any_model_loads(invoke, controls, t2i_dir):
    from nacosae.models.cache import shared_cache

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loads = shared_cache().stats.loads
    dead = SimpleNamespace(url=f"http://127.0.0.1:{port}/v1")
    result = invoke(*explain_args(t2i_dir, dead, "--neuron-id", "0"))
    assert result.exit_code == 1
    assert "cannot reach the LLM server at http://127.0.0.1:" in result.output
    assert shared_cache().stats.loads == loads


def test_a_server_that_drops_the_connection_is_not_called_unreachable():
    from nacosae.errors import NacosaeError
    from nacosae.models.language import HTTPLLM

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)

        def accept_then_drop():
            for _ in range(2):
                connection, _address = server.accept()
                connection.recv(65536)
                connection.close()

        threading.Thread(target=accept_then_drop, daemon=True).start()
        llm = HTTPLLM(f"http://127.0.0.1:{server.getsockname()[1]}/v1", "served", retries=1)
        with pytest.raises(NacosaeError) as caught:
            llm.chat([{"role": "user", "content": "hi"}], seed=1)
    assert "dropped the connection mid-request" in str(caught.value)
    assert "cannot reach" not in str(caught.value)


@pytest.mark.parametrize("flag, value", [("--t2i-batch", "0"), ("--llm-concurrency", "0")])
def test_limits_must_be_positive(invoke, controls, t2i_dir, flag, value):
    with ChatServer(REPLIES) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "0", flag, value))
    assert result.exit_code == 2  # a usage error (Click's range check), tests/test_cli.py
    assert f"Invalid value for '{flag}'" in result.output
