import pytest
import yaml

from uniapl.config import ConfigError, load_params, run_config

from conftest import ROOT


def test_default_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.pretrain.models["teacher"].hidden_size >= p.pretrain.models["student-m"].hidden_size
    for m in ("sft", "grpo", "uniapl", "a_chord"):
        assert run_config(p, m, "student-s", 1).method == m


@pytest.mark.parametrize("override, needle", [
    ({"world": {"n_trian": 5}}, "world.n_trian: Extra inputs are not permitted"),
    ({"world": {"n_train": "many"}}, "world.n_train: Input should be a valid integer"),
    ({"pretrain": {"dtype": "fp8"}}, "pretrain.dtype"),
    ({"train": {"lrr": 1e-4}}, "train.lrr: Extra inputs are not permitted"),
    ({"train": {"mu_peak": 0.1, "mu_valley": 0.5}}, "mu_valley (0.5) must not exceed mu_peak (0.1)"),
    ({"ppo": {}}, "ppo: Extra inputs are not permitted"),
    ({"grpo": {"group_size": 1}}, "grpo.group_size"),
    ({"uniapl": {"lambda_adv": -1}}, "uniapl.lambda_adv"),
    ({"pipeline": {"seeds": []}}, "pipeline.seeds"),
    ({"world": {"ood_n_instructions": 2}}, "ood_n_instructions must exceed"),
    ({"world": {"type_weights": {"made:up": 1.0}}}, "unknown instruction types ['made:up']"),
    ({"grpo": {"disc_cotrain": True}}, "disc_cotrain needs a method with an adversarial term"),
])
def test_bad_params_name_key_and_rule(override, needle):
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", override)
    assert needle in str(e.value)
    assert "params.yaml" in str(e.value)


def test_method_sections_apply_only_to_their_method():
    p = load_params(ROOT / "params.yaml", {"uniapl": {"lambda_adv": 0.7}})
    assert run_config(p, "uniapl", "student-s", 0).lambda_adv == 0.7
    assert run_config(p, "uniapl_shaped", "student-s", 0).lambda_adv == 0.7  # shaped starts from uniapl's section
    assert run_config(p, "a_grpo", "student-s", 0).lambda_adv != 0.7


def test_not_yaml(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("world: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)


def test_pretrain_stage_reads_the_corpus_its_params_name():
    """dvc.yaml's pretrain map (model -> corpus file it depends on) matches pretrain.models.<model>.corpus."""
    import yaml
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = load_params(ROOT / "params.yaml")
    assert stages["pretrain"]["foreach"] == {m: spec.corpus for m, spec in params.pretrain.models.items()}


def test_lambda_sweep_reads_every_uniapl_key_but_lambda_adv():
    """ablate_lambda sets lambda_adv with --set, so it lists the other uniapl.* keys one by one: a key added
    to the uniapl section must be added there too, or the sweep would not re-run when it changes."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["uniapl"]
    listed = {p for p in stages["ablate_lambda"]["params"] if p.startswith("uniapl")}
    assert listed == {f"uniapl.{k}" for k in section if k != "lambda_adv"}
    assert "--set lambda_adv=" in stages["ablate_lambda"]["cmd"]


def test_uncached_outputs_are_not_git_ignored():
    """Outputs declared with `cache: false` live only in git: one that .gitignore hides is missing from every
    clone and from `dvc exp run`'s temp copy, so DVC re-runs its stage (this hid the DVCLive curves once)."""
    import os
    import subprocess

    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    paths = sorted({os.path.relpath(o.fs_path, repo.root_dir) for st in repo.index.stages for o in st.outs
                    if not o.use_cache})
    assert paths, "dvc.yaml declares no uncached outputs"
    # A directory output: check a file inside it too, since git cannot re-include files under an ignored dir.
    probes = paths + [os.path.join(p, "x.tsv") for p in paths if not os.path.splitext(p)[1]]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(probes),
                             capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert not ignored, f".gitignore hides uncached DVC outputs: {ignored[:5]}"


def _uniapl_imports(path):
    """Files of the project a Python file imports, at module level or inside functions: src/uniapl modules
    (absolute or relative imports) and sibling scripts of experiments/. An import of uniapl that resolves to
    no file fails, so a new import form cannot slip past the check below."""
    import ast

    src = ROOT / "src"
    rel = path.relative_to(ROOT).as_posix()
    package = rel[len("src/"):-len(".py")].split("/")[:-1] if rel.startswith("src/") else []

    def module_file(dotted):
        for cand in (f"{dotted.replace('.', '/')}.py", f"{dotted.replace('.', '/')}/__init__.py"):
            if (src / cand).exists():
                return f"src/{cand}"
        return None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                assert package, f"{rel}: relative import outside a package"
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from pkg import name`: name is a submodule, or an attribute of pkg itself
            mods = [f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for mod in mods:
            if mod.split(".")[0] == "uniapl":
                f = module_file(mod)
                assert f, f"{rel}: cannot resolve `{mod}` to a file under src/"
                found.add(f)
            elif (ROOT / "experiments" / f"{mod}.py").exists() and rel.startswith("experiments/"):
                found.add(f"experiments/{mod}.py")
    return found


def test_stage_code_deps_cover_every_imported_module():
    """Each stage depends on its scripts and on every uniapl module they reach through imports (lazy
    ones included), so a change to, e.g., the IFEval scorer re-runs every stage that scores responses.
    (src/uniapl/__init__.py must stay empty, or it becomes a dependency of every stage.)"""
    import re

    assert not (ROOT / "src" / "uniapl" / "__init__.py").read_text().strip(), \
        "src/uniapl/__init__.py has code: add it to every stage's deps and to this test"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        body = st.get("do", st)
        scripts = set(re.findall(r"experiments/\S+\.py", body["cmd"]))
        assert scripts, f"dvc.yaml stage {name!r} runs no experiments/ script"
        need, todo = set(scripts), list(scripts)
        while todo:
            for dep in _uniapl_imports(ROOT / todo.pop()) - need - {"src/uniapl/__init__.py"}:
                need.add(dep)
                todo.append(dep)
        missing = need - {d for d in body["deps"] if isinstance(d, str)}
        assert not missing, f"dvc.yaml stage {name!r} lacks code deps {sorted(missing)}"


def test_import_walker_resolves_every_form(tmp_path):
    """The walker behind the deps check follows absolute, relative and `from uniapl import` forms, lazy
    imports inside functions, and fails on a uniapl import it cannot resolve."""
    probe = ROOT / "src" / "uniapl" / "_walker_probe.py"
    probe.write_text("import uniapl.io as io_\nfrom . import models\nfrom .world import INSTRUCTION_TYPES\n"
                     "from uniapl import ifeval\ndef f():\n    from uniapl.trainer import Trainer\n")
    try:
        assert _uniapl_imports(probe) == {f"src/uniapl/{m}.py" for m in ("io", "models", "world", "ifeval", "trainer")}
        probe.write_text("from uniapl.no_such_module import x\n")
        with pytest.raises(AssertionError, match="cannot resolve"):
            _uniapl_imports(probe)
    finally:
        probe.unlink()


def test_loading_params_does_not_import_the_checkers():
    """load_params validates instruction types against uniapl.world, which imports the IFEval checkers
    (lm-evaluation-harness, nltk: seconds of import) only where it checks responses."""
    import subprocess
    import sys

    code = ("import sys; from uniapl.config import load_params; load_params(sys.argv[1]); "
            "print(sorted(m for m in ('lm_eval', 'nltk', 'langdetect', 'uniapl.ifeval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "params.yaml")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
