"""Recipe validation: every error names the key and the file, and nothing is written."""

import pytest

from boltzflow.cli import main
from boltzflow.runs.recipes import RecipeError, list_systems, load_recipe

GOOD = """
[system]
name = "tiny"
description = "test recipe"

[target]
kind = "double-well"

[flow]
kind = "spline-coupling"
num_layers = { smoke = 2, default = 4, long = 6 }

[[training.stages]]
loss = "reverse_kl"
steps = 5

[sampling]
method = "importance"
n_samples = 100
"""


def _write(tmp_path, text):
    d = tmp_path / "tiny"
    d.mkdir(exist_ok=True)
    (d / "system.toml").write_text(text)
    return d


def test_catalogue_lists_core_systems():
    systems = list_systems()
    for name in ("gmm40", "double-well", "many-well-32", "funnel"):
        assert name in systems and systems[name]


def test_budget_values_resolve(tmp_path):
    d = _write(tmp_path, GOOD)
    assert load_recipe(d, "smoke").flow["num_layers"] == 2
    assert load_recipe(d, "long").flow["num_layers"] == 6


@pytest.mark.parametrize(
    "old,new,needle",
    [
        ('kind = "double-well"', 'kind = "double-well"\nbogus_key = 1', "unknown key 'bogus_key'"),
        ("[sampling]", "[sampling]\nfoo = 1\n[extra]", "unknown section [extra]"),
        (
            'description = "test recipe"',
            'description = "x"\ncolour = "red"',
            "unknown key 'colour'",
        ),
        ('loss = "reverse_kl"', 'loss = "reverse_kll"', "unknown loss 'reverse_kll'"),
        ('kind = "spline-coupling"', 'kind = "splin"', "unknown flow 'splin'"),
        ('method = "importance"', 'method = "magic"', "unknown sampler 'magic'"),
        ('kind = "double-well"', 'kind = "triple-well"', "unknown target 'triple-well'"),
        ("steps = 5", "steps = 5\nlearning_rate = 1", "unknown key 'learning_rate'"),
        ("n_samples = 100", "", "missing key 'n_samples'"),
    ],
)
def test_invalid_recipes_name_key_and_file(tmp_path, old, new, needle):
    d = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(RecipeError) as err:
        load_recipe(d, "smoke")
    assert needle in str(err.value)
    assert str(d / "system.toml") in str(err.value)


def test_cli_error_exit_code_and_no_output(tmp_path, capsys):
    d = _write(tmp_path, GOOD.replace('loss = "reverse_kl"', 'loss = "nope"'))
    out = tmp_path / "out"
    assert main(["run", str(d), "--budget", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown loss 'nope'" in err and "system.toml" in err
    assert not out.exists()


def test_unknown_system_and_budget(tmp_path, capsys):
    assert main(["run", "no-such-system", "--out", str(tmp_path / "o")]) == 2
    assert "unknown system 'no-such-system'" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="unknown budget"):
        load_recipe("gmm40", "huge")


def test_systems_command(capsys):
    assert main(["systems"]) == 0
    assert "gmm40" in capsys.readouterr().out


def test_bad_thread_count_is_refused_before_any_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "gmm40", "--threads", "0", "--out", str(out)]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_run_without_a_name_runs_the_default_system():
    from boltzflow.cli import DEFAULT_SYSTEM, build_parser

    args = build_parser().parse_args(["run"])
    assert args.system == DEFAULT_SYSTEM == "alanine-dipeptide-vacuum"
    assert DEFAULT_SYSTEM in list_systems()
