"""trackers.py: the same scalars, config and final table reach TensorBoard, W&B (offline) and trackio (local),
read back from each one's own files."""

import glob
import json
import os
import struct

import pytest

from conftest import scalars, tiny_setup, train
from dpkd_jax import trackers
from dpkd_jax.errors import InputError
from dpkd_jax.pipeline import publish_table

ALL = ("tensorboard", "wandb", "trackio")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B without a key (offline); a trackio project of this test's own (conftest points TRACKIO_DIR at a
    temporary folder)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    return tmp_path.name.replace("[", "-").replace("]", "")


def wandb_records(workdir):
    """Every history row and config item W&B wrote offline under ``workdir`` (its .wandb files are LevelDB
    log records: 32 KiB blocks, each record a 7-byte header (CRC, length, type) and its piece)."""
    from wandb.proto import wandb_internal_pb2 as pb
    history, config = [], {}
    for fn in sorted(glob.glob(os.path.join(str(workdir), "wandb", "offline-run-*", "run-*.wandb"))):
        raw, pos, piece = open(fn, "rb").read(), 7, b""
        while pos + 7 <= len(raw):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
            piece, pos = piece + raw[pos + 7:pos + 7 + n], pos + 7 + n
            if kind in (1, 4):  # FULL or LAST
                record = pb.Record.FromString(piece)
                piece = b""
                if record.WhichOneof("record_type") == "history":
                    history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                    for i in record.history.item})
                elif record.WhichOneof("record_type") == "run":
                    config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    return history, config


def trackio_rows(where):
    from trackio.sqlite_storage import SQLiteStorage
    return SQLiteStorage.get_logs(where.project, where.name), SQLiteStorage.get_run_config(where.project, where.name)


def test_a_training_run_logs_the_same_scalars_and_config_to_every_tracker(tmp_path, tok, offline):
    cfg, data, (tc, tp), (sc, sp) = tiny_setup(tmp_path, tok)
    cfg.method, cfg.train.save_every, cfg.log.trackers, cfg.log.project = "kd", 0, ALL, offline
    history = train(cfg, sc, sp, tc, tp, data, None, str(tmp_path / "kd")).history
    losses = [h["loss/total"] for h in history]
    assert len(losses) == 3
    assert scalars(tmp_path / "kd" / "tb", "loss/total") == pytest.approx(losses, rel=1e-6)
    w_hist, w_cfg = wandb_records(tmp_path / "kd")
    assert [h["loss/total"] for h in w_hist if "loss/total" in h] == pytest.approx(losses, rel=1e-6)
    assert [h["_step"] for h in w_hist if "loss/total" in h] == [1, 2, 3]
    assert w_cfg["method"] == "kd" and w_cfg["train"]["batch_size"] == 4
    where = trackers.Where(str(tmp_path / "kd"), offline, {})
    rows, t_cfg = trackio_rows(where)
    assert [r["loss/total"] for r in rows] == pytest.approx(losses, rel=1e-6)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert t_cfg["method"] == "kd" and t_cfg["train"]["batch_size"] == 4


def test_the_final_table_goes_to_table_md_and_every_tracker(tmp_path, offline):
    from dpkd_jax.config import default_config
    cfg = default_config()
    cfg.workdir, cfg.log.trackers, cfg.log.project = str(tmp_path / "run"), ALL, offline
    table = "| method | dev RougeL |\n|---|---|\n| kd | 12.50 |\n| teacher | 20.00 |"
    publish_table(cfg, table)
    assert (tmp_path / "run" / "table.md").read_text() == table + "\n"
    w_hist, _ = wandb_records(tmp_path / "run")
    logged = next({k.split("/", 1)[1]: v for k, v in h.items() if k.startswith("results/")} for h in w_hist
                  if "results/_type" in h)  # a logged table is a history row of nested keys
    assert logged["_type"] == "table-file" and logged["nrows"] == 2 and logged["ncols"] == 2
    media = json.loads(open(glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "files" / logged["path"]))[0]).read())
    assert media["columns"] == ["method", "dev RougeL"] and media["data"] == [["kd", "12.50"], ["teacher", "20.00"]]
    rows, _ = trackio_rows(trackers.Where(cfg.workdir, offline, {}))
    cell = rows[-1]["results"]
    assert cell["_type"] == "trackio.table"
    assert [[r["method"], r["dev RougeL"]] for r in cell["_value"]] == [["kd", "12.50"], ["teacher", "20.00"]]


def test_an_unknown_or_missing_tracker_is_one_line_naming_the_field_and_extra(monkeypatch):
    with pytest.raises(InputError, match=r"^config.log.trackers: unknown tracker 'mlflow'; choose from "
                                         r"tensorboard, wandb, trackio$"):
        trackers.check(("tensorboard", "mlflow"))
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(InputError, match=r"^config.log.trackers: wandb is not installed; "
                                         r"pip install 'dpkd_jax\[wandb\]'$"):
        trackers.check(("wandb",))
    assert trackers.check("tensorboard") == ("tensorboard",)


def test_a_run_without_process_zero_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers.jax, "process_index", lambda: 1)
    with trackers.Trackers(("tensorboard",), trackers.Where(str(tmp_path), "t", {})) as tr:
        tr.scalars({"loss/total": 1.0}, 1)
    assert not os.path.exists(tmp_path / "tb")


def test_two_writers_on_one_work_dir_in_one_second_keep_both_files(tmp_path):
    """A stage's writer and its table's, opened back to back: neither event file replaces the other."""
    where = trackers.Where(str(tmp_path), "t", {})
    with trackers.Trackers(("tensorboard",), where) as tr:
        tr.scalars({"loss/total": 1.5}, 1)
    with trackers.Trackers(("tensorboard",), where) as tr:
        tr.table("results", "| a |\n|---|\n| 1 |")
    assert len(glob.glob(str(tmp_path / "tb" / "events.*"))) == 2
    assert scalars(tmp_path / "tb", "loss/total") == [1.5]
