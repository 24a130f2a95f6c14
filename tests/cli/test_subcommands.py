"""Subcommands contributed by modules and plugins: loaded, or reported when they cannot be."""

import pytest

from boltzflow import cli


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    """An installed distribution whose ``boltzflow.commands`` entry point fails to import."""
    info = tmp_path / "boltzflow_broken_cmd-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: boltzflow-broken-cmd\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[boltzflow.commands]\nbroken = boltzflow_broken_cmd:add_parser\n"
        "hello = boltzflow_hello_cmd:add_parser\n"
    )
    (tmp_path / "boltzflow_broken_cmd.py").write_text("import a_module_that_does_not_exist\n")
    (tmp_path / "boltzflow_hello_cmd.py").write_text(
        "def add_parser(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.set_defaults(func=lambda args: print('hello from a plugin') or 0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_built_in_subcommands_are_available(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "md" in out and "umbrella" in out and "unavailable" not in out


def test_plugin_command_runs_and_a_broken_one_is_reported(broken_plugin, capsys):
    assert cli.main(["hello"]) == 0
    assert "hello from a plugin" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "unavailable: ModuleNotFoundError" in capsys.readouterr().out
    assert cli.main(["broken", "--anything"]) == 2
    err = capsys.readouterr().err
    assert "'broken' command could not be loaded" in err and "a_module_that_does_not_exist" in err


def test_broken_built_in_module_is_reported_not_dropped(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_PLUGIN_PARSERS", (*cli._PLUGIN_PARSERS, "boltzflow.no_such_cmd"))
    assert cli.main(["no_such_cmd"]) == 2
    assert "No module named 'boltzflow.no_such_cmd'" in capsys.readouterr().err


def test_umbrella_forwards_the_uncertainty_choice(monkeypatch, tmp_path, capsys):
    """``--uncertainty bootstrap --bootstrap N`` reaches the MBAR estimate."""
    import boltzflow.molecular.umbrella as umbrella
    import boltzflow.runs.pipeline as pipeline

    class _Target:
        def close(self):
            pass

    seen = {}

    def fake_umbrella(target, **kwargs):
        seen.update(kwargs)
        return {"free_energies": {"alphaL_vs_rest": {"mean": 1.0, "stderr": 0.1}}}

    monkeypatch.setattr(pipeline, "build_target", lambda *a, **k: _Target())
    monkeypatch.setattr(umbrella, "alanine_umbrella", fake_umbrella)
    out = tmp_path / "ref.json"
    argv = [
        "umbrella",
        "alanine-dipeptide-vacuum",
        "--uncertainty",
        "bootstrap",
        "--bootstrap",
        "7",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert seen["uncertainty"] == "bootstrap" and seen["n_bootstrap"] == 7
    assert "--uncertainty bootstrap --bootstrap 7" in out.read_text()
