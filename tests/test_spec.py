"""Job specs: TOML and CLI flags are one thing, validated against the kind's signature before queueing."""
from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from _service_helpers import realfake, service_env, use_service_home
from click.testing import CliRunner
from realfake.jobs.cli import main as cli
from realfake.jobs.service.spec import (
    KINDS,
    SpecError,
    available_kinds,
    kind_params,
    load_spec_file,
    path_role,
    validate_spec,
)
from realfake.jobs.service.store import JobStore


@pytest.fixture
def home(tmp_path, monkeypatch):
    return use_service_home(monkeypatch, tmp_path)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "specs" / "images"
    path.mkdir(parents=True)
    return path


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "specs" / "job.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_toml_spec_is_typed_and_paths_are_relative_to_the_file(home, tmp_path, folder):
    path = write_spec(tmp_path, 'kind = "typed"\nfolder = "images"\ncount = 3\nratio = 1\n'
                                'tags = ["a", "b"]\nmode = "slow"\nflag = true\n')
    spec = load_spec_file(path)
    assert spec.kind == "typed"
    assert spec.args == {"folder": str(folder), "count": 3, "ratio": 1.0, "tags": ["a", "b"], "mode": "slow",
                         "flag": True}
    assert isinstance(spec.args["ratio"], float)  # an integer is a fine float
    assert spec.default_out == "out"  # no `out`: the store gives the job its own folder


def test_cli_flags_and_toml_give_the_same_job(home, tmp_path, folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    runner = CliRunner()
    by_flags = runner.invoke(cli, ["submit", "typed", "images", "--count", "3", "--ratio", "1", "--tags", "a",
                                   "--tags", "b", "--mode", "slow", "--flag"])
    assert by_flags.exit_code == 0, by_flags.output
    path = write_spec(tmp_path, 'kind = "typed"\nfolder = "images"\ncount = 3\nratio = 1.0\n'
                                'tags = ["a", "b"]\nmode = "slow"\nflag = true\n')
    by_file = runner.invoke(cli, ["submit", str(path)])
    assert by_file.exit_code == 0, by_file.output
    first, second = JobStore().list_jobs()
    assert int(by_flags.stdout.strip()) == first.id and int(by_file.stdout.strip()) == second.id
    assert first.kind == second.kind == "typed"
    strip_out = lambda spec: {k: v for k, v in spec.items() if k != "out"}  # noqa: E731
    assert strip_out(first.spec) == strip_out(second.spec)
    assert first.out == str(home / "jobs" / str(first.id) / "out")
    assert second.out == str(home / "jobs" / str(second.id) / "out")


INVALID = [
    ("unknown key", "count = 3\ncuont = 4\n", ["unknown key 'cuont'", "did you mean 'count'"]),
    ("missing required", "", ["missing key 'count'", "an integer", "count = 10"]),
    ("int as string", 'count = "3"\n', ["'count'", "must be an integer", "'3'"]),
    ("int as float", "count = 3.5\n", ["'count'", "must be an integer"]),
    ("int as bool", "count = true\n", ["'count'", "must be an integer"]),
    ("float as string", 'count = 3\nratio = "half"\n', ["'ratio'", "must be a number"]),
    ("bool as int", "count = 3\nflag = 1\n", ["'flag'", "must be true or false"]),
    ("str as int", "count = 3\nname = 7\n", ["'name'", "must be a string"]),
    ("list as string", 'count = 3\ntags = "a"\n', ["'tags'", "must be a list of strings"]),
    ("list of mixed", 'count = 3\ntags = ["a", 2]\n', ["'tags'", "must be a list of strings"]),
    ("literal", 'count = 3\nmode = "medium"\n', ["'mode'", "one of 'fast', 'slow'"]),
    ("optional int", 'count = 3\nlimit = "all"\n', ["'limit'", "an integer (or left out)"]),
    ("below its range", "count = 3\nlimit = 0\n", ["'limit'", "must be at least 1, got 0"]),
    ("outside its range", "count = 3\nratio = 1.5\n", ["'ratio'", "must be between 0 and 1, got 1.5"]),
    ("missing input path", 'count = 3\nfolder = "nowhere"\n', ["'folder'", "nowhere does not exist"]),
    ("table", "count = 3\n[name]\nx = 1\n", ["'name'", "must be a string", "a table"]),
]


@pytest.mark.parametrize("case, body, expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_typed_specs_are_refused_and_nothing_is_queued(home, tmp_path, folder, case, body, expected):
    text = 'kind = "typed"\n' + (body if "folder" in body else 'folder = "images"\n' + body)
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for piece in expected:
        assert piece in message
    result = CliRunner().invoke(cli, ["submit", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    assert JobStore().list_jobs() == []


def test_cli_flag_errors_name_the_flag(home, folder):
    runner = CliRunner()
    missing = runner.invoke(cli, ["submit", "typed", str(folder)])
    assert missing.exit_code == 2 and "missing option --count" in missing.stderr
    no_path = runner.invoke(cli, ["submit", "typed", str(folder / "nope"), "--count", "1"])
    assert no_path.exit_code == 2 and "argument FOLDER" in no_path.stderr and "does not exist" in no_path.stderr
    wrong_type = runner.invoke(cli, ["submit", "typed", str(folder), "--count", "many"])
    assert wrong_type.exit_code == 2 and "'many' is not a valid integer" in wrong_type.stderr
    bad_choice = runner.invoke(cli, ["submit", "typed", str(folder), "--count", "1", "--mode", "medium"])
    assert bad_choice.exit_code == 2
    out_of_range = runner.invoke(cli, ["submit", "typed", str(folder), "--count", "1", "--ratio", "2"])
    assert out_of_range.exit_code == 2 and "--ratio" in out_of_range.stderr and "0<=x<=1" in out_of_range.stderr
    assert JobStore().list_jobs() == []


def test_a_declared_range_also_holds_for_a_direct_call(folder, tmp_path):
    from _service_helpers import typed_job

    assert typed_job(folder, count=1, ratio=1.0, limit=None, out=tmp_path)["ratio"] == 1.0
    with pytest.raises(ValueError, match=r"^--ratio 1\.5 must be between 0 and 1$"):
        typed_job(folder, count=1, ratio=1.5, out=tmp_path)
    with pytest.raises(ValueError, match=r"^--limit 0 must be at least 1$"):
        typed_job(folder, count=1, limit=0, out=tmp_path)
    with pytest.raises(ValueError, match=r"^unknown --mode 'medium': choose one of fast, slow$"):
        typed_job(folder, count=1, mode="medium", out=tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("count = 3\n", "no 'kind' string"),
    ('kind = "tpyed"\n', "unknown kind 'tpyed'"),
    ('kind = "typed\n', "invalid TOML"),
])
def test_spec_file_errors(home, tmp_path, text, expected):
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError, match=expected):
        load_spec_file(path)
    with pytest.raises(SpecError, match="not found"):
        load_spec_file(tmp_path / "missing.toml")


def test_missing_kind_module_is_a_clear_error(home, tmp_path, monkeypatch):
    monkeypatch.setenv("REALFAKE_EXTRA_KINDS", "ghost=realfake.jobs.no_such_module:run_ghost")
    with pytest.raises(SpecError, match=r"kind 'ghost' is not available: cannot import realfake\.jobs\.no_such_module"):
        validate_spec("ghost", {})
    result = CliRunner().invoke(cli, ["submit", str(write_spec(tmp_path, 'kind = "ghost"\n'))])
    assert result.exit_code == 2 and "kind 'ghost' is not available" in result.stderr
    monkeypatch.setenv("REALFAKE_EXTRA_KINDS", "broken entry")
    with pytest.raises(SpecError, match="REALFAKE_EXTRA_KINDS"):
        available_kinds()


def test_submit_help_lists_kinds_without_importing_them(home):
    code = ("import sys\nfrom realfake.jobs.cli import main\n"
            "try:\n    main(['submit', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=service_env(home))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH")
    for kind in KINDS:
        assert kind in result.stdout


def test_submit_kind_help_shows_generated_flags(home):
    result = realfake("submit", "typed", "--help", env=service_env(home))
    assert result.returncode == 0, result.stderr
    for flag in ("FOLDER", "--count INTEGER", "--ratio FLOAT", "--flag / --no-flag", "--tags TEXT",
                 "--mode [fast|slow]", "--limit INTEGER", "--out PATH", "--wait", "--max-attempts"):
        assert flag in result.stdout


# ---------------------------------------------------------------------------------------------------
# The real kinds: invalid specs of each kind are refused, derived from the function's own signature.


def _wrong_value(annotation) -> object:
    """A TOML value that cannot fit `annotation`."""
    inner = annotation
    for arg in typing.get_args(annotation):
        if arg is not type(None):
            inner = arg
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    return "not-a-number" if inner in (int, float) else 12345


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_invalid_specs_of_each_real_kind(home, tmp_path, kind):
    params = kind_params(kind)
    with pytest.raises(SpecError, match=f"unknown key 'no_such_key' for kind '{kind}'"):
        validate_spec(kind, {"no_such_key": 1})
    required = [p for p in params if p.required and p.name != "out"]
    if required:
        with pytest.raises(SpecError, match=f"missing key '{required[0].name}'"):
            validate_spec(kind, {})
    typed = next((p for p in params if path_role(p.annotation) is None and p.annotation is not typing.Any), None)
    if typed is not None:
        with pytest.raises(SpecError, match=f"key '{typed.name}' of kind '{kind}' must be"):
            validate_spec(kind, {typed.name: _wrong_value(typed.annotation)})
    inputs = [p for p in params if path_role(p.annotation) == "input"]
    if inputs:
        with pytest.raises(SpecError, match=f"key '{inputs[0].name}' of kind '{kind}'.*does not exist"):
            validate_spec(kind, {inputs[0].name: str(tmp_path / "missing")})
    path = write_spec(tmp_path, f'kind = "{kind}"\nno_such_key = 1\n')
    assert CliRunner().invoke(cli, ["submit", str(path)]).exit_code == 2
    assert JobStore().list_jobs() == []


def test_store_keeps_the_validated_spec_as_json(home, folder):
    spec = validate_spec("typed", {"folder": str(folder), "count": 2})
    job = JobStore().submit(spec)
    assert json.loads(json.dumps(job.spec)) == job.spec
    assert job.spec["out"] == job.out == str(home / "jobs" / str(job.id) / "out")
