"""The lightning-sync command line: every example config runs a few batches and writes its outputs."""

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_sync.cli import main

REPOSITORY = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPOSITORY / "examples" / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {config.stem for config in CONFIGS}
    assert {"baseline", "focus"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[config.stem for config in CONFIGS])
def test_config_runs_few_batches(config, tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY)
    main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert (tmp_path / "metrics.csv").is_file()
    assert (tmp_path / "focus_maps.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "config.yaml").is_file()
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "val/acc" in header
    if "focus" in config.stem:
        assert "focus/conv3/loss" in header
    if "sync" in config.stem:
        assert "sync/conv3/order" in header
        assert "sync/conv3/modules" in header
        assert (tmp_path / "modules.json").is_file()


def test_python_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightning_sync", "fit", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--trainer.callbacks" in result.stdout
    assert "--model" in result.stdout


def test_unknown_model_class_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPOSITORY)
    with pytest.raises(SystemExit):
        main(["fit", "--model=examples.models.NoSuchModel", "--data=examples.data.BundledDigits"])
    assert "NoSuchModel" in capsys.readouterr().err


def test_compare_script_writes_page(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPOSITORY)
    sys.path.insert(0, str(REPOSITORY / "examples"))
    try:
        import compare
    finally:
        sys.path.remove(str(REPOSITORY / "examples"))

    page = tmp_path / "results.md"
    results = compare.main(
        ["--configs", "focus", "--epochs", "1", "--output", str(tmp_path / "runs"), "--page", str(page), "--columns", "accuracy", "modules"]
    )
    assert 0.0 <= results["focus"]["accuracy"] <= 1.0
    assert results["focus"]["largest_module_share"] == 0.0
    text = page.read_text()
    assert "python examples/compare.py --configs focus --epochs 1" in text
    assert "| focus |" in text
    assert "| config | accuracy | modules |" in capsys.readouterr().out
