"""Models by hub id, with no network: a hub cache laid out on disk as huggingface_hub lays it
out (``models--org--name/snapshots/<commit>/…``, ``refs/main``), and a stand-in hub server on
localhost for the errors only a hub can give (unknown, gated)."""

import http.server
import os
import shutil
import threading

import pytest

from conftest import write_config
from dpkd_jax import hub
from test_cli import assert_user_error, run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out(cache, repo, folder, commit=COMMIT):
    base = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return str(base / "snapshots" / commit)


@pytest.fixture
def cache(hf_pair, tmp_path):
    teacher, student, _ = hf_pair
    root = tmp_path / "hub"
    lay_out(root, "org/teacher", teacher)
    lay_out(root, "org/student", student)
    return root


def offline_env(cache):
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


def test_ids_parse_and_local_paths_do_not():
    assert hub.parse("Qwen/Qwen2.5-7B-Instruct") == hub.HubId("Qwen/Qwen2.5-7B-Instruct")
    assert hub.parse("org/name@v1.0") == hub.HubId("org/name", "v1.0")
    for local in ("/abs/folder", "./rel/folder", "model.gguf", "asset:smollm2-135m-instruct", "a/b/c", "plain"):
        assert hub.parse(local) is None, local


def test_a_run_names_its_models_by_hub_id_offline_and_trains(hf_pair, cache, tmp_path):
    _, _, train = hf_pair
    cfg = write_config(tmp_path / "cfg.py", "org/teacher", "org/student", train, str(tmp_path / "w"),
                       **{"gen.max_new_tokens": 4})
    r = run(cfg, "--config.mode=check", env=offline_env(cache))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"teacher: hub id org/teacher: cached at {cache}" in r.stdout and "check: ok" in r.stdout
    r = run(cfg, env=offline_env(cache))
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isdir(tmp_path / "w" / "checkpoints")


def test_offline_without_a_cached_copy_names_the_cache_and_the_command(hf_pair, cache, tmp_path):
    teacher, _, train = hf_pair
    cfg = write_config(tmp_path / "cfg.py", teacher, "org/missing@v2", train, str(tmp_path / "w"))
    assert_user_error(run(cfg, env=offline_env(cache)), "org/missing@v2", str(cache), "HF_HUB_OFFLINE",
                      "hf download org/missing --revision v2")


def test_pickle_only_repository_is_refused_unless_allowed(hf_pair, cache, tmp_path):
    import torch
    from transformers import GPT2LMHeadModel
    teacher, student, train = hf_pair
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(GPT2LMHeadModel.from_pretrained(student).state_dict(), folder / "pytorch_model.bin")
    for f in os.listdir(student):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(student, f), folder)
    lay_out(cache, "org/pickled", folder)
    cfg = write_config(tmp_path / "cfg.py", teacher, "org/pickled", train, str(tmp_path / "w"))
    assert_user_error(run(cfg, env=offline_env(cache)), "org/pickled", "allow_pickle")


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every API call as the hub does for a gated or a missing repository."""

    def do_GET(self):
        code = "GatedRepo" if "gated" in self.path else "RepoNotFound"
        self.send_response(403 if code == "GatedRepo" else 404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("repo, culprits", [("org/gated", ("org/gated", "HF_TOKEN")),
                                            ("org/nothing", ("org/nothing", "no such repository"))])
def test_hub_errors_are_one_line_naming_the_id(hf_pair, tmp_path, repo, culprits):
    teacher, _, train = hf_pair
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = write_config(tmp_path / "cfg.py", teacher, repo, train, str(tmp_path / "w"))
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_CACHE": str(tmp_path / "hub"),
               "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
        assert_user_error(run(cfg, env=env), *culprits)
    finally:
        server.shutdown()


def test_a_dataset_by_hub_id_follows_the_same_offline_rules(hf_pair, cache, tmp_path):
    teacher, student, _ = hf_pair
    cfg = write_config(tmp_path / "cfg.py", teacher, student, "hf:org/nodata", str(tmp_path / "w"))
    assert_user_error(run(cfg, env=dict(offline_env(cache), HF_HOME=str(tmp_path / "home"))), "hf:org/nodata",
                      "HF_HUB_OFFLINE")
