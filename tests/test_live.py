import pytest

from pipeline.live import SERIES_DIR, read_log, write_log

ROWS = [{"step": 2, "loss": 1.5, "anchor_deu_Latn": 0.75, "base/seed13/loss": 2.0},
        {"step": 4, "loss": 1.25, "anchor_deu_Latn": 0.5}]


def test_a_log_reads_back_as_one_table_with_dvclive_files(tmp_path):
    write_log(tmp_path / "log", ROWS)
    loss = (tmp_path / "log" / SERIES_DIR / "loss.tsv").read_text()
    assert loss == "step\tloss\n2\t1.5\n4\t1.25\n"
    assert (tmp_path / "log" / SERIES_DIR / "base" / "seed13" / "loss.tsv").is_file()
    summary = (tmp_path / "log" / "metrics.json").read_text()
    assert '"loss": 1.25' in summary and '"step": 4' in summary
    table = read_log(tmp_path / "log")
    assert list(table.columns) == ["step", "anchor_deu_Latn", "base/seed13/loss", "loss"]
    assert table["step"].tolist() == [2, 4] and table["loss"].tolist() == [1.5, 1.25]
    assert table["base/seed13/loss"].iloc[0] == 2.0 and table["base/seed13/loss"].isna().iloc[1]


def test_rewriting_a_log_replaces_it_byte_for_byte(tmp_path):
    write_log(tmp_path / "a", ROWS)
    write_log(tmp_path / "b", [{"step": 9, "old": 1.0}])
    write_log(tmp_path / "b", ROWS)  # a resumed run rewrites its whole history
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_bad_steps_and_bad_series_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="increasing integer steps"):
        write_log(tmp_path / "x", [{"step": 2, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    assert read_log(tmp_path / "missing") is None
    series = tmp_path / "y" / SERIES_DIR
    series.mkdir(parents=True)
    (series / "loss.tsv").write_text("epoch\tloss\n1\t0.5\n")
    with pytest.raises(ValueError, match="not a DVCLive series"):
        read_log(tmp_path / "y")
