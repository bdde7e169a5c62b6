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
    """src/uniapl/*.py files a Python file imports (module level or inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "uniapl":
            names = [f"uniapl.{a.name}" for a in node.names] if node.module == "uniapl" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("uniapl.")]
        else:
            continue
        found |= {f"src/{n.replace('.', '/')}.py" for n in names if (ROOT / "src" / f"{n.replace('.', '/')}.py").exists()}
    return found


def test_stage_code_deps_cover_every_imported_module():
    """Each stage depends on its script and on every uniapl module the script reaches through imports (lazy
    ones included), so a change to, e.g., the IFEval scorer re-runs every stage that scores responses."""
    import re

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        body = st.get("do", st)
        script = re.search(r"experiments/\S+\.py", body["cmd"]).group(0)
        need, todo = {script}, [script]
        while todo:
            for dep in _uniapl_imports(ROOT / todo.pop()) - need:
                need.add(dep)
                todo.append(dep)
        missing = need - {d for d in body["deps"] if isinstance(d, str)}
        assert not missing, f"dvc.yaml stage {name!r} lacks code deps {sorted(missing)}"
