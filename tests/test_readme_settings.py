"""The README's settings tables against the job dataclasses they are rendered from."""

from __future__ import annotations

from benchmarks import readme_regions
from benchmarks import readme_settings as rs
from tflq.batch import spec as batch_spec

with open(rs.README, encoding="utf-8") as _f:
    README = _f.read()


def test_readme_settings_tables_match_the_dataclasses():
    mismatches = readme_regions.compare(README, rs.render_all())
    assert not mismatches, "README differs from the job dataclasses (run `python -m " \
        "benchmarks.readme_settings --write`):\n" + "\n".join(m.diff for m in mismatches)


def test_every_spec_key_has_its_row_with_its_default():
    regions = readme_regions.read_regions(README)
    for kind in batch_spec.JOB_KINDS:
        rows = {line.split("|")[1].strip(" `"): line
                for line in regions[f"table:settings_{kind}"].splitlines()[2:]}
        assert set(rows) == set(batch_spec.spec_settings(kind)), kind
        epochs = rows.get("epochs")
        if epochs:  # the commands' default, not the Python API's
            assert "| `10` |" in epochs
    assert "| `per_tensor` | bool | `false` |" in regions["table:settings_convert"]


def test_check_exits_1_when_a_table_differs(tmp_path, monkeypatch, capsys):
    changed = README.replace("| `per_tensor` | bool | `false` |", "| `per_tensor` | bool | `true` |")
    path = tmp_path / "README.md"
    path.write_text(changed, encoding="utf-8")
    monkeypatch.setattr(rs, "README", str(path))
    assert rs.main(["--check"]) == 1
    assert "per_tensor" in capsys.readouterr().out
    assert rs.main(["--write"]) == 0
    assert path.read_text(encoding="utf-8") == README
